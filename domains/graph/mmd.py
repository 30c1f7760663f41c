"""Squared MMD between sets of graphs over per-graph descriptors, as GRAN, SPECTRE, DiGress and
DeFoG compute it (the statistics table is in :mod:`domains.graph.metrics`)."""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Sequence

import networkx as nx
import numpy as np
from scipy.spatial.distance import cdist

from domains.graph.linalg import single_threaded
from domains.graph.orbits import orbit_counts

__all__ = ["gaussian_tv_mmd", "degree_descriptors", "clustering_descriptors", "orbit_descriptors",
           "spectral_descriptors", "wavelet_descriptors", "wavelet_filters", "mmd_degree", "mmd_clustering",
           "mmd_orbit", "mmd_spectral", "mmd_wavelet", "MMD_STATISTICS"]


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


@single_threaded
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


# SPECTRE's wavelet statistic: a bank of 12 spectral filters on the normalised Laplacian (lmax = 2),
# PyGSP's ``Abspline`` design (Hammond et al.'s cubic-spline wavelets plus a low-pass scaling
# function). Each node's squared filter norm, per filter, is histogrammed in 100 bins on
# [0, max response]. The constants below reproduce ``pygsp.filters.Abspline(G, 12)`` with
# ``G.lmax = 2``, checked against PyGSP 0.5.1 in the tests.
WAVELET_FILTERS = 12
WAVELET_LMAX = 2.0
WAVELET_BINS = 100


def _abspline(x: np.ndarray) -> np.ndarray:
    """The band-pass kernel: x^2 below 1, (2/x)^2 above 2, and the cubic joining them with
    matching values and slopes in between."""
    m = np.array([[1, 1, 1, 1], [1, 2, 4, 8], [0, 1, 2, 3], [0, 1, 4, 12]], dtype=float)
    a = np.linalg.solve(m, np.array([1.0, 1.0, 2.0, -1.0]))
    x = np.asarray(x, dtype=float)
    mid = a[0] + a[1] * x + a[2] * x ** 2 + a[3] * x ** 3
    with np.errstate(divide="ignore"):
        high = 4.0 / np.where(x > 0, x * x, np.inf)
    return np.where(x <= 1, x * x, np.where(x < 2, mid, high))


@functools.lru_cache(maxsize=1)
def _wavelet_bank() -> tuple[np.ndarray, float, float]:
    """(scales of the 11 band-pass filters, the low-pass gain, the histogram bound)."""
    from scipy.optimize import minimize_scalar
    lmin = WAVELET_LMAX / 20
    scales = np.exp(np.linspace(np.log(2 / lmin), np.log(1 / WAVELET_LMAX), WAVELET_FILTERS - 1))
    peak = minimize_scalar(lambda x: -_abspline(x), bounds=(1, 2), method="bounded").x
    gain = float(_abspline(peak))
    bound = float(np.max(_wavelet_responses(np.arange(0, 2, 0.01), scales, gain, lmin)))
    return scales, gain, bound


def _wavelet_responses(lam, scales, gain, lmin) -> np.ndarray:
    lam = np.asarray(lam, dtype=float)
    low = gain * np.exp(-((lam / (0.6 * lmin)) ** 4))
    return np.stack([low] + [_abspline(s * lam) for s in scales])


def wavelet_filters(lam) -> np.ndarray:
    """The 12 filter responses at eigenvalues ``lam``, shape ``[12, len(lam)]``."""
    scales, gain, _ = _wavelet_bank()
    return _wavelet_responses(lam, scales, gain, WAVELET_LMAX / 20)


@single_threaded
def wavelet_descriptors(graphs: Iterable[nx.Graph]) -> list[np.ndarray]:
    """Per graph, the 12 x 100 histogram counts (flattened) of every node's squared norm under each
    filter ``U diag(g(lambda)) U^T``: that row norm is ``sum_k U_ik^2 g(lambda_k)^2``."""
    _, _, bound = _wavelet_bank()
    out = []
    for g in graphs:
        lap = nx.normalized_laplacian_matrix(g).toarray()
        try:
            lam, u = np.linalg.eigh(lap)
        except Exception:  # the reference's fallback
            lam, u = np.zeros(lap.shape[0]), np.zeros(lap.shape)
        norms = (u * u) @ (wavelet_filters(lam) ** 2).T  # [nodes, filters]
        hist = [np.histogram(norms[:, f], bins=WAVELET_BINS, range=(0.0, bound))[0]
                for f in range(WAVELET_FILTERS)]
        out.append(np.concatenate(hist).astype(np.float64))
    return out


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


def mmd_wavelet(ref: Sequence[nx.Graph], gen: Sequence[nx.Graph]) -> float:
    """Squared MMD of spectral-wavelet histograms (SPECTRE's fifth statistic; Gaussian TV, sigma 1)."""
    ref, gen = _nonempty(ref, "ref"), _nonempty(gen, "gen")
    return gaussian_tv_mmd(wavelet_descriptors(ref), wavelet_descriptors(gen), sigma=1.0)


MMD_STATISTICS: dict[str, Callable[[Sequence[nx.Graph], Sequence[nx.Graph]], float]] = {
    "degree": mmd_degree,
    "clustering": mmd_clustering,
    "orbit": mmd_orbit,
    "spectral": mmd_spectral,
    "wavelet": mmd_wavelet,
}
