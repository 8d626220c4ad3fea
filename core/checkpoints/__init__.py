"""Read, write, describe and validate checkpoints; every loaded checkpoint comes back in open_clip names.

Supported inputs (detected from the file's content, not only its name):

- safetensors files, read through ``safetensors.safe_open`` (memory-mapped);
- torch files (``.pt/.pth/.bin/.ckpt``) read with ``torch.load(weights_only=True)``,
  unwrapped from ``{"state_dict": ...}``-style training checkpoints and stripped of
  ``module.`` (DDP) / ``model.`` (task_vectors ImageEncoder) prefixes;
- open_clip state dicts: the full CLIP model, or a bare ``model.visual`` tower;
- Hugging Face CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, ``CLIPModel``),
  as a file or as a ``save_pretrained`` directory, in both the ``vision_model.``-prefixed
  layout and the bare layout transformers 5 writes for ``CLIPVisionModel``.

Modules, one idea each:

- `formats`: what a file is (sniffing), the safetensors reader / writer / streaming reader;
- `pickles`: torch files and pickle safety (whole pickled modules and TorchScript archives are
  refused unless ``allow_pickle=True``: loading them can run code from the file);
- `hf_names`: the HF CLIP <-> open_clip name map (`from_hf_names`, `to_hf_names`);
- `load`: `load_state_dict`, `save_state_dict`, `detect_format`, `open_state_dict`, `iter_tensors`;
- `info`: `checkpoint_info` and the architecture read off the shapes;
- `validate` + `report`: `validate_checkpoints` (state dicts in memory) and `validate_model_set`
  (a model set's files, headers first, then a streamed NaN/Inf check) -> `ValidationReport`.
"""

from __future__ import annotations

from ..errors import CheckpointError, UnsafeCheckpointError
from .formats import DIRECTORY_WEIGHT_FILES, SUPPORTED_SUFFIXES, LazyStateDict
from .hf_names import HF_TOWER_MAP, from_hf_names, to_hf_names
from .info import KNOWN_ARCHITECTURES, checkpoint_info
from .load import detect_format, iter_tensors, load_state_dict, open_state_dict, save_state_dict
from .report import KINDS, Issue, ProblemGroup, ValidationReport
from .validate import validate_checkpoints, validate_model_set

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "Issue",
    "ProblemGroup",
    "ValidationReport",
    "KINDS",
    "load_state_dict",
    "save_state_dict",
    "open_state_dict",
    "iter_tensors",
    "LazyStateDict",
    "detect_format",
    "checkpoint_info",
    "validate_checkpoints",
    "validate_model_set",
    "to_hf_names",
    "from_hf_names",
    "HF_TOWER_MAP",
    "KNOWN_ARCHITECTURES",
    "DIRECTORY_WEIGHT_FILES",
    "SUPPORTED_SUFFIXES",
]
