"""The one rule for where tensors are computed: merges, SVDs, ESDs and evaluations all resolve their
`device` argument here."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: "auto"/None is CUDA when torch sees a GPU, else the CPU; "cpu"/"cuda[:i]"
    force one. Forcing CUDA without a visible GPU, or any other device type, raises ValueError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unsupported device {device!r}: expected 'auto', 'cpu' or 'cuda[:index]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: expected 'auto', 'cpu' or 'cuda[:index]'")
    return dev
