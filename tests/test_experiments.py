"""Experiment configs (configs/experiment/<name>.yaml): each composes with +experiment=<name>, and
each holds the training settings of the benchmark row it names."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from core.provenance import flatten
from core.run import compose_config

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))
DOMAIN_OF = {"graph": "graph", "mnist": "image", "weather": "weather"}


def test_there_is_an_experiment_per_published_comparison():
    assert {"graph_planar", "graph_tree", "graph_sbm", "mnist_refiner", "mnist_ddpm", "mnist_ar",
            "weather_main"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = compose_config([f"+experiment={name}"])
    assert cfg.domain.name == DOMAIN_OF[name.split("_")[0]]
    assert compose_config([f"+experiment={name}", "train.steps=7"]).train.steps == 7  # still overridable


def _settings(overrides, drop=()):
    flat = flatten(OmegaConf.to_container(compose_config(overrides), resolve=True))
    return {k: v for k, v in flat.items() if k != "overrides" and not k.startswith(drop)}


@pytest.mark.parametrize("name", ["planar", "tree", "sbm"])
def test_the_graph_benchmark_trains_its_experiment(name):
    sys.path.insert(0, str(REPO))
    from benchmarks.graph import base_overrides

    base = base_overrides(name, "/data/graphs", [])
    assert f"+experiment=graph_{name}" in base
    assert compose_config(base).domain.source == name


@pytest.mark.parametrize("model", ["refiner", "ddpm", "ar"])
def test_the_mnist_benchmark_settings_are_its_experiments(model, tmp_path):
    """The MNIST benchmark keeps its override lists (the hashes of its cached pieces); they must
    compose to exactly the experiment's settings, apart from where files are and the budget it
    computes (25 minutes less the tokenizer's time)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.mnist import Bench

    args = SimpleNamespace(out=str(tmp_path), max_minutes=None, data_dir="../shared/data/mnist",
                           quiet=True, ema=0.999, tokenizer_steps=2000, override=[])
    bench = Bench(args)
    over = bench.model_overrides(model, 0, tmp_path / "tokenizer.pt")
    drop = ("domain.tokenizer_path", "progress", "train.max_seconds")
    assert _settings(over, drop) == _settings([f"+experiment=mnist_{model}"], drop)
