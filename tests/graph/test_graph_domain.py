"""Graph domain end to end: equivariant refiner, invariant likelihood, sampling, CLI tasks."""
import json

import numpy as np
import pytest
import torch

from core.build import build_model
from core.compute import count_flops
from core.run import compose_config, run
from core.plugins import get_domain
from core.sampler import Redraw, TokenScheduler, generate, member_seeds
from domains.graph.coarsen import build_pyramid, compose, transpose_edge_tokens
from domains.graph.data import Graph, GraphDataError, load_graph_split, save_graph_splits
from domains.graph.model import (TRANSPOSE, GraphScaleModel, draw_rounds, fit_to_target,
                                 level_features, satisfies, separate_splits, triangle_closure,
                                 triangles, walk_rounds)

TINY = ["domain=graph", "progress=false", "domain.model.d_model=16", "domain.model.layers=1",
        "domain.model.heads=2", "train.batch_size=4", "sample.num_samples=4", "sample.batch_size=4"]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GraphScaleModel(d_model=32, layers=2, heads=2).eval()


@pytest.fixture(scope="module")
def real_tree(shared_data):
    return load_graph_split(shared_data / "graphs" / "tree.npz", "train")[0]


def test_transpose_matches_the_token_definition():
    assert TRANSPOSE.tolist() == transpose_edge_tokens(np.arange(16)).tolist()


@pytest.fixture(scope="module")
def real_planar(shared_data):
    return load_graph_split(shared_data / "graphs" / "planar.npz", "train")[0]


@pytest.mark.parametrize("source,edge_layers", [("tree", 0), ("planar", 0), ("planar", 2)])
def test_refiner_is_permutation_equivariant(real_tree, real_planar, source, edge_layers):
    torch.manual_seed(0)
    model = GraphScaleModel(d_model=32, layers=2, heads=2, edge_layers=edge_layers).eval()
    graph = real_tree if source == "tree" else real_planar
    level = build_pyramid(graph.num_nodes, graph.edges, 0).levels[-2]  # a coarse graph
    n, edges, prio = level.num_nodes, level.edges, level.prio
    perm = np.random.default_rng(1).permutation(n)  # node i -> perm[i]
    p_edges = np.sort(perm[edges], axis=1)
    p_prio = np.empty_like(prio)
    p_prio[perm] = prio
    flipped = perm[edges[:, 0]] > perm[edges[:, 1]]  # pairs whose orientation flips
    row = {tuple(e): r for r, e in enumerate(p_edges.tolist())}
    moved = np.array([row[tuple(sorted((perm[u], perm[v])))] for u, v in edges.tolist()])

    tokens = np.random.default_rng(4).integers(0, 3, n)
    p_tokens = np.empty_like(tokens)
    p_tokens[perm] = tokens
    # patterns drawn in earlier rounds (0 = not yet), read in each pair's own orientation
    drawn = torch.as_tensor(np.random.default_rng(5).integers(0, 16, len(edges)))
    p_drawn = torch.zeros_like(drawn)
    p_drawn[moved] = torch.where(torch.as_tensor(flipped), TRANSPOSE[drawn], drawn)

    def run_(e, p, t, d):
        x, ei, batch, pairs, _ = level_features([n], [e], [p], [64], [5], model.refiner.rw_steps)
        h, node_logits = model.refiner(x, ei, batch)
        return node_logits, model.refiner.edge_logits(h, pairs, torch.as_tensor(t), d)

    nodes, edge_logits = run_(edges, prio, tokens, drawn)
    p_nodes, p_edge_logits = run_(p_edges, p_prio, p_tokens, p_drawn)
    assert torch.allclose(p_nodes[perm], nodes, atol=1e-5)
    for r in range(len(edges)):
        other = p_edge_logits[moved[r]]
        expected = edge_logits[r][TRANSPOSE] if flipped[r] else edge_logits[r]
        assert torch.allclose(other, expected, atol=1e-5)
    if edge_layers:  # the triangle layers do read the drawn patterns
        x, ei, batch, pairs, _ = level_features([n], [edges], [prio], [64], [5], model.refiner.rw_steps)
        h, _ = model.refiner(x, ei, batch)
        blank = model.refiner.edge_logits(h, pairs, torch.as_tensor(tokens), torch.zeros_like(drawn))
        assert not torch.allclose(blank, edge_logits)


