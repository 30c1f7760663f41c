"""Graph pyramid forward process: coarsening by edge contraction and exact detail tokens."""
import time
from collections import Counter

import networkx as nx
import numpy as np
import pytest
import torch

import domains.graph.coarsen as gc
from domains.graph.coarsen import (
    build_pyramid,
    check_graph,
    coarsen,
    collate_level_tensors,
    compose,
    detail_tokens,
    level_tensors,
    relabel_edges,
    transpose_edge_tokens,
)

GRAPH_FILES = ["planar", "sbm", "tree", "community_small", "ego_small", "enzymes"]


def read_split_file(path):
    """{split: [(num_nodes, edges int64 [m, 2]), ...]} of one benchmark npz file."""
    out = {}
    with np.load(path) as d:
        for split in ("train", "val", "test"):
            if f"{split}_num_nodes" not in d.files:
                continue
            nn_ = d[f"{split}_num_nodes"]
            ptr = d[f"{split}_edge_ptr"]
            edges = d[f"{split}_edges"].astype(np.int64)
            out[split] = [(int(nn_[i]), edges[ptr[i]:ptr[i + 1]]) for i in range(len(nn_))]
    return out


@pytest.fixture(scope="module")
def graph_sets(shared_data):
    folder = shared_data / "graphs"
    sets = {}
    for name in GRAPH_FILES:
        path = folder / f"{name}.npz"
        if not path.is_file():
            pytest.skip(f"{path} not found")
        sets[name] = read_split_file(path)
    return sets


def some_graphs(graph_sets, per_file=3, names=("planar", "sbm", "tree", "ego_small")):
    out = []
    for name in names:
        out.extend(graph_sets[name]["train"][:per_file])
    return out


def to_nx(n, edges):
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(map(tuple, np.asarray(edges).tolist()))
    return g


def permute(n, edges, prio, rng):
    """Relabel node i as pi[i]; priorities travel with their nodes."""
    pi = rng.permutation(n)
    new_prio = np.empty_like(prio)
    new_prio[pi] = prio
    new_edges = pi[edges] if len(edges) else edges
    return pi, new_edges, new_prio


def children_counts(cluster, num_coarse):
    return np.bincount(cluster, minlength=num_coarse)


def assert_levels_equal(p, q):
    assert p.num_levels == q.num_levels
    for a, b in zip(p.levels, q.levels):
        assert a.num_nodes == b.num_nodes
        assert np.array_equal(a.edges, b.edges)
        assert np.array_equal(a.prio, b.prio)
        for key in ("cluster", "slot", "node_tokens", "edge_tokens"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None) == (y is None)
            if x is not None:
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), key


def brute_force_tokens(fine_n, fine_edges, cluster, slot, coarse_n, coarse_edges):
    """The token definition, written out literally."""
    adj = set(map(tuple, fine_edges.tolist()))
    adj |= {(v, u) for u, v in adj}
    kids = {P: {} for P in range(coarse_n)}
    for i in range(fine_n):
        kids[int(cluster[i])][int(slot[i])] = i
    node_tokens = []
    for P in range(coarse_n):
        if len(kids[P]) == 1:
            node_tokens.append(0)
        else:
            node_tokens.append(2 if (kids[P][0], kids[P][1]) in adj else 1)
    edge_tokens = []
    for P, Q in coarse_edges.tolist():
        b = 0
        for i, a in kids[P].items():
            for j, c in kids[Q].items():
                if (a, c) in adj:
                    b |= 1 << (2 * i + j)
        edge_tokens.append(b)
    return np.array(node_tokens), np.array(edge_tokens)


