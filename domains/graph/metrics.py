"""Graph-generation evaluation metrics following the GRAN / SPECTRE / DiGress / DeFoG protocol.

Everything takes plain ``networkx`` graphs.

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

import contextlib
import functools
import math
import warnings
from typing import Callable, Iterable, Sequence

import networkx as nx
import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import gammaln
from scipy.stats import chi2

__all__ = [
    "gaussian_tv_mmd",
    "degree_descriptors",
    "clustering_descriptors",
    "orbit_descriptors",
    "spectral_descriptors",
    "mmd_degree",
    "mmd_clustering",
    "mmd_orbit",
    "mmd_spectral",
    "orbit_counts",
    "is_planar_graph",
    "is_tree_graph",
    "is_lobster_graph",
    "is_grid_graph",
    "is_sbm_graph",
    "sbm_blocks",
    "uniqueness_novelty",
    "vun",
    "evaluate_graphs",
    "VALIDITY_FUNCTIONS",
    "MMD_STATISTICS",
]

# ---------------------------------------------------------------------------------------------
# BLAS threading: the matrices here are small (tens to a few hundred rows), where a multi-threaded
# BLAS/LAPACK is slower than a single thread and, on oversubscribed machines, by orders of
# magnitude (a 150 x 150 ``eigh`` taking 0.1-0.5 s instead of 5 ms). The linear algebra of this
# module therefore runs with the BLAS pool limited to one thread (restored afterwards).
# ---------------------------------------------------------------------------------------------

_THREADPOOL_CONTROLLER = None


def _blas_single_thread():
    global _THREADPOOL_CONTROLLER
    try:
        if _THREADPOOL_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _THREADPOOL_CONTROLLER = ThreadpoolController()
        return _THREADPOOL_CONTROLLER.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or unable to inspect the BLAS: run as is
        return contextlib.nullcontext()


def _single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _blas_single_thread():
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# MMD with the Gaussian total-variation kernel
# ---------------------------------------------------------------------------------------------


def _pad_stack(vectors: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(vectors), length), dtype=np.float64)
    for i, v in enumerate(vectors):
        v = np.asarray(v, dtype=np.float64).ravel()
        out[i, : v.size] = v
    return out


def _tv_kernel_mean(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Mean over all pairs of ``exp(-(sum|x_i - y_j| / 2)^2 / (2 sigma^2))``."""
    dist = cdist(x, y, metric="cityblock") / 2.0
    return float(np.exp(-(dist * dist) / (2.0 * sigma * sigma)).mean())


def gaussian_tv_mmd(
    samples1: Sequence[np.ndarray],
    samples2: Sequence[np.ndarray],
    sigma: float = 1.0,
    is_hist: bool = True,
) -> float:
    """Squared MMD between two sets of descriptor vectors with the Gaussian TV kernel.

    Vectors of unequal length are zero-padded to the longest one. With ``is_hist`` every vector is
    normalised as ``v / (v.sum() + 1e-6)`` first (the reference normalisation). The estimate is the
    biased V-statistic ``mean K(X, X) + mean K(Y, Y) - 2 mean K(X, Y)``.
    """
    if len(samples1) == 0 or len(samples2) == 0:
        raise ValueError("gaussian_tv_mmd needs two non-empty sets of descriptors")
    length = max(max(np.asarray(s).size for s in samples1), max(np.asarray(s).size for s in samples2))
    x = _pad_stack(samples1, length)
    y = _pad_stack(samples2, length)
    if is_hist:
        x = x / (x.sum(axis=1, keepdims=True) + 1e-6)
        y = y / (y.sum(axis=1, keepdims=True) + 1e-6)
    kxx = _tv_kernel_mean(x, x, sigma)
    kyy = _tv_kernel_mean(y, y, sigma)
    kxy = _tv_kernel_mean(x, y, sigma)
    return kxx + kyy - 2.0 * kxy


def _nonempty(graphs: Iterable[nx.Graph], name: str) -> list[nx.Graph]:
    graphs = list(graphs)
    if not graphs:
        raise ValueError(f"{name} is an empty set of graphs")
    kept = [g for g in graphs if g.number_of_nodes() > 0]
    if not kept:
        raise ValueError(f"{name} contains only graphs without nodes")
    return kept


