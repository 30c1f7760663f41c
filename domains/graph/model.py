"""The graph refiner: a permutation-equivariant GNN that expands a coarse graph in one call.

One step of the backward process reads the coarse graph G_{k-1} and predicts, for all of its
nodes and edges in parallel, the detail tokens of ``domains.graph.coarsen``: a node token (one
child / two unlinked / two linked children) per coarse node and a 4-bit child-connection pattern
per coarse edge. Composing them gives G_k. Sampling starts from a single node and repeats until
the requested node count is reached (one refiner call per level).

Node features are equivariant: random-walk return probabilities (structure), degree, a Fourier
code of the node's random priority (random features that travel with the node, so the model can
break symmetries while staying exactly equivariant given the priorities), and the global state
(level, current size over target size, target size). The backbone is a stack of GPS layers
(torch_geometric: GIN message passing + global attention). Edge patterns are scored from both
orientations and symmetrised, so the likelihood does not depend on how a pair is written.
Optionally the edge patterns are drawn in rounds (``edge_rounds``; by priority, or with
``edge_order="walk"`` one edge of each expanding node per round, around its neighbourhood:
``walk_rounds``) through an edge head with triangle message passing (``TriangleLayer``), and the
pyramid is separated (``separated``: no two expanding nodes adjacent, enforced when sampling by
``separate_splits``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.nn import GINConv, GPSConv
from torch_geometric.utils import to_dense_adj, to_dense_batch

from core.determinism import gather_rows
from core.targets import Prediction
from domains.graph.coarsen import build_pyramid, compose, remix_priorities
from domains.graph.data import Graph

# pattern bit 2*i + j joins slot i of the first node with slot j of the second
TRANSPOSE = torch.tensor([((b & 1)) | ((b >> 2 & 1) << 1) | ((b >> 1 & 1) << 2) | ((b >> 3 & 1) << 3)
                          for b in range(16)])


def _valid_patterns() -> torch.Tensor:
    """[2, 2, 16]: pattern allowed when the first / second node has two children (1) or one (0)."""
    valid = torch.zeros(2, 2, 16, dtype=torch.bool)
    for two_p in (0, 1):
        for two_q in (0, 1):
            for b in range(1, 16):
                uses_p1, uses_q1 = b & 0b1100, b & 0b1010
                valid[two_p, two_q, b] = (two_p or not uses_p1) and (two_q or not uses_q1)
    return valid


VALID = _valid_patterns()
# slots of the first / second node that a pattern joins (bit 0: slot 0, bit 1: slot 1); 0 for 0
FIRST_SLOTS = torch.tensor([int(b & 0b0011 != 0) | int(b & 0b1100 != 0) << 1 for b in range(16)])
SECOND_SLOTS = torch.tensor([int(b & 0b0101 != 0) | int(b & 0b1010 != 0) << 1 for b in range(16)])


def triangles(pairs: torch.Tensor, num_nodes: int):
    """Triangles of a graph given by its edges ``pairs`` [m, 2] (first < second), per edge.

    Returns tensors over (edge, apex) incidences: the edge (P, Q), the edge from P to the apex W
    and whether P is its first node, the same for Q, and W."""
    e = pairs.cpu().numpy()  # numpy: on the CPU
    m = len(e)
    empty = torch.zeros(0, dtype=torch.long)
    if m == 0:
        return empty, empty, empty.bool(), empty, empty.bool(), empty
    src = np.concatenate([e[:, 0], e[:, 1]])
    dst = np.concatenate([e[:, 1], e[:, 0]])
    eid = np.concatenate([np.arange(m), np.arange(m)])
    order = np.argsort(src, kind="stable")
    src, dst, eid = src[order], dst[order], eid[order]
    counts = np.bincount(src, minlength=num_nodes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    size = counts[src]                                    # pairs of neighbours of each apex
    i = np.repeat(np.arange(len(src)), size)
    j = starts[src[i]] + np.arange(len(i)) - np.repeat(np.cumsum(size) - size, size)
    a, b = dst[i], dst[j]
    keep = a < b
    i, j, a, b = i[keep], j[keep], a[keep], b[keep]
    keys = e[:, 0].astype(np.int64) * num_nodes + e[:, 1]
    key_order = np.argsort(keys, kind="stable")
    wanted = a.astype(np.int64) * num_nodes + b
    pos = np.minimum(np.searchsorted(keys[key_order], wanted), m - 1)
    hit = keys[key_order][pos] == wanted
    i, j, a, b, pos = i[hit], j[hit], a[hit], b[hit], key_order[pos[hit]]
    apex = src[i]
    t = lambda v: torch.as_tensor(v, dtype=torch.long)  # noqa: E731
    return t(pos), t(eid[i]), torch.as_tensor(a < apex), t(eid[j]), torch.as_tensor(b < apex), t(apex)


def triangle_closure(needed: torch.Tensor, tri, hops: int) -> torch.Tensor:
    """The edges whose head state, after ``hops`` triangle layers, the ``needed`` edges read:
    those within ``hops`` steps along shared triangles (each layer reads the other two edges of
    every triangle of an edge). Running the head on these alone gives the needed edges' logits
    exactly: an edge at distance d sees all of its messages for the first ``hops - d`` layers."""
    keep = needed.clone()
    if tri is None or not len(tri[0]):
        return keep
    edge, p_edge, _, q_edge, _, _ = tri
    for _ in range(hops):
        reach = keep[edge]
        grown = keep.clone()
        grown[p_edge[reach]] = True
        grown[q_edge[reach]] = True
        if torch.equal(grown, keep):
            break
        keep = grown
    return keep


def single_pattern(two_first: torch.Tensor, two_second: torch.Tensor) -> torch.Tensor:
    """The pattern of edges whose ends' child counts allow exactly one (0 where several are
    allowed): an edge between two nodes that keep one child joins them, whatever the head says."""
    allowed = VALID.to(two_first.device)[two_first, two_second]
    return torch.where(allowed.sum(-1) == 1, allowed.long().argmax(-1), 0)


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


def level_features(n_list, edge_list, prio_list, targets, steps, rw_steps: int):
    """Batch a list of coarse graphs into node features, edge index and graph ids."""
    counts = torch.tensor(n_list)
    batch = torch.repeat_interleave(torch.arange(len(n_list)), counts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    pairs = [torch.as_tensor(e, dtype=torch.long).reshape(-1, 2) + o for e, o in zip(edge_list, offsets.tolist())]
    pairs = torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.long)
    edge_index = torch.cat([pairs.t(), pairs.t().flip(0)], 1)
    pair_graph = batch[pairs[:, 0]] if len(pairs) else torch.zeros(0, dtype=torch.long)

    adj = to_dense_adj(edge_index, batch, max_num_nodes=int(counts.max()), batch_size=len(n_list))
    deg = adj.sum(-1)
    walk = adj / deg.clamp(min=1).unsqueeze(-1)
    power, returns = walk, []
    for _ in range(rw_steps):
        returns.append(torch.diagonal(power, dim1=1, dim2=2))
        power = power @ walk
    mask = torch.arange(adj.shape[1])[None] < counts[:, None]
    rw = torch.stack(returns, -1)[mask]
    deg = deg[mask]

    prio = torch.as_tensor(np.concatenate(prio_list), dtype=torch.float32)
    freqs = torch.arange(1, 5, dtype=torch.float32) * 2 * math.pi
    prio_code = torch.cat([torch.sin(prio[:, None] * freqs), torch.cos(prio[:, None] * freqs)], 1)
    n = counts.float()
    target = torch.as_tensor(targets, dtype=torch.float32)
    step = torch.as_tensor(steps, dtype=torch.float32)
    glob = torch.stack([n / target, torch.log(target) / 5, torch.log(n) / 5, step / 16], 1)
    x = torch.cat([rw, torch.log1p(deg)[:, None], prio_code, glob[batch]], 1)
    return x, edge_index, batch, pairs, pair_graph


class TriangleLayer(nn.Module):
    """Message passing between directed edges that share a triangle: edge P -> Q reads, for
    every apex W, the edges P -> W (its tail's side) and Q -> W (its head's side)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.message = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.update = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.SiLU(), nn.Linear(d_model, d_model))

    def forward(self, state, tail_side, head_side, target):
        z = self.norm(state)
        # gather_rows, not z[index]: the backward of advanced indexing adds repeated rows with
        # CPU atomics, in an order that depends on the threads (see core.determinism)
        msg = self.message(torch.cat([gather_rows(z, tail_side), gather_rows(z, head_side)], 1))
        total = torch.zeros_like(state).index_add_(0, target, msg)
        count = torch.bincount(target, minlength=len(state)).clamp(min=1)
        return state + self.update(torch.cat([z, total / count[:, None]], 1))


