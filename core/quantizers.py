"""Quantisers that turn a band of residuals into detail tokens, and back.

Every quantiser maps a band ``r`` of shape [B, n, C] (n positions of one scale, C channels) to

* ``codes``: the detail tokens. Discrete quantisers give long indices [B, n, G] (G index groups
  per position: 1 for a vector quantiser, C for a scalar one); the identity gives ``r`` itself.
* ``values``: the de-quantised band [B, n, C], with a straight-through gradient to ``r``.
* ``loss``: the quantiser's own training loss (codebook + commitment for VQ, else 0).

``dequantize(codes)`` inverts the token map. ``num_codes`` is V (0 for continuous) and ``groups``
is G. ``index_to_bits`` / ``bits_to_index`` factorise an index into log2(V) binary digits for the
bitwise target.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def index_to_bits(index: torch.Tensor, num_bits: int) -> torch.Tensor:
    """[...] long -> [..., num_bits] float in {0, 1}, most significant bit first."""
    shifts = torch.arange(num_bits - 1, -1, -1, device=index.device)
    return ((index.unsqueeze(-1) >> shifts) & 1).float()


def bits_to_index(bits: torch.Tensor) -> torch.Tensor:
    """[..., num_bits] in {0, 1} -> [...] long (inverse of ``index_to_bits``)."""
    num_bits = bits.shape[-1]
    weights = 2 ** torch.arange(num_bits - 1, -1, -1, device=bits.device)
    return (bits.long() * weights).sum(-1)


class IdentityQuantizer(nn.Module):
    """Lossless: the tokens are the continuous residuals themselves."""

    num_codes = 0

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.groups = channels

    def forward(self, r: torch.Tensor, scale: int):
        return r, r, r.new_zeros(())

    def dequantize(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        return codes


class ScalarQuantizer(nn.Module):
    """Uniform scalar quantiser: each channel rounded to one of V levels spanning [lo, hi].

    Used for data-space pyramids. Values outside the range are clipped, so pick the range to
    cover the residuals (the grid step (hi - lo) / (V - 1) bounds the error inside it).
    Bands of different scales can have very different sizes (a smooth field has tiny fine
    bands); ``calibrate`` sets a per-scale, per-channel unit from data so that every band uses
    the whole range of levels. The unit is a buffer: it is saved and restored with the model.
    """

    def __init__(self, channels: int, num_codes: int = 32, lo: float = -1.0, hi: float = 1.0,
                 num_scales: int = 1):
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"ScalarQuantizer needs at least 2 levels, got {num_codes}")
        if not hi > lo:
            raise ValueError(f"ScalarQuantizer range must have hi > lo, got [{lo}, {hi}]")
        self.channels, self.groups, self.num_codes = channels, channels, num_codes
        self.lo, self.hi = float(lo), float(hi)
        self.step = (self.hi - self.lo) / (num_codes - 1)
        self.register_buffer("unit", torch.ones(max(1, num_scales), channels))

    def _unit(self, scale: int) -> torch.Tensor:
        return self.unit[min(scale, len(self.unit) - 1)]

    @torch.no_grad()
    def calibrate(self, bands: list, quantile: float = 0.999):
        """Per scale k and channel, make the ``quantile`` of |band_k| map onto the range's edge.

        ``bands[k]`` is [N, n_k, C] (for example the de-quantised bands of a lossless encode).
        """
        if len(bands) != len(self.unit):
            raise ValueError(f"calibrate needs one band per scale ({len(self.unit)}), got {len(bands)}")
        edge = min(abs(self.lo), abs(self.hi))
        for k, band in enumerate(bands):
            size = band.abs().reshape(-1, self.channels).float().quantile(quantile, dim=0)
            self.unit[k] = (size / edge).clamp_min(1e-8)

    def forward(self, r: torch.Tensor, scale: int):
        unit = self._unit(scale)
        codes = torch.round(((r / unit).clamp(self.lo, self.hi) - self.lo) / self.step).long()
        values = self.dequantize(codes, scale)
        return codes, r + (values - r).detach(), r.new_zeros(())

    def dequantize(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        return (self.lo + codes.float() * self.step) * self._unit(scale)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with one codebook shared by all scales (as VAR).

    Training: straight-through gradient, codebook loss + ``beta`` x commitment loss. Codes that no
    vector used for ``dead_after`` forward passes are re-initialised from random vectors of the
    current batch, which prevents the coarse-scale collapse reported for VAR retraining.
    ``kmeans_init`` fits the codebook to given vectors. Usage counts are kept per scale.
    """

    def __init__(self, channels: int, num_codes: int = 64, num_scales: int = 1, beta: float = 0.25,
                 dead_after: int = 50):
        super().__init__()
        self.channels, self.groups, self.num_codes = channels, 1, num_codes
        self.beta, self.dead_after = beta, dead_after
        self.codebook = nn.Parameter(torch.randn(num_codes, channels) / math.sqrt(channels))
        self.register_buffer("usage", torch.zeros(num_scales, num_codes))
        self.register_buffer("idle", torch.zeros(num_codes))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                + self.codebook.pow(2).sum(1)[None])
        return dist.argmin(1)

    def forward(self, r: torch.Tensor, scale: int):
        B, n, C = r.shape
        flat = r.reshape(-1, C)
        index = self.nearest(flat.detach())
        q = self.codebook[index].view(B, n, C)
        loss = F.mse_loss(q, r.detach()) + self.beta * F.mse_loss(r, q.detach())
        if self.training:
            self._track(index, scale, flat.detach())
        return index.view(B, n, 1), r + (q - r).detach(), loss

    def dequantize(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        return self.codebook[codes.squeeze(-1)]

    @torch.no_grad()
    def _track(self, index: torch.Tensor, scale: int, flat: torch.Tensor):
        counts = torch.bincount(index, minlength=self.num_codes).float()
        self.usage[scale] += counts
        self.idle += 1
        self.idle[counts > 0] = 0
        dead = (self.idle >= self.dead_after).nonzero().squeeze(1)
        if len(dead) and len(flat):
            # drawn on the CPU, then moved: the same restarts on every device
            pick = torch.randint(len(flat), (len(dead),)).to(flat.device)
            self.codebook.data[dead] = flat[pick]
            self.idle[dead] = 0

    @torch.no_grad()
    def kmeans_init(self, vectors: torch.Tensor, iters: int = 10, generator=None):
        """Lloyd's k-means on [N, C] vectors (k-means++-free: random distinct starts)."""
        vectors = vectors.reshape(-1, self.channels)
        # CPU generators: drawn on the CPU (the same draws on every device), then moved
        start = torch.randperm(len(vectors), generator=generator)[: self.num_codes]
        centres = vectors[start.to(vectors.device)].clone()
        if len(centres) < self.num_codes:  # fewer vectors than codes: pad with jittered copies
            pick = torch.randint(len(centres), (self.num_codes - len(centres),), generator=generator)
            extra = centres[pick.to(centres.device)]
            centres = torch.cat([centres, extra + 1e-3 * torch.randn(extra.shape, generator=generator).to(extra.device)])
        for _ in range(iters):
            self.codebook.data.copy_(centres)
            index = self.nearest(vectors)
            sums = torch.zeros_like(centres).index_add_(0, index, vectors)
            counts = torch.bincount(index, minlength=self.num_codes).float()
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
        self.codebook.data.copy_(centres)

    def usage_stats(self) -> dict[str, float]:
        """Per-scale share of codes used and perplexity since the last ``reset_usage``."""
        stats = {}
        for k, counts in enumerate(self.usage):
            total = counts.sum()
            if total == 0:
                continue
            p = counts / total
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            stats[f"codes_used/scale{k}"] = float((counts > 0).float().mean())
            stats[f"perplexity/scale{k}"] = float(entropy.exp())
        return stats

    def reset_usage(self):
        self.usage.zero_()


def make_quantizer(kind: str, channels: int, num_codes: int, num_scales: int, **kw) -> nn.Module:
    if kind == "identity":
        return IdentityQuantizer(channels)
    if kind == "scalar":
        return ScalarQuantizer(channels, num_codes, kw.get("lo", -1.0), kw.get("hi", 1.0), num_scales)
    if kind == "vq":
        return VectorQuantizer(channels, num_codes, num_scales, kw.get("beta", 0.25),
                               kw.get("dead_after", 50))
    raise ValueError(f"unknown quantizer '{kind}'; choose one of identity, scalar, vq")
