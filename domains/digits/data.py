"""The 8x8 handwritten digits that ship with scikit-learn (1,797 real images, 10 classes)."""
from __future__ import annotations

import numpy as np
import torch

from core.data import TensorData


def load_digits_split(split: str, test_size: int = 297, seed: int = 0) -> TensorData:
    """Pixels scaled from 0..16 to [-1, 1] as [N, 1, 8, 8]; a fixed seeded train/test split."""
    from sklearn.datasets import load_digits

    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split '{split}'; choose train, val or test")
    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    idx = order[test_size:] if split == "train" else order[:test_size]
    x = torch.tensor(digits.images[idx], dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return TensorData(x=x, cond=torch.tensor(digits.target[idx], dtype=torch.long))


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [N, 1, 8, 8] -> flat 0..16 features [N, 64], the scale of the original data."""
    return ((x.clamp(-1, 1) + 1.0) * 8.0).reshape(len(x), -1).cpu().numpy()