class GraphRefiner(nn.Module):
    """GPS stack -> node-token logits [n, 3]; edge-pattern logits [m, 16] given node tokens.

    The backbone runs once per level (``forward``). Edge patterns depend strongly on how many
    children each end has (a pattern linking both children of a node closes a triangle if they
    are also linked), so the small edge head reads the node tokens drawn for both ends
    (``edge_logits``), the true ones in training: the tokens of a level are drawn nodes first,
    then edges, from the same backbone features.
    """

    def __init__(self, d_model: int = 96, layers: int = 4, heads: int = 4, rw_steps: int = 8,
                 dropout: float = 0.0, edge_layers: int = 0, edge_dim: int | None = None):
        super().__init__()
        if edge_layers < 0:
            raise ValueError(f"edge_layers must be >= 0, got {edge_layers}")
        edge_dim = d_model if edge_dim is None else int(edge_dim)
        if edge_dim < 1:
            raise ValueError(f"edge_dim must be >= 1, got {edge_dim}")
        self.rw_steps = rw_steps
        in_features = rw_steps + 1 + 8 + 4
        self.inp = nn.Sequential(nn.Linear(in_features, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        self.layers = nn.ModuleList(
            GPSConv(d_model, GINConv(nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(),
                                                   nn.Linear(d_model, d_model))),
                    heads=heads, dropout=dropout, norm="layer_norm")
            for _ in range(layers))
        self.node_head = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, 3))
        self.token_emb = nn.Embedding(3, d_model)
        # what the edges drawn in earlier rounds say: per node, which of its slots each incident
        # edge uses (0 = not drawn yet); per triangle (P, Q, W), which slots of P and Q touch W
        self.slot_emb = nn.Embedding(4, d_model)
        # the head's own width: it runs once per round on every edge and triangle of a level, so
        # its cost, not the backbone's, dominates sampling (d_model wide by default)
        self.triangle_emb = nn.Embedding(4 * 4 * 3, edge_dim)
        self.edge_head = nn.Sequential(nn.Linear(2 * d_model + edge_dim, edge_dim), nn.SiLU(),
                                       nn.Linear(edge_dim, 16))
        # between the head's two layers: message passing between the edges of each triangle, so
        # that an edge sees the patterns drawn further around both of its ends (several hops
        # along a planar node's rotation), not only its direct neighbours
        self.pattern_emb = nn.Embedding(16, edge_dim) if edge_layers else None
        self.edge_layers = nn.ModuleList(TriangleLayer(edge_dim) for _ in range(edge_layers))

    def forward(self, x, edge_index, batch):
        """Backbone features [n, d] and node-token logits [n, 3]."""
        # the level's tensors are built on the CPU (numpy structure); the network may be elsewhere
        dev = self.inp[0].weight.device
        x, edge_index, batch = x.to(dev), edge_index.to(dev), batch.to(dev)
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h, edge_index, batch)
        return h, self.node_head(h)

    def edge_logits(self, h, pairs, node_tokens, drawn=None, tri=None, needed=None):
        """Logits of the pattern of every coarse edge, symmetric in its orientation and masked
        to the patterns the two ends' child counts allow.

        ``drawn`` [m]: patterns of the edges drawn in earlier rounds (0 = not yet), with the
        coarse graph's triangles ``tri`` (see ``triangles``): the later rounds of a level see which
        child each neighbour already joined, so that a node's neighbours split between its two
        children consistently (around a planar node: two arcs, not a random subset).

        ``needed`` [m] (bool): only these edges' logits are wanted (one round's edges). The head
        then runs on them and the edges their triangle layers read (``triangle_closure``); the
        other rows are 0 before the mask. Their logits are the full pass's."""
        dev = h.device  # structure may come from the CPU; tables and indices go to h's device
        if tri is None and len(self.edge_layers):
            tri = triangles(pairs, len(h))
        if tri is not None:
            tri = tuple(t.to(dev) for t in tri)
        pairs, node_tokens = pairs.to(dev), node_tokens.to(dev)
        first_slots, second_slots = FIRST_SLOTS.to(dev), SECOND_SLOTS.to(dev)
        transpose = TRANSPOSE.to(dev)
        node_tok = self.token_emb(node_tokens)
        if drawn is None:
            drawn = torch.zeros(len(pairs), dtype=torch.long, device=dev)
        drawn = drawn.to(dev)
        first, second = first_slots[drawn], second_slots[drawn]
        node_ctx = torch.zeros_like(h).index_add_(0, pairs[:, 0], self.slot_emb(first))
        node_ctx = node_ctx.index_add_(0, pairs[:, 1], self.slot_emb(second))
        node_state = h + node_tok + node_ctx  # gathered once per end (gather_rows: deterministic)
        two = (node_tokens > 0).long()
        allowed = VALID.to(dev)[two[pairs[:, 0]], two[pairs[:, 1]]]  # never 0: a coarse edge has a child edge
        full_m = len(pairs)
        if needed is not None:  # the head on the needed edges and those their layers read
            keep = triangle_closure(needed.to(dev), tri, len(self.edge_layers))
            rows = keep.nonzero().flatten()
            local = torch.full((full_m,), -1, dtype=torch.long, device=dev)
            local[rows] = torch.arange(len(rows), device=dev)
            if tri is not None and len(tri[0]):
                edge, p_edge, p_first, q_edge, q_first, apex = tri
                inside = keep[edge]  # incidences of the kept edges (their sources' patterns are read from drawn)
                tri = (local[edge[inside]], p_edge[inside], p_first[inside], q_edge[inside],
                       q_first[inside], apex[inside])
            pairs, drawn_rows = pairs[rows], drawn[rows]
        else:
            rows, local, drawn_rows = None, None, drawn
        hp, hq = gather_rows(node_state, pairs[:, 0]), gather_rows(node_state, pairs[:, 1])
        tri_fwd = tri_bwd = hp.new_zeros(len(pairs), self.triangle_emb.embedding_dim)
        if tri is not None and len(tri[0]):
            edge, p_edge, p_first, q_edge, q_first, apex = tri
            sp = torch.where(p_first, first_slots[drawn[p_edge]], second_slots[drawn[p_edge]])
            sq = torch.where(q_first, first_slots[drawn[q_edge]], second_slots[drawn[q_edge]])
            tok = node_tokens[apex]
            tri_fwd = tri_fwd.index_add(0, edge, self.triangle_emb(12 * sp + 3 * sq + tok))
            tri_bwd = tri_bwd.index_add(0, edge, self.triangle_emb(12 * sq + 3 * sp + tok))
        first_layer, act, last_layer = self.edge_head
        m = len(pairs)
        state = first_layer(torch.cat([torch.cat([hp, hq, tri_fwd], 1), torch.cat([hq, hp, tri_bwd], 1)]))
        if len(self.edge_layers):
            # directed edges: row r is P -> Q, row m + r is Q -> P (patterns read from its tail)
            state = state + self.pattern_emb(torch.cat([drawn_rows, transpose[drawn_rows]]))
            if len(tri[0]):
                edge, p_edge, p_first, q_edge, q_first, _ = tri
                if local is not None:  # messages between kept edges only (exact where needed)
                    p_edge, q_edge = local[p_edge], local[q_edge]
                    inside = (p_edge >= 0) & (q_edge >= 0)
                    edge, p_edge, p_first, q_edge, q_first = (
                        edge[inside], p_edge[inside], p_first[inside], q_edge[inside], q_first[inside])
                p_dir = torch.where(p_first, p_edge, p_edge + m)  # P -> W
                q_dir = torch.where(q_first, q_edge, q_edge + m)  # Q -> W
                target = torch.cat([edge, edge + m])
                tail_side = torch.cat([p_dir, q_dir])
                head_side = torch.cat([q_dir, p_dir])
                for layer in self.edge_layers:
                    state = layer(state, tail_side, head_side, target)
        out = last_layer(act(state))
        forward_, backward = out[:m], out[m:][:, transpose]
        logits = 0.5 * (forward_ + backward)
        if rows is not None:
            logits = logits.new_zeros(full_m, 16).index_copy(0, rows, logits)
        return logits.masked_fill(~allowed, float("-inf"))