# ---------------------------------------------------------------------------------------------
# Per-graph descriptors
# ---------------------------------------------------------------------------------------------


def degree_descriptors(graphs: Iterable[nx.Graph]) -> list[np.ndarray]:
    """Degree histograms (counts, index = degree)."""
    return [np.asarray(nx.degree_histogram(g), dtype=np.float64) for g in graphs]


def clustering_descriptors(graphs: Iterable[nx.Graph], bins: int = 100) -> list[np.ndarray]:
    """Histograms (counts) of local clustering coefficients in ``bins`` bins on [0, 1]."""
    out = []
    for g in graphs:
        coeffs = list(nx.clustering(g).values())
        hist, _ = np.histogram(coeffs, bins=bins, range=(0.0, 1.0))
        out.append(hist.astype(np.float64))
    return out


def orbit_descriptors(graphs: Iterable[nx.Graph]) -> list[np.ndarray]:
    """Mean orbit counts per node (15 values: orbits 0..14, as ORCA ``node 4``)."""
    return [orbit_counts(g).sum(axis=0) / g.number_of_nodes() for g in graphs]


@_single_threaded
def spectral_descriptors(graphs: Iterable[nx.Graph]) -> list[np.ndarray]:
    """Normalised-Laplacian eigenvalue pmf: 200 bins on [-1e-5, 2], divided by its sum.

    Like the reference, eigenvalues outside the range (a numerical 2 + 1e-15 of a bipartite
    graph) fall out of the histogram.
    """
    out = []
    for g in graphs:
        lap = nx.normalized_laplacian_matrix(g).toarray()
        try:
            eigs = np.linalg.eigvalsh(lap)
        except Exception:  # same fallback as the reference worker
            eigs = np.zeros(g.number_of_nodes())
        hist, _ = np.histogram(eigs, bins=200, range=(-1e-5, 2.0))
        total = hist.sum()
        out.append(hist / total if total > 0 else hist.astype(np.float64))
    return out


# ---------------------------------------------------------------------------------------------
# The four MMD statistics
# ---------------------------------------------------------------------------------------------


def mmd_degree(ref: Sequence[nx.Graph], gen: Sequence[nx.Graph]) -> float:
    """Squared MMD of degree histograms (Gaussian TV kernel, sigma 1)."""
    ref, gen = _nonempty(ref, "ref"), _nonempty(gen, "gen")
    return gaussian_tv_mmd(degree_descriptors(ref), degree_descriptors(gen), sigma=1.0)


def mmd_clustering(ref: Sequence[nx.Graph], gen: Sequence[nx.Graph]) -> float:
    """Squared MMD of clustering-coefficient histograms (100 bins, Gaussian TV, sigma 0.1)."""
    ref, gen = _nonempty(ref, "ref"), _nonempty(gen, "gen")
    return gaussian_tv_mmd(clustering_descriptors(ref), clustering_descriptors(gen), sigma=0.1)


def mmd_orbit(ref: Sequence[nx.Graph], gen: Sequence[nx.Graph]) -> float:
    """Squared MMD of mean per-node orbit counts (orbits 0..14, Gaussian TV, sigma 30, raw)."""
    ref, gen = _nonempty(ref, "ref"), _nonempty(gen, "gen")
    return gaussian_tv_mmd(orbit_descriptors(ref), orbit_descriptors(gen), sigma=30.0, is_hist=False)


def mmd_spectral(ref: Sequence[nx.Graph], gen: Sequence[nx.Graph]) -> float:
    """Squared MMD of normalised-Laplacian spectra (200 bins on [-1e-5, 2], Gaussian TV, sigma 1).

    Uses every graph of both sets (the reference truncates the second set to the size of the
    first; see the module docstring).
    """
    ref, gen = _nonempty(ref, "ref"), _nonempty(gen, "gen")
    return gaussian_tv_mmd(spectral_descriptors(ref), spectral_descriptors(gen), sigma=1.0)