@pytest.mark.parametrize("source,rounds,extra", [
    ("tree", 1, {}), ("tree", 3, {}), ("planar", 3, {"edge_layers": 2, "separated": True}),
    ("planar", 8, {"edge_layers": 1, "separated": True, "edge_order": "walk"}),
    ("planar", 6, {"edge_order": "walk"})])
def test_log_likelihood_is_invariant_to_relabelling(real_tree, real_planar, source, rounds, extra):
    torch.manual_seed(0)
    graph = real_tree if source == "tree" else real_planar
    model = GraphScaleModel(d_model=32, layers=2, heads=2, edge_rounds=rounds, **extra).eval()
    prio = np.random.default_rng(2).random(graph.num_nodes)
    perm = np.random.default_rng(3).permutation(graph.num_nodes)
    relabelled = Graph.from_edge_list(graph.num_nodes, perm[graph.edges], strict=False)
    p_prio = np.empty_like(prio)
    p_prio[perm] = prio
    ll = model.log_likelihood(graph, prio)
    assert np.isfinite(ll) and ll < 0
    assert model.log_likelihood(relabelled, p_prio) == pytest.approx(ll, abs=1e-3)


def test_fit_to_target_keeps_the_budget_and_merges_children():
    edges = np.array([[0, 1], [1, 2]])
    prio = np.array([0.1, 0.9, 0.5])
    nt, et = fit_to_target(np.array([2, 2, 2]), np.array([0b1111, 0b0110]), edges, prio, budget=1)
    assert (nt > 0).sum() == 1 and nt[0] == 2  # the lowest-priority expansion survives
    n, fine, _, _ = compose(3, edges, nt, et)
    assert n == 4
    nt, et = fit_to_target(np.array([0, 0, 0]), np.array([1, 1]), edges, prio, budget=5)
    assert (nt > 0).sum() == 1  # sampling always progresses


def test_separate_splits_keeps_an_independent_set_by_priority():
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])  # a path
    prio = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    nt = separate_splits(np.array([2, 1, 2, 2, 0]), edges, prio)
    # node 1 (lowest priority) keeps its split; 0 and 2 touch it; 3 keeps, 4 did not split
    assert nt.tolist() == [0, 1, 0, 2, 0]
    assert separate_splits(np.array([2, 0, 1, 0, 2]), edges, prio).tolist() == [2, 0, 1, 0, 2]


def test_separated_sampling_never_expands_neighbours_together():
    torch.manual_seed(0)
    model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=2, edge_layers=1,
                            separated=True).eval()
    seen = []
    compose_row = model._compose_row

    def spy(state, tokens, i):
        n, fine, cluster, slot = compose_row(state, tokens, i)
        split = np.bincount(cluster, minlength=state["n"][i]) > 1
        edges = state["edges"][i]
        seen.append(bool(np.any(split[edges[:, 0]] & split[edges[:, 1]])) if len(edges) else False)
        return n, fine, cluster, slot

    model._compose_row = spy
    cond = torch.tensor([30, 24])
    graphs, _ = generate(model, TokenScheduler(), cond, member_seeds(0, cond))
    assert [g.num_nodes for g in graphs] == [30, 24] and seen and not any(seen)


def test_sampling_makes_one_call_per_level_and_hits_the_size():
    model = tiny_model()
    calls = []
    forward = model.refiner.forward
    model.refiner.forward = lambda *a: calls.append(1) or forward(*a)
    cond = torch.tensor([64, 20, 1, 37])
    stats = {}
    graphs, nfe = generate(model, TokenScheduler(), cond, member_seeds(0, cond), stats=stats)
    assert [g.num_nodes for g in graphs] == [64, 20, 1, 37]
    assert stats["nfe_backbone"] == len(calls) and 6 <= len(calls) <= model.num_scales  # >= log2(64)
    # + the edge head per level, except the first (one node, no edge to draw)
    assert nfe == 2 * len(calls) - 1 == stats["nfe_backbone"] + stats["nfe_head"]
    again, _ = generate(model, TokenScheduler(), cond, member_seeds(0, cond))
    assert all(np.array_equal(a.edges, b.edges) for a, b in zip(graphs, again))


