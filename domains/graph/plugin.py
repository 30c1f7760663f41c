"""Graph domain: permutation-invariant coarse-to-fine graph generation.

Forward process: ``coarsen.build_pyramid`` (edge contraction down to one node, exact detail
tokens). Backward process: ``model.GraphScaleModel`` (a GNN predicting one level's tokens per
call), driven by the core sampler and trainer. Metrics follow the published protocol
(``metrics.evaluate_graphs``); samples are written in the benchmark npz layout.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from core.hookspecs import hookimpl
from domains.graph.data import Graph, load_graph_split, save_graph_splits
from domains.graph.generators import GENERATORS, get_splits
from domains.graph.metrics import VALIDITY_FUNCTIONS, evaluate_graphs
from domains.graph.model import GraphScaleModel
from core.errors import ConfigError, MissingFileError


@lru_cache(maxsize=8)
def _splits(source: str, data_dir, n_train, n_val, n_test, seed):
    if source in GENERATORS and data_dir is None:
        return get_splits(source, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    return get_splits(source, data_dir)


def splits_for(cfg) -> dict[str, list[Graph]]:
    d = cfg.domain
    data_dir = str(Path(d.data_dir).expanduser()) if d.data_dir else None
    return _splits(str(d.source), data_dir, d.n_train, d.n_val, d.n_test, d.data_seed)


def validity_kind(cfg) -> str | None:
    kind = cfg.domain.validity
    if kind == "auto":
        name = Path(str(cfg.domain.source)).stem
        return name if name in VALIDITY_FUNCTIONS else None
    if kind in (None, "none"):
        return None
    if kind not in VALIDITY_FUNCTIONS:
        raise ValueError(f"unknown validity '{kind}'; choose auto, none or one of {sorted(VALIDITY_FUNCTIONS)}")
    return kind


@hookimpl
def c2f_load_data(cfg, split):
    splits = splits_for(cfg)
    if split not in splits or not splits[split]:
        raise ValueError(f"graph source '{cfg.domain.source}' has no '{split}' split "
                         f"(it has {', '.join(k for k, v in splits.items() if v)})")
    return splits[split]


@hookimpl
def c2f_model(cfg, data):
    d = cfg.domain
    constraint = d.get("constrain")
    if constraint == "auto":
        constraint = {"planar": "planar", "tree": "tree"}.get(validity_kind(cfg), "connected")
    return GraphScaleModel(max_levels=d.max_levels, two_hop=d.two_hop, slot_rule=d.slot_rule,
                           max_fraction=d.max_fraction, constraint=constraint,
                           edge_rounds=d.get("edge_rounds", 1), separated=d.get("separated", False),
                           edge_order=d.get("edge_order", "priority"),
                           refine=bool(cfg.model.refine), refine_share=float(cfg.model.refine_share),
                           **d.model)


@hookimpl
def c2f_collate(cfg, data, indices):
    return [data[i] for i in indices.tolist()]


@hookimpl
def c2f_sample_conditions(cfg, data, num_samples):
    """Node counts drawn from the training distribution (seeded by the run seed)."""
    sizes = np.array([g.num_nodes for g in data])
    rng = np.random.default_rng(cfg.seed)
    return torch.as_tensor(rng.choice(sizes, size=num_samples), dtype=torch.long)


@hookimpl
def c2f_save_samples(cfg, samples, run_dir):
    return save_graph_splits(Path(run_dir) / "samples.npz", {"generated": samples["samples"]})


@hookimpl
def c2f_load_samples(cfg, path):
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz") if path.with_suffix(".npz").exists() else path
    if not path.is_file():
        raise MissingFileError(f"graph samples file not found: {path}")
    graphs = load_graph_split(path, cfg.domain.samples_split)
    return {"samples": graphs, "cond": torch.tensor([g.num_nodes for g in graphs])}


EVAL_SPLITS = ("test", "val", "pooled")


def reference_graphs(cfg) -> list[Graph]:
    """The graphs ``task=evaluate`` scores against (``domain.eval_split``): the test split, the
    validation split (choosing sampling settings never reads test), or all splits pooled."""
    split = cfg.domain.get("eval_split", "test")
    if split not in EVAL_SPLITS:
        raise ConfigError(f"domain.eval_split={split!r}: choose one of {', '.join(EVAL_SPLITS)}")
    splits = splits_for(cfg)
    if split == "pooled":
        return [g for name in ("train", "val", "test") for g in splits.get(name, [])]
    if not splits.get(split):
        raise ConfigError(f"domain.eval_split={split}: graph source '{cfg.domain.source}' has no "
                          f"'{split}' split; use {', '.join(k for k, v in splits.items() if v)}")
    return splits[split]


def _more_validity(cfg) -> dict:
    """The published SBM test (graph-tool's fit) beside ours, where a Python with graph-tool is
    found and ``domain.published_sbm`` is not false."""
    if validity_kind(cfg) != "sbm" or cfg.domain.get("published_sbm", "auto") in (False, "false", None):
        return {}
    from domains.graph.graph_tool_sbm import graph_tool_python, published_sbm_valid
    python = graph_tool_python()
    if python is None:
        return {}
    return {"published": lambda gen: published_sbm_valid(gen, python=python)}


@hookimpl
def c2f_evaluate(cfg, samples, run_dir):
    splits = splits_for(cfg)
    gen = [g.to_networkx() for g in samples["samples"]]
    ref = [g.to_networkx() for g in reference_graphs(cfg)]
    train = [g.to_networkx() for g in splits["train"]]
    metrics = evaluate_graphs(gen, ref, train, validity_kind(cfg), _more_validity(cfg))
    split = cfg.domain.get("eval_split", "test")
    if split == "pooled":  # train is part of the reference: MMD(ref, train) is no baseline
        metrics = {k: v for k, v in metrics.items() if not k.startswith("ratio")}
    metrics["eval_split"] = split
    metrics["reference_graphs"] = len(ref)
    metrics["mean_nodes"] = float(np.mean([g.number_of_nodes() for g in gen]))
    metrics["mean_edges"] = float(np.mean([g.number_of_edges() for g in gen]))
    return metrics


@hookimpl
def c2f_free_settings(cfg):
    return ["samples_split", "constrain", "draw", "validity", "eval_split", "published_sbm"]


@hookimpl
def c2f_visualize(cfg, samples, path):
    from domains.graph.plots import draw_graphs

    draw_graphs(samples["samples"][: cfg.domain.draw], path, "generated graphs")
