"""The graph benchmark's protocol: settings are chosen on the validation split alone, and every
network pass is counted at the benchmark's settings."""
import json

import networkx as nx
import numpy as np
import pytest

from benchmarks.graph import base_overrides, choose, sample_piece, select_temperature
from domains.graph.data import Graph, load_graph_splits, save_graph_splits

TINY = ["train.steps=3", "domain.model.d_model=16", "domain.model.layers=1", "domain.model.edge_layers=1",
        "domain.max_levels=4", "sample.num_samples=4", "sample.batch_size=4", "sample.flops_samples=0"]


def _subset(shared_data, tmp_path, garbage_test: bool):
    splits = load_graph_splits(shared_data / "graphs" / "planar.npz")
    small = {"train": splits["train"][:12], "val": splits["val"][:6], "test": splits["test"][:6]}
    if garbage_test:  # not planar, other sizes: any use of test would change the scores
        small["test"] = [Graph.from_networkx(nx.complete_graph(n)) for n in (9, 10, 11, 12, 13, 14)]
    folder = tmp_path / ("garbage" if garbage_test else "clean")
    folder.mkdir()
    save_graph_splits(folder / "planar.npz", small)
    return folder


def test_validation_choice_ignores_the_test_split(shared_data, tmp_path):
    chosen, vals = [], []
    for garbage in (False, True):
        data_dir = _subset(shared_data, tmp_path, garbage)
        base = base_overrides("planar", str(data_dir), TINY)
        t, val, _ = select_temperature(base, [0], [1.0, 0.5], ["ema", "raw"], tmp_path / f"runs_{garbage}")
        chosen.append(t)
        vals.append({c: [(r["vun"], r["ratio"], r["mmd_degree"]) for r in runs] for c, runs in val.items()})
        assert all(r["eval_split"] == "val" and r["reference_graphs"] == 6 for runs in val.values() for r in runs)
    assert chosen[0] == chosen[1]
    assert vals[0] == vals[1]
    # the EMA and the raw weights are different candidates (the experiment configs train an EMA)
    assert set(vals[0]) == {(1.0, "ema"), (1.0, "raw"), (0.5, "ema"), (0.5, "raw")}
    record = json.loads((tmp_path / "runs_False" / "s0" / "val_t1_raw" / "provenance.json").read_text())
    assert record["config"]["sample"]["use_ema"] is False and record["config"]["train"]["ema"] > 0


def test_choose_prefers_vun_then_ratio():
    val = {1.0: [{"vun": 0.3, "ratio": 5.0}], 0.7: [{"vun": 0.6, "ratio": 9.0}], 0.5: [{"vun": 0.6, "ratio": 4.0}]}
    assert choose(val) == 0.5
    assert choose({1.0: [{"vun": float("nan"), "ratio": 3.0}], 0.7: [{"vun": float("nan"), "ratio": 2.0}]}) == 0.7
    tie = {(0.7, "raw"): [{"vun": 0.6, "ratio": 4.0}], (0.7, "ema"): [{"vun": 0.6, "ratio": 4.0}]}
    assert choose(tie) == (0.7, "ema")  # a tie goes to the EMA weights


def test_nfe_counts_every_head_pass_at_benchmark_settings(shared_data, tmp_path):
    """At the planar benchmark's settings (16 edge rounds per level, walk order, triangle layers),
    NFE is one backbone pass per level plus one edge-head pass per round that has an edge to
    draw (test_graph_domain counts these exactly); with constrained redraws the redraw passes
    are counted too."""
    data_dir = _subset(shared_data, tmp_path, False)
    base = base_overrides("planar", str(data_dir), TINY)
    select_temperature(base, [0], [1.0], ["ema"], tmp_path / "runs")  # trains the tiny model
    ckpt = tmp_path / "runs" / "s0" / "train" / "checkpoints" / "last.pt"
    m = sample_piece(base + ["seed=0"], ckpt, tmp_path / "plain")
    rounds = 16  # configs/experiment/graph_planar.yaml (max_levels is cut to 4 here, for time)
    assert m["nfe_backbone"] >= 2
    assert 1 <= m["nfe_head"] <= rounds * m["nfe_backbone"]
    assert m["nfe"] == m["nfe_backbone"] + m["nfe_head"]
    c = sample_piece(base + ["seed=0", "domain.constrain=auto", "sample.max_redraws=3"], ckpt, tmp_path / "constrained")
    assert c["nfe"] == c["nfe_backbone"] + c["nfe_head"]
    # provenance: the cached piece is reused, and a changed config is refused
    again = sample_piece(base + ["seed=0"], ckpt, tmp_path / "plain")
    assert again["nfe"] == m["nfe"] and again["provenance"] == m["provenance"]
    from core.provenance import StalePieceError
    with pytest.raises(StalePieceError):
        sample_piece(base + ["seed=1"], ckpt, tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "provenance.json").read_text())["config_hash"]
    assert np.isfinite(m["ratio"])