def test_triangles_list_every_triangle_with_its_side_edges():
    pairs = torch.tensor([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [3, 4]])
    edge, p_edge, p_first, q_edge, q_first, apex = triangles(pairs, 5)
    found = sorted((int(e), int(w)) for e, w in zip(edge, apex))
    # triangles 0-1-2 and 1-2-3: each of their edges once per triangle, with the opposite apex
    assert found == sorted([(0, 2), (1, 1), (2, 0), (2, 3), (3, 2), (4, 1)])
    for e, pe, pf, qe, qf, w in zip(edge, p_edge, p_first, q_edge, q_first, apex):
        p, q = pairs[e].tolist()
        assert sorted(pairs[pe].tolist()) == sorted([p, int(w)]) and bool(pf) == (p < w)
        assert sorted(pairs[qe].tolist()) == sorted([q, int(w)]) and bool(qf) == (q < w)


def test_edge_rounds_travel_with_the_nodes():
    prio = np.random.default_rng(0).random(6)
    pairs = torch.tensor([[0, 1], [1, 2], [2, 5], [3, 4]])
    perm = np.array([5, 3, 0, 1, 2, 4])
    p_prio = np.empty_like(prio)
    p_prio[perm] = prio
    p_pairs = torch.as_tensor(np.sort(perm[pairs.numpy()], axis=1))
    assert draw_rounds(prio, pairs, 4).tolist() == draw_rounds(p_prio, p_pairs, 4).tolist()
    assert draw_rounds(prio, pairs, 1).tolist() == [0, 0, 0, 0]


def _wheel(rim: int):
    """Hub 0 joined to a rim cycle 1..rim, edges canonical and sorted."""
    e = [(0, i) for i in range(1, rim + 1)] + [tuple(sorted((i, i % rim + 1))) for i in range(1, rim + 1)]
    return torch.as_tensor(sorted(e))


def test_walk_rounds_go_around_an_expanding_node():
    pairs = _wheel(8)
    prio = np.random.default_rng(0).random(9)
    nt = np.zeros(9, dtype=np.int64)
    nt[0] = 2
    rounds = walk_rounds(nt, pairs, prio, 16)
    spokes = pairs[:, 0] == 0
    order = [int(w) for _, w in sorted(zip(rounds[spokes].tolist(), pairs[spokes, 1].tolist()))]
    assert sorted(rounds[spokes].tolist()) == list(range(8))  # one neighbour per round
    assert order[0] == 1 + int(np.argmin(prio[1:]))  # from the neighbour of lowest priority
    # each next neighbour is beside the last one on the rim
    assert all(abs(a - b) in (1, 7) for a, b in zip(order, order[1:]))
    assert rounds[~spokes].tolist() == [0] * 8  # rim edges: single ends, nothing to choose
    assert walk_rounds(nt, pairs, prio, 4)[spokes].max() == 3  # late positions share the last round
    # relabelling the nodes moves the rounds with them
    perm = np.random.default_rng(1).permutation(9)
    p_prio = np.empty_like(prio)
    p_prio[perm] = prio
    p_nt = np.empty_like(nt)
    p_nt[perm] = nt
    p_pairs = np.sort(perm[pairs.numpy()], axis=1)
    back = np.lexsort((p_pairs[:, 1], p_pairs[:, 0]))
    p_rounds = walk_rounds(p_nt, torch.as_tensor(p_pairs[back]), p_prio, 16)
    mapped = {tuple(p_pairs[back][i]): r for i, r in enumerate(p_rounds.tolist())}
    assert [mapped[tuple(x)] for x in p_pairs] == rounds.tolist()


def test_walk_rounds_edge_between_two_expanding_nodes_waits_for_both():
    pairs = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 4]])
    prio = np.array([0.5, 0.9, 0.1, 0.2, 0.3])
    nt = np.array([2, 1, 0, 0, 0])
    rounds = walk_rounds(nt, pairs, prio, 8).tolist()
    # node 0 visits 2, 3, 1 (no neighbours touch: lowest priority first); node 1 visits 4, 0
    assert rounds == [2, 0, 1, 0]
    model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=8, edge_order="walk")
    assert model.rounds_for(nt, pairs, prio).tolist() == rounds
    with pytest.raises(ValueError, match="edge_order"):
        GraphScaleModel(edge_order="spiral")


