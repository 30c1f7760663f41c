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
``domain.val_size=N`` carves the last N training images (file order) into a "val" split that
"train" (the refiner's and the tokenizer's data, and the floor's real images) leaves out;
``domain.eval_split=val`` scores the metrics against it instead of MNIST test.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import logging

import torch
from omegaconf import OmegaConf

from core.data import TensorData, check_samples
from core.device import current as current_device
from core.errors import InputError, MissingFileError
from core.grid import GridOps
from core.hookspecs import hookimpl
from core.plots import class_columns, pyplot
from domains.image.classifier import default_cache_dir, load_or_train_classifier
from domains.image.data import load_mnist, mnist_tensor_data, to_unit_range

EVAL_SPLITS = ("test", "val")
log = logging.getLogger("c2f")


def _data_dir(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.domain.data_dir))).resolve()


def _val_size(cfg) -> int:
    n = cfg.domain.get("val_size") or 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"domain.val_size must be an integer >= 0, got {n!r}")
    return n


def _eval_split(cfg) -> str:
    split = cfg.domain.get("eval_split", "test")
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown domain.eval_split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    return split


def _train_images(data_dir: Path, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_mnist(data_dir, "train")
    if val_size >= len(images):
        raise ValueError(f"domain.val_size={val_size} leaves no training images "
                         f"(MNIST train holds {len(images)})")
    return images, labels


def _train_part(data_dir: Path, val_size: int, limit: int | None = None) -> TensorData:
    """MNIST train without its last ``val_size`` images; ``limit`` keeps the first N of the rest."""
    if val_size == 0:
        return mnist_tensor_data(data_dir, "train", limit)
    images, labels = _train_images(data_dir, val_size)
    stop = len(images) - val_size
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit}")
        stop = min(stop, limit)
    return TensorData(x=to_unit_range(images[:stop]).unsqueeze(1), cond=labels[:stop])


def _val_part(data_dir: Path, val_size: int) -> TensorData:
    """The last ``val_size`` MNIST training images, in file order."""
    if val_size == 0:
        raise ValueError("the image 'val' split is empty: set domain.val_size > 0 "
                         "(the last N training images form it)")
    images, labels = _train_images(data_dir, val_size)
    return TensorData(x=to_unit_range(images[-val_size:]).unsqueeze(1), cond=labels[-val_size:])


def _reference(data_dir: Path, eval_split: str, val_size: int, reference: int | None) -> torch.Tensor:
    """The real images the metrics score against: the first ``reference`` of test or val."""
    if eval_split == "val":
        return _val_part(data_dir, val_size).x[:reference]
    return mnist_tensor_data(data_dir, "test").x[:reference]


def _tokenizer_settings(cfg) -> dict:
    return OmegaConf.to_container(cfg.domain.tokenizer, resolve=True)


def tokenizer_cache_path(cfg) -> Path:
    """Cached tokenizer for these settings and data (a hash of both)."""
    key = {"settings": _tokenizer_settings(cfg), "data": str(_data_dir(cfg)), "seed": cfg.seed,
           "trainer": "core.train"}  # tokenizers of the earlier, separate loop are not reused
    if _val_size(cfg):  # trained without the val images (0 keeps the earlier cache names)
        key["val_size"] = _val_size(cfg)
    key = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return default_cache_dir() / f"mnist_tokenizer_{digest}.pt"


def train_and_save_tokenizer(cfg, path: Path, run_dir: Path | None = None) -> dict:
    """Train the tokenizer of ``cfg`` in ``run_dir`` (default: ``path`` with the suffix ``.run``),
    where a killed training resumes, and write it to ``path``."""
    from domains.image.tokenizer import VQTokenizer, save_tokenizer, train_tokenizer

    settings = _tokenizer_settings(cfg)
    train_kw = settings.pop("train")
    data = _train_part(_data_dir(cfg), _val_size(cfg), cfg.domain.limit)
    torch.manual_seed(cfg.seed)
    model = VQTokenizer(**settings)
    log.info("training the image tokenizer (%d steps on %s; the default 2000 took 323 s on 2 CPU "
             "cores in benchmarks/mnist.py); it is cached in %s", train_kw.get("steps", 2000),
             current_device(), path)
    run_dir = Path(path).with_suffix(".run") if run_dir is None else Path(run_dir)
    metrics = train_tokenizer(model, data.x, run_dir, seed=cfg.seed, progress=cfg.progress,
                              device=current_device(), **train_kw)
    save_tokenizer(model, path)
    return metrics


