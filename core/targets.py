"""Target heads and their losses: what the refiner predicts for every token of a band.

* ``index``: a softmax over the V code indices of each token group (cross-entropy).
* ``bits``: the index factorised into log2(V) binary digits, one sigmoid each (binary
  cross-entropy); V must be a power of two. Cheaper heads, one bit of uncertainty at a time.
* ``continuous``: regression of the de-quantised band (mean squared error).

A head turns backbone features [B, n, d] into a ``Prediction``; the sampler turns a prediction
into tokens (``core.sampler``). The kinds are the lever "target type" of the design.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.quantizers import index_to_bits

TARGET_KINDS = ("index", "bits", "continuous")


@dataclass
class Prediction:
    kind: str            # "index" | "bits" | "continuous" | "epsilon" (diffusion)
    value: torch.Tensor  # logits [B, n, G, V] | bit logits [B, n, G, nbits] | values [B, n, C]
    sample: torch.Tensor | None = None  # diffusion: the noisy sample x_t the noise was predicted for
    # per sample, how many leading positions (dim 1) are real, the rest padding (None: all). Only
    # real positions draw uniforms, so a sample's draws do not depend on its batch's padded width.
    lengths: torch.Tensor | None = None


class IndexHead(nn.Module):
    kind = "index"

    def __init__(self, d_model: int, groups: int, num_codes: int):
        super().__init__()
        self.groups, self.num_codes = groups, num_codes
        self.proj = nn.Linear(d_model, groups * num_codes)

    def forward(self, h: torch.Tensor) -> Prediction:
        return Prediction(self.kind, self.proj(h).unflatten(-1, (self.groups, self.num_codes)))

    def loss(self, pred: Prediction, codes: torch.Tensor, values: torch.Tensor):
        logits = pred.value
        loss = F.cross_entropy(logits.reshape(-1, self.num_codes), codes.reshape(-1))
        acc = (logits.argmax(-1) == codes).float().mean()
        return loss, {"token_acc": float(acc)}


class BitsHead(nn.Module):
    kind = "bits"

    def __init__(self, d_model: int, groups: int, num_codes: int):
        super().__init__()
        self.num_bits = int(round(math.log2(num_codes)))
        if 2 ** self.num_bits != num_codes:
            raise ValueError(f"bitwise targets need a power-of-two number of codes, got {num_codes}")
        self.groups = groups
        self.proj = nn.Linear(d_model, groups * self.num_bits)

    def forward(self, h: torch.Tensor) -> Prediction:
        return Prediction(self.kind, self.proj(h).unflatten(-1, (self.groups, self.num_bits)))

    def loss(self, pred: Prediction, codes: torch.Tensor, values: torch.Tensor):
        bits = index_to_bits(codes, self.num_bits)
        loss = F.binary_cross_entropy_with_logits(pred.value, bits)
        acc = ((pred.value > 0).float() == bits).all(-1).float().mean()
        return loss, {"token_acc": float(acc)}


class ContinuousHead(nn.Module):
    kind = "continuous"

    def __init__(self, d_model: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(d_model, channels)

    def forward(self, h: torch.Tensor) -> Prediction:
        return Prediction(self.kind, self.proj(h))

    def loss(self, pred: Prediction, codes: torch.Tensor, values: torch.Tensor):
        loss = F.mse_loss(pred.value, values.detach())
        return loss, {"mse": float(loss.detach())}


def make_head(kind: str, d_model: int, quantizer) -> nn.Module:
    if kind == "continuous":
        return ContinuousHead(d_model, quantizer.channels)
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target '{kind}'; choose one of {', '.join(TARGET_KINDS)}")
    if quantizer.num_codes == 0:
        raise ValueError(f"target '{kind}' needs a discrete quantizer (scalar or vq), got identity")
    head = IndexHead if kind == "index" else BitsHead
    return head(d_model, quantizer.groups, quantizer.num_codes)