# ------------------------------------------------------------------------------------------
# exact round trip on every benchmark graph
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPH_FILES)
def test_round_trip_every_shared_graph(graph_sets, name):
    checked = 0
    for split, graphs in graph_sets[name].items():
        for idx, (n, e) in enumerate(graphs):
            pyr = build_pyramid(n, e, np.random.default_rng(idx))
            assert pyr.levels[0].num_nodes == 1
            assert pyr.num_levels == len(pyr.levels) >= 1
            n2, e2, perm = pyr.compose()
            assert n2 == n
            assert np.array_equal(np.sort(perm), np.arange(n)), "perm is not a permutation"
            assert np.array_equal(e2, relabel_edges(e, perm)), f"{name}/{split}[{idx}]"
            assert np.array_equal(e2, pyr.levels[-1].edges)
            # every intermediate level is rebuilt exactly from the coarser one and its tokens
            for k in range(2, pyr.num_levels + 1):
                coarse, fine = pyr.level(k - 1), pyr.level(k)
                nf, ef, cl, sl = compose(coarse.num_nodes, coarse.edges, fine.node_tokens,
                                         fine.edge_tokens)
                assert nf == fine.num_nodes
                assert np.array_equal(ef, fine.edges)
                assert np.array_equal(cl, fine.cluster) and np.array_equal(sl, fine.slot)
            if idx < 2:  # independent isomorphism check on a few graphs per split
                assert nx.is_isomorphic(to_nx(n, e), to_nx(n2, e2))
            checked += 1
    assert checked == sum(len(g) for g in graph_sets[name].values()) > 0


@pytest.mark.parametrize("two_hop,max_fraction", [(False, 0.5), (True, 0.2), (False, 0.1)])
def test_round_trip_options(graph_sets, two_hop, max_fraction):
    for n, e in some_graphs(graph_sets, per_file=4):
        pyr = build_pyramid(n, e, 7, two_hop=two_hop, max_fraction=max_fraction)
        n2, e2, perm = pyr.compose()
        assert n2 == n and np.array_equal(e2, relabel_edges(e, perm))
        assert pyr.levels[0].num_nodes == 1
        for k in range(2, pyr.num_levels + 1):
            fine, coarse = pyr.level(k), pyr.level(k - 1)
            merged = fine.num_nodes - coarse.num_nodes
            assert 1 <= merged <= max(1, int(np.floor(max_fraction * fine.num_nodes + 1e-9)))


def test_tokens_match_definition(graph_sets):
    for n, e in some_graphs(graph_sets, per_file=2) + [(9, np.array([[0, 1], [2, 3]]))]:
        pyr = build_pyramid(n, e, 3)
        for k in range(2, pyr.num_levels + 1):
            coarse, fine = pyr.level(k - 1), pyr.level(k)
            nt, et = brute_force_tokens(fine.num_nodes, fine.edges, fine.cluster, fine.slot,
                                        coarse.num_nodes, coarse.edges)
            assert np.array_equal(nt, fine.node_tokens)
            assert np.array_equal(et, fine.edge_tokens)
            assert et.size == 0 or (et.min() >= 1 and et.max() <= 15)
            # slot 0 holds the child of higher degree, ties broken by lower priority
            two = np.flatnonzero(fine.node_tokens > 0)
            kids = np.full((coarse.num_nodes, 2), -1)
            kids[fine.cluster, fine.slot] = np.arange(fine.num_nodes)
            deg = np.bincount(fine.edges.ravel(), minlength=fine.num_nodes)
            d0, d1 = deg[kids[two, 0]], deg[kids[two, 1]]
            assert np.all(d0 >= d1)
            tie = d0 == d1
            assert np.all(fine.prio[kids[two, 0]][tie] < fine.prio[kids[two, 1]][tie])
            # fine nodes are numbered coarse-node-major
            assert np.all(np.diff(fine.cluster) >= 0)


def test_hand_example():
    # path 0-1-2-3: all edges cost 1, the end edges have the smaller degree sum -> {01, 23}
    e = np.array([[0, 1], [1, 2], [2, 3]])
    for seed in range(20):
        prio = np.random.default_rng(seed).random(4)
        c = coarsen(4, e, prio)
        assert c.num_nodes == 2
        assert c.cluster[0] == c.cluster[1] != c.cluster[2] == c.cluster[3]
        assert np.array_equal(c.edges, [[0, 1]])
        nt, et = detail_tokens(e, c.cluster, c.slot, c.num_nodes, c.edges)
        assert np.array_equal(nt, [2, 2])
        # the only crossing edge is 1-2
        P, Q = c.cluster[1], c.cluster[2]
        i, j = (c.slot[1], c.slot[2]) if P < Q else (c.slot[2], c.slot[1])
        assert et.tolist() == [1 << (2 * i + j)]


def test_cost_prefers_twins():
    # diamond: 1 and 2 have the same neighbours {0, 3}: cost 0, every other edge costs 1/2
    e = np.array([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])
    for seed in range(20):
        prio = np.random.default_rng(seed).random(4)
        c = coarsen(4, e, prio, two_hop=False)
        assert c.cluster[1] == c.cluster[2] and c.num_nodes == 3
        c2 = coarsen(4, e, prio, two_hop=True)  # 0 and 3 share neighbours: paired too
        assert c2.num_nodes == 2 and c2.cluster[0] == c2.cluster[3]
        assert c2.cluster[1] == c2.cluster[2]


