"""Merging fine-tuned checkpoints: one registry of methods, streamed over the task vectors.

    registry.py   Param, MergeMethod, the merge_method decorator, METHODS, get_method, lambda_methods
    streaming.py  TaskVectors (the one place inputs are read, NaN/Inf checked), Chunk, FlatWriter
    kselect.py    exact k-th value selection over a streamed model (TIES thresholds)
    direction.py  MergedDirection (tau_merged + global lambda) and apply_direction (lambda, LiNeS, curves)
    methods.py    weight_average, task_arithmetic, ties, dare, consensus
    lowrank.py    merges in singular-vector bases: tsv_m, iso_c, iso_cts, cart
    entrywise.py  per-entry selection: breadcrumbs, magmax, pcb
    apply.py      merged_direction and merge, the public entry points

`merge` returns theta_0 + lambda * tau_merged (or LiNeS / a per-block curve instead of lambda).
Memory: methods stream key by key or chunk by chunk over the fine-tuned checkpoints (which may be
lazy mappings over files); no method stacks N full models.
"""

from __future__ import annotations

# Importing the method modules registers their methods, in the order the UI lists them.
from . import methods  # noqa: F401

# isort: split
from . import lowrank  # noqa: F401

# isort: split
from . import entrywise  # noqa: F401

# isort: split
from .apply import as_named_list, merge, merged_direction
from .direction import MergedDirection, apply_direction
from .kselect import global_topk_thresholds
from .methods import dare_mask_seed, dare_preprocess, ties_direction
from .registry import METHODS, MergeMethod, Param, get_method, lambda_methods, merge_method
from .streaming import Chunk, FlatWriter, TaskVectors

__all__ = [
    "METHODS",
    "Chunk",
    "FlatWriter",
    "MergeMethod",
    "MergedDirection",
    "Param",
    "TaskVectors",
    "apply_direction",
    "as_named_list",
    "dare_mask_seed",
    "dare_preprocess",
    "get_method",
    "global_topk_thresholds",
    "lambda_methods",
    "merge",
    "merge_method",
    "merged_direction",
    "ties_direction",
]
