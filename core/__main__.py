"""Command line: ``python -m core <command> ...`` (also installed as ``mergescope``).

The table of commands is `core.cli.COMMANDS`: each names the module whose ``main(argv)`` runs it,
so a command's flags are documented where its code is. This file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

from core.cli import COMMANDS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m core <command> [options]\n\ncommands:")
        for name, (_, doc) in COMMANDS.items():
            print(f"  {name:<10} {doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module_name, _ = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    if module_name == "core.cli.commands":
        return module.main(argv)
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
