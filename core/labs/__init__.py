"""The training labs: each a package with its model, run and cli modules."""
