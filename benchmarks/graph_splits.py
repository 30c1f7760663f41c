"""Where planar sampling breaks: the share of node splits that make a planar graph non-planar.

    python benchmarks/graph_splits.py --run outputs/benchmark_graph/planar/train [--graphs 20] [--temperature 1]

Loads a trained graph model (its run folder: ``config.yaml`` and ``checkpoints/last.pt``) and
expands planar coarse graphs one level with the model's own node and edge draws. Every split is
checked alone: only that node expands, with its drawn edge patterns, everything else stays as it
is. Two sources of coarse graphs:

* ``true levels``: the levels of test-graph pyramids (what the model was trained on);
* ``own levels``: the levels the model reaches while sampling, as long as they are still planar.

A gap between the two is exposure bias: errors on the model's own coarse graphs, not on the data.
Prints both failure rates by coarse-graph size and writes them as JSON next to the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.io import write_json_atomic  # noqa: E402
from core.plugins import get_domain  # noqa: E402
from core.build import build_model, load_data  # noqa: E402
from core.sampler import Run, TokenScheduler, generate, member_seeds, streams  # noqa: E402
from core.train import load_weights  # noqa: E402
from domains.graph.coarsen import build_pyramid, compose  # noqa: E402
from domains.graph.model import satisfies, separate_splits  # noqa: E402

BANDS = [(1, 8), (8, 16), (16, 32), (32, 64), (64, 10**9)]


@torch.no_grad()
def draw_level(model, scheduler, n, edges, prio, target, step, seed):
    """One level's node tokens and edge patterns for a single coarse graph, drawn by the sampling
    pipeline itself (the model's predict, the scheduler, the edge head's rounds)."""
    state = {"n": [n], "edges": [edges], "prio": [prio], "target": [target], "step": step}
    run = Run(model, scheduler, torch.tensor([target]), [seed], streams([seed]))
    k = min(step, model.num_scales - 1)
    tokens = model.joined_tokens(run.draw(run.predict(state, k), k, state, run.generators), state)
    nt = tokens["node"][0, :n, 0].numpy().astype(np.int64)
    if model.pyramid_kw["separated"]:  # as the edge patterns were drawn
        nt = separate_splits(nt, edges, prio)
    return nt, tokens["edge"][0, :len(edges)].numpy().astype(np.int64)


def split_failures(model, scheduler, n, edges, prio, target, step, seed) -> list[bool]:
    """Draw one level from the model on a coarse graph; for each split, whether it alone breaks
    planarity."""
    nt, et = draw_level(model, scheduler, n, edges, prio, target, step, seed)
    out = []
    for v in np.flatnonzero(nt > 0):
        first, second = edges[:, 0] == v, edges[:, 1] == v
        single = np.ones_like(et)  # every other node keeps one child: its edges one link
        # v's edges keep its own slots; a neighbour's second child folds onto its first
        single[first] = (et[first] & 0b0101) | ((et[first] >> 1) & 0b0101)
        single[second] = (et[second] & 0b0011) | ((et[second] >> 2) & 0b0011)
        one = np.zeros_like(nt)
        one[v] = nt[v]
        fn, fe, _, _ = compose(n, edges, one, single)
        out.append(not satisfies(fn, fe, "planar"))
    return out


def by_band(records):
    table = {}
    for lo, hi in BANDS:
        sel = [f for n, f in records if lo <= n < hi]
        if sel:
            table[f"{lo}-{min(hi, 999) - 1}"] = {"splits": len(sel), "fail": round(float(np.mean(sel)), 4)}
    table["all"] = {"splits": len(records), "fail": round(float(np.mean([f for _, f in records])), 4)}
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a graph training run folder")
    ap.add_argument("--graphs", type=int, default=20, help="test graphs (true levels) and samples (own levels)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    run = Path(args.run)
    cfg = OmegaConf.load(run / "config.yaml")
    domain = get_domain("graph")
    model = load_weights(build_model(cfg, domain, load_data(cfg, domain, "train")),
                         run / "checkpoints" / "last.pt").eval()
    test = load_data(cfg, domain, "test")[: args.graphs]
    scheduler = TokenScheduler(temperature=args.temperature)
    scheduler.set_scales(model.num_scales)
    rng = np.random.default_rng(args.seed)
    draws = iter(range(10**9))  # a fresh sampling seed for every drawn level

    true_records = []
    for i, g in enumerate(test):
        pyr = build_pyramid(g.num_nodes, g.edges, rng, **model.pyramid_kw)
        for k in range(1, pyr.num_levels):
            c = pyr.levels[k - 1]
            fails = split_failures(model, scheduler, c.num_nodes, c.edges, c.prio, g.num_nodes, k,
                                   10**6 * args.seed + next(draws))
            true_records += [(c.num_nodes, f) for f in fails]
        print(f"true levels: graph {i + 1}/{len(test)}", end="\r", flush=True)

    own_levels = []
    add_band = model.add_band

    def keep_planar_levels(state, tokens, k):
        for i in range(len(state["n"])):
            n, e = state["n"][i], state["edges"][i]
            if n < state["target"][i] and satisfies(n, e, "planar"):
                own_levels.append((n, e.copy(), state["prio"][i].copy(), state["target"][i], state["step"]))
        return add_band(state, tokens, k)

    model.add_band = keep_planar_levels
    cond = torch.as_tensor([g.num_nodes for g in test])
    samples, _ = generate(model, TokenScheduler(temperature=args.temperature), cond,
                          member_seeds(args.seed, cond))
    model.add_band = add_band
    own_records = []
    for j, (n, e, prio, target, step) in enumerate(own_levels):
        fails = split_failures(model, scheduler, n, e, prio, target, step, 10**6 * args.seed + next(draws))
        own_records += [(n, f) for f in fails]
        print(f"own levels: {j + 1}/{len(own_levels)}", end="\r", flush=True)

    result = {"run": str(run), "temperature": args.temperature, "graphs": len(test),
              "true_levels": by_band(true_records), "own_levels": by_band(own_records),
              "samples_planar": float(np.mean([satisfies(g.num_nodes, g.edges, "planar") for g in samples]))}
    print()
    for name in ("true_levels", "own_levels"):
        print(name, json.dumps(result[name]))
    print("samples planar and connected:", result["samples_planar"])
    write_json_atomic(result, run / f"split_failures_t{args.temperature:g}.json")


if __name__ == "__main__":
    main()
