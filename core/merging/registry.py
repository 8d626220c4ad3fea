"""The merge-method registry: one function plus one decorator per method (mergekit's pattern).

The decorator records the method's name, its parameters (type, range, help - the Merge lab draws
one control per parameter, so a new method needs no UI code) and the paper/code it follows.
A parameter's default is declared once, in the method function's signature; `merge_method` reads
it from there (a declared parameter without a signature default is a registration error).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any


class _Missing:
    def __repr__(self) -> str:
        return "<from the signature>"


FROM_SIGNATURE: Any = _Missing()


@dataclass(frozen=True)
class Param:
    """A method parameter as the UI and the CLI see it.

    kind: "float", "int", "choice" or "bool". per_task=True means the value may
    also be a list with one entry per task (e.g. task-arithmetic coefficients).
    default: filled in at registration from the method function's signature.
    """

    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple = ()
    per_task: bool = False
    help: str = ""
    default: Any = FROM_SIGNATURE


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    reference: str
    description: str
    # Grid for the global lambda when tuned on validation.
    lambda_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
    # Which LiNeS beta grid the paper uses with this method.
    beta_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


METHODS: dict[str, MergeMethod] = {}

_KINDS = ("float", "int", "choice", "bool")


def signature_params(fn: Callable, params: Sequence[Param], name: str) -> tuple[Param, ...]:
    """`params` with each default read from `fn`'s signature; every declared parameter must be a
    keyword of `fn` with a default, and every keyword of `fn` after the task vectors must be declared."""
    sig = inspect.signature(fn)
    args = list(sig.parameters.values())[1:]  # the first argument is the TaskVectors
    by_name = {a.name: a for a in args}
    out = []
    for p in params:
        if p.kind not in _KINDS:
            raise ValueError(f"merge method {name!r}: parameter {p.name!r} has unknown kind {p.kind!r}")
        if p.default is not FROM_SIGNATURE:
            raise ValueError(
                f"merge method {name!r}: parameter {p.name!r} declares a default in its Param; "
                "defaults are declared once, in the function's signature"
            )
        a = by_name.get(p.name)
        if a is None:
            raise ValueError(
                f"merge method {name!r}: declared parameter {p.name!r} is not an argument of {fn.__name__}"
            )
        if a.default is inspect.Parameter.empty:
            raise ValueError(
                f"merge method {name!r}: parameter {p.name!r} has no default in the signature of {fn.__name__}"
            )
        if p.kind == "choice" and a.default not in p.choices:
            raise ValueError(f"merge method {name!r}: default {a.default!r} of {p.name!r} is not one of {p.choices}")
        out.append(replace(p, default=a.default))
    undeclared = [n for n in by_name if n not in {p.name for p in params}]
    if undeclared:
        raise ValueError(f"merge method {name!r}: argument(s) {undeclared} of {fn.__name__} are not declared as Params")
    return tuple(out)


def merge_method(name: str, *, params: Sequence[Param], reference: str, description: str, **grids):
    """Register `fn(tvs: TaskVectors, **params) -> MergedDirection` under `name`."""

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = MergeMethod(name, fn, signature_params(fn, params, name), reference, description, **grids)
        return fn

    return deco


def lambda_methods() -> tuple[str, ...]:
    """The registered methods with a global λ (a `coefficients` parameter), in registry order: the ones a
    λ sweep and the merge lesson tune on validation."""
    return tuple(name for name, m in METHODS.items() if any(p.name == "coefficients" for p in m.params))


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise KeyError(f"unknown merge method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]
