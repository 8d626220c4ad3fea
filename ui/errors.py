"""Turn any error into one clear message on the page - what went wrong, which file / tensor / task,
what to do - and never a traceback. Errors that core raises for user input (`core.errors.MergeScopeError`
and its kinds) already say all that; anything else is reported as an internal error with its one-line
cause, and the full traceback goes to the server log."""

from __future__ import annotations

import logging

import streamlit as st

from core.errors import Cancelled, MergeScopeError, NonFiniteError

log = logging.getLogger("mergescope")


def message(e: BaseException) -> str:
    """The one message a page shows for `e`."""
    if isinstance(e, NonFiniteError):
        return f"**Non-finite weights.** {e}"
    if isinstance(e, MergeScopeError):
        return str(e)
    if isinstance(e, Cancelled):
        return f"Cancelled: {e}"
    if isinstance(e, FileNotFoundError):
        name = e.filename or str(e)
        return f"**File not found:** `{name}`. Check the path on the Models page (or rebuild the zoo)."
    if isinstance(e, PermissionError):
        return f"**Permission denied:** `{e.filename or e}`. The server cannot read or write this path."
    if isinstance(e, MemoryError):
        return "**Out of memory.** Use fewer images per task (the evaluation settings) or a smaller model set."
    if isinstance(e, KeyError):
        return f"**Missing entry:** {e.args[0] if e.args else e}."
    if isinstance(e, ValueError):
        return f"**This cannot be computed:** {e}"
    return (
        f"**Internal error** ({type(e).__name__}: {e}). This is a bug in MergeScope, not in your files; "
        "the server log has the details. Reloading the page usually recovers."
    )


def show(e: BaseException) -> None:
    """Show `e` as one error box (and log its traceback on the server)."""
    log.error("page error", exc_info=e)
    st.error(message(e), icon=":material/error:")


EXAMPLES = 3  # messages shown per kind of problem


def show_report(report, examples: int = EXAMPLES) -> None:
    """A `core.checkpoints.ValidationReport`, grouped: one box per kind (errors first), its count, what to
    do, a few examples."""
    if not report.issues:
        st.success(report.headline())
        return
    for g in report.groups:
        body = f"**{g.headline()}.** {g.hint}\n\n" + "\n".join(f"- {m}" for m in g.examples(examples))
        if g.more(examples):
            body += f"\n\n… and {g.more(examples)} more of this kind."
        (st.error if g.level == "error" else st.warning)(body)
