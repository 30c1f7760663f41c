"""Graph data: a small immutable graph type and the npz split IO (generators: ``generators.py``).

A graph is a :class:`Graph` with ``num_nodes`` nodes numbered ``0..n-1`` and an ``edges`` array of
shape ``[m, 2]`` (int64) in canonical form: every row ``(u, v)`` has ``u < v`` (undirected, no
self-loops), rows are sorted lexicographically and unique.  Anything that breaks these rules
raises :class:`GraphDataError`, whose message names the problem and, when known, the file,
split and graph index.

On disk a file holds one or more splits ``S`` (``train``, ``val``, ``test``, ...) as three arrays,
the layout of the shared benchmark files::

    S_num_nodes  int32 [G]        nodes of each graph
    S_edge_ptr   int64 [G + 1]    graph i owns S_edges[S_edge_ptr[i]:S_edge_ptr[i + 1]]
    S_edges      int32 [E, 2]     pairs u < v, node ids local to their graph

"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from core.io import atomic_path
from core.errors import UserError

__all__ = [
    "GraphDataError",
    "Graph",
    "SPLITS",
    "check_graph",
    "load_graph_split",
    "load_graph_splits",
    "save_graph_splits",
]

SPLITS = ("train", "val", "test")
_KEY_SUFFIXES = ("num_nodes", "edge_ptr", "edges")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_INT32_MAX = np.iinfo(np.int32).max


class GraphDataError(UserError):
    """Invalid graph, edge list, adjacency matrix or graph file."""


def _where(where: str) -> str:
    return f"{where}: " if where else ""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_num_nodes(num_nodes, *, allow_empty: bool, where: str) -> int:
    if isinstance(num_nodes, (bool, np.bool_)) or not isinstance(num_nodes, (int, np.integer)):
        raise GraphDataError(
            f"{_where(where)}num_nodes must be an integer, got {type(num_nodes).__name__} "
            f"{num_nodes!r}"
        )
    n = int(num_nodes)
    if n < 0:
        raise GraphDataError(f"{_where(where)}negative node count num_nodes={n}")
    if n == 0 and not allow_empty:
        raise GraphDataError(
            f"{_where(where)}empty graph (0 nodes); pass allow_empty=True to accept it"
        )
    return n


def _as_edge_array(edges, *, where: str) -> np.ndarray:
    """Checks shape and dtype of an edge array; returns it as int64 [m, 2] (values unchecked)."""
    try:
        arr = np.asarray(edges)
    except (ValueError, TypeError) as exc:
        raise GraphDataError(
            f"{_where(where)}edges must be a rectangular [m, 2] integer array ({exc})"
        ) from None
    if arr.size == 0 and arr.ndim <= 2 and (arr.ndim < 2 or arr.shape[-1] in (0, 2)):
        return np.zeros((0, 2), dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise GraphDataError(
            f"{_where(where)}edges must have an integer dtype (node ids), got dtype {arr.dtype}"
        )
    if arr.ndim == 2 and arr.shape[1] > 2:
        raise GraphDataError(
            f"{_where(where)}weighted edges are not supported: edge array has shape "
            f"{tuple(arr.shape)} ({arr.shape[1]} columns, e.g. u, v, weight); expected [m, 2]"
        )
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise GraphDataError(
            f"{_where(where)}edge array must have shape [m, 2], got {tuple(arr.shape)}"
        )
    return arr.astype(np.int64, copy=False)


def _check_ids(arr: np.ndarray, n: int, *, where: str) -> None:
    if arr.size == 0:
        return
    neg = np.flatnonzero((arr < 0).any(axis=1))
    if neg.size:
        u, v = arr[neg[0]]
        raise GraphDataError(
            f"{_where(where)}negative node id in edge {neg[0]} ({u}, {v}); ids must be in 0..n-1"
        )
    bad = np.flatnonzero((arr >= n).any(axis=1))
    if bad.size:
        u, v = arr[bad[0]]
        raise GraphDataError(
            f"{_where(where)}node id out of range in edge {bad[0]} ({u}, {v}): graph has "
            f"{n} nodes (ids 0..{n - 1})"
        )
    loops = np.flatnonzero(arr[:, 0] == arr[:, 1])
    if loops.size:
        raise GraphDataError(
            f"{_where(where)}self-loop at node {arr[loops[0], 0]} (edge {loops[0]}); "
            "self-loops are not allowed"
        )


def _check_canonical(arr: np.ndarray, *, where: str) -> None:
    """Raises unless rows have u < v, are sorted lexicographically and unique."""
    if arr.shape[0] == 0:
        return
    flipped = np.flatnonzero(arr[:, 0] > arr[:, 1])
    if flipped.size:
        u, v = arr[flipped[0]]
        raise GraphDataError(
            f"{_where(where)}edge {flipped[0]} ({u}, {v}) has u > v; canonical edges have "
            "u < v (use Graph.from_edge_list to canonicalise)"
        )
    du = np.diff(arr[:, 0])
    dv = np.diff(arr[:, 1])
    dup = np.flatnonzero((du == 0) & (dv == 0))
    if dup.size:
        u, v = arr[dup[0]]
        raise GraphDataError(f"{_where(where)}duplicate edge ({u}, {v})")
    unsorted = np.flatnonzero((du < 0) | ((du == 0) & (dv < 0)))
    if unsorted.size:
        raise GraphDataError(
            f"{_where(where)}edges are not sorted lexicographically (rows {unsorted[0]} and "
            f"{unsorted[0] + 1}); use Graph.from_edge_list to canonicalise"
        )


def _canonicalise(arr: np.ndarray, n: int, *, strict: bool, where: str) -> np.ndarray:
    """Orients, sorts and deduplicates a checked int64 [m, 2] array."""
    if arr.shape[0] == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.minimum(arr[:, 0], arr[:, 1])
    hi = np.maximum(arr[:, 0], arr[:, 1])
    key = lo * n + hi
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    if strict and (counts > 1).any():
        k = int(np.flatnonzero(counts > 1)[0])
        u, v = divmod(int(uniq[k]), n)
        rows = np.flatnonzero(key == uniq[k])
        oriented = {tuple(int(x) for x in arr[r]) for r in rows}
        if len(oriented) > 1:
            raise GraphDataError(
                f"{_where(where)}edge ({u}, {v}) is listed in both directions (a directed or "
                "symmetric edge list); pass strict=False to merge symmetric duplicates"
            )
        raise GraphDataError(
            f"{_where(where)}duplicate edge ({u}, {v}) listed {counts[k]} times; pass "
            "strict=False to merge duplicates"
        )
    out = np.stack([uniq // n, uniq % n], axis=1).astype(np.int64)
    return out


# --------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Graph:
    """An undirected simple graph on nodes ``0..num_nodes-1`` with canonical ``edges``.

    The constructor checks the canonical form and raises :class:`GraphDataError` otherwise;
    use :meth:`from_edge_list`, :meth:`from_adjacency` or :meth:`from_networkx` to build a graph
    from arbitrary input.  ``edges`` is stored as a read-only int64 array.  A graph with 0 nodes
    is rejected unless ``allow_empty=True``.  Isolated nodes are allowed.
    """

    num_nodes: int
    edges: np.ndarray
    allow_empty: InitVar[bool] = False

    def __post_init__(self, allow_empty: bool) -> None:
        n = _check_num_nodes(self.num_nodes, allow_empty=allow_empty, where="")
        arr = _as_edge_array(self.edges, where="")
        _check_ids(arr, n, where="")
        _check_canonical(arr, where="")
        arr = np.array(arr, dtype=np.int64, copy=True, order="C")
        arr.setflags(write=False)
        object.__setattr__(self, "num_nodes", n)
        object.__setattr__(self, "edges", arr)

    @classmethod
    def _unchecked(cls, num_nodes: int, edges: np.ndarray) -> "Graph":
        """Builds a graph from already validated, read-only, canonical int64 edges."""
        g = object.__new__(cls)
        object.__setattr__(g, "num_nodes", int(num_nodes))
        object.__setattr__(g, "edges", edges)
        return g

    # ---- basic protocol ---------------------------------------------------------------------

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.num_nodes == other.num_nodes and np.array_equal(self.edges, other.edges)

    def __hash__(self) -> int:
        return hash((self.num_nodes, self.edges.tobytes()))

    def __repr__(self) -> str:
        return f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges})"

    # ---- conversions ------------------------------------------------------------------------

    @classmethod
    def from_edge_list(
        cls,
        num_nodes: int,
        edges,
        *,
        strict: bool = True,
        allow_empty: bool = False,
        where: str = "",
    ) -> "Graph":
        """Builds a graph from an integer ``[m, 2]`` edge list in any order and orientation.

        Rows are oriented to ``u < v`` and sorted.  With ``strict=True`` (default) an edge that
        appears twice, in the same or in the opposite direction, is an error; ``strict=False``
        merges such duplicates (e.g. the two directions of a symmetric ``edge_index``).
        Self-loops, negative or out-of-range ids, weights (a third column) and non-integer
        dtypes are always errors.
        """
        n = _check_num_nodes(num_nodes, allow_empty=allow_empty, where=where)
        arr = _as_edge_array(edges, where=where)
        _check_ids(arr, n, where=where)
        out = _canonicalise(arr, n, strict=strict, where=where)
        out.setflags(write=False)
        return cls._unchecked(n, out)

    @classmethod
    def from_adjacency(cls, adjacency, *, allow_empty: bool = False, where: str = "") -> "Graph":
        """Builds a graph from a dense symmetric 0/1 adjacency matrix (numpy or CPU tensor).

        Non-square, non-binary (weighted), asymmetric (directed) matrices and a non-zero
        diagonal (self-loops) are errors.
        """
        a = np.asarray(adjacency)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise GraphDataError(
                f"{_where(where)}adjacency matrix must be square [n, n], got shape {a.shape}"
            )
        if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.number)):
            raise GraphDataError(
                f"{_where(where)}adjacency matrix must be numeric, got dtype {a.dtype}"
            )
        nonbinary = (a != 0) & (a != 1)
        if nonbinary.any():
            i, j = np.argwhere(nonbinary)[0]
            raise GraphDataError(
                f"{_where(where)}weighted (non-binary) adjacency: entry [{i}, {j}] = "
                f"{a[i, j].item()!r}; only 0/1 entries are supported"
            )
        a = a != 0
        n = _check_num_nodes(a.shape[0], allow_empty=allow_empty, where=where)
        diag = np.flatnonzero(np.diagonal(a))
        if diag.size:
            raise GraphDataError(
                f"{_where(where)}self-loop at node {diag[0]} (non-zero adjacency diagonal)"
            )
        asym = a != a.T
        if asym.any():
            i, j = np.argwhere(asym & a)[0]
            raise GraphDataError(
                f"{_where(where)}directed adjacency: A[{i}, {j}] = 1 but A[{j}, {i}] = 0; "
                "an undirected graph needs a symmetric matrix"
            )
        u, v = np.nonzero(np.triu(a, k=1))
        out = np.stack([u, v], axis=1).astype(np.int64)
        out.setflags(write=False)
        return cls._unchecked(n, out)

    @classmethod
    def from_networkx(cls, G: nx.Graph, *, allow_empty: bool = False, where: str = "") -> "Graph":
        """Converts an undirected simple networkx graph, relabelling nodes ``0..n-1`` in the
        order of ``G.nodes``.  Directed graphs, multigraphs, self-loops and edges whose
        ``weight`` attribute is not 1 are errors."""
        if G.is_directed():
            raise GraphDataError(
                f"{_where(where)}directed graph ({type(G).__name__}); convert it with "
                "G.to_undirected() if the direction does not matter"
            )
        if G.is_multigraph():
            raise GraphDataError(
                f"{_where(where)}multigraph ({type(G).__name__}) with possible parallel edges; "
                "convert it with nx.Graph(G)"
            )
        index = {node: i for i, node in enumerate(G.nodes)}
        rows = []
        for a, b, data in G.edges(data=True):
            w = data.get("weight", 1)
            if w != 1:
                raise GraphDataError(
                    f"{_where(where)}weighted edge ({a!r}, {b!r}) with weight {w!r}; only "
                    "unweighted graphs are supported"
                )
            rows.append((index[a], index[b]))
        edges = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        return cls.from_edge_list(
            len(index), edges, strict=True, allow_empty=allow_empty, where=where
        )

    def to_networkx(self) -> nx.Graph:
        G = nx.Graph()
        G.add_nodes_from(range(self.num_nodes))
        G.add_edges_from(self.edges.tolist())
        return G

    def adjacency(self) -> np.ndarray:
        """Dense symmetric adjacency matrix, ``np.uint8 [n, n]``."""
        a = np.zeros((self.num_nodes, self.num_nodes), dtype=np.uint8)
        a[self.edges[:, 0], self.edges[:, 1]] = 1
        a[self.edges[:, 1], self.edges[:, 0]] = 1
        return a

    def degrees(self) -> np.ndarray:
        return np.bincount(self.edges.ravel(), minlength=self.num_nodes).astype(np.int64)

    def num_components(self) -> int:
        return int(_component_counts(
            np.array([self.num_nodes]), np.array([0, self.num_edges]), self.edges
        )[0])


def check_graph(
    graph: Graph,
    *,
    require_connected: bool = False,
    allow_isolated: bool = True,
    where: str = "",
) -> Graph:
    """Checks requirements beyond the canonical form; returns ``graph`` unchanged."""
    if not isinstance(graph, Graph):
        raise GraphDataError(f"{_where(where)}expected a Graph, got {type(graph).__name__}")
    if not allow_isolated and graph.num_nodes > 0:
        iso = np.flatnonzero(graph.degrees() == 0)
        if iso.size:
            raise GraphDataError(
                f"{_where(where)}isolated node {iso[0]} ({iso.size} isolated in total); "
                "isolated nodes are not allowed here"
            )
    if require_connected:
        k = graph.num_components()
        if k != 1:
            raise GraphDataError(
                f"{_where(where)}graph is not connected ({k} connected components, "
                f"{graph.num_nodes} nodes, {graph.num_edges} edges); connected graphs are required"
            )
    return graph


def _component_counts(num_nodes: np.ndarray, edge_ptr: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Connected components of every graph of a batch, from one block-diagonal sparse matrix."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    num_nodes = np.asarray(num_nodes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(num_nodes)])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(len(num_nodes), dtype=np.int64)
    owner = np.repeat(np.arange(len(num_nodes)), np.diff(edge_ptr))
    shift = offsets[:-1][owner]
    rows = edges[:, 0].astype(np.int64) + shift
    cols = edges[:, 1].astype(np.int64) + shift
    mat = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(total, total))
    _, labels = connected_components(mat, directed=False)
    node_owner = np.repeat(np.arange(len(num_nodes)), num_nodes)
    pairs = np.unique(np.stack([node_owner, labels], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=len(num_nodes)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# npz IO
# --------------------------------------------------------------------------------------------


def _split_keys(split: str) -> tuple[str, str, str]:
    return tuple(f"{split}_{s}" for s in _KEY_SUFFIXES)  # type: ignore[return-value]


def _find_splits(files: Iterable[str], where: str) -> list[str]:
    prefixes: dict[str, set[str]] = {}
    for key in files:
        for suffix in _KEY_SUFFIXES:
            if key.endswith("_" + suffix) and len(key) > len(suffix) + 1:
                prefixes.setdefault(key[: -len(suffix) - 1], set()).add(suffix)
                break
    incomplete = {p: s for p, s in prefixes.items() if s != set(_KEY_SUFFIXES)}
    if incomplete:
        p, s = sorted(incomplete.items())[0]
        missing = [f"{p}_{x}" for x in _KEY_SUFFIXES if x not in s]
        raise GraphDataError(
            f"{where}: split '{p}' is incomplete, missing keys {missing} (a split S needs "
            "S_num_nodes, S_edge_ptr and S_edges)"
        )
    if not prefixes:
        raise GraphDataError(
            f"{where}: no graph splits found (expected keys like 'train_num_nodes', "
            f"'train_edge_ptr', 'train_edges'; file has {sorted(files)})"
        )
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(prefixes, key=lambda s: (order.get(s, len(order)), s))


def _graphs_from_arrays(
    num_nodes,
    edge_ptr,
    edges,
    *,
    where: str,
    allow_empty: bool = False,
    require_connected: bool = False,
    allow_isolated: bool = True,
) -> list[Graph]:
    """Validates one split's three arrays (vectorised) and slices them into graphs."""
    names = ("num_nodes", "edge_ptr", "edges")
    for name, arr in zip(names, (num_nodes, edge_ptr, edges)):
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise GraphDataError(f"{where}: '{name}' must have an integer dtype, got {arr.dtype}")
    if num_nodes.ndim != 1:
        raise GraphDataError(f"{where}: 'num_nodes' must be 1-D, got shape {num_nodes.shape}")
    if edge_ptr.ndim != 1:
        raise GraphDataError(f"{where}: 'edge_ptr' must be 1-D, got shape {edge_ptr.shape}")
    n_graphs = num_nodes.shape[0]
    if edge_ptr.shape[0] != n_graphs + 1:
        raise GraphDataError(
            f"{where}: num_nodes length mismatch: 'num_nodes' has {n_graphs} graphs, so "
            f"'edge_ptr' needs length {n_graphs + 1}, but it has length {edge_ptr.shape[0]}"
        )
    if edges.size == 0 and edges.ndim <= 2 and (edges.ndim < 2 or edges.shape[-1] in (0, 2)):
        edges = np.zeros((0, 2), dtype=np.int64)
    elif edges.ndim == 2 and edges.shape[1] > 2:
        raise GraphDataError(
            f"{where}: weighted edges are not supported: 'edges' has shape {edges.shape} "
            f"({edges.shape[1]} columns); expected [E, 2]"
        )
    elif edges.ndim != 2 or edges.shape[1] != 2:
        raise GraphDataError(f"{where}: 'edges' must have shape [E, 2], got {edges.shape}")
    num_nodes = num_nodes.astype(np.int64)
    edge_ptr = edge_ptr.astype(np.int64)
    edges = edges.astype(np.int64)

    if edge_ptr[0] != 0:
        raise GraphDataError(f"{where}: 'edge_ptr' must start at 0, starts at {edge_ptr[0]}")
    steps = np.diff(edge_ptr)
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0])
        raise GraphDataError(
            f"{where}: 'edge_ptr' is not monotone (non-decreasing): edge_ptr[{i}] = "
            f"{edge_ptr[i]} > edge_ptr[{i + 1}] = {edge_ptr[i + 1]} (graph {i})"
        )
    if edge_ptr[-1] != edges.shape[0]:
        raise GraphDataError(
            f"{where}: 'edge_ptr' ends at {edge_ptr[-1]} but 'edges' has {edges.shape[0]} rows"
        )
    neg_n = np.flatnonzero(num_nodes < 0)
    if neg_n.size:
        raise GraphDataError(
            f"{where}, graph {neg_n[0]}: negative node count num_nodes={num_nodes[neg_n[0]]}"
        )
    empty = np.flatnonzero(num_nodes == 0)
    if empty.size and not allow_empty:
        raise GraphDataError(
            f"{where}, graph {empty[0]}: empty graph (0 nodes); pass allow_empty=True to accept it"
        )
    if (num_nodes > _INT32_MAX).any():
        raise GraphDataError(f"{where}: node count does not fit in int32")

    owner = np.repeat(np.arange(n_graphs), steps)

    def fail(mask: np.ndarray, problem: Callable[[int, int, int], str]) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            r = int(bad[0])
            g = int(owner[r])
            u, v = (int(x) for x in edges[r])
            raise GraphDataError(f"{where}, graph {g}: {problem(r, u, v)}")

    fail((edges < 0).any(axis=1), lambda r, u, v: f"negative node id in edge ({u}, {v})")
    fail(
        (edges >= num_nodes[owner][:, None]).any(axis=1),
        lambda r, u, v: (
            f"node id out of range in edge ({u}, {v}): graph has {num_nodes[owner[r]]} nodes "
            f"(ids 0..{num_nodes[owner[r]] - 1})"
        ),
    )
    fail(edges[:, 0] == edges[:, 1], lambda r, u, v: f"self-loop at node {u}")
    fail(
        edges[:, 0] > edges[:, 1],
        lambda r, u, v: f"edge ({u}, {v}) has u >= v; the file layout requires u < v",
    )
    if edges.shape[0] > 1:
        same = owner[1:] == owner[:-1]
        du = np.diff(edges[:, 0])
        dv = np.diff(edges[:, 1])
        if (same & ((du < 0) | ((du == 0) & (dv < 0)))).any():
            # not sorted within a graph: sort by (graph, u, v)
            order = np.lexsort((edges[:, 1], edges[:, 0], owner))
            edges = edges[order]
            du = np.diff(edges[:, 0])
            dv = np.diff(edges[:, 1])
        dup = np.concatenate([[False], same & (du == 0) & (dv == 0)])
        fail(dup, lambda r, u, v: f"duplicate edge ({u}, {v})")

    if not allow_isolated and n_graphs:
        deg_owner = np.zeros(int(num_nodes.sum()), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(num_nodes)])
        shift = offsets[:-1][owner]
        np.add.at(deg_owner, edges[:, 0] + shift, 1)
        np.add.at(deg_owner, edges[:, 1] + shift, 1)
        iso = np.flatnonzero(deg_owner == 0)
        if iso.size:
            g = int(np.searchsorted(offsets, iso[0], side="right") - 1)
            raise GraphDataError(
                f"{where}, graph {g}: isolated node {iso[0] - offsets[g]}; isolated nodes are "
                "not allowed here"
            )
    if require_connected and n_graphs:
        comps = _component_counts(num_nodes, edge_ptr, edges)
        bad = np.flatnonzero(comps != 1)
        if bad.size:
            g = int(bad[0])
            raise GraphDataError(
                f"{where}, graph {g}: graph is not connected ({comps[g]} connected components, "
                f"{num_nodes[g]} nodes, {steps[g]} edges); connected graphs are required"
            )

    edges = np.ascontiguousarray(edges)
    edges.setflags(write=False)
    return [
        Graph._unchecked(int(num_nodes[i]), edges[edge_ptr[i] : edge_ptr[i + 1]])
        for i in range(n_graphs)
    ]