def test_star_collapses_with_two_hop():
    n = 21
    e = np.stack([np.zeros(n - 1, int), np.arange(1, n)], axis=1)
    slow = build_pyramid(n, e, 0, two_hop=False)
    fast = build_pyramid(n, e, 0, two_hop=True)
    assert slow.num_levels == n  # one leaf per level
    assert fast.num_levels <= 7
    for p in (slow, fast):
        n2, e2, perm = p.compose()
        assert np.array_equal(e2, relabel_edges(e, perm))


# ------------------------------------------------------------------------------------------
# permutation equivariance and determinism
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("two_hop", [True, False])
def test_coarsen_one_level_equivariant(graph_sets, two_hop):
    rng = np.random.default_rng(0)
    extra = [(12, np.array([[0, 1], [1, 2], [5, 6], [6, 7], [7, 5], [9, 10]]))]
    for n, e in some_graphs(graph_sets, per_file=3) + extra:
        prio = rng.random(n)
        pi, pe, pp = permute(n, e, prio, rng)
        a = coarsen(n, e, prio, two_hop=two_hop)
        b = coarsen(n, pe, pp, two_hop=two_hop)
        assert a.num_nodes == b.num_nodes
        assert np.array_equal(a.edges, b.edges)  # identical, not only isomorphic
        assert np.array_equal(b.cluster[pi], a.cluster)
        assert np.array_equal(b.slot[pi], a.slot)
        assert np.array_equal(pi[a.children[:, 0]], b.children[:, 0])


@pytest.mark.parametrize("two_hop", [True, False])
def test_pyramid_equivariant(graph_sets, two_hop):
    rng = np.random.default_rng(1)
    graphs = some_graphs(graph_sets, per_file=3, names=("planar", "sbm", "tree", "enzymes"))
    graphs.append((15, np.array([[0, 1], [1, 2], [2, 0], [4, 5], [8, 9], [9, 10]])))
    for n, e in graphs:
        prio = rng.random(n)
        pi, pe, pp = permute(n, e, prio, rng)
        a = build_pyramid(n, e, prio, two_hop=two_hop)
        b = build_pyramid(n, pe, pp, two_hop=two_hop)
        assert_levels_equal(a, b)  # every level identical under the canonical numbering
        assert np.array_equal(b.perm[pi], a.perm)
        for la, lb in zip(a.levels[1:], b.levels[1:]):
            assert Counter(la.node_tokens.tolist()) == Counter(lb.node_tokens.tolist())
            assert Counter(la.edge_tokens.tolist()) == Counter(lb.edge_tokens.tolist())
        # isomorphism of the input-level graphs, checked independently of the stored numbering
        k = max(1, a.num_levels - 2)
        la, lb = a.level(k), b.level(k)
        assert nx.is_isomorphic(to_nx(la.num_nodes, la.edges), to_nx(lb.num_nodes, lb.edges))


def test_equivariance_is_not_vacuous(graph_sets):
    # a different priority vector (not permuted along) changes the tokens
    n, e = graph_sets["planar"]["train"][0]
    rng = np.random.default_rng(2)
    prio = rng.random(n)
    a = build_pyramid(n, e, prio)
    b = build_pyramid(n, e, rng.random(n))
    assert any(not np.array_equal(x.edge_tokens, y.edge_tokens)
               for x, y in zip(a.levels[1:], b.levels[1:])) or a.num_levels != b.num_levels


def test_deterministic(graph_sets):
    for n, e in some_graphs(graph_sets, per_file=2):
        a = build_pyramid(n, e, 11)
        b = build_pyramid(n, e.copy(), np.random.default_rng(11))
        c = build_pyramid(n, e, np.random.default_rng(11).random(n))
        assert_levels_equal(a, b)
        assert_levels_equal(a, c)
        assert a.perm.tobytes() == b.perm.tobytes() == c.perm.tobytes()
        # the input orientation / order of the edge list does not matter
        shuffled = e[np.random.default_rng(0).permutation(len(e))][:, ::-1]
        assert_levels_equal(a, build_pyramid(n, shuffled, 11))


