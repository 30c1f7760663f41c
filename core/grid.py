"""Scale operators on regular 2-D grids (images, latent maps): area down, bicubic up (as VAR)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class GridOps:
    """Support of scale k is an ``sizes[k]`` = (h_k, w_k) grid; the finest is the data grid.

    ``down`` averages over areas (exact mean preservation for integer ratios), ``up`` is bicubic
    (``"bilinear"`` or ``"nearest"`` on request). Both accept a tensor at any scale's size.
    """

    def __init__(self, sizes, up_mode: str = "bicubic"):
        self.sizes = [tuple(s) if isinstance(s, (tuple, list)) else (int(s), int(s)) for s in sizes]
        if any(a[0] > b[0] or a[1] > b[1] for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"grid scales must grow coarse to fine, got {self.sizes}")
        if up_mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"unknown up-sampling mode '{up_mode}'")
        self.up_mode = up_mode

    def down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        size = self.sizes[k]
        if tuple(z.shape[-2:]) == size:
            return z
        return F.adaptive_avg_pool2d(z, size)

    def up(self, z: torch.Tensor, k: int) -> torch.Tensor:
        size = self.sizes[k]
        if tuple(z.shape[-2:]) == size:
            return z
        kw = {} if self.up_mode == "nearest" else {"align_corners": False}
        return F.interpolate(z, size=size, mode=self.up_mode, **kw)

    def positions(self, k: int) -> torch.Tensor:
        """Cell centres in [0, 1]^2, row-major: [h_k * w_k, 2]."""
        h, w = self.sizes[k]
        ys = (torch.arange(h) + 0.5) / h
        xs = (torch.arange(w) + 0.5) / w
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
