"""The graph scale model: the refiner's sampling loop state and training loss.

One step of the backward process reads the coarse graph G_{k-1} and predicts its detail tokens
with ``domains.graph.network.GraphRefiner`` (one backbone call per level); composing them gives
G_k. Sampling starts from a single node and repeats until the requested node count is reached.
The edge patterns of a level are drawn in rounds (``domains.graph.rounds``: by priority, or with
``edge_order="walk"`` one edge of each expanding node per round, around its neighbourhood), the
edge head re-run between rounds. The pyramid can be separated (``separated``: no two expanding
nodes adjacent, enforced when sampling by ``separate_splits``). ``Level`` holds what one level's
backbone pass leaves for the draws that follow it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.utils import to_dense_batch

from core.targets import Prediction
from domains.graph.coarsen import build_pyramid, compose, remix_priorities
from domains.graph.data import Graph
# the network and the round orders, importable from here as before
from domains.graph.network import (FIRST_SLOTS, SECOND_SLOTS, TRANSPOSE, VALID, GraphRefiner,  # noqa: F401
                                   TriangleLayer, level_features, single_pattern, triangle_closure,
                                   triangles)
from domains.graph.rounds import EDGE_ORDERS, draw_rounds, walk_rounds  # noqa: F401


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
    edge_logits: dict = field(default_factory=dict)  # round -> (edges it drew [m], their logits [m, 16])
    refine_nodes: torch.Tensor | None = None         # node tokens [n] of the level being refined


class GraphScaleModel(nn.Module):
    """The scale-model protocol of ``core.model`` for graphs (conditioned on the node count).

    Within-scale refinement (``refine``, the core's ``sample.refine_rounds``) re-predicts a level's
    least confident edge patterns with the edge head, seeing every other pattern of the level
    (``core.protocol.RefinesView``: the view is the level's edges; no-choice edges stay). Training
    for it shows a share ``refine_share`` of the levels a random subset of their patterns (the
    hidden share cos(pi/2 u), u uniform, as MaskGIT) instead of the earlier edge rounds. Node
    tokens are not refined: the edges drawn for them would no longer fit."""

    num_classes = 0
    null_label = 0
    repredict_pass = "head"  # a refinement round re-runs the edge head, not the backbone

    def __init__(self, max_levels: int = 24, two_hop: bool = False, slot_rule: str = "degree",
                 max_fraction: float = 0.5, constraint: str | None = None, edge_rounds: int = 1,
                 separated: bool = False, edge_order: str = "priority", refine: bool = False,
                 refine_share: float = 0.5, **refiner_kw):
        super().__init__()
        if refine and not 0 < refine_share <= 1:
            raise ValueError(f"model.refine_share must be in (0, 1] with model.refine=true, got {refine_share}")
        self.refine_share = float(refine_share) if refine else 0.0
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

    @property
    def refine_trained(self) -> bool:
        return self.refine_share > 0

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
            shown = rounds < upto
            if self.refine_trained:  # some levels see a random subset instead (refinement)
                shown = self._refine_shown(shown, gen, levels, pair_graph, node_tokens, pairs)
            drawn = torch.where(shown, edge_tokens, 0)
            logits = self.refiner.edge_logits(h, pairs, node_tokens, drawn, tri)
            scored = ~shown
            edge_ll = -F.cross_entropy(logits[scored], edge_tokens[scored], reduction="none")
        else:
            edge_ll = node_ll[:0]
        return node_ll.mean(), (edge_ll.mean() if len(edge_ll) else node_ll.new_zeros(())), node_logits, node_tokens

    def _refine_shown(self, shown, gen, levels, pair_graph, node_tokens, pairs) -> torch.Tensor:
        """The edges shown to the head: ``shown`` (earlier rounds), except that a share
        ``refine_share`` of the levels show a random subset, each edge hidden with probability
        cos(pi/2 u) (u uniform per level); no-choice edges are shown there, as when sampling."""
        dev = shown.device
        masked_level = torch.as_tensor(gen.random(levels) < self.refine_share)
        hidden_share = torch.as_tensor(np.cos(np.pi / 2 * gen.random(levels)), dtype=torch.float32)
        hidden = torch.as_tensor(gen.random(len(pairs)), dtype=torch.float32) < hidden_share[pair_graph]
        fixed = self._single_patterns(node_tokens.cpu(), pairs.cpu()) > 0
        subset = ~hidden | fixed
        return torch.where(masked_level[pair_graph].to(dev), subset.to(dev), shown)

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
        # each graph draws uniforms for its own nodes and edges only, never for its batch's padding
        # (core.targets.Prediction.lengths): a sample does not depend on the batch it is drawn in
        nodes, edge_counts = torch.as_tensor(state["n"]), self._edge_counts(state)
        # edge logits need the drawn node tokens (and earlier rounds): filled in by condition_logits
        out = {"node": Prediction("index", node_dense.unsqueeze(2), lengths=nodes)}
        for t in range(self.edge_rounds):
            out[f"edge{t}"] = Prediction("index", node_dense.new_zeros(B, edges_max, 1, 16), lengths=edge_counts)
        return out

    @staticmethod
    def _edge_counts(state) -> torch.Tensor:
        """Coarse edges per graph of the batch: the real rows of its edge token groups."""
        return torch.as_tensor([len(e) for e in state["edges"]], dtype=torch.long)

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
        """``single_pattern`` of every coarse edge [m], given the level's node tokens."""
        two = (node_flat > 0).long()
        return single_pattern(two[pairs[:, 0]], two[pairs[:, 1]])

    def condition_logits(self, name, value, drawn, state):
        if not name.startswith("edge"):
            return value
        lv = state["level"]
        h, pairs, tri = lv.h, lv.pairs, lv.triangles
        node_flat = self._node_flat(drawn, state)
        t = int(name[4:])
        # the head runs for the round's edges that have a choice (and the edges they read); a
        # round with none in the whole batch costs no pass (its draws are overridden)
        needed = (self._level_rounds(node_flat, state) == t) & (self._single_patterns(node_flat, pairs) == 0)
        if not bool(needed.any()):
            return value
        earlier = self._flat_edges(drawn, state, t, node_flat)
        logits = self.refiner.edge_logits(h, pairs, node_flat, earlier, tri, needed=needed)
        lv.edge_logits[t] = (needed, logits)  # the confidence of refinement
        return self._dense(logits, state, value.shape[1]).unsqueeze(2)

    def _dense(self, flat, state, width=None, fill=0.0) -> torch.Tensor:
        """Per-edge rows [m, ...] of the batch as [B, width, ...] (``fill`` where a graph has fewer)."""
        lv = state["level"]
        B = len(state["n"])
        width = width or max([len(e) for e in state["edges"]] + [1])
        out = torch.full((B, width, *flat.shape[1:]), fill, dtype=flat.dtype, device=flat.device)
        if len(lv.pairs):
            out[lv.pair_graph.to(flat.device), lv.pair_local.to(flat.device)] = flat
        return out

    # ------------------------------------------------------------------ refinement (RefinesView)
    def refine_view(self, state, k, predictions, tokens):
        """The level's edge patterns [B, m_max, 1], the logits each was drawn from, and the
        positions that stay: padding and edges whose ends allow one pattern."""
        lv = state["level"]
        node_flat = self._node_flat(tokens, state)
        lv.refine_nodes = node_flat
        flat = self._flat_edges(tokens, state, self.edge_rounds, node_flat)
        choice = self._single_patterns(node_flat, lv.pairs) == 0
        dev = lv.h.device
        logits = torch.zeros(len(lv.pairs), 16, device=dev)
        for needed, lg in lv.edge_logits.values():
            logits[needed.to(dev)] = lg[needed.to(dev)]
        free = self._dense(choice, state, fill=False)
        view = {"edge": self._dense(flat, state).unsqueeze(2)}
        pred = Prediction("index", self._dense(logits, state).unsqueeze(2), lengths=self._edge_counts(state))
        return view, {"edge": pred}, ~free

    def repredict(self, state, k, cond, tokens, keep):
        """The edge head once more, seeing the patterns where ``keep`` [B, m_max] and hidden (0)
        elsewhere: logits of the hidden edges with a choice (one head pass)."""
        lv = state["level"]
        node_flat = lv.refine_nodes
        pairs, graph, local = lv.pairs, lv.pair_graph, lv.pair_local
        flat = tokens["edge"].squeeze(2).cpu()[graph, local].long()
        shown = keep.cpu()[graph, local]
        single = self._single_patterns(node_flat, pairs)
        drawn = torch.where(shown | (single > 0), flat, 0)
        needed = ~shown & (single == 0)
        logits = self.refiner.edge_logits(lv.h, pairs, node_flat, drawn, lv.triangles, needed=needed)
        return {"edge": Prediction("index", self._dense(logits, state, tokens["edge"].shape[1]).unsqueeze(2),
                                   lengths=self._edge_counts(state))}

    def refine_apply(self, state, k, tokens, refined):
        """``tokens`` with every edge round's patterns taken from the refined view."""
        lv = state["level"]
        graph, local = lv.pair_graph, lv.pair_local
        flat = refined["edge"].squeeze(2).cpu()[graph, local]
        rounds = self._level_rounds(lv.refine_nodes, state)
        out = dict(tokens)
        for t in range(self.edge_rounds):
            name = f"edge{t}"
            now = rounds == t
            if name in out and bool(now.any()):
                group = out[name].clone()
                group[graph[now].to(group.device), local[now].to(group.device)] = \
                    flat[now].to(group.device, group.dtype).unsqueeze(-1)
                out[name] = group
        return out

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
