"""Graph-generation evaluation metrics following the GRAN / SPECTRE / DiGress / DeFoG protocol.

Everything takes plain ``networkx`` graphs. The statistics live in :mod:`domains.graph.mmd` (with
the orbit counts in :mod:`domains.graph.orbits`), validity, uniqueness and novelty in
:mod:`domains.graph.validity`; this module re-exports them and adds :func:`evaluate_graphs`.

Distribution metrics (squared MMD, no square root, biased V-statistic that includes the
self-pairs, Gaussian total-variation kernel ``k(x, y) = exp(-(||x - y||_1 / 2)^2 / (2 sigma^2))``
-- the GRAN-style kernel, *not* the GraphRNN/GDSS Gaussian-EMD kernel, so numbers are
comparable with GRAN, SPECTRE, DiGress and DeFoG tables only):

==============  ==========================================================  =======  ==========
statistic       per-graph descriptor                                        sigma    histogram
==============  ==========================================================  =======  ==========
degree          ``nx.degree_histogram`` counts                               1        yes
clustering      local clustering coefficients, 100 bins on [0, 1]            0.1      yes
orbit           mean 4-node graphlet orbit counts per node, all 15 ORCA      30       no
                orbits 0..14 (``orca node 4``: column sums / n)
spectral        normalised-Laplacian eigenvalues, 200 bins on [-1e-5, 2],    1        yes
                normalised to a pmf
wavelet         per node and filter, the squared norm of the row of          1        yes
                ``U g(Lambda) U^T`` for SPECTRE's 12 spectral filters
                (PyGSP ``Abspline``, lmax 2), 100 bins each on [0, 1.385]
==============  ==========================================================  =======  ==========

"histogram: yes" means each descriptor is normalised as ``h / (h.sum() + 1e-6)`` before the
kernel and descriptors of unequal length are zero-padded to the longer one, exactly as the
reference ``compute_mmd(..., is_hist=True)``. The orbit statistic uses the raw mean counts
(``is_hist=False``). Graphs with no nodes are dropped from the sets before the statistics, as
the reference drops empty generated graphs.

The MMD is symmetric in its two arguments, so "reference" versus "sample" does not matter. One
documented difference: the reference ``spectral_stats`` maps its worker over the predicted graphs
together with a list as long as the reference set, which silently truncates the predicted set to
the size of the reference set when it is larger. ``mmd_spectral`` here always uses every graph.
On ``graphs/planar.npz`` the published training-set row (MMD(test, train): degree 0.0002,
clustering 0.0310, orbit 0.0005, spectral 0.0038) is reproduced with all 128 training graphs
(1.94e-4, 3.102e-2, 5.41e-4, 3.82e-3); truncating the training set to its first 40 graphs would
give a spectral MMD of 5.2e-3 instead.

Validity (``is_planar_graph``, ``is_tree_graph``, ``is_lobster_graph``, ``is_grid_graph``,
``is_sbm_graph``), uniqueness/novelty by exact isomorphism and V.U.N. follow DiGress / DeFoG:
a generated graph is unique if no earlier generated graph is isomorphic to it, novel if no
training graph is isomorphic to it, and V.U.N. is the fraction of generated graphs that are
valid, unique and novel at once.
"""
from __future__ import annotations

from typing import Sequence

import networkx as nx
import numpy as np

from domains.graph.mmd import *  # noqa: F401,F403  (the statistics, re-exported)
from domains.graph.mmd import MMD_STATISTICS, __all__ as _MMD
from domains.graph.orbits import orbit_counts  # noqa: F401
from domains.graph.validity import *  # noqa: F401,F403
from domains.graph.validity import VALIDITY_FUNCTIONS, uniqueness_novelty, __all__ as _VALIDITY

__all__ = [*_MMD, "orbit_counts", *_VALIDITY, "evaluate_graphs"]


def evaluate_graphs(
    gen: Sequence[nx.Graph],
    ref: Sequence[nx.Graph],
    train: Sequence[nx.Graph],
    kind: str | None = None,
    more_validity: dict | None = None,
) -> dict[str, float]:
    """All metrics of the protocol for generated graphs ``gen`` against the reference (test) set.

    ``more_validity`` maps a name to a function of the whole generated list that returns one
    verdict per graph (another validity test, such as the published SBM fit): it adds
    ``valid_<name>`` and ``vun_<name>``, sharing the uniqueness and novelty computed here.

    Keys: ``mmd_degree``, ``mmd_clustering``, ``mmd_orbit``, ``mmd_spectral``, ``mmd_wavelet`` (squared MMD to
    ``ref``), ``ratio_<name>`` = MMD(ref, gen) / MMD(ref, train) per statistic (nan when the
    denominator is 0), ``ratio`` = mean of the finite ratios over the five published statistics
    (``ratio4`` the mean over the four without the wavelet one, as this project reported before), ``valid``, ``unique``, ``novel``, ``vun`` and
    ``unique_novel``. ``kind`` in {"planar", "tree", "sbm", "lobster", "grid"} picks the validity
    function; with ``kind=None`` there is no validity notion, so ``valid`` and ``vun`` are nan
    (``unique_novel`` still gives the U.N. fraction).
    """
    if kind is not None and kind not in VALIDITY_FUNCTIONS:
        raise ValueError(f"unknown graph kind {kind!r}; expected one of {sorted(VALIDITY_FUNCTIONS)} or None")
    gen, ref, train = list(gen), list(ref), list(train)
    for name, graphs in (("gen", gen), ("ref", ref), ("train", train)):
        if not graphs:
            raise ValueError(f"{name} is an empty set of graphs")
    out: dict[str, float] = {}
    ratios = []
    for name, fn in MMD_STATISTICS.items():
        value = fn(ref, gen)
        base = fn(ref, train)
        ratio = value / base if base > 0 else float("nan")
        out[f"mmd_{name}"] = float(value)
        out[f"ratio_{name}"] = float(ratio)
        ratios.append(ratio)
    finite = [r for r in ratios if np.isfinite(r)]
    # a statistic on which train and test agree exactly (clustering of trees: no triangles
    # anywhere) has no ratio; the mean runs over the statistics that have one
    out["ratio"] = float(np.mean(finite)) if finite else float("nan")
    four = [out[f"ratio_{n}"] for n in MMD_STATISTICS if n != "wavelet" and np.isfinite(out[f"ratio_{n}"])]
    out["ratio4"] = float(np.mean(four)) if four else float("nan")
    unique_frac, novel_frac, un_mask = uniqueness_novelty(gen, train)
    out["unique"] = unique_frac
    out["novel"] = novel_frac
    out["unique_novel"] = float(un_mask.mean())
    if kind is None:
        out["valid"] = float("nan")
        out["vun"] = float("nan")
    else:
        validity_fn = VALIDITY_FUNCTIONS[kind]
        valid = np.array([bool(validity_fn(g)) for g in gen])
        out["valid"] = float(valid.mean())
        out["vun"] = float((valid & un_mask).mean())
    for name, fn in (more_validity or {}).items():
        valid = np.asarray(fn(gen), dtype=bool)
        out[f"valid_{name}"] = float(valid.mean())
        out[f"vun_{name}"] = float((valid & un_mask).mean())
    return out
