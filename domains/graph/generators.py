"""Where graphs come from: seeded generators of the synthetic benchmarks, and ``get_splits``,
which resolves a source (a generator name, a file, or a name in the shared data folder).

The generators follow the published recipes of the synthetic benchmarks (see each docstring) and
are deterministic given ``seed``.  They are also prefix-stable: the first ``k`` graphs of a
request for ``n >= k`` graphs are the ``k`` graphs of a request for ``k``.
"""
from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Callable

import networkx as nx
import numpy as np

from domains.graph.data import Graph, GraphDataError, load_graph_splits

__all__ = ["planar", "tree", "sbm", "community", "grid", "lobster", "GENERATORS", "make_dataset",
           "get_splits", "DATA_DIR_ENV"]

DATA_DIR_ENV = "C2F_SHARED_DATA"


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GraphDataError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise GraphDataError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _seed_sequence(family: str, seed) -> np.random.SeedSequence:
    seed = _check_count("seed", seed, 0)
    return np.random.SeedSequence([seed, zlib.crc32(family.encode())])


def _child_rngs(family: str, seed, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in _seed_sequence(family, seed).spawn(n)]


def _nx_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def planar(n_graphs: int, n_nodes: int = 64, seed: int = 0) -> list[Graph]:
    """Planar graphs: Delaunay triangulations of ``n_nodes`` uniform points in the unit square.

    Recipe of the SPECTRE planar set (Martinkus et al. 2022, ``PlanarDataset`` in
    KarolisMart/SPECTRE ``data.py``: ``np.random.rand(n, 2)`` then ``scipy.spatial.Delaunay``,
    the three sides of every simplex become edges).  A triangulation is connected and planar.
    A degenerate draw that leaves a point out of the triangulation is redrawn.
    """
    from scipy.spatial import Delaunay

    n_graphs = _check_count("n_graphs", n_graphs, 0)
    n_nodes = _check_count("n_nodes", n_nodes, 3)
    out = []
    for rng in _child_rngs("planar", seed, n_graphs):
        while True:
            points = rng.random((n_nodes, 2))
            tri = Delaunay(points)
            s = tri.simplices
            pairs = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]], axis=0)
            if np.unique(s).size == n_nodes:
                break
        out.append(Graph.from_edge_list(n_nodes, pairs.astype(np.int64), strict=False))
    return out


def tree(n_graphs: int, n_nodes: int = 64, seed: int = 0) -> list[Graph]:
    """Uniformly random labelled trees on ``n_nodes`` nodes (random Prüfer sequences).

    Recipe of the SPECTRE / ESGG tree set (``nx.random_tree(64)``, removed from networkx; its
    replacement ``nx.random_labeled_tree`` draws the same distribution).
    """
    n_graphs = _check_count("n_graphs", n_graphs, 0)
    n_nodes = _check_count("n_nodes", n_nodes, 1)
    out = []
    for rng in _child_rngs("tree", seed, n_graphs):
        G = nx.random_labeled_tree(n_nodes, seed=_nx_seed(rng))
        out.append(Graph.from_networkx(G))
    return out


def sbm(
    n_graphs: int,
    seed: int = 0,
    *,
    n_blocks: tuple[int, int] = (2, 5),
    block_size: tuple[int, int] = (20, 40),
    p_in: float = 0.3,
    p_out: float = 0.005,
    connected_only: bool = False,
) -> list[Graph]:
    """Stochastic block model graphs, recipe of the SPECTRE SBM set.

    KarolisMart/SPECTRE ``SBMDataset``: the number of blocks is uniform on 2..5 and each block
    size uniform on 20..40 (both inclusive, ``np.random.random_integers``), intra-block edge
    probability 0.3, inter-block 0.005, ``nx.stochastic_block_model`` with nodes in block order.
    SPECTRE does not reject disconnected draws (the shared ``sbm.npz`` holds a few disconnected
    graphs), so neither do we unless ``connected_only=True``.
    """
    n_graphs = _check_count("n_graphs", n_graphs, 0)
    lo_b, hi_b = n_blocks
    lo_s, hi_s = block_size
    _check_count("n_blocks[0]", lo_b, 1)
    _check_count("block_size[0]", lo_s, 1)
    if hi_b < lo_b or hi_s < lo_s:
        raise GraphDataError(f"empty range n_blocks={n_blocks} or block_size={block_size}")
    out = []
    for rng in _child_rngs("sbm", seed, n_graphs):
        while True:
            k = int(rng.integers(lo_b, hi_b + 1))
            sizes = rng.integers(lo_s, hi_s + 1, size=k).tolist()
            probs = np.full((k, k), p_out)
            np.fill_diagonal(probs, p_in)
            G = nx.stochastic_block_model(sizes, probs.tolist(), seed=_nx_seed(rng))
            if not connected_only or nx.is_connected(G):
                break
        out.append(Graph.from_networkx(G))
    return out