def test_walk_order_sampling_is_reproducible_and_sized():
    torch.manual_seed(0)
    model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=6, edge_layers=1,
                            separated=True, edge_order="walk", constraint="planar").eval()
    cond = torch.tensor([20, 9])
    stats = {}
    graphs, nfe = generate(model, TokenScheduler(), cond, member_seeds(0, cond), [Redraw(20)], stats)
    assert [g.num_nodes for g in graphs] == [20, 9] and stats["nfe_backbone"] <= model.num_scales
    assert all(satisfies(g.num_nodes, g.edges, "planar") for g in graphs)
    again, _ = generate(model, TokenScheduler(), cond[1:], member_seeds(0, cond)[1:], [Redraw(20)])
    assert np.array_equal(again[0].edges, graphs[1].edges)  # redraws use each row's own rounds


def test_edge_head_on_a_round_subset_gives_the_full_logits(real_planar):
    """The head run on one round's edges and their triangle closure gives those edges the
    logits of the full pass, for every depth of triangle layers."""
    g = real_planar
    for layers in (0, 1, 3):
        torch.manual_seed(layers)
        model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_layers=layers, edge_dim=8).eval()
        rng = np.random.default_rng(layers)
        x, edge_index, batch, pairs, _ = level_features(
            [g.num_nodes], [g.edges], [rng.random(g.num_nodes)], [g.num_nodes], [3], 8)
        tokens = torch.as_tensor(rng.integers(0, 3, g.num_nodes))
        drawn = torch.as_tensor(rng.integers(1, 16, len(pairs))) * torch.as_tensor(rng.random(len(pairs)) < 0.5)
        tri = triangles(pairs, g.num_nodes)
        needed = torch.as_tensor(rng.random(len(pairs)) < 0.05)
        with torch.no_grad():
            h, _ = model.refiner(x, edge_index, batch)
            full = model.refiner.edge_logits(h, pairs, tokens, drawn, tri)
            part = model.refiner.edge_logits(h, pairs, tokens, drawn, tri, needed=needed)
        torch.testing.assert_close(part[needed], full[needed], rtol=1e-5, atol=1e-5)
        closure = triangle_closure(needed, tri, layers)
        assert needed.sum() < closure.sum() < len(pairs) if layers else torch.equal(closure, needed)


def test_head_passes_are_the_rounds_with_a_choice(monkeypatch):
    """The edge head runs for a round only where some edge of it has more than one allowed
    pattern; every run is counted (redraws too), and skipping the others changes no sample."""
    def build():
        torch.manual_seed(0)
        return GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=6, edge_layers=2, edge_dim=8,
                               separated=True, edge_order="walk", constraint="planar").eval()

    cond = torch.tensor([26, 13])
    model, heads = build(), []
    edge_logits = model.refiner.edge_logits
    model.refiner.edge_logits = lambda *a, **k: heads.append(k.get("needed")) or edge_logits(*a, **k)
    stats = {}
    (graphs, nfe), flops = count_flops(generate, model, TokenScheduler(), cond, member_seeds(0, cond),
                                       [Redraw(5)], stats)
    assert stats["nfe_head"] == len(heads) and nfe == stats["nfe_backbone"] + len(heads)
    assert all(k is not None and bool(k.any()) for k in heads)
    # the same draws when the head runs on every edge of every round with an edge (no pattern
    # counts as fixed, no subset), as it did before
    full = build()
    full_logits = full.refiner.edge_logits
    full.refiner.edge_logits = lambda *a, needed=None: full_logits(*a)
    monkeypatch.setattr(GraphScaleModel, "_single_patterns",
                        staticmethod(lambda node_flat, pairs: torch.zeros(len(pairs), dtype=torch.long)))
    full_stats = {}
    (again, _), full_flops = count_flops(generate, full, TokenScheduler(), cond, member_seeds(0, cond),
                                         [Redraw(5)], full_stats)
    assert all(np.array_equal(a.edges, b.edges) for a, b in zip(graphs, again))
    assert full_stats["nfe_head"] >= stats["nfe_head"] and full_flops > 1.2 * flops


