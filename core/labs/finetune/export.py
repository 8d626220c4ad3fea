"""Lab fine-tunes into a model set: save a fine-tune's visual tower and register it next to the set's own."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .config import LabConfig
from .run import LabResult


def lab_dir() -> Path:
    """Where lab fine-tunes are saved: <cache dir>/lab."""
    from core.runtime.paths import cache_dir

    return cache_dir() / "lab"


def model_name(cfg: LabConfig) -> str:
    """A readable, file-safe name for a lab fine-tune, e.g. "digits-tempbalance-f0.05-s0"."""
    shard = f"-shard{cfg.shard}" if cfg.shard else ""
    name = f"{cfg.task}-{cfg.method}-f{cfg.fraction:g}-s{cfg.seed}{shard}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def save_lab_model(result: LabResult, name: str | None = None, directory: str | Path | None = None) -> Path:
    """Write a lab fine-tune's visual tower as safetensors (metadata: its config and accuracy); returns the path."""
    from core.checkpoints import save_state_dict

    if not result.state_dict:
        raise ValueError("this result holds no weights (it was run without keeping them)")
    name = name or model_name(result.config)
    path = Path(directory) if directory is not None else lab_dir()
    path.mkdir(parents=True, exist_ok=True)
    f = path / f"{name}.safetensors"
    metadata = {
        "task": result.config.task,
        "lab": result.config.to_dict(),
        "test_accuracy": result.accuracy,
        "source": "MergeScope fine-tune lab",
    }
    save_state_dict(result.state_dict, f, metadata=metadata)
    return f


def with_lab_models(ms, models: Mapping[str, str | Path]):
    """A files-on-disk `core.spec.ModelSetRef`: the model set's base and fine-tuned files plus `models` (name -> path).

    The Merge lab then sees the lab's fine-tunes next to the set's own.
    """
    from core.spec import ModelSetRef

    ft = {t: str(p) for t, p in ms.finetuned_paths.items()}
    ft.update({n: str(p) for n, p in models.items()})
    return ModelSetRef(zoo=None, base=str(ms.base_path), finetuned=tuple(sorted(ft.items())))