def community(
    n_graphs: int,
    seed: int = 0,
    *,
    n_range: tuple[int, int] = (12, 20),
    p_intra: float = 0.7,
    p_inter: float = 0.05,
    fixed_community_seeds: bool = True,
) -> list[Graph]:
    """Two-community graphs, recipe of community-small (EDP-GNN / GDSS, also SPECTRE).

    ermongroup/GraphScoreMatching ``n_community`` as reused by GDSS and SPECTRE: a total size
    ``N`` uniform on 12..20, two communities of ``N // 2`` nodes each (so 12, 14, .., 20 nodes),
    each an Erdős–Rényi graph with p = 0.7; every cross pair becomes a bridge with probability
    ``2 * p_inter / N_c`` (``N_c`` the community size, giving ``p_inter`` expected bridges per
    node), and if no bridge was drawn, one joins the first nodes of the two communities.
    The reference code seeds the two Erdős–Rényi draws with 0 and 1, so all graphs of one size
    share their communities; the shared ``community_small.npz`` reproduces that exactly.
    ``fixed_community_seeds=False`` draws the communities from ``seed`` instead.
    """
    n_graphs = _check_count("n_graphs", n_graphs, 0)
    lo, hi = n_range
    _check_count("n_range[0]", lo, 2)
    if hi < lo:
        raise GraphDataError(f"empty range n_range={n_range}")
    out = []
    for rng in _child_rngs("community", seed, n_graphs):
        total = int(rng.integers(lo, hi + 1))
        c = total // 2
        blocks = []
        for i in range(2):
            s = i if fixed_community_seeds else _nx_seed(rng)
            blocks.append(nx.gnp_random_graph(c, p_intra, seed=s))
        G = nx.disjoint_union_all(blocks)
        p_bridge = p_inter * 2 / c
        bridges = np.argwhere(rng.random((c, c)) < p_bridge)
        if bridges.size == 0:
            bridges = np.array([[0, 0]])
        G.add_edges_from((int(a), int(b) + c) for a, b in bridges)
        out.append(Graph.from_networkx(G))
    return out


def grid(
    n_graphs: int,
    seed: int = 0,
    *,
    sizes: tuple[int, int] = (10, 19),
) -> list[Graph]:
    """2-D grid graphs of ``r x c`` nodes, ``r`` and ``c`` in 10..19 (GraphRNN / GRAN grid set).

    The reference set (``create_graphs.py`` in JiaxuanYou/graph-generation, ``create_graphs`` in
    lrjconan/GRAN) is the 100 grids ``nx.grid_2d_graph(i, j)`` for ``i, j in range(10, 20)``.
    Here the 100 shapes are taken in an order shuffled by ``seed``: 100 graphs are exactly the
    reference set, and a request beyond 100 continues with a fresh shuffle.
    Nodes are numbered row-major.
    """
    n_graphs = _check_count("n_graphs", n_graphs, 0)
    lo, hi = sizes
    _check_count("sizes[0]", lo, 1)
    if hi < lo:
        raise GraphDataError(f"empty range sizes={sizes}")
    shapes = [(r, c) for r in range(lo, hi + 1) for c in range(lo, hi + 1)]
    rng = np.random.default_rng(_seed_sequence("grid", seed))
    order: list[tuple[int, int]] = []
    while len(order) < n_graphs:
        order.extend(shapes[i] for i in rng.permutation(len(shapes)))
    out = []
    for r, c in order[:n_graphs]:
        idx = np.arange(r * c).reshape(r, c)
        horiz = np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], axis=1)
        vert = np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], axis=1)
        out.append(Graph.from_edge_list(r * c, np.concatenate([horiz, vert]).astype(np.int64)))
    return out