def _open_npz(path: Path):
    if not path.is_file():
        raise GraphDataError(f"graph file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GraphDataError(f"{path}: not a readable npz graph file ({exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise GraphDataError(
            f"{path}: not an npz archive of graph splits (np.load returned {type(z).__name__})"
        )
    return z


def load_graph_split(
    path: str | os.PathLike,
    split: str,
    *,
    allow_empty: bool = False,
    require_connected: bool = False,
    allow_isolated: bool = True,
) -> list[Graph]:
    """Loads split ``split`` of an npz graph file (layout in the module docstring)."""
    path = Path(path)
    with _open_npz(path) as z:
        files = set(z.files)
        keys = _split_keys(split)
        missing = [k for k in keys if k not in files]
        if missing:
            present = [s for s in _find_splits_lenient(files)]
            raise GraphDataError(
                f"{path}: split '{split}' has missing keys {missing} (splits in file: {present})"
            )
        arrays = [z[k] for k in keys]
    return _graphs_from_arrays(
        *arrays,
        where=f"{path} [split '{split}']",
        allow_empty=allow_empty,
        require_connected=require_connected,
        allow_isolated=allow_isolated,
    )


def _find_splits_lenient(files: Iterable[str]) -> list[str]:
    return sorted({k[: -len("_num_nodes")] for k in files if k.endswith("_num_nodes")})


def load_graph_splits(
    path: str | os.PathLike,
    *,
    allow_empty: bool = False,
    require_connected: bool = False,
    allow_isolated: bool = True,
) -> dict[str, list[Graph]]:
    """Loads every split of an npz graph file, ordered train, val, test, then others."""
    path = Path(path)
    out: dict[str, list[Graph]] = {}
    with _open_npz(path) as z:
        for split in _find_splits(z.files, str(path)):
            arrays = [z[k] for k in _split_keys(split)]
            out[split] = _graphs_from_arrays(
                *arrays,
                where=f"{path} [split '{split}']",
                allow_empty=allow_empty,
                require_connected=require_connected,
                allow_isolated=allow_isolated,
            )
    return out


def _split_arrays(graphs: Sequence[Graph], split: str) -> dict[str, np.ndarray]:
    graphs = list(graphs)
    for i, g in enumerate(graphs):
        if not isinstance(g, Graph):
            raise GraphDataError(
                f"split '{split}', graph {i}: expected a Graph, got {type(g).__name__}"
            )
        if g.num_nodes > _INT32_MAX:
            raise GraphDataError(f"split '{split}', graph {i}: node count does not fit in int32")
    num_nodes = np.array([g.num_nodes for g in graphs], dtype=np.int32)
    counts = np.array([g.num_edges for g in graphs], dtype=np.int64)
    edge_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if graphs:
        edges = np.concatenate([g.edges for g in graphs], axis=0).astype(np.int32)
    else:
        edges = np.zeros((0, 2), dtype=np.int32)
    k_n, k_p, k_e = _split_keys(split)
    return {k_n: num_nodes, k_p: edge_ptr, k_e: edges.reshape(-1, 2)}


def save_graph_splits(
    path: str | os.PathLike,
    splits: Mapping[str, Sequence[Graph]],
    *,
    compress: bool = True,
) -> Path:
    """Writes ``{split: graphs}`` to ``path`` in the shared npz layout, atomically.

    The data go to a temporary file in the same folder, which then replaces ``path``
    (``os.replace``), so readers never see a half-written file.  Returns the path.
    """
    path = Path(path)
    if not isinstance(splits, Mapping) or not splits:
        raise GraphDataError(f"{path}: nothing to save; expected a non-empty {{split: graphs}}")
    arrays: dict[str, np.ndarray] = {}
    for split, graphs in splits.items():
        if not isinstance(split, str) or not _SPLIT_NAME.match(split):
            raise GraphDataError(
                f"{path}: invalid split name {split!r} (letters, digits, '_' and '-' only)"
            )
        if isinstance(graphs, Graph):
            raise GraphDataError(f"{path}: split '{split}' must be a sequence of graphs")
        arrays.update(_split_arrays(graphs, split))
    # a split name must not make the keys of another split ambiguous on reading
    _find_splits(arrays.keys(), str(path))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)
    return path
