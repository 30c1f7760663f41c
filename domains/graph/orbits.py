"""Graphlet orbit counts in ORCA's numbering (connected induced graphlets on 2-4 nodes), the
descriptor of the orbit MMD statistic."""
from __future__ import annotations

import networkx as nx
import numpy as np

from domains.graph.linalg import dense_adjacency, single_threaded

__all__ = ["orbit_counts"]




@single_threaded
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
    a = dense_adjacency(G)
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
