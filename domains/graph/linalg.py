"""Dense helpers shared by the graph statistics: the adjacency matrix, and BLAS limited to one
thread around small matrix work."""
from __future__ import annotations

import contextlib
import functools

import networkx as nx
import numpy as np

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


def single_threaded(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _blas_single_thread():
            return fn(*args, **kwargs)

    return wrapper


def dense_adjacency(G: nx.Graph) -> np.ndarray:
    """The 0/1 adjacency matrix in ``list(G.nodes())`` order (no self-loops, undirected)."""
    if G.is_directed():
        G = G.to_undirected()
    a = nx.to_numpy_array(G, nodelist=list(G.nodes()), dtype=np.float64, weight=None)
    a = (a != 0).astype(np.float64)
    np.fill_diagonal(a, 0.0)
    return a