def load_or_train_tokenizer(cfg):
    from domains.image.tokenizer import load_tokenizer

    path = Path(cfg.domain.tokenizer_path) if cfg.domain.tokenizer_path else tokenizer_cache_path(cfg)
    if not path.is_file():
        if cfg.domain.tokenizer_path:
            raise MissingFileError(f"tokenizer not found: {path} (train one with task=train_tokenizer)")
        # the caller's random stream (the refiner's initialisation comes next) must not depend on
        # whether the tokenizer was cached: a seeded run repeats whether it trained one or not
        with torch.random.fork_rng():
            train_and_save_tokenizer(cfg, path)
    return load_tokenizer(path).eval().to(current_device())


@hookimpl
def c2f_load_data(cfg, split):
    if split == "train":
        return _train_part(_data_dir(cfg), _val_size(cfg), cfg.domain.limit)
    if split == "val":
        return _val_part(_data_dir(cfg), _val_size(cfg))
    if split == "test":
        return mnist_tensor_data(_data_dir(cfg), "test")
    raise ValueError(f"unknown image split {split!r}; choose train, val or test")


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


def _judge(data_dir: str, seed: int, progress: bool):
    return _judge_on(data_dir, seed, progress, str(current_device()))


@lru_cache(maxsize=2)
def _judge_on(data_dir: str, seed: int, progress: bool, device: str):
    return load_or_train_classifier(data_dir, seed=seed, progress=progress, device=device)


def _pixels(x) -> torch.Tensor:
    """Samples as floats (scored clamped to [-1, 1], as saved pixels would be): uint8 pixels are
    converted; floats that look like 0..255 pixels are refused rather than clamped into noise."""
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        x = to_unit_range(x)
    check_samples(x, (1, 28, 28), "image")
    lo, hi = float(x.min()), float(x.max())
    if lo >= -0.01 and hi > 2.0:
        raise InputError(f"image samples must be floats in [-1, 1] or uint8 pixels 0..255; these floats "
                         f"range over [{lo:.3g}, {hi:.3g}]. Divide 0..255 values by 127.5 and subtract 1")
    return x


@hookimpl
def c2f_evaluate(cfg, samples, run_dir):
    from domains.image.metrics import image_metrics

    x, cond = _pixels(samples["samples"]), samples["cond"]
    eval_split, val_size = _eval_split(cfg), _val_size(cfg)
    reference = cfg.domain.get("eval_reference")
    real = _reference(_data_dir(cfg), eval_split, val_size, reference)
    clf, test_acc = _judge(str(_data_dir(cfg)), cfg.domain.classifier_seed, bool(cfg.progress))
    out = image_metrics(clf, x.clamp(-1, 1), cond, real)
    out["classifier_test_accuracy"] = test_acc
    out["eval_split_is_val"] = float(eval_split == "val")
    out.update(_floor(str(_data_dir(cfg)), cfg.domain.classifier_seed, len(x), bool(cfg.progress),
                      reference, val_size, eval_split))
    if out["floor_fd"] > 0:
        out["fd_over_floor"] = out["fd"] / out["floor_fd"]
    return out


@lru_cache(maxsize=4)
def _floor(data_dir: str, seed: int, n: int, progress: bool, reference: int | None = None,
           val_size: int = 0, eval_split: str = "test") -> dict:
    """The same metrics for n real training images (never the val ones) against the samples'
    reference set: the value a perfect generator would get with as many samples (Fréchet
    distance depends on n)."""
    from domains.image.metrics import image_metrics

    clf, _ = _judge(data_dir, seed, progress)
    train = _train_part(Path(data_dir), val_size)
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    real = _reference(Path(data_dir), eval_split, val_size, reference)
    metrics = image_metrics(clf, train.x[index], train.cond[index], real)
    return {f"floor_{k}": v for k, v in metrics.items()}


@hookimpl
def c2f_free_settings(cfg):
    return ["eval_split", "eval_reference", "classifier_seed", "ddpm.sampler", "ddpm.steps"]


@hookimpl
def c2f_visualize(cfg, samples, path):
    plt = pyplot()
    x, cond = samples["samples"], samples["cond"]
    classes, per_class = class_columns(cond)
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
    metrics = train_and_save_tokenizer(cfg, path, Path(run_dir))
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    for k, v in enumerate(metrics.get("band_mse", [])):
        out[f"recon_mse/bands{k + 1}"] = float(v)
    return out