MMD_STATISTICS: dict[str, Callable[[Sequence[nx.Graph], Sequence[nx.Graph]], float]] = {
    "degree": mmd_degree,
    "clustering": mmd_clustering,
    "orbit": mmd_orbit,
    "spectral": mmd_spectral,
}

# ---------------------------------------------------------------------------------------------
# Graphlet orbit counts (ORCA numbering, graphlets on up to 4 nodes)
# ---------------------------------------------------------------------------------------------


def _adjacency(G: nx.Graph) -> np.ndarray:
    if G.is_directed():
        G = G.to_undirected()
    a = nx.to_numpy_array(G, nodelist=list(G.nodes()), dtype=np.float64, weight=None)
    a = (a != 0).astype(np.float64)
    np.fill_diagonal(a, 0.0)
    return a


@_single_threaded
def orbit_counts(G: nx.Graph) -> np.ndarray:
    """Per-node counts of the 15 orbits of connected induced graphlets on 2-4 nodes.

    Rows follow ``list(G.nodes())``; columns use the ORCA numbering:
    0 edge; 1/2 end/middle of an induced 3-path; 3 triangle; 4/5 end/middle of an induced 4-path;
    6/7 leaf/centre of a 3-star; 8 4-cycle; 9/10/11 pendant / degree-2 / degree-3 node of a paw
    (triangle with a tail); 12/13 degree-2 / degree-3 node of a diamond; 14 K4.
    Counts are of induced subgraphs, exactly ORCA's ``orca node 4`` output (self-loops and edge
    directions are ignored). The counts come from ORCA's own system of equations, evaluated with
    dense matrix products, so the cost is a handful of ``n x n`` matrix products plus one small
    product per node for the K4 count.
    """
    a = _adjacency(G)
    n = a.shape[0]
    out = np.zeros((n, 15), dtype=np.int64)
    if n == 0:
        return out
    d = a.sum(axis=1)
    p = a @ a  # common neighbours of every pair
    t = a * p  # triangles over each edge (0 off the edges)
    at = a @ t
    rowsum_at = at.sum(axis=1)
    at_on_edges = (at * a).sum(axis=1)
    tri = t.sum(axis=1) / 2.0  # triangles through each node
    non_adj = 1.0 - a - np.eye(n)  # pairs that are neither adjacent nor equal

    # K4 containing each node = triangles inside its neighbourhood
    k4 = np.zeros(n)
    for x in range(n):
        nb = np.flatnonzero(a[x])
        if nb.size >= 3:
            sub = a[np.ix_(nb, nb)]
            k4[x] = np.einsum("ij,jk,ki->", sub, sub, sub) / 6.0

    free_x = a * (d[:, None] - 1.0 - t)  # [x, y]: neighbours of x other than y not adjacent to y
    free_y = a * (d[None, :] - 1.0 - t)  # [x, y]: neighbours of y other than x not adjacent to x

    f_14 = k4
    f_12_14 = 0.5 * ((a @ (t - a)) * a).sum(axis=1)
    f_10_13 = t @ (d - 1.0) - at_on_edges
    f_13_14 = (t * (t - 1.0)).sum(axis=1)
    f_11_13 = (t * (d[:, None] - 1.0 - t)).sum(axis=1)
    f_7_11 = (free_x * (d[:, None] - 2.0 - t)).sum(axis=1)
    f_5_8 = (free_x * (d[None, :] - 1.0 - t)).sum(axis=1)
    f_6_9 = (free_y * (d[None, :] - 2.0 - t)).sum(axis=1)
    f_9_12 = rowsum_at - at_on_edges - 2.0 * tri
    g = a * (d[None, :] - 1.0) - t
    ag = a @ g
    f_4_8 = ag.sum(axis=1) - (ag * a).sum(axis=1) - np.diag(ag)
    f_8_12 = (p * non_adj * (p - 1.0)).sum(axis=1)

    orb = np.zeros((n, 15))
    orb[:, 0] = d
    orb[:, 1] = free_y.sum(axis=1)
    orb[:, 2] = 0.5 * free_x.sum(axis=1)
    orb[:, 3] = tri
    orb[:, 14] = f_14
    orb[:, 13] = (f_13_14 - 6 * f_14) / 2
    orb[:, 12] = f_12_14 - 3 * f_14
    orb[:, 11] = (f_11_13 - f_13_14 + 6 * f_14) / 2
    orb[:, 10] = f_10_13 - f_13_14 + 6 * f_14
    orb[:, 9] = (f_9_12 - 2 * f_12_14 + 6 * f_14) / 2
    orb[:, 8] = (f_8_12 - 2 * f_12_14 + 6 * f_14) / 2
    orb[:, 7] = (f_13_14 + f_7_11 - f_11_13 - 6 * f_14) / 6
    orb[:, 6] = (2 * f_12_14 + f_6_9 - f_9_12 - 6 * f_14) / 2
    orb[:, 5] = 2 * f_12_14 + f_5_8 - f_8_12 - 6 * f_14
    orb[:, 4] = 2 * f_12_14 + f_4_8 - f_8_12 - 6 * f_14
    out[:] = np.rint(orb).astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# Validity
