"""Round orders: which edges of a level have their patterns drawn together.

A level's edge patterns are drawn in ``edge_rounds`` rounds, each seeing the patterns of the
rounds before it. ``draw_rounds`` spreads the edges pseudo-randomly by their ends' priorities;
``walk_rounds`` draws the edges of each expanding node one per round, walking around it. Both are
functions of the structure and the priorities, so they travel with the nodes (equivariance).
"""
from __future__ import annotations

import numpy as np
import torch

from domains.graph.coarsen import remix_priorities


def draw_rounds(prio: np.ndarray, pairs: torch.Tensor, rounds: int) -> torch.Tensor:
    """The round (0..rounds-1) in which each edge's pattern is drawn: a pseudo-random function
    of the two priorities, symmetric, so the order travels with the nodes (equivariance)."""
    if len(pairs) == 0:
        return torch.zeros(0, dtype=torch.long)
    p = pairs.cpu().numpy()
    u = remix_priorities(prio[p[:, 0]] + prio[p[:, 1]])
    return torch.as_tensor(np.minimum((u * rounds).astype(np.int64), rounds - 1))


EDGE_ORDERS = ("priority", "walk")


def walk_rounds(nt, pairs: torch.Tensor, prio: np.ndarray, rounds: int) -> torch.Tensor:
    """The round of each edge when the edges of every expanding node are drawn one per round,
    in a walk over its neighbours: from the neighbour of lowest priority, each next neighbour is
    one adjacent to the last (else to any visited one, else any), lowest priority first.

    Around a triangulated node the walk follows its rotation, so each edge's pattern is drawn
    right after that of the neighbour beside it: which child a neighbour joins becomes a local
    choice (stay on this child, share both, switch) instead of a guess about the whole ring. An
    edge between two expanding nodes takes the later of its two positions; edges of nodes that
    keep one child have one allowed pattern and go in round 0. Positions past ``rounds - 1``
    share the last round. A function of the structure and the priorities (equivariant)."""
    m = len(pairs)
    out = np.zeros(m, dtype=np.int64)
    nt = np.asarray(nt)
    split = np.flatnonzero(nt > 0)
    if m == 0 or len(split) == 0:
        return torch.as_tensor(out)
    p = pairs.cpu().numpy() if isinstance(pairs, torch.Tensor) else np.asarray(pairs)
    incident: dict[int, list] = {}
    for eid, (a, b) in enumerate(p.tolist()):
        incident.setdefault(a, []).append((b, eid))
        incident.setdefault(b, []).append((a, eid))
    near = {v: {w for w, _ in ws} for v, ws in incident.items()}
    for v in split.tolist():
        left = dict(incident.get(v, []))  # neighbour -> edge id
        last, seen, pos = None, [], 0
        while left:
            cand = [w for w in left if last is not None and w in near[last]]
            if not cand:
                cand = [w for w in left if any(u in near[w] for u in seen)] or list(left)
            w = min(cand, key=lambda u: prio[u])
            eid = left.pop(w)
            out[eid] = max(out[eid], pos)
            seen.append(w)
            last = w
            pos += 1
    return torch.as_tensor(np.minimum(out, rounds - 1))
