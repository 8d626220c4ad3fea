"""A model set: one pretrained base plus named fine-tuned checkpoints.

State dicts are loaded lazily and kept once (`functools.cache` per instance);
task vectors are derived on demand and cached too, so pages, sweeps and the
CLI never load the same checkpoint twice within a process.

Fine-tuned checkpoints may hold only part of the base (the zoo's fine-tunes
hold the visual tower, ``visual.*``): merges act on the fine-tuned keys and the
rest of the base passes through unchanged.

`ModelSet.from_json` reads a model set a researcher brings (docs/methods/evaluation.md):

    {"base": "ckpt/openclip_vit_b32.safetensors",
     "finetuned": {"mnist": "ckpt/ft/mnist.safetensors", "svhn": "ckpt/ft/svhn"},
     "tasks": {"mnist": {"data": "data/mnist", "head": "heads/mnist.safetensors"},
               "svhn": {"data": "data/svhn", "classnames": ["zero", ...], "templates": ["a photo of {c}."]}},
     "arch": null, "allow_pickle": false}

Relative paths are relative to the JSON file (``~`` expanded); `tasks` may be omitted (analysis
and export only). Tasks with ``data`` are the set's evaluation tasks (`eval_tasks`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import ValidationReport, load_state_dict, validate_model_set
from .errors import ModelSetError

TASK_KEYS = ("data", "head", "classnames", "templates")
MODELSET_KEYS = ("base", "finetuned", "tasks", "arch", "allow_pickle", "name")


@dataclass(frozen=True)
class TaskConfig:
    """One task of a model set JSON: its data (image folder or CSV), optional head file, class names, templates."""

    name: str
    data: Path | None = None
    head: Path | None = None
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        d: dict = {}
        if self.data is not None:
            d["data"] = str(self.data)
        if self.head is not None:
            d["head"] = str(self.head)
        if self.classnames is not None:
            d["classnames"] = list(self.classnames)
        if self.templates is not None:
            d["templates"] = list(self.templates)
        return d


def _path(v, root: Path, what: str) -> Path:
    if not isinstance(v, str) or not v:
        raise ModelSetError(f"model set: {what} must be a path string, got {v!r}")
    p = Path(v).expanduser()
    return p if p.is_absolute() else root / p


def _strings(v, what: str) -> tuple[str, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ModelSetError(f"model set: {what} must be a non-empty list of strings")
    return tuple(v)


def _task(name: str, d, root: Path) -> TaskConfig:
    if not isinstance(d, dict):
        raise ModelSetError(f"model set: tasks.{name} must be an object with keys {', '.join(TASK_KEYS)}")
    unknown = set(d) - set(TASK_KEYS)
    if unknown:
        raise ModelSetError(f"model set: tasks.{name} has unknown key(s) {sorted(unknown)}; allowed {TASK_KEYS}")
    templates = _strings(d.get("templates"), f"tasks.{name}.templates")
    bad = [t for t in templates or () if "{c}" not in t]
    if bad:
        raise ModelSetError(f'model set: tasks.{name}.templates must contain "{{c}}" (the class name): {bad[0]!r}')
    cfg = TaskConfig(
        name,
        _path(d["data"], root, f"tasks.{name}.data") if d.get("data") is not None else None,
        _path(d["head"], root, f"tasks.{name}.head") if d.get("head") is not None else None,
        _strings(d.get("classnames"), f"tasks.{name}.classnames"),
        templates,
    )
    for what, p in (("data", cfg.data), ("head", cfg.head)):
        if p is not None and not p.exists():
            raise ModelSetError(f"model set: tasks.{name}.{what} {p} does not exist")
    return cfg


@dataclass
class ModelSet:
    name: str
    base_path: Path
    finetuned_paths: dict[str, Path]
    # Zoo task names when the set comes with its own evaluation tasks (core.zoo.data), else empty.
    eval_tasks: list[str] = field(default_factory=list)
    zoo_dir: Path | None = None
    # A model set JSON's tasks (data, head, class names, templates); empty for the demo zoo.
    task_configs: dict[str, TaskConfig] = field(default_factory=dict)
    arch: str | dict | None = None
    source: Path | None = None  # the modelset.json it was read from
    allow_pickle: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, source: str | Path | dict, *, root: str | Path | None = None) -> ModelSet:
        """A model set from a modelset.json path (or a directory holding one) or an already parsed
        object; relative paths resolve against the file's folder (`root` for an object, default the
        current directory). Every named file must exist."""
        src_path = None
        if isinstance(source, dict):
            d, base_dir = source, Path(root).expanduser() if root is not None else Path.cwd()
        else:
            src_path = Path(source).expanduser()
            if src_path.is_dir():
                src_path = src_path / "modelset.json"
            if not src_path.exists():
                raise ModelSetError(f"model set file {src_path} does not exist")
            try:
                d = json.loads(src_path.read_text())
            except json.JSONDecodeError as e:
                raise ModelSetError(f"{src_path} is not valid JSON: {e.msg} at line {e.lineno}") from e
            base_dir = src_path.parent.absolute()
        if not isinstance(d, dict):
            raise ModelSetError("a model set must be a JSON object with keys base, finetuned, tasks, arch")
        unknown = set(d) - set(MODELSET_KEYS)
        if unknown:
            raise ModelSetError(f"model set: unknown key(s) {sorted(unknown)}; allowed {', '.join(MODELSET_KEYS)}")
        if "base" not in d:
            raise ModelSetError('model set: missing "base" (the pretrained checkpoint)')
        base = _path(d["base"], base_dir, "base")
        ft_raw = d.get("finetuned") or {}
        if not isinstance(ft_raw, dict):
            raise ModelSetError("model set: finetuned must be an object {task: path}")
        finetuned = {str(t): _path(p, base_dir, f"finetuned.{t}") for t, p in ft_raw.items()}
        for what, p in [("base", base), *((f"finetuned.{t}", p) for t, p in finetuned.items())]:
            if not p.exists():
                raise ModelSetError(f"model set: {what} checkpoint {p} does not exist")
        tasks_raw = d.get("tasks") or {}
        if not isinstance(tasks_raw, dict):
            raise ModelSetError("model set: tasks must be an object {task: {data, head, classnames, templates}}")
        tasks = {str(t): _task(str(t), v, base_dir) for t, v in tasks_raw.items()}
        arch = d.get("arch")
        if arch is not None and not isinstance(arch, str | dict):
            raise ModelSetError(
                f"model set: arch must be an open_clip model name, a config object or null, got {arch!r}"
            )
        name = d.get("name") or (src_path.parent.name if src_path else base.stem)
        return cls(
            name=str(name),
            base_path=base,
            finetuned_paths=finetuned,
            eval_tasks=[t for t, c in tasks.items() if c.data is not None],
            task_configs=tasks,
            arch=arch,
            source=src_path.absolute() if src_path else None,
            allow_pickle=bool(d.get("allow_pickle", False)),
        )

    def to_json_dict(self) -> dict:
        """The set as a model set JSON object with absolute paths (what the run log stores)."""
        d: dict = {"base": str(Path(self.base_path).absolute())}
        d["finetuned"] = {t: str(Path(p).absolute()) for t, p in self.finetuned_paths.items()}
        if self.task_configs:
            d["tasks"] = {t: c.to_dict() for t, c in self.task_configs.items()}
        d["arch"] = self.arch
        if self.allow_pickle:
            d["allow_pickle"] = True
        return d

    def build_arch(self) -> str | dict | None:
        """The architecture to build the base with: `arch`, else a HF ``config.json`` (with a
        "vision_config") in the base's folder or next to the base file."""
        if self.arch is not None:
            return self.arch
        base = Path(self.base_path)
        cfg = base / "config.json" if base.is_dir() else base.parent / "config.json"
        if cfg.exists():
            d = json.loads(cfg.read_text())
            if "vision_config" in d:
                return d
        return None

    def preprocessor_config(self) -> dict | None:
        """The base's preprocessing from a HF ``preprocessor_config.json`` (mean/std, resampling) or an
        open_clip hub ``open_clip_config.json`` ("preprocess_cfg") in its folder, if any."""
        base = Path(self.base_path)
        folder = base if base.is_dir() else base.parent
        if (folder / "preprocessor_config.json").exists():
            return json.loads((folder / "preprocessor_config.json").read_text())
        if (folder / "open_clip_config.json").exists():
            pc = json.loads((folder / "open_clip_config.json").read_text()).get("preprocess_cfg") or {}
            keys = {"mean": "image_mean", "std": "image_std", "interpolation": "interpolation"}
            return {new: pc[old] for old, new in keys.items() if old in pc} or None
        return None

    @property
    def tasks(self) -> list[str]:
        return list(self.finetuned_paths)

    def base(self) -> dict[str, torch.Tensor]:
        if "base" not in self._cache:
            self._cache["base"] = load_state_dict(self.base_path, allow_pickle=self.allow_pickle)
        return self._cache["base"]

    def finetuned(self, task: str) -> dict[str, torch.Tensor]:
        if task not in self.finetuned_paths:
            raise KeyError(f"no fine-tuned checkpoint for task {task!r}; this set has {self.tasks}")
        key = ("ft", task)
        if key not in self._cache:
            self._cache[key] = load_state_dict(self.finetuned_paths[task], allow_pickle=self.allow_pickle)
        return self._cache[key]

    def finetuned_all(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: self.finetuned(t) for t in self.tasks}

    def task_vector(self, task: str) -> dict[str, torch.Tensor]:
        from .task_vectors import task_vector

        key = ("tv", task)
        if key not in self._cache:
            self._cache[key] = task_vector(self.base(), self.finetuned(task))
        return self._cache[key]

    def task_vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: self.task_vector(t) for t in self.tasks}

    def validate(self, *, check_finite: bool = True, progress=None) -> ValidationReport:
        """`core.checkpoints.validate_model_set` over this set's files (headers, then a streamed NaN/Inf check)."""
        return validate_model_set(self.base_path, self.finetuned_paths, check_finite=check_finite, progress=progress)

    def fingerprint(self) -> str:
        """Short hash of the files (path, size, mtime): identifies the set in the run log."""
        h = hashlib.sha256()
        heads = [c.head for c in self.task_configs.values() if c.head is not None]
        for p in [self.base_path, *self.finetuned_paths.values(), *heads]:
            p = Path(p)
            st = p.stat() if p.exists() else None
            h.update(json.dumps([str(p), st.st_size if st else 0, st.st_mtime_ns if st else 0]).encode())
        if self.task_configs:  # class names, templates and data paths change the numbers too
            h.update(json.dumps({t: c.to_dict() for t, c in self.task_configs.items()}, sort_keys=True).encode())
        return h.hexdigest()[:16]