# ---------------------------------------------------------------------------------------------


def is_planar_graph(G: nx.Graph) -> bool:
    """Connected and planar (SPECTRE / DiGress planar validity). Empty graphs are invalid."""
    if G.number_of_nodes() == 0:
        return False
    return bool(nx.is_connected(G) and nx.check_planarity(G)[0])


def is_tree_graph(G: nx.Graph) -> bool:
    """Is a tree (connected, acyclic). Empty graphs are invalid."""
    if G.number_of_nodes() == 0:
        return False
    return bool(nx.is_tree(G))


def is_lobster_graph(G: nx.Graph) -> bool:
    """GRAN's lobster test: a tree that becomes a path (or nothing / one node) after its leaves
    are removed twice (lobster -> caterpillar -> path)."""
    if G.number_of_nodes() == 0 or not nx.is_tree(G):
        return False
    H = nx.Graph(G)
    for _ in range(2):
        H.remove_nodes_from([v for v, deg in H.degree() if deg == 1])
    # what remains of a tree is a tree; it is a path exactly when no degree exceeds 2
    return all(deg <= 2 for _, deg in H.degree())


def is_grid_graph(G: nx.Graph) -> bool:
    """Isomorphic to ``nx.grid_2d_graph(r, c)`` for some ``r, c >= 2``.

    The reference only tries 2 <= r, c < 20 (graphs up to 19 x 19); here every factorisation of
    the node count is tried, which agrees with it on every graph it can recognise.
    """
    n = G.number_of_nodes()
    if n < 4:
        return False
    m = G.number_of_edges()
    degrees = sorted(d for _, d in G.degree())
    for r in range(2, int(math.isqrt(n)) + 1):
        if n % r:
            continue
        c = n // r
        if m != 2 * r * c - r - c:
            continue
        grid = nx.grid_2d_graph(r, c)
        if degrees != sorted(d for _, d in grid.degree()):
            continue
        if nx.is_isomorphic(G, grid):
            return True
    return False


def _evidence_from_counts(e: np.ndarray, sizes: np.ndarray) -> float:
    """log P(A | b) + log P(b) of a Bernoulli SBM, uniform priors on the block probabilities and
    a Dirichlet(1) prior on the memberships; ``e[r, s]`` counts ordered adjacent node pairs
    (twice the intra-block edges on the diagonal), ``sizes`` the block sizes."""
    k = sizes.size
    n = sizes.sum()
    iu = np.triu_indices(k)
    diag = iu[0] == iu[1]
    edges = np.where(diag, e[iu] / 2.0, e[iu])
    pairs = np.where(diag, sizes[iu[0]] * (sizes[iu[0]] - 1) / 2.0, sizes[iu[0]] * sizes[iu[1]])
    log_lik = np.sum(gammaln(edges + 1) + gammaln(pairs - edges + 1) - gammaln(pairs + 2))
    log_prior = gammaln(k) + np.sum(gammaln(sizes + 1)) - gammaln(n + k)
    return float(log_lik + log_prior)


