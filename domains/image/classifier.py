"""The in-project MNIST judge: a small LeNet-style CNN whose penultimate features feed every image
metric (Fréchet distance, precision/recall) and whose predictions give class accuracy.

Training is seeded and CPU-friendly: two epochs, about two minutes on two CPU cores, about
99.3 % test accuracy. :func:`load_or_train_classifier` keeps the weights in a cache folder
(``$C2F_CACHE``, else ``~/.cache/coarse2fine``) so that every evaluation run uses the same judge.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.io import CACHE_ENV, default_cache_dir, save_atomic
from domains.image.data import load_mnist, to_unit_range

log = logging.getLogger("c2f")

__all__ = ["LeNet", "FEATURE_DIM", "CACHE_ENV", "default_cache_dir", "classifier_cache_path",
           "train_classifier", "evaluate_accuracy", "load_or_train_classifier", "judge_fingerprint"]

FEATURE_DIM = 128
_CACHE_VERSION = 2  # 2: trained with core.train (1: its own loop)


class LeNet(nn.Module):
    """conv5-32 / pool / conv5-64 / pool / fc-128 / fc-10 with batch norm, for [-1, 1] images
    ``[N, 1, 28, 28]``. ``features`` gives the 128-d penultimate activations (after ReLU)."""

    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM, dropout: float = 0.3):
        super().__init__()
        # max-pooling before batch norm and ReLU: the same kind of net, a quarter of the cost
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, bias=False), nn.MaxPool2d(2),          # 28 -> 24 -> 12
            nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 5, bias=False), nn.MaxPool2d(2),         # 12 -> 8 -> 4
            nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim, bias=False), nn.BatchNorm1d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _check(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"LeNet expects images [N, 1, 28, 28] in [-1, 1], got {tuple(x.shape)}")
        return x.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[N, 128]``."""
        return self.body(self._check(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, 10]``."""
        return self.head(self.dropout(self.features(x)))


def classifier_cache_path(cache_dir, seed: int = 0) -> Path:
    return Path(cache_dir).expanduser() / f"mnist_lenet_seed{seed}.pt"


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (background fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    # drawn on the (CPU) generator, then moved: the same shifts on every device
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None].expand(n, 1, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :].expand(n, 1, h, w)
    return out.gather(3, cols)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on [-1, 1] images ``[N, 1, 28, 28]``."""
    was_training = model.training
    model.eval()
    correct, device = 0, next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


class ClassifierObjective(nn.Module):
    """The judge's training loss in the trainer's form: cross-entropy on a batch ``(images,
    labels)``, each image shifted by up to ``max_shift`` pixels (drawn on the step's generator)."""

    def __init__(self, net: LeNet, max_shift: int = 2):
        super().__init__()
        self.net, self.max_shift = net, max_shift

    def forward(self, batch, generator: torch.Generator | None = None):
        x, y = batch
        if self.max_shift > 0:
            x = _random_shift(x, generator, self.max_shift)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"accuracy": float((logits.argmax(1) == y).float().mean())}