def _random_lobster(n: float, p1: float, p2: float, seed: int) -> nx.Graph:
    fn = getattr(nx, "random_lobster_graph", None)
    if fn is not None:
        return fn(n, p1, p2, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return nx.random_lobster(n, p1, p2, seed=seed)


def lobster(
    n_graphs: int,
    seed: int = 0,
    *,
    mean_nodes: int = 80,
    p1: float = 0.7,
    p2: float = 0.7,
    min_nodes: int = 10,
    max_nodes: int = 100,
    max_tries: int = 100_000,
) -> list[Graph]:
    """Random lobster graphs, recipe of the GRAN lobster set.

    lrjconan/GRAN ``utils/data_helper.py`` (``create_graphs('lobster')``, reused by SPECTRE):
    ``nx.random_lobster(80, 0.7, 0.7)`` (80 is the expected backbone length), keeping draws with
    10..100 nodes.  GRAN seeds the draws 1234, 1235, ...; here the seeds of successive draws come
    from ``seed``.  About one draw in ten is kept.
    """
    n_graphs = _check_count("n_graphs", n_graphs, 0)
    if not (0 <= p1 < 1 and 0 <= p2 < 1):
        raise GraphDataError(f"p1 and p2 must be in [0, 1), got p1={p1}, p2={p2}")
    min_nodes = _check_count("min_nodes", min_nodes, 1)
    rng = np.random.default_rng(_seed_sequence("lobster", seed))
    out: list[Graph] = []
    tries = 0
    while len(out) < n_graphs:
        if tries >= max_tries:
            raise GraphDataError(
                f"lobster: only {len(out)} of {n_graphs} graphs with {min_nodes}..{max_nodes} "
                f"nodes after {tries} draws; widen the node range"
            )
        tries += 1
        G = _random_lobster(mean_nodes, p1, p2, _nx_seed(rng))
        if min_nodes <= G.number_of_nodes() <= max_nodes:
            out.append(Graph.from_networkx(G))
    return out


GENERATORS: dict[str, Callable[..., list[Graph]]] = {
    "planar": planar,
    "tree": tree,
    "sbm": sbm,
    "community": community,
    "grid": grid,
    "lobster": lobster,
}


def make_dataset(
    name: str,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    **kwargs,
) -> dict[str, list[Graph]]:
    """Generates ``n_train + n_val + n_test`` graphs of family ``name`` in one seeded stream and
    splits them in that order into ``{"train", "val", "test"}`` (empty splits included)."""
    if name not in GENERATORS:
        raise GraphDataError(f"unknown generator {name!r}; known: {sorted(GENERATORS)}")
    counts = [_check_count(k, v, 0) for k, v in
              (("n_train", n_train), ("n_val", n_val), ("n_test", n_test))]
    graphs = GENERATORS[name](sum(counts), seed=seed, **kwargs)
    a, b = counts[0], counts[0] + counts[1]
    return {"train": graphs[:a], "val": graphs[a:b], "test": graphs[b:]}


def _looks_like_path(source: str) -> bool:
    return source.endswith(".npz") or os.sep in source or (os.altsep or os.sep) in source


def get_splits(
    source: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int | None = None,
    **kwargs,
) -> dict[str, list[Graph]]:
    """Train/val/test graphs from a generator name or an npz file.

    * a path (contains a separator or ends in ``.npz``): that file;
    * a bare name with ``data_dir``: ``data_dir/<name>.npz`` (or ``data_dir/graphs/<name>.npz``,
      so the root of the shared data folder works too);
    * a generator name (``GENERATORS``) without ``data_dir``: generated with ``n_train``,
      ``n_val``, ``n_test`` (default 128/32/40, the SPECTRE split sizes) and ``seed`` (default 0);
      extra keyword arguments go to the generator;
    * any other bare name without ``data_dir``: looked up in ``$C2F_SHARED_DATA``.

    For files, extra keyword arguments go to :func:`load_graph_splits`.
    """
    source_str = os.fspath(source)
    gen_args = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed}
    is_path = isinstance(source, os.PathLike) or _looks_like_path(source_str)

    if not is_path and data_dir is None and source_str in GENERATORS:
        return make_dataset(
            source_str,
            128 if n_train is None else n_train,
            32 if n_val is None else n_val,
            40 if n_test is None else n_test,
            0 if seed is None else seed,
            **kwargs,
        )

    given = [k for k, v in gen_args.items() if v is not None]
    if given:
        raise GraphDataError(
            f"{given} apply only to generators ({sorted(GENERATORS)}), not to the graph file "
            f"source {source_str!r}"
        )
    if is_path:
        candidates = [Path(source_str)]
        if data_dir is not None and not Path(source_str).is_absolute():
            candidates.insert(0, Path(data_dir) / source_str)
    else:
        root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
        if root is None:
            raise GraphDataError(
                f"unknown graph source {source_str!r}: not a generator name "
                f"({sorted(GENERATORS)}) and no data_dir given (nor ${DATA_DIR_ENV}) to find "
                f"{source_str}.npz in; point data_dir at the shared data folder"
            )
        root = Path(root)
        candidates = [root / f"{source_str}.npz", root / "graphs" / f"{source_str}.npz"]
    for path in candidates:
        if path.is_file():
            return load_graph_splits(path, **kwargs)
    tried = ", ".join(str(p) for p in candidates)
    raise GraphDataError(
        f"graph file not found: {tried}; use the shared data folder (data_dir pointing at the "
        f"folder with the .npz files, or ${DATA_DIR_ENV}) or a generator name "
        f"({', '.join(sorted(GENERATORS))}) without data_dir"
    )