def _block_counts(a: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    onehot = np.zeros((labels.size, k))
    onehot[np.arange(labels.size), labels] = 1.0
    c = a @ onehot  # neighbours of every node in every block
    return onehot.T @ c, onehot.sum(axis=0), c


def _block_log_evidence(a: np.ndarray, labels: np.ndarray, k: int) -> float:
    e, sizes, _ = _block_counts(a, labels, k)
    return _evidence_from_counts(e, sizes)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 5, iters: int = 50) -> np.ndarray:
    best_labels, best_inertia = None, np.inf
    n = x.shape[0]
    for _ in range(n_init):
        # k-means++ seeding
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
            prob = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
            centres.append(x[rng.choice(n, p=prob)])
        centres = np.asarray(centres)
        labels = np.zeros(n, dtype=np.int64)
        for it in range(iters):
            dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
            new = dist.argmin(axis=1)
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                if len(members):
                    centres[j] = members.mean(axis=0)
        inertia = ((x - centres[labels]) ** 2).sum()
        if inertia < best_inertia:
            best_inertia, best_labels = inertia, labels.copy()
    return best_labels


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(labels, return_inverse=True)
    return inv.astype(np.int64), uniq.size


def _refine_blocks(a: np.ndarray, labels: np.ndarray, k: int, max_iter: int = 30) -> tuple[np.ndarray, int]:
    """Classification-EM for a Bernoulli SBM: reassign every node to its most likely block."""
    n = labels.size
    for _ in range(max_iter):
        labels, k = _relabel(labels)
        onehot = np.zeros((n, k))
        onehot[np.arange(n), labels] = 1.0
        sizes = onehot.sum(axis=0)
        e = onehot.T @ a @ onehot
        pairs = np.outer(sizes, sizes) - np.diag(sizes)
        prob = (e + 0.5) / (pairs + 1.0)
        log_p, log_q = np.log(prob), np.log1p(-prob)
        c = a @ onehot  # neighbours of each node in each block
        others = sizes[None, :] - onehot  # candidate block members, excluding the node itself
        score = c @ log_p.T + (others - c) @ log_q.T
        new = score.argmax(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    return _relabel(labels)


@_single_threaded
def sbm_blocks(G: nx.Graph, max_blocks: int = 8, seed: int = 0) -> np.ndarray:
    """Infer SBM block labels (rows follow ``list(G.nodes())``).

    A stand-in for graph_tool's ``minimize_blockmodel_dl`` + merge-split refinement: for every
    block count 1..``max_blocks`` a partition comes from regularised spectral clustering (top
    eigenvectors of ``D_tau^{-1/2} A D_tau^{-1/2}``, tau = mean degree, row-normalised, k-means),
    refined by classification EM on the Bernoulli SBM likelihood; the partition with the largest
    Bayesian evidence (uniform block-probability priors, Dirichlet(1) membership prior) wins.
    Deterministic for a given ``seed``.
    """
    a = _adjacency(G)
    n = a.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    d = a.sum(axis=1)
    tau = max(d.mean(), 1e-12)
    inv = 1.0 / np.sqrt(d + tau)
    m = inv[:, None] * a * inv[None, :]
    _, vecs = np.linalg.eigh(m)
    rng = np.random.default_rng(seed)
    best_labels = np.zeros(n, dtype=np.int64)
    best_score = _block_log_evidence(a, best_labels, 1)
    best_k = 1
    for k in range(2, min(max_blocks, n) + 1):
        emb = vecs[:, -k:]
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
        labels = _kmeans(emb, k, rng)
        labels, kk = _refine_blocks(a, labels, k)
        score = _block_log_evidence(a, labels, kk)
        if score > best_score:
            best_score, best_labels, best_k = score, labels, kk
    if best_k > 1:
        best_labels = _greedy_node_moves(a, best_labels, best_k)
    return _relabel(best_labels)[0]


def _greedy_node_moves(a: np.ndarray, labels: np.ndarray, k: int, max_sweeps: int = 5) -> np.ndarray:
    """Single-node moves that increase the block evidence, until none does (blocks never empty)."""
    labels = labels.copy()
    e, sizes, c = _block_counts(a, labels, k)
    current = _evidence_from_counts(e, sizes)
    for _ in range(max_sweeps):
        improved = False
        for v in range(labels.size):
            r = labels[v]
            if sizes[r] <= 1:
                continue
            cv = c[v]
            best = (current, r, e, sizes)
            for s_ in range(k):
                if s_ == r:
                    continue
                e2 = e.copy()
                e2[r, :] -= cv
                e2[:, r] -= cv
                e2[s_, :] += cv
                e2[:, s_] += cv
                sizes2 = sizes.copy()
                sizes2[r] -= 1
                sizes2[s_] += 1
                val = _evidence_from_counts(e2, sizes2)
                if val > best[0] + 1e-9:
                    best = (val, s_, e2, sizes2)
            if best[1] != r:
                current, s_, e, sizes = best
                labels[v] = s_
                nb = np.flatnonzero(a[v])
                c[nb, r] -= 1.0
                c[nb, s_] += 1.0
                improved = True
        if not improved:
            break
    return labels


@_single_threaded
def is_sbm_graph(
    G: nx.Graph,
    p_intra: float = 0.3,
    p_inter: float = 0.005,
    strict: bool = True,
    min_blocks: int = 2,
    max_blocks: int = 5,
    min_block_size: int = 20,
    max_block_size: int = 40,
    seed: int = 0,
) -> bool | float:
    """SPECTRE's SBM validity with our own block inference instead of graph_tool.

    Blocks come from :func:`sbm_blocks`. Then, as SPECTRE's ``is_sbm_graph``: with ``strict`` the
    block count must lie in [2, 5] and every block size in [20, 40]; the block densities
    ``p_rr = 2 m_rr / (n_r (n_r - 1))`` and ``p_rs = m_rs / (n_r n_s)`` are compared with the
    generating ``p_intra`` / ``p_inter`` through the reference's (unscaled) Wald statistic
    ``W = (p_hat - p)^2 / (p_hat (1 - p_hat) + 1e-6)`` on every entry of the B x B matrix, the
    p-values ``1 - chi2.cdf(W, 1)`` are averaged, and the graph passes if the mean exceeds 0.9
    (``strict=False`` returns the mean p-value instead and skips the range checks).

    Block inference is the only departure from the reference (graph_tool is not a dependency).
    Pass rates on ``graphs/sbm.npz``: train 115/128 = 89.8 % (the published graph_tool-based code
    passes 85.9 % of the training set), val 29/32, test 36/40. Every train and val failure comes
    from the Wald test itself: a pair of blocks with no edge between them has ``p_hat = 0``,
    ``W = 0.005^2 / 1e-6 = 25`` and a p-value of about 6e-7, which pulls the mean below 0.9; two
    of the four test failures are an inferred block outside 20-40 nodes.
    """
    if G.number_of_nodes() == 0 or G.number_of_edges() == 0:
        return False if strict else 0.0
    a = _adjacency(G)
    labels = sbm_blocks(G, max_blocks=max(max_blocks + 3, 8), seed=seed)
    labels, k = _relabel(labels)
    e, sizes, _ = _block_counts(a, labels, k)  # diagonal: 2 x intra-block edges (as graph_tool)
    if strict and (k < min_blocks or k > max_blocks or sizes.min() < min_block_size
                   or sizes.max() > max_block_size):
        return False
    est_intra = np.diag(e) / (sizes * (sizes - 1) + 1e-6)
    off = e.copy()
    np.fill_diagonal(off, 0.0)
    est_inter = off / (np.outer(sizes, sizes) + 1e-6)
    w_intra = (est_intra - p_intra) ** 2 / (est_intra * (1 - est_intra) + 1e-6)
    w = (est_inter - p_inter) ** 2 / (est_inter * (1 - est_inter) + 1e-6)
    np.fill_diagonal(w, w_intra)
    p = float((1.0 - chi2.cdf(np.abs(w), 1)).mean())
    return p > 0.9 if strict else p


VALIDITY_FUNCTIONS: dict[str, Callable[[nx.Graph], bool]] = {
    "planar": is_planar_graph,
    "tree": is_tree_graph,
    "sbm": is_sbm_graph,
    "lobster": is_lobster_graph,
    "grid": is_grid_graph,
}

# ---------------------------------------------------------------------------------------------
# Uniqueness, novelty, V.U.N.
# ---------------------------------------------------------------------------------------------


def _iso_bucket(G: nx.Graph) -> tuple:
    """A key shared by isomorphic graphs (size, degree sequence, WL hash)."""
    degrees = tuple(sorted(d for _, d in G.degree()))
    with warnings.catch_warnings():
        # networkx >= 3.5 warns that attribute-free hashes changed across versions; the hashes are
        # only compared within one call here
        warnings.simplefilter("ignore", UserWarning)
        wl = nx.weisfeiler_lehman_graph_hash(G, iterations=3)
    return (G.number_of_nodes(), G.number_of_edges(), degrees, wl)


def uniqueness_novelty(
    gen: Sequence[nx.Graph], train: Sequence[nx.Graph]
) -> tuple[float, float, np.ndarray]:
    """Uniqueness and novelty by exact isomorphism (WL hashes bucket, ``nx.is_isomorphic`` decides).

    Returns ``(unique_frac, novel_frac, unique_novel_mask)``: graph i is unique if no earlier
    generated graph is isomorphic to it (the first copy of a class counts as unique, later copies
    do not), novel if no training graph is isomorphic to it; ``unique_frac`` and ``novel_frac``
    are fractions of all generated graphs (DiGress's ``frac_unique`` and ``1 - fraction
    isomorphic``); the mask marks graphs that are both. ``train`` may be empty (all novel).
    """
    gen = list(gen)
    if not gen:
        raise ValueError("gen is an empty set of graphs")
    train_buckets: dict[tuple, list[nx.Graph]] = {}
    for g in train:
        train_buckets.setdefault(_iso_bucket(g), []).append(g)
    seen: dict[tuple, list[nx.Graph]] = {}
    unique = np.zeros(len(gen), dtype=bool)
    novel = np.zeros(len(gen), dtype=bool)
    for i, g in enumerate(gen):
        key = _iso_bucket(g)
        earlier = seen.setdefault(key, [])
        unique[i] = not any(nx.is_isomorphic(g, h) for h in earlier)
        if unique[i]:
            earlier.append(g)
        novel[i] = not any(nx.is_isomorphic(g, h) for h in train_buckets.get(key, ()))
    return float(unique.mean()), float(novel.mean()), unique & novel


def vun(
    gen: Sequence[nx.Graph], train: Sequence[nx.Graph], validity_fn: Callable[[nx.Graph], bool]
) -> dict[str, float]:
    """Validity, uniqueness, novelty and V.U.N. (fraction of generated graphs that are valid,
    unique and novel at once), as DiGress / DeFoG report them."""
    gen = list(gen)
    unique_frac, novel_frac, un_mask = uniqueness_novelty(gen, train)
    valid = np.array([bool(validity_fn(g)) for g in gen])
    return {
        "valid": float(valid.mean()),
        "unique": unique_frac,
        "novel": novel_frac,
        "vun": float((valid & un_mask).mean()),
    }


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------


def evaluate_graphs(
    gen: Sequence[nx.Graph],
    ref: Sequence[nx.Graph],
    train: Sequence[nx.Graph],
    kind: str | None = None,
) -> dict[str, float]:
    """All metrics of the protocol for generated graphs ``gen`` against the reference (test) set.

    Keys: ``mmd_degree``, ``mmd_clustering``, ``mmd_orbit``, ``mmd_spectral`` (squared MMD to
    ``ref``), ``ratio_<name>`` = MMD(ref, gen) / MMD(ref, train) per statistic (nan when the
    denominator is 0), ``ratio`` = mean of the finite ratios (the published ratio also averages a
    wavelet statistic, which is not computed here), ``valid``, ``unique``, ``novel``, ``vun`` and
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
    return out
