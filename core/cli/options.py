"""Options and error handling every `python -m core` command shares (one place).

    p = argparse.ArgumentParser(prog="python -m core tint")
    add_zoo_options(p)            # --zoo demo|styled|micro (default demo), --cache DIR
    add_run_options(p)            # --threads N, --no-log
    return guarded(lambda: run(p.parse_args(argv)))

`guarded` turns a `core.errors.MergeScopeError` (and the usual user-input errors) into one
"error: ..." line and exit status 1 (usage errors: 2); MERGESCOPE_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..errors import Cancelled, MergeScopeError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
ZOO_KINDS = ("demo", "styled", "micro")  # core.zoo.recipe.RECIPES (a test keeps the two equal)
# The zoo `make run` (Makefile's ZOO), the app and every command use when none is named: the recipe that
# separates the merge methods best of those tried (docs/methods/zoo.md, "what was tried"); the older demo
# recipe stays buildable by name (`--zoo demo`).
DEFAULT_ZOO = "styled"


class UserError(MergeScopeError):
    """A command-line mistake (a bad flag combination, a missing file): one message, exit status 1."""


def add_zoo_options(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_ZOO) -> None:
    """--zoo KIND and --cache DIR: which built zoo, and where the zoo cache lives."""
    p.add_argument(
        "--zoo",
        default=default,
        choices=ZOO_KINDS,
        help=f"zoo kind (default {default})" if default else f"zoo kind (default {DEFAULT_ZOO})",
    )
    p.add_argument("--cache", default=None, help="zoo cache dir (default $MERGESCOPE_CACHE or ~/.cache/mergescope)")


def add_run_options(p: argparse.ArgumentParser, *, threads_default: int | None = None) -> None:
    """--threads N (torch threads; default: 2 when idle, 1 when busy) and --no-log."""
    p.add_argument(
        "--threads",
        type=int,
        default=threads_default,
        help="torch threads (default: 2 when the machine is idle, 1 when busy)"
        if threads_default is None
        else f"torch threads (default {threads_default})",
    )
    p.add_argument("--no-log", action="store_true", help="do not write to the run log")


def message(e: BaseException) -> str:
    """One line for an error: KeyError's repr quotes are dropped; a dataclass's "unexpected keyword
    argument" becomes "unknown field 'x' (Class)"."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, TypeError) and "unexpected keyword argument" in text:
        text = f"unknown field {text.split('argument')[-1].strip()} ({text.split('.')[0].split('(')[0]})"
    return text or type(e).__name__


def guarded(fn: Callable[[], int | None]) -> int:
    """Run a command body; user errors become "error: ..." on stderr and exit status 1."""
    debug = bool(os.environ.get("MERGESCOPE_DEBUG"))
    try:
        return int(fn() or 0)
    except SystemExit as e:  # argparse has printed its usage message
        return EXIT_USAGE if e.code else EXIT_OK
    except Cancelled as e:
        print(f"cancelled: {message(e)}", file=sys.stderr)
        return 130
    except (MergeScopeError, FileNotFoundError, ValueError, KeyError, TypeError) as e:
        if debug:  # MERGESCOPE_DEBUG=1 shows the traceback
            raise
        print(f"error: {message(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
