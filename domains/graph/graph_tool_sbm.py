"""The published SBM validity test, run by graph-tool in a separate interpreter.

SPECTRE, DiGress and DeFoG call a generated graph a valid SBM sample when graph-tool's
``minimize_blockmodel_dl`` (refined by merge-split MCMC at zero temperature) finds 2-5 blocks of
20-40 nodes whose densities pass a Wald test against the generating ``p_intra = 0.3`` and
``p_inter = 0.005``. graph-tool is not on PyPI: it ships as a Debian package for the system
Python (``apt install python3-graph-tool``), whose numpy need not match ours. So this file is a
script for *that* interpreter (numpy, scipy and graph-tool only, no project imports), and
:func:`published_sbm_pvalues` runs it from the project's Python:

    /usr/bin/python3 domains/graph/graph_tool_sbm.py graphs.npz out.json [--steps 100]

``graphs.npz`` holds ``num_nodes``, ``edge_ptr`` and ``edges`` (one split of the project's graph
layout, without the split prefix); ``out.json`` gets, per graph, the block of every node and the
mean Wald p-value (the graph passes when it exceeds 0.9 and the block counts are in range).

Faithful to the reference in the three places that change the verdict:
- the graph is a *directed* graph-tool graph holding both arcs of every edge (``gt.Graph()`` with
  ``adj.nonzero()``), so the fit is of a directed SBM and ``e_rr`` counts each intra-block edge
  twice, matching the ``n_r (n_r - 1)`` denominator;
- ``refinement_steps`` sweeps of ``multiflip_mcmc_sweep(beta=inf, niter=10)``: DiGress and DeFoG
  evaluate with 100 (their call site), SPECTRE's default is 1000;
- the Wald statistic is unscaled, ``(p_hat - p)^2 / (p_hat (1 - p_hat) + 1e-6)``, on every entry
  of the block matrix, and the p-values ``1 - chi2.cdf(W, 1)`` are averaged.
The Wald step itself is :func:`domains.graph.metrics.sbm_wald_pvalue`, repeated here because this
interpreter cannot import the project; a test checks that the two agree on graph-tool's blocks.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PYTHON_ENV = "C2F_GRAPH_TOOL_PYTHON"  # the interpreter that imports graph_tool
DEFAULT_STEPS = 100  # DiGress / DeFoG's call site (SPECTRE's default is 1000)


def _wald(node_counts, edge_counts, p_intra=0.3, p_inter=0.005) -> float:
    node_counts = np.asarray(node_counts, dtype=float)
    e = np.array(edge_counts, dtype=float)
    est_intra = np.diagonal(e) / (node_counts * (node_counts - 1) + 1e-6)
    np.fill_diagonal(e, 0)
    est_inter = e / (np.outer(node_counts, node_counts) + 1e-6)
    w_intra = (est_intra - p_intra) ** 2 / (est_intra * (1 - est_intra) + 1e-6)
    w = (est_inter - p_inter) ** 2 / (est_inter * (1 - est_inter) + 1e-6)
    np.fill_diagonal(w, w_intra)
    from scipy.stats import chi2
    return float((1 - chi2.cdf(np.abs(w), 1)).mean())


def _fit(n: int, edges: np.ndarray, steps: int):
    import graph_tool.all as gt
    g = gt.Graph()  # directed, as the reference builds it
    g.add_vertex(n)
    both = np.concatenate([edges, edges[:, ::-1]]) if len(edges) else np.zeros((0, 2), np.int64)
    g.add_edge_list(both)
    try:
        state = gt.minimize_blockmodel_dl(g)
    except ValueError:
        return None
    for _ in range(steps):
        state.multiflip_mcmc_sweep(beta=np.inf, niter=10)
    state = state.copy(b=gt.contiguous_map(state.get_blocks()))
    k = state.get_nonempty_B()
    blocks = np.asarray(state.get_blocks().a, dtype=np.int64)
    node_counts = state.get_nr().get_array()[:k]
    edge_counts = np.asarray(state.get_matrix().todense())[:k, :k]
    return blocks, node_counts, edge_counts


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graphs")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import graph_tool.all as gt
    gt.seed_rng(args.seed)
    np.random.seed(args.seed)
    z = np.load(args.graphs)
    num_nodes, ptr, edges = z["num_nodes"], z["edge_ptr"], z["edges"]
    rows = []
    for i, n in enumerate(num_nodes):
        fit = _fit(int(n), edges[ptr[i]:ptr[i + 1]], args.steps)
        if fit is None:
            rows.append({"blocks": None, "node_counts": None, "pvalue": 0.0, "in_range": False})
            continue
        blocks, counts, e = fit
        in_range = bool(2 <= len(counts) <= 5 and counts.min() >= 20 and counts.max() <= 40)
        rows.append({"blocks": blocks.tolist(), "node_counts": counts.tolist(),
                     "pvalue": _wald(counts, e), "in_range": in_range})
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"steps": args.steps, "seed": args.seed, "graphs": rows}, f)
    os.replace(tmp, args.out)
    return 0


def graph_tool_python() -> str | None:
    """The interpreter that imports graph_tool: ``$C2F_GRAPH_TOOL_PYTHON``, else the system
    ``python3`` when it has it; None when there is none (looked up once per setting)."""
    return _find_graph_tool(os.environ.get(PYTHON_ENV))


@functools.lru_cache(maxsize=4)
def _find_graph_tool(env_python: str | None) -> str | None:
    for exe in [env_python, "/usr/bin/python3", shutil.which("python3")]:
        if exe and Path(exe).exists():
            ok = subprocess.run([exe, "-c", "import graph_tool.all"], capture_output=True)
            if ok.returncode == 0:
                return exe
            if exe == env_python:
                raise RuntimeError(f"{PYTHON_ENV}={exe} cannot import graph_tool: "
                                   f"{ok.stderr.decode().strip().splitlines()[-1:]}")
    return None


def published_sbm_pvalues(graphs, steps: int = DEFAULT_STEPS, seed: int = 0,
                          python: str | None = None) -> list[dict]:
    """Per graph (``(num_nodes, edges[E, 2])`` pairs, project ``Graph``s or networkx graphs on
    nodes 0..n-1): the reference fit's
    blocks, block sizes, mean Wald p-value and whether the block counts are in range. Raises
    RuntimeError when no interpreter imports graph_tool (see :func:`graph_tool_python`)."""
    python = python or graph_tool_python()
    if python is None:
        raise RuntimeError("the published SBM test needs graph-tool: `apt install python3-graph-tool` "
                           f"(or set {PYTHON_ENV} to a Python that imports it)")
    def pair(g):
        if hasattr(g, "num_nodes"):  # the project's Graph
            return g.num_nodes, np.asarray(g.edges)
        if hasattr(g, "number_of_nodes"):  # networkx, nodes 0..n-1 (Graph.to_networkx)
            return g.number_of_nodes(), np.asarray(list(g.edges()), dtype=np.int64).reshape(-1, 2)
        return int(g[0]), np.asarray(g[1])
    pairs = [pair(g) for g in graphs]
    num_nodes = np.array([n for n, _ in pairs], dtype=np.int64)
    sizes = [len(e) for _, e in pairs]
    edge_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    edges = (np.concatenate([e.reshape(-1, 2) for _, e in pairs]).astype(np.int64)
             if sum(sizes) else np.zeros((0, 2), np.int64))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp, "graphs.npz"), Path(tmp, "out.json")
        np.savez(src, num_nodes=num_nodes, edge_ptr=edge_ptr, edges=edges)
        res = subprocess.run([python, __file__, str(src), str(out), "--steps", str(steps),
                              "--seed", str(seed)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"graph-tool SBM scorer failed: {res.stderr.strip()[-500:]}")
        return json.loads(out.read_text())["graphs"]


def published_sbm_valid(graphs, **kwargs) -> list[bool]:
    """The reference verdict per graph: block counts in range and mean p-value above 0.9."""
    return [r["in_range"] and r["pvalue"] > 0.9 for r in published_sbm_pvalues(graphs, **kwargs)]


if __name__ == "__main__":
    sys.exit(main())
