"""`python -m core`: the command table and shared options.

Each command group lives in one module with ``main(argv) -> int``: `commands` (merge, eval, sweep,
analyze), the zoo's and each lab's own `cli` module. Shared flags and error handling: `options`.
"""

from __future__ import annotations

COMMANDS = {
    "zoo": ("core.zoo.cli", "build or inspect a zoo (build, pretrain, info; default: the styled zoo)"),
    "export": ("core.zoo.export", "write a built zoo as a model-set folder (weights, heads, PNG data, JSON)"),
    "merge": ("core.cli.commands", "merge a model set from a spec JSON and write safetensors"),
    "eval": ("core.cli.commands", "evaluate a spec (merge + evaluation on every task)"),
    "sweep": ("core.cli.commands", "grid over lambda or LiNeS (alpha, beta) on validation, best point on test"),
    "analyze": ("core.cli.commands", "per-layer tables: task-vector norms, spectra, scopes (CSV)"),
    "tint": ("core.labs.tinting.cli", "Model Tinting (or layer-wise AdaMerging) on a model set"),
    "finetune": ("core.labs.finetune.cli", "fine-tune lab: uniform lr / TempBalance / Model Balancing / WSA"),
    "continual": ("core.labs.continual.cli", "continual learning with adapters (NTK-CL terms)"),
}
