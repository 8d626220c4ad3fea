"""Check a model set's tasks before it is accepted: every task's data can be listed and has the splits
evaluation needs, a head file matches the data's class count and the base's embedding width, and a task
without a head has a text tower to build a zero-shot head from. Reads file lists and tensor headers only
(no image is decoded: unreadable images are reported, and skipped, when they are first cached).

Each problem names the task and the file, and says what to do (`core.errors.ModelSetError` texts).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MergeScopeError
from .readers import open_dataset

NEEDED_SPLITS = ("test",)


@dataclass(frozen=True)
class TaskCheck:
    task: str
    ok: bool
    message: str  # the problem, or a one-line summary of what was found


def _embed_dim(base_keys_shapes: dict) -> int | None:
    proj = base_keys_shapes.get("visual.proj")
    return int(proj[1]) if proj is not None and len(proj) == 2 else None


def check_tasks(ms) -> list[TaskCheck]:
    """One TaskCheck per task of `ms` that has data (a JSON model set's `tasks`)."""
    from ..checkpoints import open_state_dict
    from ..heads import TEXT_TOWER_KEYS, load_head

    configs = getattr(ms, "task_configs", {}) or {}
    if not configs:
        return []
    try:
        sd = open_state_dict(ms.base_path)  # safetensors: headers only
        shapes = {k: tuple(sd.shape(k)) if hasattr(sd, "shape") else tuple(sd[k].shape) for k in sd}
    except Exception:  # noqa: BLE001 - an unreadable base is reported by the checkpoint validation
        shapes = {}
    has_text = any(k in shapes for k in TEXT_TOWER_KEYS)
    width = _embed_dim(shapes)
    out = []
    for name, cfg in configs.items():
        if cfg.data is None:
            continue
        try:
            ds = open_dataset(cfg.data, name=name, classnames=list(cfg.classnames) if cfg.classnames else None)
            for split in NEEDED_SPLITS:
                ds.split(split)
            if cfg.head is not None:
                head = load_head(cfg.head)
                rows, dim = head.weight.shape
                if rows != ds.num_classes:
                    raise MergeScopeError(
                        f"task {name!r}: head {cfg.head} has {rows} rows but the data has {ds.num_classes} classes "
                        f"({', '.join(ds.classnames[:5])}{'…' if ds.num_classes > 5 else ''}); use the head made "
                        "for this dataset or fix the class folders"
                    )
                if width is not None and dim != width:
                    raise MergeScopeError(
                        f"task {name!r}: head {cfg.head} is {dim}-dimensional but the base embeds into {width}; "
                        "the head belongs to another model"
                    )
            elif not has_text:
                raise MergeScopeError(
                    f"task {name!r}: no head file and the base {ms.base_path} has no text tower to build a "
                    'zero-shot head; give the task a "head" ([classes, embed_dim] tensor)'
                )
            counts = {s: len(f.paths) for s, f in ds.splits.items()}
            found = ", ".join(f"{s} {n}" for s, n in counts.items())
            head = f"head {cfg.head.name}" if cfg.head is not None else "zero-shot head"
            notes = f" ({'; '.join(ds.notes)})" if ds.notes else ""
            out.append(TaskCheck(name, True, f"{ds.num_classes} classes; images: {found}; {head}{notes}"))
        except MergeScopeError as e:
            out.append(TaskCheck(name, False, str(e)))
        except OSError as e:
            out.append(
                TaskCheck(name, False, f"task {name!r}: cannot read {getattr(e, 'filename', '') or cfg.data}: {e}")
            )
    return out
