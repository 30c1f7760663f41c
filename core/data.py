"""The data container tensor domains hand to the core."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from core.errors import InputError


@dataclass
class TensorData:
    x: torch.Tensor                  # [N, C, *support] float
    cond: torch.Tensor | None = None  # [N] long class labels, or None (unconditional)

    def __post_init__(self):
        if self.x.ndim < 3:
            raise ValueError(f"TensorData.x must be [N, C, *support], got shape {tuple(self.x.shape)}")
        if not torch.isfinite(self.x).all():
            raise ValueError("TensorData.x contains NaN or infinite values")
        if self.cond is not None and self.cond.shape != (len(self.x),):
            raise ValueError(f"TensorData.cond must be [N]={len(self.x)}, got {tuple(self.cond.shape)}")

    def __len__(self) -> int:
        return len(self.x)


def check_samples(x: torch.Tensor, shape: tuple, what: str) -> torch.Tensor:
    """Generated (or user-given) samples must be [N, *shape] and finite before they are scored."""
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        dims = ", ".join(str(d) for d in shape)
        raise InputError(f"{what} samples must be [N, {dims}], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError(f"{what} samples contain NaN or infinite values")
    return x