def test_constrained_draws_keep_every_sample_a_tree():
    torch.manual_seed(0)
    model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=2, constraint="tree").eval()
    cond = torch.tensor([10, 12, 6])
    plain, nfe = generate(model, TokenScheduler(), cond, member_seeds(0, cond))
    stats = {}
    graphs, nfe_c = generate(model, TokenScheduler(), cond, member_seeds(0, cond), [Redraw(200)], stats)
    assert stats["nfe_backbone"] <= model.num_scales and stats["redraws"] > 0
    assert nfe_c > stats["nfe_backbone"] + 2 * stats["nfe_backbone"]  # redraws re-run the edge head
    assert not all(satisfies(g.num_nodes, g.edges, "tree") for g in plain)  # untrained: rarely trees
    assert all(satisfies(g.num_nodes, g.edges, "tree") for g in graphs)
    # a sample does not depend on the rest of its batch
    alone, _ = generate(model, TokenScheduler(), cond[1:2], member_seeds(0, cond)[1:2], [Redraw(200)])
    assert np.array_equal(alone[0].edges, graphs[1].edges)
    with pytest.raises(ValueError, match="two_hop"):
        GraphScaleModel(constraint="planar", two_hop=True)


def test_loss_trains_down_on_real_trees(shared_data):
    cfg = compose_config(TINY + [f"domain.data_dir={shared_data / 'graphs'}"])
    domain = get_domain("graph")
    data = domain.c2f_load_data(cfg=cfg, split="train")
    torch.manual_seed(0)
    model = build_model(cfg, domain, data)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss, _ = model.loss(data[:8], torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_main_job_on_real_split_writes_everything(tmp_path, shared_data):
    over = TINY + ["domain.source=tree", f"domain.data_dir={shared_data / 'graphs'}", "train.steps=4"]
    m = run(compose_config(over), tmp_path)
    for key in ("mmd_degree", "mmd_clustering", "mmd_orbit", "mmd_spectral", "ratio", "valid",
                "unique", "novel", "vun", "nfe", "seconds_per_sample"):
        assert key in m, key
    assert m["samples"] == 4 and m["nfe"] >= 6
    graphs = load_graph_split(tmp_path / "samples.npz", "generated")
    assert len(graphs) == 4 and all(g.num_nodes == 64 for g in graphs)
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["vun"] == m["vun"]


def test_evaluate_scores_any_npz(tmp_path, shared_data):
    graphs_dir = shared_data / "graphs"
    test = load_graph_split(graphs_dir / "planar.npz", "test")
    save_graph_splits(tmp_path / "mine.npz", {"generated": test})
    over = ["domain=graph", "task=evaluate", "domain.source=planar", f"domain.data_dir={graphs_dir}",
            f"samples_path={tmp_path / 'mine.npz'}"]
    m = run(compose_config(over), tmp_path / "eval")
    assert m["mmd_degree"] == pytest.approx(0, abs=1e-12) and m["ratio"] == pytest.approx(0, abs=1e-9)
    assert m["valid"] == 1.0 and m["unique"] == 1.0
    with pytest.raises(GraphDataError, match="generated"):
        run(compose_config(over + ["domain.samples_split=generated_typo"]), tmp_path / "bad")


def test_missing_data_path_is_named(tmp_path):
    cfg = compose_config(TINY + [f"domain.source={tmp_path / 'nowhere.npz'}", "task=train"])
    with pytest.raises(GraphDataError, match="nowhere.npz"):
        run(cfg, tmp_path / "run")


@pytest.mark.slow
def test_main_job_default_quality(tmp_path):
    """The main job as shipped (built-in generated trees): most samples are valid, unique, novel
    trees, with one refiner call per pyramid level."""
    m = run(compose_config(["domain=graph", "progress=false"]), tmp_path)
    assert m["vun"] >= 0.5, m
    assert 6 <= m["nfe_backbone"] <= 12 and m["mean_nodes"] == 64
    # and the edge head once per level, except the first (one node, no edge to draw)
    assert m["nfe"] == 2 * m["nfe_backbone"] - 1