def test_sparse_path_matches_dense(graph_sets, monkeypatch):
    graphs = graph_sets["sbm"]["train"][:3] + graph_sets["planar"]["train"][:2]
    dense = [build_pyramid(n, e, 5) for n, e in graphs]
    monkeypatch.setattr(gc, "DENSE_MAX_NODES", 0)
    sparse = [build_pyramid(n, e, 5) for n, e in graphs]
    for a, b in zip(dense, sparse):
        assert_levels_equal(a, b)


# ------------------------------------------------------------------------------------------
# structure of the levels
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,edges", [
    (1, np.zeros((0, 2), int)),
    (2, np.zeros((0, 2), int)),
    (7, np.zeros((0, 2), int)),
    (10, np.array([[0, 1], [1, 2], [2, 3], [5, 6], [6, 7]])),  # components + isolated nodes
    (12, np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]])),  # perfect matching
    (9, np.array([[0, i] for i in range(1, 9)])),  # star
    (8, np.array([[i, j] for i in range(8) for j in range(i + 1, 8)])),  # K8
])
@pytest.mark.parametrize("two_hop", [True, False])
def test_reaches_single_node(n, edges, two_hop):
    pyr = build_pyramid(n, edges, 3, two_hop=two_hop)
    assert pyr.levels[0].num_nodes == 1 and pyr.levels[0].edges.shape == (0, 2)
    assert pyr.levels[-1].num_nodes == n
    for k in range(2, pyr.num_levels + 1):
        fine, coarse = pyr.level(k), pyr.level(k - 1)
        counts = children_counts(fine.cluster, coarse.num_nodes)
        assert counts.min() >= 1 and counts.max() <= 2
        assert coarse.num_nodes < fine.num_nodes  # every level shrinks
        assert coarse.num_nodes >= (fine.num_nodes + 1) // 2
        assert np.array_equal(counts - 1, (fine.node_tokens > 0).astype(int))
    n2, e2, perm = pyr.compose()
    assert n2 == n and np.array_equal(e2, relabel_edges(edges, perm))


def test_matching_is_maximal(graph_sets):
    rng = np.random.default_rng(4)
    for n, e in some_graphs(graph_sets, per_file=3):
        prio = rng.random(n)
        for two_hop in (False, True):
            c = coarsen(n, e, prio, two_hop=two_hop)
            single = np.bincount(c.cluster, minlength=c.num_nodes)[c.cluster] == 1
            # no edge joins two unmatched nodes
            assert not np.any(single[e[:, 0]] & single[e[:, 1]])
            if two_hop:  # and no two unmatched nodes share a neighbour
                a = nx.to_numpy_array(to_nx(n, e), dtype=int)
                s = np.flatnonzero(single)
                common = (a[s] @ a[s].T)
                np.fill_diagonal(common, 0)
                assert not np.any(common)
    # isolated nodes: at most one stays unmatched
    c = coarsen(9, np.array([[0, 1]]), rng.random(9))
    assert c.num_nodes == 5


def test_max_levels():
    n, e = 30, np.array([[i, (i + 1) % 30] for i in range(30)] + [[0, 15]])
    full = build_pyramid(n, e, 0)
    for m in (1, 2, 3):
        pyr = build_pyramid(n, e, 0, max_levels=m)
        assert pyr.num_levels == m
        assert pyr.levels[0].num_nodes > 1
        assert pyr.levels[0].node_tokens is None
        n2, e2, perm = pyr.compose()
        assert n2 == n and np.array_equal(e2, relabel_edges(e, perm))
    assert build_pyramid(n, e, 0, max_levels=100).num_levels == full.num_levels
    with pytest.raises(ValueError, match="max_levels"):
        build_pyramid(n, e, 0, max_levels=0)


# ------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,edges,match", [
    (0, np.zeros((0, 2), int), "empty graph"),
    (3, np.array([[0, 1], [1, 1]]), "self-loop"),
    (3, np.array([[0, 3]]), "out of range"),
    (3, np.array([[-1, 2]]), "negative node id"),
    (3, np.array([[0, 1], [1, 0]]), "both directions"),
    (3, np.array([[0, 1], [0, 1]]), "duplicate edge"),
    (3, np.array([[0.0, 1.0]]), "integer"),
    (3, np.array([0, 1, 2]), "shape"),
    (-2, np.zeros((0, 2), int), "negative node count"),
    (2.5, np.zeros((0, 2), int), "integer"),
])
def test_bad_graphs(n, edges, match):
    with pytest.raises(ValueError, match=match):
        build_pyramid(n, edges, 0)
    with pytest.raises(ValueError, match=match):
        check_graph(n, edges)


