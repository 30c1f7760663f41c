"""The signals domain: every hook it implements, top to bottom.

A data-space pyramid over 1-D signals [N, 1, L]: the core builds the residual pyramid, the scalar
quantiser, the scale transformer and the trainer from ``c2f_scale_ops`` and the config; this file
says what the data, the scales, the metrics and the picture are.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from core.data import check_samples
from core.hookspecs import hookimpl
from core.plots import pyplot
from c2f_signals.data import SHAPES, load_split


class SignalOps:
    """Scales of a 1-D support: ``sizes[k] = (L_k,)``, coarse to fine (the last is the data's
    length). ``down(z, k)`` averages a finer [B, C, L] signal to scale k's length; ``up(z, k)``
    interpolates a coarser one linearly to it; both take a signal of any scale's length.
    ``positions(k)``: the cell centres in [0, 1], [L_k, 1] (the refiner encodes them)."""

    def __init__(self, lengths):
        self.sizes = [(int(n),) for n in lengths]
        if any(a[0] > b[0] for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"domain.scales must grow coarse to fine, got {list(lengths)}")

    def down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        n = self.sizes[k][0]
        return z if z.shape[-1] == n else F.adaptive_avg_pool1d(z, n)

    def up(self, z: torch.Tensor, k: int) -> torch.Tensor:
        n = self.sizes[k][0]
        return z if z.shape[-1] == n else F.interpolate(z, size=n, mode="linear", align_corners=False)

    def positions(self, k: int) -> torch.Tensor:
        n = self.sizes[k][0]
        return ((torch.arange(n) + 0.5) / n)[:, None]


def _split(cfg, split: str):
    d = cfg.domain
    return load_split(split, d.length, d.train_size, d.test_size, d.noise, d.data_seed)


@hookimpl
def c2f_config_dir():
    return Path(__file__).parent / "conf"  # holds domain/signals.yaml


@hookimpl
def c2f_load_data(cfg, split):
    return _split(cfg, split)


@hookimpl
def c2f_condition(cfg):
    return {"num_classes": len(SHAPES)}


@hookimpl
def c2f_scale_ops(cfg):
    scales = list(cfg.domain.scales)
    if scales[-1] != cfg.domain.length:
        raise ValueError(f"the finest scale ({scales[-1]}) must be domain.length ({cfg.domain.length})")
    return SignalOps(scales)


# ---------------------------------------------------------------- metrics
def features(x: torch.Tensor) -> torch.Tensor:
    """What tells the shapes apart, whatever the period, phase and amplitude: 16 quantiles of the
    values and 16 of the steps between neighbours, both relative to the signal's spread."""
    x = x[:, 0].float()
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True).clamp(min=1e-3)
    q = torch.linspace(0.03, 0.97, 16)
    steps = x.diff(dim=1)
    return torch.cat([x.quantile(q, dim=1).t(), steps.quantile(q, dim=1).t()], 1)


@lru_cache(maxsize=4)
def _judge(length, train_size, test_size, noise, seed):
    """A softmax regression on ``features``, fitted on the real training signals; and its
    accuracy on the real test signals (how far the judge itself can be trusted)."""
    train = load_split("train", length, train_size, test_size, noise, seed)
    test = load_split("test", length, train_size, test_size, noise, seed)
    f = features(train.x)
    mean, std = f.mean(0), f.std(0).clamp(min=1e-6)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        judge = torch.nn.Linear(f.shape[1], len(SHAPES))
    opt = torch.optim.Adam(judge.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(judge((f - mean) / std), train.cond).backward()
        opt.step()

    def classify(x):
        with torch.no_grad():
            return judge((features(x) - mean) / std).argmax(1)

    return classify, float((classify(test.x) == test.cond).float().mean())


def log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Mean log power spectrum of signals [N, 1, L]: [L // 2 + 1]."""
    return torch.fft.rfft(x[:, 0].float(), dim=1).abs().pow(2).add(1e-6).log().mean(0)


def spectrum_distance(x, cond, reference, ref_cond) -> float:
    """Mean over shapes of the mean absolute gap between two sets' log power spectra."""
    gaps = [(log_spectrum(x[cond == c]) - log_spectrum(reference[ref_cond == c])).abs().mean()
            for c in range(len(SHAPES)) if (cond == c).any()]
    return float(torch.stack(gaps).mean())


@hookimpl
def c2f_evaluate(cfg, samples, run_dir):
    d = cfg.domain
    x, cond = check_samples(torch.as_tensor(samples["samples"]), (1, d.length), "signal"), samples["cond"]
    classify, judge_accuracy = _judge(d.length, d.train_size, d.test_size, d.noise, d.data_seed)
    test, train = _split(cfg, "test"), _split(cfg, "train")
    same = train.x[: len(x)], train.cond[: len(x)]  # real signals, as many: the floor
    return {"class_accuracy": float((classify(x) == cond).float().mean()),
            "judge_test_accuracy": judge_accuracy,
            "spectrum_distance": spectrum_distance(x, cond, test.x, test.cond),
            "floor_spectrum_distance": spectrum_distance(*same, test.x, test.cond)}


@hookimpl
def c2f_visualize(cfg, samples, path):
    plt = pyplot()  # matplotlib, headless
    x, cond = samples["samples"], samples["cond"]
    real = _split(cfg, "test")
    fig, axes = plt.subplots(1, len(SHAPES), figsize=(3 * len(SHAPES), 2.4), sharey=True)
    for c, ax in enumerate(axes):
        ax.plot(real.x[real.cond == c][0, 0].numpy(), color="0.7", lw=2, label="real")
        for curve in x[cond == c][:3, 0]:
            ax.plot(curve.numpy(), lw=1)
        ax.set_title(SHAPES[c], fontsize=9)
        ax.set_xticks([])
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("samples per requested shape (grey: a real signal)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
