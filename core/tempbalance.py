"""TempBalance and Model Balancing: per-layer learning rates from the layers' heavy-tailed α.

Every K steps the balancer reads the current weights held by the optimizer, computes each
weight matrix's α (TempBalance's PL_Alpha_Hill: median xmin, `core.spectra.alpha_hill_median`,
on the ESD of `core.spectra.esd_many`), turns the α into learning-rate multipliers with the
rules of `core.lr_rules`, and rewrites the optimizer groups' ``base_lr`` (the training loop then
applies its warmup + cosine factor on top). Larger α = less trained = larger learning rate.

- ``rule="tempbalance"`` (YefanZhou/TempBalance, ``tb_linear_map``): one multiplier per weight
  matrix, linear in α between s1 (α_min) and s2 (α_max).
- ``rule="model_balancing"`` (ZihangHLiu/ModelBalancing): α averaged over each residual block's
  matrices, multiplier 10^(s·(σ(T(ᾱ_b − mean)) − ½)) for every matrix of the block.

Conventions (docs/methods/finetune.md, "TempBalance / Model Balancing"):

* A *unit* is one weight matrix (or conv kernel) and its bias; norms, embeddings and other
  1-D/3-D parameters keep multiplier 1. open_clip's fused ``attn.in_proj_weight`` is split into
  q, k, v for the ESD (as the Spectra page does) and the unit takes the mean of the three α,
  since one tensor can have only one learning rate.
* As in TempBalance's defaults (``remove_first_layer``, ``remove_last_layer``) the first and the
  last unit (the patch embedding ``conv1`` and the output projection ``proj`` of a ViT) are not
  balanced: they keep multiplier 1 and do not enter α_min/α_max. Model Balancing only balances
  units inside residual blocks.
* Multipliers are recomputed at step 0 and every `every` steps; between updates they stay fixed.

The balancer is a `core.train` hook (``before_step``); it records every update in ``history``
(one row per unit and update: step, unit, layer, alpha, multiplier) for the Fine-tune lab's
heatmap. A pure library: the Fine-tune lab (`core.labs.finetune`) uses it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from core.layers import layer_index
from core.lr_rules import model_balancing_multipliers, tempbalance_multipliers
from core.spectra import alpha_hill_median, analysed_matrices, esd_many, fit_powerlaw

RULES = ("tempbalance", "model_balancing")


def unit_of(name: str, weights: Iterable[str]) -> str | None:
    """The unit (weight-matrix name) parameter `name` belongs to, or None (keeps multiplier 1).

    A weight in `weights` is its own unit; ``x.bias`` joins ``x.weight`` and open_clip's
    ``attn.in_proj_bias`` joins ``attn.in_proj_weight`` when that weight is in `weights`.
    """
    weights = weights if isinstance(weights, set | frozenset | dict) else set(weights)
    if name in weights:
        return name
    for suffix, weight_suffix in (("in_proj_bias", "in_proj_weight"), (".bias", ".weight")):
        if name.endswith(suffix):
            w = name[: -len(suffix)] + weight_suffix
            if w in weights:
                return w
    return None


def balanced_units(named_params: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the weight matrices the ESD is taken of, in parameter order (core.spectra's selection)."""
    seen: dict[str, None] = {}
    for row, _ in analysed_matrices(dict(named_params)):
        seen.setdefault(row.split("[")[0], None)
    return list(seen)


def unit_alphas(
    named_params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor], fit: str = "hill"
) -> pd.DataFrame:
    """α of every unit from its current weights: DataFrame(unit, layer, alpha) in parameter order.

    fit "hill": TempBalance's PL_Alpha_Hill (median xmin); "ww": WeightWatcher's power-law fit
    (`core.spectra.fit_powerlaw`, slower). A fused in_proj takes the mean α of q, k and v.
    """
    items = named_params.items() if isinstance(named_params, Mapping) else named_params
    sd = {n: (p.detach() if isinstance(p, torch.Tensor) else p) for n, p in items}
    rows = analysed_matrices(sd)
    spectra = esd_many([w for _, w in rows]) if rows else []
    per_unit: dict[str, list[float]] = {}
    for (row, _), eigs in zip(rows, spectra):
        if fit == "hill":
            a = alpha_hill_median(eigs)
        elif fit == "ww":
            r = fit_powerlaw(eigs)
            a = r["alpha"] if r["status"] != "failed" else float("nan")
        else:
            raise ValueError(f"unknown α fit {fit!r}; use 'hill' (TempBalance) or 'ww' (WeightWatcher)")
        per_unit.setdefault(row.split("[")[0], []).append(a)
    units = list(per_unit)
    return pd.DataFrame(
        {
            "unit": units,
            "layer": pd.array([layer_index(u) for u in units], dtype="Int64"),
            "alpha": [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in per_unit.values()],
        }
    )


