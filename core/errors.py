"""The errors `core` raises for things a user can fix, in one place.

Every page and the CLI turn a `MergeScopeError` into one clear message (what went wrong, which
file / tensor / task, what to do) instead of a traceback. Subclasses say which room raised it.
"""

from __future__ import annotations


class MergeScopeError(Exception):
    """A problem with the user's input (files, shapes, values, settings), not a bug in core."""


class CheckpointError(MergeScopeError, ValueError):
    """A checkpoint cannot be read or does not fit the model set (format, keys, shapes)."""


class UnsafeCheckpointError(CheckpointError):
    """Reading the checkpoint would need arbitrary pickle code (opt in with allow_pickle=True)."""


class NonFiniteError(CheckpointError):
    """A tensor holds NaN or Inf. `source` names the checkpoint (or task), `key` the tensor."""

    def __init__(self, source: str, key: str, n_bad: int, numel: int):
        self.source, self.key, self.n_bad, self.numel = source, key, n_bad, numel
        super().__init__(
            f"{source}: tensor {key!r} holds {n_bad} non-finite value(s) (NaN/Inf) out of {numel}. "
            "Fix or re-export the checkpoint; to merge anyway pass allow_nonfinite=True "
            "(CLI: --allow-nonfinite), and the result will carry the NaN/Inf."
        )

    def __reduce__(self):  # crosses process boundaries (sweep workers) with its fields intact
        return (type(self), (self.source, self.key, self.n_bad, self.numel))


class ModelSetError(MergeScopeError, ValueError):
    """A model set (modelset.json, a task's data or head) is incomplete or inconsistent."""


class Cancelled(Exception):  # noqa: N818 - a signal, not an error
    """A job, a sweep or an evaluation was cancelled by the user (or superseded by a newer one)."""
