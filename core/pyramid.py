"""The forward process: a Gaussian pyramid coded closed-loop into Laplacian bands of tokens.

Given a datum (or its latent) ``z`` on the finest support and a domain's operators
``down(z, k)`` / ``up(z, k)``, the pyramid walks coarse to fine. At every scale k the refiner's
input is the *context* (what the coarser bands already explain, at scale k's size); the band is
what is left, quantised to tokens; adding the de-quantised band gives the next *state*.
Because the state is rebuilt from quantised bands (closed loop), quantisation errors of coarse
bands are corrected by finer ones instead of accumulating.

Two variants (``variant``):

* ``laplacian``: the state ẑ_k lives at scale k's own size. z_k = down(z, k);
  context_k = up(ẑ_{k-1}, k); band_k = z_k - context_k; ẑ_k = context_k + deQ(Q(band_k)).
* ``var`` (VAR's ``quant.py``): the state f̂ lives at the finest size.
  context_k = down(f̂, k); band_k = down(z - f̂, k); f̂ <- f̂ + up(deQ(Q(band_k)), K).

and two target types (``target_state``): ``residual`` (Laplacian bands, above) or ``full``
(Gaussian: each scale codes the whole level, band_k = z_k, and replaces the state).

Tensors are [B, C, *support]; tokens and bands are flattened to [B, n_k, C] (``flat`` /
``unflat``) so the quantiser and refiner never see the support's shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


def flat(z: torch.Tensor) -> torch.Tensor:
    """[B, C, *support] -> [B, n, C]."""
    return z.flatten(2).transpose(1, 2)


def unflat(x: torch.Tensor, size) -> torch.Tensor:
    """[B, n, C] -> [B, C, *size]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)


@dataclass
class PyramidCodes:
    codes: list        # per scale: detail tokens [B, n_k, G] (long) or [B, n_k, C] (continuous)
    values: list       # per scale: de-quantised band [B, n_k, C]
    contexts: list     # per scale: refiner input [B, n_k, C]
    loss: torch.Tensor  # quantiser loss summed over scales (0 unless VQ)


class ResidualPyramid(nn.Module):
    def __init__(self, ops, quantizer: nn.Module, variant: str = "laplacian",
                 target_state: str = "residual"):
        super().__init__()
        if variant not in ("laplacian", "var"):
            raise ValueError(f"unknown pyramid variant '{variant}'; choose laplacian or var")
        if target_state not in ("residual", "full"):
            raise ValueError(f"unknown target_state '{target_state}'; choose residual or full")
        self.ops, self.quantizer = ops, quantizer
        self.variant, self.target_state = variant, target_state

    @property
    def num_scales(self) -> int:
        return len(self.ops.sizes)

    def init_state(self, batch: int, channels: int, device=None) -> torch.Tensor:
        size = self.ops.sizes[0] if self.variant == "laplacian" else self.ops.sizes[-1]
        return torch.zeros(batch, channels, *size, device=device)

    def context(self, state: torch.Tensor, k: int) -> torch.Tensor:
        return self.ops.up(state, k) if self.variant == "laplacian" else self.ops.down(state, k)

    def add_band(self, state: torch.Tensor, band: torch.Tensor, k: int) -> torch.Tensor:
        """Compose the de-quantised band [B, C, *size_k] of scale k into the state."""
        if self.variant == "laplacian":
            return band if self.target_state == "full" else self.context(state, k) + band
        band = self.ops.up(band, len(self.ops.sizes) - 1)
        return band if self.target_state == "full" else state + band

    def finish(self, state: torch.Tensor) -> torch.Tensor:
        """The state on the finest support (prolonged if fewer than K bands were added)."""
        return self.ops.up(state, len(self.ops.sizes) - 1)

    def encode(self, z: torch.Tensor) -> PyramidCodes:
        state = self.init_state(z.shape[0], z.shape[1], z.device)
        out = PyramidCodes([], [], [], z.new_zeros(()))
        for k, size in enumerate(self.ops.sizes):
            ctx = self.context(state, k)
            if self.target_state == "full":
                band = self.ops.down(z, k)
            elif self.variant == "laplacian":
                band = self.ops.down(z, k) - ctx
            else:
                band = self.ops.down(z - state, k)
            codes, values, loss = self.quantizer(flat(band), k)
            state = self.add_band(state, unflat(values, size), k)
            out.codes.append(codes)
            out.values.append(values)
            out.contexts.append(flat(ctx))
            out.loss = out.loss + loss
        return out

    def decode(self, codes: list, upto: int | None = None) -> torch.Tensor:
        """Compose the first ``upto`` bands (all by default) and return the finest state."""
        upto = len(codes) if upto is None else upto
        values = [self.quantizer.dequantize(c, k) for k, c in enumerate(codes[:upto])]
        B, _, C = values[0].shape
        state = self.init_state(B, C, values[0].device)
        for k, v in enumerate(values):
            state = self.add_band(state, unflat(v, self.ops.sizes[k]), k)
        return self.finish(state)
