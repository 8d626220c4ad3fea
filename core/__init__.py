"""MergeScope's library: load checkpoints, analyse task vectors layer by layer,
merge and steer them, evaluate, and train - from the app, a notebook or the CLI.

The public API (stable; README documents it) is re-exported here lazily, so
`import core` stays cheap and a notebook pays only for what it uses:

    core.load_state_dict(path)            core.save_state_dict(sd, path)
    core.task_vector(base_sd, ft_sd)      core.merge(base_sd, finetuned_sds, method, **params)
    core.lines_scale(tv, alpha, beta)     core.layer_index(name, num_blocks=None)
    core.esd(weight)                      core.fit_powerlaw(eigenvalues)

core never imports streamlit.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_state_dict": "checkpoints",
    "save_state_dict": "checkpoints",
    "validate_checkpoints": "checkpoints",
    "task_vector": "task_vectors",
    "merge": "merging",
    "merged_direction": "merging",
    "apply_direction": "merging",
    "METHODS": "merging",
    "lines_scale": "lines",
    "layer_index": "layers",
    "num_blocks": "layers",
    "esd": "spectra",
    "fit_powerlaw": "spectra",
    "spectral_table": "spectra",
    "weight_scopes": "scopes",
    "ModelSet": "modelset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'core' has no attribute {name!r}")