def train_classifier(data_dir, run_dir, seed: int = 0, epochs: int = 2, batch_size: int = 128,
                     lr: float = 2e-3, augment: bool = True, limit: int | None = None,
                     max_steps: int | None = None, progress: bool = True, device="cpu",
                     ckpt_every: int = 200, on_step=None) -> tuple[LeNet, float]:
    """Train :class:`LeNet` on MNIST train with ``core.train.train`` in ``run_dir``; return
    ``(model in eval mode, test accuracy)``.

    The trainer's seed discipline, checkpoints and log apply: the weights follow ``seed`` and the
    data order and shifts follow (``seed``, step), so a killed training resumes from its last
    checkpoint on the next call with the same arguments. Adam (AdamW without weight decay), 15 %
    linear warm-up, cosine decay to 1 % of ``lr``; ``augment`` adds random shifts of up to 2
    pixels. ``limit`` trains on the first ``limit`` training images and ``max_steps`` stops early
    (both for quick checks); the accuracy is always measured on the full 10,000-image test set.
    """
    from core.train import TrainConfig, resume_same_run, train

    images, labels = load_mnist(data_dir, "train")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x_train = to_unit_range(images).unsqueeze(1)
    test_images, test_labels = load_mnist(data_dir, "test")
    x_test = to_unit_range(test_images).unsqueeze(1)

    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    total = max(total, 1)
    cfg = TrainConfig(steps=total, batch_size=batch_size, lr=lr, weight_decay=0.0, betas=(0.9, 0.999),
                      warmup=max(1, round(0.15 * total)), min_lr_ratio=0.01, grad_clip=0.0,
                      log_every=50, ckpt_every=ckpt_every, seed=seed, progress=progress,
                      device=str(device), desc="MNIST judge")
    identity = {"version": _CACHE_VERSION, "images": len(x_train), "augment": augment, "steps": total,
                "batch_size": batch_size, "lr": lr, "seed": seed}
    cfg.resume = resume_same_run(run_dir, identity, "judge")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LeNet()
        train(ClassifierObjective(model, 2 if augment else 0), len(x_train),
              lambda idx: (x_train[idx], labels[idx]), cfg, run_dir, on_step=on_step,
              record={"run": identity})
    model.eval()
    return model, evaluate_accuracy(model, x_test, test_labels)


def judge_fingerprint(model: LeNet) -> str:
    """A short hash of the judge's weights: metrics scored by another judge are told apart."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(data_dir) -> str:
    """Names and sizes of the MNIST files the judge learns from: a cached judge trained on other
    files is not reused."""
    from domains.image.data import MNIST_FILES, find_mnist_file

    files = [find_mnist_file(data_dir, name) for split in ("train", "test") for name in MNIST_FILES[split]]
    return ";".join(f"{Path(f).name}:{Path(f).stat().st_size}" for f in files)


def _load_cached(path: Path, fingerprint: str) -> tuple[LeNet, float] | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("version") != _CACHE_VERSION:
            raise ValueError(f"cache version {payload.get('version')} != {_CACHE_VERSION}")
        if payload.get("data", fingerprint) != fingerprint:
            raise ValueError(f"trained on other data ({payload.get('data')}, now {fingerprint})")
        model = LeNet()
        model.load_state_dict(payload["state_dict"])
        accuracy = float(payload["test_accuracy"])
    except Exception as err:  # an unreadable or stale cache is retrained and overwritten
        warnings.warn(f"ignoring classifier cache {path} ({err}); retraining", stacklevel=3)
        return None
    model.eval()
    return model, accuracy


def load_or_train_classifier(data_dir, cache_dir=None, seed: int = 0, progress: bool = True,
                             device="cpu") -> tuple[LeNet, float]:
    """The judge for ``seed``, on ``device``: loaded from ``cache_dir/mnist_lenet_seed{seed}.pt``
    if present, else trained with :func:`train_classifier` defaults and cached (written atomically,
    CPU tensors). ``cache_dir`` defaults to ``$C2F_CACHE`` or ``~/.cache/coarse2fine``."""
    path = classifier_cache_path(default_cache_dir() if cache_dir is None else cache_dir, seed)
    fingerprint = data_fingerprint(data_dir)
    if path.is_file():
        cached = _load_cached(path, fingerprint)
        if cached is not None:
            return cached[0].to(device), cached[1]
    start = time.perf_counter()
    log.info("training the MNIST judge classifier (seed %d, 2 epochs: about 30 s on 2 CPU cores); "
             "it is cached in %s", seed, path)
    model, accuracy = train_classifier(data_dir, path.with_suffix(".run"), seed=seed, progress=progress,
                                       device=device)
    save_atomic({"version": _CACHE_VERSION, "seed": seed, "test_accuracy": accuracy, "data": fingerprint,
                  "train_seconds": time.perf_counter() - start,
                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    return model, accuracy