@dataclass
class Level:
    """What one level's backbone pass leaves for the draws that follow it (node tokens, then the
    edge rounds, and any redraws): the features, the coarse edges and their graph and row in the
    batch, and the edge rounds already derived from a set of node tokens."""
    h: torch.Tensor              # backbone features [n, d]
    pairs: torch.Tensor          # coarse edges of the whole batch [m, 2] (CPU)
    pair_graph: torch.Tensor     # graph of each edge [m]
    pair_local: torch.Tensor     # row of each edge within its graph [m]
    batch: torch.Tensor          # graph of each node [n]
    rounds: dict                 # node tokens (bytes) -> round of every edge
    triangles: tuple | None      # the coarse graph's triangles (see ``triangles``), if the head uses them


class GraphScaleModel(nn.Module):
    """The scale-model protocol of ``core.model`` for graphs (conditioned on the node count)."""

    num_classes = 0
    null_label = 0

    def __init__(self, max_levels: int = 24, two_hop: bool = False, slot_rule: str = "degree",
                 max_fraction: float = 0.5, constraint: str | None = None, edge_rounds: int = 1,
                 separated: bool = False, edge_order: str = "priority", **refiner_kw):
        super().__init__()
        if constraint not in CONSTRAINTS:
            raise ValueError(f"unknown graph constraint '{constraint}'; choose one of {CONSTRAINTS}")
        if constraint not in (None, "connected") and two_hop:
            raise ValueError(f"constraint '{constraint}' holds on every level only when levels are "
                             "edge contractions; it needs two_hop=false")
        if edge_rounds < 1:
            raise ValueError(f"edge_rounds must be >= 1, got {edge_rounds}")
        if edge_order not in EDGE_ORDERS:
            raise ValueError(f"unknown edge_order '{edge_order}'; choose one of {EDGE_ORDERS}")
        self.edge_order = edge_order
        self.refiner = GraphRefiner(**refiner_kw)
        self.constraint = constraint
        self.edge_rounds = int(edge_rounds)
        self.max_levels = max_levels
        self.pyramid_kw = {"two_hop": two_hop, "slot_rule": slot_rule, "max_fraction": max_fraction,
                           "separated": bool(separated)}

    @property
    def _needs_triangles(self) -> bool:
        return self.edge_rounds > 1 or len(self.refiner.edge_layers) > 0

    @property
    def num_scales(self) -> int:
        return self.max_levels

    # ------------------------------------------------------------------ training
    def _level_batch(self, pyramids, targets):
        items = []  # (coarse level, fine level, target, step)
        for pyr, target in zip(pyramids, targets):
            for k in range(1, pyr.num_levels):
                items.append((pyr.levels[k - 1], pyr.levels[k], target, k))
        prio = [c.prio for c, _, _, _ in items]
        x, edge_index, batch, pairs, pair_graph = level_features(
            [c.num_nodes for c, _, _, _ in items], [c.edges for c, _, _, _ in items], prio,
            [t for _, _, t, _ in items], [k for _, _, _, k in items], self.refiner.rw_steps)
        node_tokens = torch.as_tensor(np.concatenate([f.node_tokens for _, f, _, _ in items]), dtype=torch.long)
        edge_tokens = torch.as_tensor(np.concatenate([f.edge_tokens for _, f, _, _ in items]), dtype=torch.long)
        rounds = self.rounds_for(node_tokens.numpy(), pairs, np.concatenate(prio))
        return x, edge_index, batch, pairs, pair_graph, node_tokens, edge_tokens, rounds

    def rounds_for(self, node_tokens, pairs, prio) -> torch.Tensor:
        """The round in which each edge's pattern is drawn (``edge_order``)."""
        if self.edge_order == "walk" and self.edge_rounds > 1:
            return walk_rounds(node_tokens, pairs, prio, self.edge_rounds)
        return draw_rounds(prio, pairs, self.edge_rounds)

    def token_log_likelihood(self, pyramids, targets, reduce: str = "mean", rng=None):
        """Log-likelihood of the pyramids' tokens. Edge patterns are drawn in ``edge_rounds``
        rounds; ``reduce="sum"`` scores every round exactly (one head pass each), the training
        mean scores one random round per level (earlier rounds revealed, the MaskGIT estimate)."""
        x, edge_index, batch, pairs, pair_graph, node_tokens, edge_tokens, rounds = \
            self._level_batch(pyramids, targets)
        h, node_logits = self.refiner(x, edge_index, batch)
        tri = triangles(pairs, len(node_tokens)) if self._needs_triangles else None
        # the level's structure is built on the CPU (numpy); the network's side goes to its device
        dev = node_logits.device
        pairs, node_tokens, edge_tokens = pairs.to(dev), node_tokens.to(dev), edge_tokens.to(dev)
        tri = None if tri is None else tuple(t.to(dev) for t in tri)
        rounds_cpu, rounds = rounds, rounds.to(dev)
        node_ll = -F.cross_entropy(node_logits, node_tokens, reduction="none")
        if reduce == "sum":
            total = node_ll.sum()
            for t in range(self.edge_rounds):
                now = rounds == t
                drawn = torch.where(rounds < t, edge_tokens, 0)
                logits = self.refiner.edge_logits(h, pairs, node_tokens, drawn, tri)
                total = total + (-F.cross_entropy(logits[now], edge_tokens[now], reduction="sum"))
            return total
        if len(pairs):
            levels = int(batch.max()) + 1
            gen = rng if rng is not None else np.random.default_rng(0)
            # a round that some edge of the level uses, so that every level scores something
            last = torch.zeros(levels, dtype=torch.long).scatter_reduce(0, pair_graph, rounds_cpu, "amax")
            upto = torch.as_tensor(np.floor(gen.random(levels) * (last.numpy() + 1)).astype(np.int64))[pair_graph]
            upto = upto.to(dev)
            drawn = torch.where(rounds < upto, edge_tokens, 0)
            logits = self.refiner.edge_logits(h, pairs, node_tokens, drawn, tri)
            scored = rounds >= upto
            edge_ll = -F.cross_entropy(logits[scored], edge_tokens[scored], reduction="none")
        else:
            edge_ll = node_ll[:0]
        return node_ll.mean(), (edge_ll.mean() if len(edge_ll) else node_ll.new_zeros(())), node_logits, node_tokens

    def loss(self, batch, generator: torch.Generator | None = None):
        seed = int(torch.randint(2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)  # a fresh random coarsening of every graph, every step
        pyramids = [build_pyramid(g.num_nodes, g.edges, rng, **self.pyramid_kw) for g in batch]
        node_ll, edge_ll, node_logits, node_tokens = self.token_log_likelihood(
            pyramids, [g.num_nodes for g in batch], rng=rng)
        loss = -(node_ll + edge_ll)
        acc = (node_logits.argmax(1) == node_tokens).float().mean()
        return loss, {"node_nll": float(-node_ll.detach()), "edge_nll": float(-edge_ll.detach()),
                      "node_acc": float(acc)}

    def forward(self, batch, generator: torch.Generator | None = None):
        return self.loss(batch, generator)

    @torch.no_grad()
    def log_likelihood(self, graph: Graph, prio) -> float:
        """log p(tokens of the pyramid built with these finest priorities | node count)."""
        pyr = build_pyramid(graph.num_nodes, graph.edges, np.asarray(prio, dtype=np.float64),
                            **self.pyramid_kw)
        return float(self.token_log_likelihood([pyr], [graph.num_nodes], reduce="sum"))

    # ------------------------------------------------------------------ sampling
    def init_state(self, cond: torch.Tensor, generators=None) -> dict:
        targets = [int(c) for c in cond.tolist()]
        if min(targets) < 1:
            raise ValueError(f"graph sizes to sample must be >= 1, got {min(targets)}")
        return {"n": [1] * len(targets), "edges": [np.zeros((0, 2), np.int64) for _ in targets],
                "prio": [np.array([0.5]) for _ in targets], "target": targets, "step": 1}

    def is_done(self, state) -> bool:
        return all(n >= t for n, t in zip(state["n"], state["target"]))

    def predict(self, state, k, cond):
        x, edge_index, batch, pairs, pair_graph = level_features(
            state["n"], state["edges"], state["prio"], state["target"],
            [state["step"]] * len(state["n"]), self.refiner.rw_steps)
        h, node_logits = self.refiner(x, edge_index, batch)
        B = len(state["n"])
        node_dense, _ = to_dense_batch(node_logits, batch.to(node_logits.device), batch_size=B)
        # the level's structure stays on the CPU (numpy); the triangles only feed the network
        tri = triangles(pairs, len(batch)) if self._needs_triangles else None
        tri = None if tri is None else tuple(t.to(h.device) for t in tri)
        pair_local = self._local_index(pair_graph) if len(pairs) else pair_graph  # row of each edge
        state["level"] = Level(h, pairs, pair_graph, pair_local, batch, {}, tri)
        edges_max = max([len(e) for e in state["edges"]] + [1])
        # edge logits need the drawn node tokens (and earlier rounds): filled in by condition_logits
        out = {"node": Prediction("index", node_dense.unsqueeze(2))}
        for t in range(self.edge_rounds):
            out[f"edge{t}"] = Prediction("index", node_dense.new_zeros(B, edges_max, 1, 16))
        return out

    def _node_flat(self, drawn, state) -> torch.Tensor:
        """The drawn node tokens [n] of the batch, separated as the level will be composed."""
        lv = state["level"]
        pairs, batch = lv.pairs, lv.batch
        node_flat = drawn["node"].squeeze(2).cpu()[batch, self._local_index(batch)]
        if self.pyramid_kw["separated"]:
            node_flat = torch.as_tensor(separate_splits(
                node_flat.numpy().astype(np.int64), pairs.numpy(), np.concatenate(state["prio"])))
        return node_flat

    def _level_rounds(self, node_flat, state) -> torch.Tensor:
        """Rounds of the level's edges given its node tokens (cached: a walk order depends on
        them, and redraws change them for some rows only)."""
        lv = state["level"]
        pairs, cache = lv.pairs, lv.rounds
        key = node_flat.numpy().tobytes() if self.edge_order == "walk" else b""
        if key not in cache:
            cache[key] = self.rounds_for(node_flat.numpy(), pairs, np.concatenate(state["prio"]))
        return cache[key]

    def _flat_edges(self, drawn, state, upto: int, node_flat) -> torch.Tensor:
        """Edge patterns [m] of the batch drawn in rounds before ``upto`` (0 elsewhere), given
        the level's node tokens ``node_flat`` (``_node_flat``)."""
        lv = state["level"]
        pairs, pair_graph, local = lv.pairs, lv.pair_graph, lv.pair_local
        rounds = self._level_rounds(node_flat, state)
        flat = torch.zeros(len(pairs), dtype=torch.long)
        for t in range(upto):
            if f"edge{t}" in drawn:
                now = rounds == t
                flat[now] = drawn[f"edge{t}"].squeeze(2).cpu()[pair_graph[now], local[now]].long()
        # an edge with one allowed pattern has it (its round's head pass may have been skipped)
        fixed = self._single_patterns(node_flat, pairs)
        fixed = torch.where(rounds < upto, fixed, 0)
        return torch.where(fixed > 0, fixed, flat)

    @staticmethod
    def _single_patterns(node_flat, pairs) -> torch.Tensor:
        if not len(pairs):
            return torch.zeros(0, dtype=torch.long)
        two = (node_flat > 0).long()
        return single_pattern(two[pairs[:, 0]], two[pairs[:, 1]])

    def condition_logits(self, name, value, drawn, state):
        if not name.startswith("edge"):
            return value
        lv = state["level"]
        h, pairs, pair_graph, tri = lv.h, lv.pairs, lv.pair_graph, lv.triangles
        node_flat = self._node_flat(drawn, state)
        t = int(name[4:])
        # the head runs for the round's edges that have a choice (and the edges they read); a
        # round with none in the whole batch costs no pass (its draws are overridden)
        needed = (self._level_rounds(node_flat, state) == t) & (self._single_patterns(node_flat, pairs) == 0)
        if not bool(needed.any()):
            return value
        earlier = self._flat_edges(drawn, state, t, node_flat)
        logits = self.refiner.edge_logits(h, pairs, node_flat, earlier, tri, needed=needed)
        out, _ = to_dense_batch(logits, pair_graph.to(logits.device), batch_size=value.shape[0], fill_value=0.0,
                                max_num_nodes=value.shape[1])
        return out.unsqueeze(2)

    @staticmethod
    def _local_index(group: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(group)
        starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
        return torch.arange(len(group)) - starts[group]

    def _compose_row(self, state, tokens, i):
        """Graph i of the batch composed with its drawn tokens: (n, edges, cluster, slot)."""
        n, edges = state["n"][i], state["edges"][i]
        nt = tokens["node"][i, :n, 0].numpy().astype(np.int64).copy()
        et = tokens["edge"][i, :len(edges)].numpy().astype(np.int64).copy()
        if self.pyramid_kw["separated"]:  # as the edge patterns were drawn (condition_logits)
            nt = separate_splits(nt, edges, state["prio"][i])
        nt, et = fit_to_target(nt, et, edges, state["prio"][i], state["target"][i] - n)
        return compose(n, edges, nt, et)

    def band_ok(self, state, tokens, k, rows) -> torch.Tensor:
        """Which graphs of ``rows`` stay inside ``constraint`` once composed with their tokens.

        Contracting an edge keeps a graph planar, a forest, connected: every level of a valid
        graph's pyramid is valid too, so a level that breaks the property can be drawn again."""
        ok = torch.ones(len(state["n"]), dtype=torch.bool)
        if self.constraint is None:
            return ok
        tokens = self.joined_tokens(tokens, state)
        for i in torch.as_tensor(rows).nonzero().flatten().tolist():
            if state["n"][i] < state["target"][i]:
                n, edges, _, _ = self._compose_row(state, tokens, i)
                ok[i] = satisfies(n, edges, self.constraint)
        return ok

    def joined_tokens(self, tokens, state) -> dict:
        """Node tokens and the edge patterns of all rounds, [B, m_max] (rows of the batch)."""
        lv = state["level"]
        pairs, pair_graph, local = lv.pairs, lv.pair_graph, lv.pair_local
        flat = self._flat_edges(tokens, state, self.edge_rounds, self._node_flat(tokens, state))
        B = len(state["n"])
        edges = torch.zeros(B, max([len(e) for e in state["edges"]] + [1]), dtype=torch.long)
        if len(pairs):
            edges[pair_graph, local] = flat
        return {"node": tokens["node"].cpu(), "edge": edges}  # composed with numpy

    def add_band(self, state, tokens, k):
        tokens = self.joined_tokens(tokens, state)
        for i in range(len(state["n"])):
            if state["n"][i] >= state["target"][i]:
                continue
            prio = state["prio"][i]
            fn, fe, cluster, slot = self._compose_row(state, tokens, i)
            child_prio = remix_priorities(prio[cluster])
            child_prio[slot == 1] = remix_priorities(child_prio[slot == 1])
            state["n"][i], state["edges"][i], state["prio"][i] = fn, fe, child_prio
        state["step"] += 1
        return state

    def finish(self, state) -> list[Graph]:
        return [Graph(n, e) for n, e in zip(state["n"], state["edges"])]


CONSTRAINTS = (None, "connected", "tree", "planar")


def satisfies(n: int, edges: np.ndarray, constraint: str) -> bool:
    """Whether a graph is connected and, for ``tree`` / ``planar``, a tree / planar."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(np.asarray(edges).tolist())
    if not nx.is_connected(g):
        return False
    if constraint == "tree":
        return g.number_of_edges() == n - 1
    if constraint == "planar":
        return nx.check_planarity(g)[0]
    return True


def separate_splits(nt, edges, prio) -> np.ndarray:
    """Node tokens with no two expanding nodes adjacent, as in a separated pyramid: expanding
    nodes are kept in order of priority, unless a kept neighbour expands already."""
    nt = np.asarray(nt, dtype=np.int64).copy()
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    split = nt > 0
    touching = split[edges[:, 0]] & split[edges[:, 1]]
    if not touching.any():
        return nt
    clash = edges[touching]
    neighbours = {}
    for a, b in clash.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    kept = set()
    for v in sorted(neighbours, key=lambda v: prio[v]):
        if any(w in kept for w in neighbours[v]):
            nt[v] = 0
        else:
            kept.add(v)
    return nt


def fit_to_target(nt, et, edges, prio, budget: int):
    """Keep at most ``budget`` (>= 1) expansions, and at least one so that sampling progresses.

    Surplus expansions (highest priorities first: a random but reproducible choice) are undone
    by merging the two children: their connections are folded onto slot 0.
    """
    expanding = np.flatnonzero(nt > 0)
    if len(expanding) == 0:
        nt[np.argmin(prio)] = 2  # a new child attached to its sibling
        return nt, et
    if len(expanding) <= budget:
        return nt, et
    undo = expanding[np.argsort(-prio[expanding])[: len(expanding) - budget]]
    nt[undo] = 0
    undone = np.zeros(len(nt), dtype=bool)
    undone[undo] = True
    first, second = undone[edges[:, 0]], undone[edges[:, 1]]
    et[first] = (et[first] & 0b0011) | ((et[first] >> 2) & 0b0011)
    et[second] = (et[second] & 0b0101) | ((et[second] >> 1) & 0b0101)
    return nt, et
