"""Cost of deterministic mode: seconds per graph training step, deterministic vs not.

    python benchmarks/determinism_cost.py [--threads 2] [--steps 20] [--sizes tiny test default]

Every step's batch is trained once under each variant, in a shuffled order (the variants share
the machine's load), on one model; the table gives the median seconds per step (forward,
backward, clip, AdamW; the pyramids are built inside the loss, as in training):

- ``default``: ``set_deterministic(False)``; the refiner gathers rows with
  ``core.determinism.gather_rows`` (``index_select``; backward ``index_add_``).
- ``deterministic``: the same with ``set_deterministic(True)``.
- ``x[index], default`` / ``x[index], deterministic``: the refiner as it was before
  (``x[index]`` gathers: CPU atomics in the backward), mode off / on (torch then sorts).
- ``index_sum backward, deterministic``: the gathers' backward summed by
  ``core.determinism.index_sum`` (row-order independent), mode on: the cost of that guarantee.

Sizes: ``tiny`` is the graph tests' config (trees, d_model 16, 1 layer, batch 4), ``test`` the
one of tests/test_determinism.py (planar graphs, d_model 64, 1 layer, a triangle layer, batch 4),
``default`` configs/domain/graph.yaml (trees, d_model 96, 4 layers, batch 16).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import domains.graph.model as graph_model  # noqa: E402
import domains.graph.network as graph_network  # noqa: E402  (the refiner's row gather lives here)
from core.determinism import deterministic, index_sum  # noqa: E402
from core.train import batch_indices, step_seed  # noqa: E402
from domains.graph.generators import get_splits  # noqa: E402

SIZES = {"tiny": ("tree", dict(d_model=16, layers=1, heads=2), 4),
         "test": ("planar", dict(d_model=64, layers=1, heads=2, edge_layers=1), 4),
         "default": ("tree", dict(d_model=96, layers=4, heads=4), 16)}


class _CanonicalGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.rows = len(x)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        return index_sum(grad, ctx.saved_tensors[0], ctx.rows), None


VARIANTS = {  # name: (deterministic mode, the refiner's row gather)
    "default": (False, graph_network.gather_rows),
    "deterministic": (True, graph_network.gather_rows),
    "x[index], default": (False, lambda x, i: x[i]),
    "x[index], deterministic": (True, lambda x, i: x[i]),
    "index_sum backward, deterministic": (True, _CanonicalGather.apply),
}


def measure(size: str, steps: int, warmup: int = 3) -> dict[str, float]:
    source, kw, batch_size = SIZES[size]
    data = get_splits(source, n_train=128, n_val=32, n_test=40, seed=0)["train"]
    torch.manual_seed(0)
    model = graph_model.GraphScaleModel(**kw).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    order = random.Random(0)
    saved = graph_network.gather_rows
    try:
        for step in range(warmup + steps):
            batch = [data[i] for i in batch_indices(step, len(data), batch_size, 0).tolist()]
            names = list(VARIANTS)
            order.shuffle(names)
            for name in names:
                det, graph_network.gather_rows = VARIANTS[name]
                with deterministic(det):
                    gen = torch.Generator().manual_seed(step_seed(0, step))
                    t = time.perf_counter()
                    loss, _ = model(batch, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    if step >= warmup:
                        times[name].append(time.perf_counter() - t)
    finally:
        graph_network.gather_rows = saved
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sizes", nargs="+", default=["tiny", "test", "default"], choices=list(SIZES))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps")
    print("| size | " + " | ".join(VARIANTS) + " | deterministic / default |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for size in args.sizes:
        t = measure(size, args.steps)
        print(f"| {size} | " + " | ".join(f"{t[n]:.4f}" for n in VARIANTS)
              + f" | {t['deterministic'] / t['default']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
