"""The waveforms: four shapes (sine, square, triangle, sawtooth) with a random period, phase and
amplitude, plus white noise; values in about [-1, 1]. Generated from a seed, so every split is
the same on every machine (no files to download)."""
from __future__ import annotations

import math

import torch

from core.data import TensorData

SHAPES = ("sine", "square", "triangle", "sawtooth")


def waveforms(shape: torch.Tensor, length: int, generator: torch.Generator, noise: float) -> torch.Tensor:
    """Signals [N, 1, length] of the given shape indices [N]."""
    n = len(shape)
    period = 12 + 36 * torch.rand(n, 1, generator=generator)          # 12..48 samples
    phase = torch.rand(n, 1, generator=generator)
    amplitude = 0.6 + 0.3 * torch.rand(n, 1, generator=generator)
    t = torch.arange(length, dtype=torch.float32)[None] / period + phase
    frac = t - t.floor()                                             # position in the period, [0, 1)
    curves = torch.stack([torch.sin(2 * math.pi * t),                 # sine
                          torch.where(frac < 0.5, 1.0, -1.0),         # square
                          1 - 4 * (frac - 0.5).abs(),                 # triangle
                          2 * frac - 1])                              # sawtooth
    x = curves[shape, torch.arange(n)] * amplitude
    x = x + noise * torch.randn(n, length, generator=generator)
    return x.unsqueeze(1)


def load_split(split: str, length: int, train_size: int, test_size: int, noise: float,
               seed: int) -> TensorData:
    """``train`` and ``test`` are drawn from generators of their own (seed, split): disjoint draws."""
    sizes = {"train": train_size, "test": test_size, "val": test_size}
    if split not in sizes:
        raise ValueError(f"unknown signals split {split!r}; choose train, val or test")
    g = torch.Generator().manual_seed(seed * 1000 + ("train", "val", "test").index(split))
    shape = torch.arange(sizes[split]) % len(SHAPES)
    shape = shape[torch.randperm(len(shape), generator=g)]
    return TensorData(x=waveforms(shape, length, g, noise), cond=shape)