def test_bad_priorities_and_options():
    e = np.array([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="distinct"):
        build_pyramid(3, e, np.array([0.1, 0.1, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        build_pyramid(3, e, np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        coarsen(3, e, np.array([0.1, np.nan, 0.3]))
    with pytest.raises(ValueError, match="max_fraction"):
        coarsen(3, e, np.array([0.1, 0.2, 0.3]), max_fraction=0.7)


def test_compose_rejects_invalid_tokens():
    ce = np.array([[0, 1], [1, 2]])
    # node 0: two adjacent children, node 1: one child, node 2: two non-adjacent children
    good_nt, good_et = np.array([2, 0, 1]), np.array([5, 3])
    nf, fe, cl, sl = compose(3, ce, good_nt, good_et)  # valid
    assert nf == 5 and np.array_equal(cl, [0, 0, 1, 2, 2]) and np.array_equal(sl, [0, 1, 0, 0, 1])
    assert np.array_equal(fe, [[0, 1], [0, 2], [1, 2], [2, 3], [2, 4]])
    bad = [
        (good_nt[:2], good_et, "node_tokens must have shape"),
        (good_nt, good_et[:1], "edge_tokens must have shape"),
        (np.array([3, 0, 1]), good_et, "node_tokens must lie"),
        (np.array([-1, 0, 1]), good_et, "node_tokens must lie"),
        (good_nt, np.array([0, 3]), "edge_tokens must lie"),
        (good_nt, np.array([16, 3]), "edge_tokens must lie"),
        (good_nt, np.array([2, 3]), "one child"),  # bit (0, 1): slot 1 of single node 1
        (good_nt, np.array([9, 3]), "one child"),  # bit (1, 1): slot 1 of single node 1
        (good_nt, np.array([5, 4]), "one child"),  # bit (1, 0) on edge (1, 2)
        (good_nt, np.array([5.0, 3.0]), "integers"),
    ]
    for nt, et, match in bad:
        with pytest.raises(ValueError, match=match):
            compose(3, ce, nt, et)
    with pytest.raises(ValueError, match="u < v"):
        compose(3, np.array([[1, 0], [1, 2]]), good_nt, good_et)
    with pytest.raises(ValueError, match="out of range"):
        compose(3, np.array([[0, 1], [1, 5]]), good_nt, good_et)


def test_detail_tokens_rejects_inconsistent_input():
    e = np.array([[0, 1], [1, 2], [2, 3]])
    c = coarsen(4, e, np.array([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="coarse_edges"):
        detail_tokens(e, c.cluster, c.slot, c.num_nodes, np.zeros((0, 2), int))
    with pytest.raises(ValueError, match="slot"):
        detail_tokens(e, c.cluster, np.zeros(4, int), c.num_nodes, c.edges)
    # a coarse edge that no pair of children supports
    path = np.array([[i, i + 1] for i in range(5)])
    c = coarsen(6, path, np.arange(6) / 6.0)
    assert np.array_equal(c.edges, [[0, 1], [1, 2]])
    nt, et = detail_tokens(path, c.cluster, c.slot, 3, c.edges)
    assert np.all(et > 0)
    with pytest.raises(ValueError, match="no pair of children"):
        detail_tokens(path, c.cluster, c.slot, 3, np.array([[0, 1], [0, 2], [1, 2]]))


def test_coarse_priorities_are_remixed(graph_sets):
    n, e = graph_sets["sbm"]["train"][0]
    pyr = build_pyramid(n, e, 9)
    for k in range(2, pyr.num_levels + 1):
        coarse, fine = pyr.level(k - 1), pyr.level(k)
        head = np.flatnonzero(fine.slot == 0)  # slot-0 children, in coarse-node order
        assert np.array_equal(fine.cluster[head], np.arange(coarse.num_nodes))
        assert np.array_equal(coarse.prio, gc.remix_priorities(fine.prio[head]))
        assert np.unique(coarse.prio).size == coarse.num_nodes
        assert coarse.prio.min() >= 0.0 and coarse.prio.max() < 1.0


# ------------------------------------------------------------------------------------------
# tensors for a GNN, speed
# ------------------------------------------------------------------------------------------


def test_level_tensors_and_collate(graph_sets):
    pyrs = [build_pyramid(n, e, i) for i, (n, e) in enumerate(graph_sets["planar"]["train"][:3])]
    k = 4
    items = [level_tensors(p, k) for p in pyrs]
    for p, t in zip(pyrs, items):
        coarse, fine = p.level(k - 1), p.level(k)
        m = coarse.num_edges
        assert t["coarse_edge_index"].shape == (2, 2 * m)
        assert t["coarse_edge_index"].dtype == torch.long
        assert torch.equal(t["coarse_edge_index"][:, :m], t["coarse_edge_index"][[1, 0], m:])
        assert t["node_tokens"].shape == (coarse.num_nodes,)
        assert t["edge_tokens"].shape == (m,)
        # reverse direction: brute force with the roles of P and Q swapped
        kids = np.full((coarse.num_nodes, 2), -1)
        kids[fine.cluster, fine.slot] = np.arange(fine.num_nodes)
        adj = set(map(tuple, fine.edges.tolist()))
        adj |= {(v, u) for u, v in adj}
        ei = t["coarse_edge_index"].numpy()
        for col in range(2 * m):
            P, Q = ei[:, col]
            b = sum(1 << (2 * i + j) for i in (0, 1) for j in (0, 1)
                    if kids[P, i] >= 0 and kids[Q, j] >= 0 and (kids[P, i], kids[Q, j]) in adj)
            assert t["edge_tokens_directed"][col].item() == b
        assert t["fine_edge_index"].shape == (2, 2 * fine.num_edges)
    batch = collate_level_tensors(items)
    assert batch["num_graphs"] == 3
    assert batch["coarse_batch"].shape[0] == sum(t["num_coarse_nodes"] for t in items)
    assert batch["cluster"].max() < batch["coarse_batch"].shape[0]
    n0 = items[0]["num_coarse_nodes"]
    m0 = items[0]["coarse_edge_index"].shape[1]
    assert torch.equal(batch["coarse_edge_index"][:, m0:m0 + 2],
                       items[1]["coarse_edge_index"][:, :2] + n0)
    assert np.array_equal(transpose_edge_tokens(transpose_edge_tokens(np.arange(16))),
                          np.arange(16))
    with pytest.raises(IndexError):
        level_tensors(pyrs[0], 1)


def test_speed_planar(graph_sets):
    graphs = graph_sets["planar"]["train"]
    assert len(graphs) == 128
    start = time.perf_counter()
    pyrs = [build_pyramid(n, e, i) for i, (n, e) in enumerate(graphs)]
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"{elapsed:.2f} s for 128 planar graphs"
    levels = [p.num_levels for p in pyrs]
    assert max(levels) <= 10  # 64 nodes: 7 levels is the minimum possible


@pytest.mark.parametrize("max_fraction", [0.5, 0.15])
def test_separated_merges_never_touch(graph_sets, max_fraction):
    rng = np.random.default_rng(6)
    for n, e in some_graphs(graph_sets, per_file=3):
        prio = rng.random(n)
        pi, pe, pp = permute(n, e, prio, rng)
        a = build_pyramid(n, e, prio, two_hop=False, max_fraction=max_fraction, separated=True)
        b = build_pyramid(n, pe, pp, two_hop=False, max_fraction=max_fraction, separated=True)
        assert_levels_equal(a, b)
        n2, e2, perm = a.compose()
        assert n2 == n and np.array_equal(e2, relabel_edges(e, perm))
        for k in range(2, a.num_levels + 1):
            coarse, fine = a.level(k - 1), a.level(k)
            split = fine.node_tokens > 0
            assert split.any()
            # no coarse edge joins two split nodes: every split sees only single neighbours
            assert not np.any(split[coarse.edges[:, 0]] & split[coarse.edges[:, 1]])
        # the plain matching does touch on these graphs, so the test is not vacuous
        plain = build_pyramid(n, e, prio, two_hop=False, max_fraction=max_fraction)
        if n > 20 and len(e) > n:
            assert any(np.any((lv.node_tokens > 0)[c.edges[:, 0]] & (lv.node_tokens > 0)[c.edges[:, 1]])
                       for c, lv in zip(plain.levels[:-1], plain.levels[1:]))
