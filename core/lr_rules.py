"""Per-layer learning-rate multipliers from heavy-tailed α (docs/methods/finetune.md, "TempBalance").

Both rules read the spectra of a model and return a multiplier per layer (or per block) to
apply to the base learning rate. Larger α means a less heavy-tailed, "less trained" layer,
so it gets a larger learning rate.

- TempBalance (YefanZhou/TempBalance): linear in α between s1 (at α_min) and s2 (at α_max).
- Model Balancing (ZihangHLiu/ModelBalancing): α averaged per block, centred on the mean
  over blocks, passed through a sigmoid of temperature T; multiplier 10^f.

Layers whose α is NaN (failed fits) get multiplier 1.0 and do not enter α_min/α_max or the
mean. Inputs may be any 1-D array-like; a pandas Series comes back as a Series with the
same index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _wrap(values: np.ndarray, like) -> np.ndarray | pd.Series:
    if isinstance(like, pd.Series):
        return pd.Series(values, index=like.index, name=like.name)
    return values


def tempbalance_multipliers(alphas, s1: float = 0.5, s2: float = 1.5) -> np.ndarray | pd.Series:
    """TempBalance's linear rule: m_ℓ = s1 + (s2 − s1)(α_ℓ − α_min)/(α_max − α_min).

    The layer with the smallest α gets s1, the largest gets s2 (defaults 0.5 and 1.5, as in
    TempBalance). When every α is equal (α_max = α_min) there is nothing to balance and every
    layer gets 1.0; so does every layer with a NaN α.
    """
    a = np.asarray(alphas, dtype=np.float64).ravel()
    out = np.ones_like(a)
    ok = np.isfinite(a)
    if ok.any():
        lo, hi = a[ok].min(), a[ok].max()
        if hi > lo:
            out[ok] = s1 + (s2 - s1) * (a[ok] - lo) / (hi - lo)
    return _wrap(out, alphas)


def model_balancing_multipliers(block_alphas, s: float = 0.25, T: float = 10.0) -> np.ndarray | pd.Series:  # noqa: N803
    """Model Balancing's sigmoid rule per block: f_b = s·(σ(T·d_b) − ½), multiplier 10^f_b.

    `block_alphas` are the α averaged over each block's matrices (one value per block);
    d_b = ᾱ_b − mean over blocks. The multiplier lies in (10^(−s/2), 10^(s/2)), equals 1 for a
    block at the mean, and grows with α. The paper uses s ∈ {0.25, 1.25} and T = 10.
    """
    a = np.asarray(block_alphas, dtype=np.float64).ravel()
    out = np.ones_like(a)
    ok = np.isfinite(a)
    if ok.any():
        d = a[ok] - a[ok].mean()
        f = s * (1.0 / (1.0 + np.exp(-T * d)) - 0.5)
        out[ok] = 10.0**f
    return _wrap(out, block_alphas)


def block_mean_alphas(table: pd.DataFrame, column: str = "alpha") -> pd.Series:
    """Mean α per residual block from a `core.spectra.spectral_table` (rows outside the blocks dropped)."""
    t = table.dropna(subset=["layer"])
    return t.groupby(t["layer"].astype(int))[column].mean().rename(column)
