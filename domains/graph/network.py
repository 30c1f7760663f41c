"""The graph refiner's network: a permutation-equivariant GNN over one coarse graph.

``GraphRefiner`` reads the coarse graph G_{k-1} and predicts, for all of its nodes and edges in
parallel, the detail tokens of ``domains.graph.coarsen``: a node token (one child / two unlinked
/ two linked children) per coarse node and a 4-bit child-connection pattern per coarse edge.

Node features (``level_features``) are equivariant: random-walk return probabilities
(structure), degree, a Fourier code of the node's random priority (random features that travel
with the node, so the model can break symmetries while staying exactly equivariant given the
priorities), and the global state (level, current size over target size, target size). The
backbone is a stack of GPS layers (torch_geometric: GIN message passing + global attention).
Edge patterns come from a small edge head, optionally with triangle message passing
(``TriangleLayer``), scored from both orientations and symmetrised, so the likelihood does not
depend on how a pair is written. The head can run on a subset of the edges
(``triangle_closure``) with the same logits there.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from torch_geometric.nn import GINConv, GPSConv
from torch_geometric.utils import to_dense_adj

from core.determinism import gather_rows

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


def level_features(n_list, edge_list, prio_list, targets, steps, rw_steps: int):
    """Batch a list of coarse graphs into node features, edge index and graph ids."""
    counts = torch.tensor(n_list)
    batch = torch.repeat_interleave(torch.arange(len(n_list)), counts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    pairs = [torch.as_tensor(np.array(e, dtype=np.int64)).reshape(-1, 2) + o  # a copy: edges may be read-only
             for e, o in zip(edge_list, offsets.tolist())]
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
            # the layers run even where the batch has no triangle (an edge without one still gets
            # its update): an edge's logits must not depend on the other graphs of its batch
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
