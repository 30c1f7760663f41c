"""Image domain on MNIST: refine in a learned latent space (VQ tokenizer) or directly on pixels.

``domain.space=latent`` (default): a conv VQ autoencoder (``tokenizer.py``) maps 28x28 images to a
7x7 latent; its multi-scale residual quantiser over latent scales 1-2-3-4-5-7 gives the detail
tokens, and the core scale transformer learns to predict them. The tokenizer is trained by
``task=train_tokenizer`` (or on first use) and cached by its settings.
``domain.space=pixel``: the pyramid runs on the pixels (scales 1-2-4-7-14-28) with residuals
uniformly quantised to ``model.num_codes`` levels.
``domain.baseline=ddpm|ar``: the baselines of ``baselines.py`` (a pixel DDPM with a small UNet, a
next-token transformer over the tokenizer's codes) instead of the refiner, through ``c2f_model``:
same data, trainer, sampling task and metrics.
Metrics use a LeNet trained by the project on MNIST train (``classifier.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import OmegaConf

from core.data import check_samples
from core.grid import GridOps
from core.hookspecs import hookimpl
from domains.image.classifier import default_cache_dir, load_or_train_classifier
from domains.image.data import mnist_tensor_data


def _data_dir(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.domain.data_dir))).resolve()


def _tokenizer_settings(cfg) -> dict:
    return OmegaConf.to_container(cfg.domain.tokenizer, resolve=True)


def tokenizer_cache_path(cfg) -> Path:
    """Cached tokenizer for these settings and data (a hash of both)."""
    key = json.dumps({"settings": _tokenizer_settings(cfg), "data": str(_data_dir(cfg)),
                      "seed": cfg.seed}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return default_cache_dir() / f"mnist_tokenizer_{digest}.pt"


def train_and_save_tokenizer(cfg, path: Path) -> dict:
    from domains.image.tokenizer import VQTokenizer, save_tokenizer, train_tokenizer

    settings = _tokenizer_settings(cfg)
    train_kw = settings.pop("train")
    data = mnist_tensor_data(_data_dir(cfg), "train", cfg.domain.limit)
    torch.manual_seed(cfg.seed)
    model = VQTokenizer(**settings)
    metrics = train_tokenizer(model, data.x, seed=cfg.seed, progress=cfg.progress, **train_kw)
    save_tokenizer(model, path)
    return metrics


def load_or_train_tokenizer(cfg):
    from domains.image.tokenizer import load_tokenizer

    path = Path(cfg.domain.tokenizer_path) if cfg.domain.tokenizer_path else tokenizer_cache_path(cfg)
    if not path.is_file():
        if cfg.domain.tokenizer_path:
            raise FileNotFoundError(f"tokenizer not found: {path} (train one with task=train_tokenizer)")
        train_and_save_tokenizer(cfg, path)
    return load_tokenizer(path).eval()


@hookimpl
def c2f_load_data(cfg, split):
    return mnist_tensor_data(_data_dir(cfg), "test" if split in ("val", "test") else "train",
                             cfg.domain.limit if split == "train" else None)


@hookimpl
def c2f_condition(cfg):
    return {"num_classes": 10}


@hookimpl
def c2f_scale_ops(cfg):
    if cfg.domain.space == "pixel":
        return GridOps(list(cfg.domain.pixel_scales), up_mode=cfg.domain.up_mode)
    if cfg.domain.space != "latent":
        raise ValueError(f"unknown image space '{cfg.domain.space}'; choose latent or pixel")
    return GridOps(list(cfg.domain.tokenizer.scales), up_mode=cfg.domain.tokenizer.up_mode)


@hookimpl
def c2f_model(cfg, data):
    baseline = cfg.domain.get("baseline")
    if baseline is None:
        return None  # the core builds the refiner from the hooks above
    from domains.image.baselines import build_ar, build_ddpm

    if baseline == "ddpm":
        return build_ddpm(cfg)
    if baseline == "ar":
        if cfg.domain.space != "latent":
            raise ValueError("the AR baseline models the tokenizer's latent codes: use domain.space=latent")
        return build_ar(cfg, load_or_train_tokenizer(cfg))
    raise ValueError(f"unknown image baseline '{baseline}'; choose ddpm or ar (or null for the refiner)")


@hookimpl
def c2f_tokenizer(cfg):
    return None if cfg.domain.space == "pixel" else load_or_train_tokenizer(cfg)


@lru_cache(maxsize=2)
def _judge(data_dir: str, seed: int, progress: bool):
    return load_or_train_classifier(data_dir, seed=seed, progress=progress)


@hookimpl
def c2f_evaluate(cfg, samples, run_dir):
    from domains.image.metrics import image_metrics

    x, cond = samples["samples"], samples["cond"]
    check_samples(x, (1, 28, 28), "image")
    clf, test_acc = _judge(str(_data_dir(cfg)), cfg.domain.classifier_seed, bool(cfg.progress))
    reference = cfg.domain.get("eval_reference")
    real = mnist_tensor_data(_data_dir(cfg), "test").x[:reference]
    out = image_metrics(clf, x.clamp(-1, 1), cond, real)
    out["classifier_test_accuracy"] = test_acc
    out.update(_floor(str(_data_dir(cfg)), cfg.domain.classifier_seed, len(x), bool(cfg.progress),
                      reference))
    if out["floor_fd"] > 0:
        out["fd_over_floor"] = out["fd"] / out["floor_fd"]
    return out


@lru_cache(maxsize=4)
def _floor(data_dir: str, seed: int, n: int, progress: bool, reference: int | None = None) -> dict:
    """The same metrics for n real training images against the same test set: the value a
    perfect generator would get with as many samples (Fréchet distance depends on n)."""
    from domains.image.metrics import image_metrics

    clf, _ = _judge(data_dir, seed, progress)
    train = mnist_tensor_data(Path(data_dir), "train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    real = mnist_tensor_data(Path(data_dir), "test").x[:reference]
    metrics = image_metrics(clf, train.x[index], train.cond[index], real)
    return {f"floor_{k}": v for k, v in metrics.items()}


@hookimpl
def c2f_visualize(cfg, samples, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, cond = samples["samples"], samples["cond"]
    classes = sorted(set(cond.tolist()))
    per_class = min(8, min(int((cond == c).sum()) for c in classes))
    grid = torch.ones(len(classes), per_class, 30, 30)
    for j, c in enumerate(classes):
        grid[j, :, 1:29, 1:29] = x[cond == c][:per_class, 0].clamp(-1, 1) * 0.5 + 0.5
    image = grid.permute(1, 2, 0, 3).reshape(per_class * 30, len(classes) * 30)
    fig, ax = plt.subplots(figsize=(max(len(classes), 4) * 0.6, max(per_class, 3) * 0.6))
    ax.imshow(image.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([15 + 30 * j for j in range(len(classes))], [str(c) for c in classes])
    ax.set_yticks([])
    ax.set_title("samples (columns: requested class)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hookimpl
def c2f_run_task(cfg, task, run_dir):
    if task != "train_tokenizer":
        return None
    path = Path(run_dir) / "tokenizer.pt"
    metrics = train_and_save_tokenizer(cfg, path)
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for k, v in enumerate(metrics.get("band_mse", [])):
        out[f"recon_mse/bands{k + 1}"] = float(v)
    return out
