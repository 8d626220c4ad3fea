"""Command line: ``python -m core <command> ...``.

Each command lives next to its idea: the module exposes ``main(argv) -> int``
and this file only dispatches, so a command's flags are documented where its
code is.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "zoo": ("core.zoo", "build or inspect the demo zoo (build, pretrain, info)"),
    "merge": ("core.cli", "merge a model set from a spec JSON and write safetensors"),
    "eval": ("core.cli", "evaluate a spec (merge + evaluation on every task)"),
    "sweep": ("core.cli", "grid over lambda or LiNeS (alpha, beta) on validation, best point on test"),
    "analyze": ("core.cli", "per-layer tables: task-vector norms, spectra, scopes (CSV)"),
    "tint": ("core.tinting", "Model Tinting on a model set"),
    "finetune": ("core.tempbalance", "fine-tune lab: uniform lr / TempBalance / Model Balancing / WSA"),
    "continual": ("core.continual", "continual learning with adapters (NTK-CL terms)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m core <command> [options]\n\ncommands:")
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:<10} {doc}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, _ = COMMANDS[argv[0]]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"command {argv[0]!r} is not available in this build ({e})", file=sys.stderr)
        return 2
    if module_name == "core.cli":
        return module.main(argv)
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