def multipliers_for(
    alphas: pd.DataFrame,
    rule: str,
    *,
    s1: float = 0.5,
    s2: float = 1.5,
    s: float = 1.25,
    T: float = 10.0,  # noqa: N803
    skip_first_last: bool = True,
) -> pd.Series:
    """Learning-rate multiplier per unit (Series indexed by unit) from a `unit_alphas` table.

    Units that are not balanced (first/last with `skip_first_last`; outside the blocks for
    Model Balancing; NaN α) get 1.0. The formulas are `core.lr_rules`'.
    """
    t = alphas.reset_index(drop=True)
    out = pd.Series(1.0, index=t["unit"].to_numpy(), name="multiplier")
    active = np.ones(len(t), dtype=bool)
    if skip_first_last and len(t) > 2:
        active[[0, len(t) - 1]] = False
    if rule == "tempbalance":
        a = t["alpha"].to_numpy(dtype=np.float64).copy()
        a[~active] = np.nan  # excluded from α_min/α_max, multiplier 1
        out[:] = tempbalance_multipliers(a, s1=s1, s2=s2)
    elif rule == "model_balancing":
        inside = active & t["layer"].notna().to_numpy()
        sub = t[inside]
        if len(sub):
            block = sub.groupby(sub["layer"].astype(int))["alpha"].mean()
            mult = model_balancing_multipliers(block, s=s, T=T)
            out[sub["unit"].to_numpy()] = sub["layer"].astype(int).map(mult).to_numpy()
    else:
        raise ValueError(f"unknown rule {rule!r}; choose from {RULES}")
    return out


@dataclass
class LayerBalancer:
    """A `core.train` hook: TempBalance / Model Balancing learning rates over the optimizer's groups.

    The optimizer's groups must carry the unit in their ``"group"`` key, as
    `core.train.param_groups(..., group_of=unit_group_of(units))` makes them; the parameter
    names are read from the groups' ``"names"``. At step 0 each group's ``base_lr`` is remembered
    as its reference lr; every update sets base_lr = reference × multiplier of its unit.
    """

    rule: str = "tempbalance"
    every: int = 25
    s1: float = 0.5
    s2: float = 1.5
    s: float = 1.25
    T: float = 10.0  # noqa: N815
    skip_first_last: bool = True
    fit: str = "hill"
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; choose from {RULES}")
        if self.every < 1:
            raise ValueError("every must be >= 1 step")

    def current(self, optimizer: torch.optim.Optimizer) -> tuple[pd.DataFrame, pd.Series]:
        """(unit α table, multipliers) for the optimizer's current weights."""
        named = [(n, p) for g in optimizer.param_groups for n, p in zip(g.get("names", ()), g["params"])]
        if not named:
            raise ValueError("the optimizer's groups carry no parameter names; build them with core.train.param_groups")
        alphas = unit_alphas(named, self.fit)
        mult = multipliers_for(
            alphas, self.rule, s1=self.s1, s2=self.s2, s=self.s, T=self.T, skip_first_last=self.skip_first_last
        )
        return alphas, mult

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict | None:
        if step % self.every:
            return None
        alphas, mult = self.current(optimizer)
        for g in optimizer.param_groups:
            g.setdefault("reference_lr", g["base_lr"])
            g["base_lr"] = g["reference_lr"] * float(mult.get(g.get("group"), 1.0))
        rows = [
            {"step": step, "unit": unit, "layer": layer, "alpha": a, "multiplier": float(mult[unit])}
            for unit, layer, a in alphas[["unit", "layer", "alpha"]].itertuples(index=False)
        ]
        self.history.extend(rows)  # one update at once: a live view reading `table()` never sees half of one
        return {"lr_mult_min": float(mult.min()), "lr_mult_max": float(mult.max())}

    def table(self) -> pd.DataFrame:
        """Every update: step, unit, layer (Int64), alpha, multiplier."""
        rows = list(self.history)  # a snapshot: the training thread may append while a page reads
        t = pd.DataFrame(rows, columns=["step", "unit", "layer", "alpha", "multiplier"])
        t["layer"] = t["layer"].astype("Int64")
        return t


def unit_group_of(weights: Iterable[str]):
    """`group_of` for core.train.param_groups: parameter name -> its unit (None: not balanced).

    `weights` are the unit names, e.g. `balanced_units(model.named_parameters())`.
    """
    weights = frozenset(weights)
    return lambda name: unit_of(name, weights)
