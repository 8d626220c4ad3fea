"""Specs: small frozen dataclasses that say exactly what to merge and how to
evaluate it. The UI writes them, the CLI reads them (JSON), the run log stores
them, and the live loop caches results by their hash - one description of a
run everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .cli.options import DEFAULT_ZOO
from .merging import get_method


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


@dataclass(frozen=True)
class MergeSpec:
    """What to merge. params: the method's parameters as sorted (name, value) pairs.

    lines = (alpha | "auto", beta) applies LiNeS; curve = per-block scales (with
    `outside` for parameters outside the blocks) applies any block curve.
    tasks = the subset of the model set's tasks to merge (None: all).
    """

    method: str = "task_arithmetic"
    params: tuple = ()
    lines: tuple | None = None
    curve: tuple | None = None
    outside: float | None = None
    tasks: tuple | None = None
    output_as_last_block: bool = False

    @staticmethod
    def make(method: str = "task_arithmetic", params: dict | None = None, **kw) -> MergeSpec:
        m = get_method(method)
        merged = {**m.defaults(), **(params or {})}
        unknown = set(merged) - set(m.defaults())
        if unknown:
            raise ValueError(f"merge method {method!r} has no parameter(s) {sorted(unknown)}")
        for k in ("lines", "curve", "tasks"):
            if kw.get(k) is not None:
                kw[k] = _freeze(list(kw[k]))
        return MergeSpec(method=method, params=tuple(sorted((k, _freeze(v)) for k, v in merged.items())), **kw)

    @property
    def param_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.params}

    def direction_key(self) -> str:
        """Hash of what determines the merged direction (not LiNeS / curve / global lambda)."""
        params = {k: v for k, v in self.param_dict.items() if not (k == "coefficients" and not isinstance(v, list))}
        return _hash({"method": self.method, "params": params, "tasks": self.tasks})

    def key(self) -> str:
        return _hash(self.to_dict())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = self.param_dict
        for k in ("lines", "curve", "tasks"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @staticmethod
    def from_dict(d: dict) -> MergeSpec:
        d = dict(d)
        method = d.pop("method", "task_arithmetic")
        params = d.pop("params", {}) or {}
        return MergeSpec.make(method, params, **d)

    def with_(self, **kw) -> MergeSpec:
        return replace(self, **{k: _freeze(v) if isinstance(v, list) else v for k, v in kw.items()})


@dataclass(frozen=True)
class EvalSpec:
    """How to evaluate: split ("val" to choose, "test" to report), an optional
    seeded subsample per task, bf16 autocast."""

    split: str = "test"
    subsample: int | None = None
    bf16: bool = False
    seed: int = 0
    tasks: tuple | None = None  # tasks to evaluate on (None: every task of the model set)
    device: str = "auto"  # "auto" (a GPU when torch sees one), "cpu", "cuda", "cuda:1", ...
    fp16: bool = False  # float16 autocast (bf16 wins when both are set)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["tasks"] is not None:
            d["tasks"] = list(d["tasks"])
        # Defaults stay out of the dict so older specs and run-log entries keep their exact form.
        for k, default in (("device", "auto"), ("fp16", False)):
            if d[k] == default:
                del d[k]
        return d

    @staticmethod
    def from_dict(d: dict) -> EvalSpec:
        d = dict(d)
        if d.get("tasks") is not None:
            d["tasks"] = tuple(d["tasks"])
        return EvalSpec(**d)


@dataclass(frozen=True)
class ModelSetRef:
    """Which model set: a zoo (kind "styled", the default, "demo" or "micro"), a model set JSON by `path`, a model
    set object given inline (`inline`, canonical JSON text), or base + fine-tuned files.

    JSON forms under "model_set": ``{"zoo": "demo"}``, ``{"path": "DIR/modelset.json"}``, the model
    set object itself (``{"base": ..., "finetuned": ..., "tasks": ..., "arch": ...}``; relative paths
    against the current directory), or the older ``{"zoo": null, "base": ..., "finetuned": {...}}``.
    """

    zoo: str | None = DEFAULT_ZOO
    base: str | None = None
    finetuned: tuple = ()  # ((task, path), ...)
    path: str | None = None
    inline: str | None = None

    def to_dict(self) -> dict:
        if self.path is not None:
            return {"path": self.path}
        if self.inline is not None:
            return json.loads(self.inline)
        return {"zoo": self.zoo, "base": self.base, "finetuned": dict(self.finetuned)}

    @staticmethod
    def from_dict(d: dict) -> ModelSetRef:
        if not isinstance(d, dict):
            raise ValueError(f"model_set must be an object (zoo, path or a model set), got {d!r}")
        if d.get("path") is not None:
            extra = set(d) - {"path"}
            if extra:
                raise ValueError(f"model_set with a path takes no other key, got {sorted(extra)}")
            if not isinstance(d["path"], str):
                raise ValueError(f"model_set.path must be a string, got {d['path']!r}")
            return ModelSetRef(zoo=None, path=d["path"])
        if not d.get("zoo") and ("tasks" in d or "arch" in d or "allow_pickle" in d or "name" in d):
            obj = {k: v for k, v in d.items() if k != "zoo"}
            return ModelSetRef(zoo=None, inline=json.dumps(obj, sort_keys=True))
        ft = d.get("finetuned") or {}
        return ModelSetRef(zoo=d.get("zoo"), base=d.get("base"), finetuned=tuple(sorted(ft.items())))

    def load(self):
        from .modelset import ModelSet

        if self.path is not None:
            return ModelSet.from_json(self.path)
        if self.inline is not None:
            return ModelSet.from_json(json.loads(self.inline))
        if self.zoo:
            from .zoo import load_model_set

            return load_model_set(self.zoo)
        if not self.base or not self.finetuned:
            raise ValueError("a model set needs either a zoo name or a base path and fine-tuned paths")
        return ModelSet(
            name=Path(self.base).stem,
            base_path=Path(self.base),
            finetuned_paths={t: Path(p) for t, p in self.finetuned},
        )


@dataclass(frozen=True)
class RunConfig:
    """A whole run as the CLI and the run log see it: model set + merge + evaluation."""

    model_set: ModelSetRef = field(default_factory=ModelSetRef)
    merge: MergeSpec = field(default_factory=MergeSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def to_dict(self) -> dict:
        return {"model_set": self.model_set.to_dict(), "merge": self.merge.to_dict(), "eval": self.eval.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: dict) -> RunConfig:
        return RunConfig(
            model_set=ModelSetRef.from_dict(d.get("model_set", {"zoo": DEFAULT_ZOO})),
            merge=MergeSpec.from_dict(d.get("merge", {})),
            eval=EvalSpec.from_dict(d.get("eval", {})),
        )

    @staticmethod
    def load(path: str | Path) -> RunConfig:
        try:
            return RunConfig.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
