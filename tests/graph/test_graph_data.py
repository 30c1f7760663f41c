"""Graph data: the Graph type, npz split IO, the shared benchmark files and the generators."""
import os
import time
import zipfile

import networkx as nx
import numpy as np
import pytest

from domains.graph import data as gd
from domains.graph import generators as gg
from domains.graph.data import Graph, GraphDataError, load_graph_split, load_graph_splits, save_graph_splits
from domains.graph.generators import GENERATORS, get_splits, make_dataset

# file -> (split sizes, (min nodes, max nodes)) from the data README
SHARED = {
    "planar": ({"train": 128, "val": 32, "test": 40}, (64, 64)),
    "tree": ({"train": 128, "val": 32, "test": 40}, (64, 64)),
    "sbm": ({"train": 128, "val": 32, "test": 40}, (44, 187)),
    "community_small": ({"train": 80, "test": 20}, (12, 20)),
    "ego_small": ({"train": 160, "test": 40}, (4, 17)),
    "enzymes": ({"train": 470, "test": 117}, (10, 125)),
}


@pytest.fixture(scope="session")
def graphs_dir(shared_data):
    path = shared_data / "graphs"
    if not path.is_dir():
        pytest.skip(f"no graphs/ folder in the shared data folder {shared_data}")
    return path


# ---------------------------------------------------------------------------------------------
# family predicates (independent of the generators' code)
# ---------------------------------------------------------------------------------------------


def _prune_leaves(G):
    H = G.copy()
    H.remove_nodes_from([v for v, d in G.degree() if d <= 1])
    return H


def _is_path_or_empty(G):
    return G.number_of_nodes() == 0 or (nx.is_tree(G) and max(d for _, d in G.degree()) <= 2)


def is_lobster(G):
    """A tree that becomes a path after pruning its leaves twice."""
    return nx.is_tree(G) and _is_path_or_empty(_prune_leaves(_prune_leaves(G)))


def is_grid(G, lo=10, hi=19):
    n, m = G.number_of_nodes(), G.number_of_edges()
    for r in range(lo, hi + 1):
        if n % r == 0 and lo <= n // r <= hi:
            c = n // r
            if m == 2 * r * c - r - c and nx.vf2pp_is_isomorphic(G, nx.grid_2d_graph(r, c)):
                return True
    return False


def test_predicates_reject_near_misses():
    assert is_lobster(nx.path_graph(5)) and is_grid(nx.grid_2d_graph(10, 12))
    spider = nx.Graph([(0, i) for i in (1, 2, 3)] + [(i, i + 3) for i in (1, 2, 3)]
                      + [(i + 3, i + 6) for i in (1, 2, 3)])  # three legs of length 3
    assert nx.is_tree(spider) and not is_lobster(spider)
    G = nx.grid_2d_graph(10, 12)
    G.remove_edge((0, 0), (0, 1))
    G.add_edge((0, 0), (1, 1))
    assert not is_grid(G)
    assert not is_grid(nx.grid_2d_graph(9, 12))


# ---------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------


def test_graph_canonical_form_and_conversions():
    g = Graph.from_edge_list(5, [[3, 1], [0, 4], [2, 1]])
    assert g.edges.dtype == np.int64 and g.edges.tolist() == [[0, 4], [1, 2], [1, 3]]
    assert not g.edges.flags.writeable
    with pytest.raises(ValueError):
        g.edges[0, 0] = 2
    with pytest.raises(AttributeError):
        g.num_nodes = 7
    a = g.adjacency()
    assert a.dtype == np.uint8 and a.shape == (5, 5) and (a == a.T).all() and a.sum() == 6
    assert Graph.from_adjacency(a) == g
    assert Graph.from_networkx(g.to_networkx()) == g
    assert hash(Graph(5, g.edges)) == hash(g) and Graph(5, g.edges) == g
    assert Graph.from_edge_list(6, g.edges) != g  # an extra isolated node is a different graph
    # relabelling follows G.nodes order
    G = nx.Graph([("b", "a"), ("a", "c")])
    h = Graph.from_networkx(G)
    assert h.num_nodes == 3 and h.edges.tolist() == [[0, 1], [1, 2]]
    # isolated nodes survive the round trip
    G.add_node("z")
    assert Graph.from_networkx(G).num_nodes == 4
    assert Graph.from_networkx(G).to_networkx().number_of_nodes() == 4
    assert Graph.from_edge_list(1, []).num_edges == 0


def test_symmetric_edge_list_merged_only_when_not_strict():
    both = np.array([[0, 1], [1, 0], [1, 2], [2, 1]])
    with pytest.raises(GraphDataError, match="both directions"):
        Graph.from_edge_list(3, both)
    g = Graph.from_edge_list(3, both, strict=False)
    assert g.edges.tolist() == [[0, 1], [1, 2]]
    with pytest.raises(GraphDataError, match="duplicate edge"):
        Graph.from_edge_list(3, [[0, 1], [0, 1]])


BAD_INPUTS = {
    "empty graph": (lambda: Graph.from_edge_list(0, []), ["empty graph", "0 nodes"]),
    "empty graph (constructor)": (lambda: Graph(0, np.zeros((0, 2), np.int64)), ["empty graph"]),
    "empty adjacency": (lambda: Graph.from_adjacency(np.zeros((0, 0))), ["empty graph"]),
    "self-loop": (lambda: Graph.from_edge_list(4, [[0, 1], [2, 2]]), ["self-loop", "node 2"]),
    "self-loop (adjacency)": (lambda: Graph.from_adjacency(np.eye(3)), ["self-loop", "diagonal"]),
    "self-loop (networkx)": (lambda: Graph.from_networkx(nx.Graph([(0, 0)])), ["self-loop"]),
    "directed adjacency": (
        lambda: Graph.from_adjacency(np.array([[0, 1, 0], [0, 0, 1], [0, 1, 0]])),
        ["directed", "A[0, 1] = 1", "A[1, 0] = 0"],
    ),
    "directed networkx": (lambda: Graph.from_networkx(nx.DiGraph([(0, 1)])), ["directed"]),
    "multigraph": (lambda: Graph.from_networkx(nx.MultiGraph([(0, 1), (0, 1)])), ["multigraph"]),
    "weighted edge array": (lambda: Graph.from_edge_list(3, [[0, 1, 5]]), ["weighted", "3 columns"]),
    "weighted adjacency": (
        lambda: Graph.from_adjacency(np.array([[0, 0.5], [0.5, 0]])),
        ["weighted", "non-binary", "0.5"],
    ),
    "weighted networkx": (
        lambda: Graph.from_networkx(nx.Graph([(0, 1, {"weight": 2.0})])),
        ["weighted", "weight 2.0"],
    ),
    "out of range": (lambda: Graph.from_edge_list(3, [[0, 3]]), ["out of range", "(0, 3)", "3 nodes"]),
    "negative id": (lambda: Graph.from_edge_list(3, [[-1, 2]]), ["negative node id", "(-1, 2)"]),
    "float edges": (lambda: Graph.from_edge_list(3, np.array([[0.0, 1.0]])), ["integer dtype", "float64"]),
    "bool edges": (lambda: Graph.from_edge_list(3, np.array([[False, True]])), ["integer dtype"]),
    "float num_nodes": (lambda: Graph.from_edge_list(3.0, [[0, 1]]), ["num_nodes must be an integer"]),
    "negative num_nodes": (lambda: Graph.from_edge_list(-2, []), ["negative node count"]),
    "ragged edges": (lambda: Graph.from_edge_list(3, [[0, 1], [2]]), ["rectangular"]),
    "bad shape": (lambda: Graph.from_edge_list(3, np.array([0, 1, 2])), ["shape [m, 2]"]),
    "non-square adjacency": (lambda: Graph.from_adjacency(np.zeros((2, 3))), ["square"]),
    "u > v in constructor": (lambda: Graph(3, np.array([[1, 0]])), ["u > v", "from_edge_list"]),
    "unsorted in constructor": (lambda: Graph(3, np.array([[1, 2], [0, 1]])), ["not sorted"]),
    "duplicate in constructor": (lambda: Graph(3, np.array([[0, 1], [0, 1]])), ["duplicate edge (0, 1)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_clear_errors(case):
    fn, parts = BAD_INPUTS[case]
    with pytest.raises(GraphDataError) as info:
        fn()
    assert isinstance(info.value, ValueError)
    for part in parts:
        assert part in str(info.value), (case, str(info.value))


def test_empty_graph_allowed_on_request():
    assert Graph.from_edge_list(0, [], allow_empty=True).num_nodes == 0
    assert Graph(0, np.zeros((0, 2), np.int64), allow_empty=True).num_edges == 0


def test_check_graph_connectivity_and_isolated_nodes():
    g = Graph.from_edge_list(4, [[0, 1], [2, 3]])
    assert gd.check_graph(g) is g
    with pytest.raises(GraphDataError, match=r"not connected \(2 connected components"):
        gd.check_graph(g, require_connected=True)
    lonely = Graph.from_edge_list(3, [[0, 1]])
    with pytest.raises(GraphDataError, match="isolated node 2"):
        gd.check_graph(lonely, allow_isolated=False)
    with pytest.raises(GraphDataError, match="not connected"):
        gd.check_graph(Graph.from_edge_list(2, []), require_connected=True)
    gd.check_graph(Graph.from_edge_list(1, []), require_connected=True, allow_isolated=True)


# ---------------------------------------------------------------------------------------------
# shared files
# ---------------------------------------------------------------------------------------------


def test_shared_files_load_fast_with_readme_counts(graphs_dir):
    t0 = time.perf_counter()
    loaded = {name: load_graph_splits(graphs_dir / f"{name}.npz") for name in SHARED}
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"loading all shared graph files took {elapsed:.2f} s"
    for name, (counts, (lo, hi)) in SHARED.items():
        splits = loaded[name]
        assert {k: len(v) for k, v in splits.items()} == counts, name
        sizes = [g.num_nodes for gs in splits.values() for g in gs]
        assert min(sizes) == lo and max(sizes) == hi, (name, min(sizes), max(sizes))
        for gs in splits.values():
            assert all(isinstance(g, Graph) and g.num_edges > 0 for g in gs)
    # single split access agrees with the full load
    assert load_graph_split(graphs_dir / "planar.npz", "val") == loaded["planar"]["val"]


def test_shared_files_round_trip_exactly(graphs_dir, tmp_path):
    for name in SHARED:
        src = graphs_dir / f"{name}.npz"
        splits = load_graph_splits(src)
        out = save_graph_splits(tmp_path / f"{name}.npz", splits)
        assert load_graph_splits(out) == splits
        with np.load(src) as a, np.load(out) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                assert a[key].dtype == b[key].dtype, (name, key)
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    assert sorted(os.listdir(tmp_path)) == sorted(f"{n}.npz" for n in SHARED)  # no temp files


def test_shared_sets_have_their_family_properties(graphs_dir):
    planar = load_graph_splits(graphs_dir / "planar.npz")
    for g in planar["test"][:10]:
        G = g.to_networkx()
        assert nx.check_planarity(G)[0] and nx.is_connected(G)
    for g in load_graph_splits(graphs_dir / "tree.npz")["test"]:
        assert nx.is_tree(g.to_networkx())


def test_community_generator_matches_shared_community_small(graphs_dir):
    """Same recipe: shared graphs of each size have the generator's two communities."""
    generated = {g.num_nodes: g for g in gg.community(60, seed=0)}
    assert set(generated) == {12, 14, 16, 18, 20}
    for g in load_graph_splits(graphs_dir / "community_small.npz")["train"]:
        c = g.num_nodes // 2
        ref = generated[g.num_nodes].edges
        intra = lambda e: e[(e[:, 0] < c) == (e[:, 1] < c)]  # noqa: E731
        np.testing.assert_array_equal(intra(g.edges), intra(ref))
        assert ((g.edges[:, 0] < c) & (g.edges[:, 1] >= c)).sum() >= 1


def test_generator_statistics_match_shared_sets(graphs_dir):
    """Planar and SBM generators follow the recipes of the shared sets (fixed seeds)."""
    def pooled(name):
        return [g for gs in load_graph_splits(graphs_dir / f"{name}.npz").values() for g in gs]

    ref_planar = np.mean([g.num_edges for g in pooled("planar")])
    assert abs(np.mean([g.num_edges for g in gg.planar(16, seed=0)]) - ref_planar) < 3.0
    ref = pooled("sbm")
    gen = gg.sbm(64, seed=0)
    ref_n, gen_n = np.mean([g.num_nodes for g in ref]), np.mean([g.num_nodes for g in gen])
    ref_m, gen_m = np.mean([g.num_edges for g in ref]), np.mean([g.num_edges for g in gen])
    assert abs(gen_n - ref_n) < 15 and abs(gen_m / ref_m - 1) < 0.2, (gen_n, ref_n, gen_m, ref_m)


def test_load_with_requirements(graphs_dir):
    with pytest.raises(GraphDataError) as info:
        load_graph_splits(graphs_dir / "enzymes.npz", require_connected=True)
    msg = str(info.value)
    assert "enzymes.npz" in msg and "graph " in msg and "not connected" in msg
    load_graph_split(graphs_dir / "planar.npz", "train", require_connected=True,
                     allow_isolated=False)
    with pytest.raises(GraphDataError, match=r"split 'val'\], graph \d+: isolated node"):
        load_graph_split(graphs_dir / "sbm.npz", "val", allow_isolated=False)


# ---------------------------------------------------------------------------------------------
# npz layout errors
# ---------------------------------------------------------------------------------------------


def _good_arrays():
    return {
        "train_num_nodes": np.array([3, 4], np.int32),
        "train_edge_ptr": np.array([0, 2, 5], np.int64),
        "train_edges": np.array([[0, 1], [1, 2], [0, 1], [0, 3], [2, 3]], np.int32),
    }


def _write(tmp_path, **changes):
    arrays = _good_arrays()
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_good_layout_loads(tmp_path):
    gs = load_graph_split(_write(tmp_path), "train")
    assert [g.num_nodes for g in gs] == [3, 4]
    assert gs[1].edges.tolist() == [[0, 1], [0, 3], [2, 3]]


LAYOUT_ERRORS = {
    "missing key": ({"train_edge_ptr": None}, ["bad.npz", "missing keys", "train_edge_ptr"]),
    "edge_ptr not monotone": (
        {"train_edge_ptr": np.array([0, 6, 5], np.int64)},
        ["bad.npz", "not monotone", "graph 1"],
    ),
    "edge_ptr wrong length": (
        {"train_edge_ptr": np.array([0, 2, 4, 5], np.int64)},
        ["bad.npz", "length mismatch", "length 4"],
    ),
    "num_nodes length mismatch": (
        {"train_num_nodes": np.array([3], np.int32)},
        ["num_nodes length mismatch", "1 graphs"],
    ),
    "edge_ptr end": ({"train_edge_ptr": np.array([0, 2, 4], np.int64)}, ["ends at 4", "5 rows"]),
    "edge_ptr start": ({"train_edge_ptr": np.array([1, 2, 5], np.int64)}, ["must start at 0"]),
    "u >= v": (
        {"train_edges": np.array([[0, 1], [1, 2], [0, 1], [3, 0], [2, 3]], np.int32)},
        ["bad.npz", "split 'train'", "graph 1", "(3, 0)", "u < v"],
    ),
    "self-loop": (
        {"train_edges": np.array([[0, 1], [2, 2], [0, 1], [0, 3], [2, 3]], np.int32)},
        ["graph 0", "self-loop at node 2"],
    ),
    "id out of range": (
        {"train_edges": np.array([[0, 1], [1, 3], [0, 1], [0, 3], [2, 3]], np.int32)},
        ["graph 0", "out of range", "3 nodes"],
    ),
    "negative id": (
        {"train_edges": np.array([[0, 1], [-1, 2], [0, 1], [0, 3], [2, 3]], np.int32)},
        ["graph 0", "negative node id"],
    ),
    "duplicate": (
        {"train_edges": np.array([[0, 1], [1, 2], [0, 3], [0, 3], [2, 3]], np.int32)},
        ["graph 1", "duplicate edge (0, 3)"],
    ),
    "weighted": (
        {"train_edges": np.ones((5, 3), np.int32)},
        ["weighted", "3 columns"],
    ),
    "float edges": ({"train_edges": np.zeros((5, 2), np.float32)}, ["integer dtype", "float32"]),
    "empty graph": (
        {"train_num_nodes": np.array([3, 0], np.int32),
         "train_edge_ptr": np.array([0, 5, 5], np.int64),
         "train_edges": np.array([[0, 1], [1, 2], [0, 2], [0, 1], [1, 2]], np.int32)},
        ["graph 1", "empty graph"],
    ),
}


@pytest.mark.parametrize("case", sorted(LAYOUT_ERRORS))
def test_bad_npz_layout(tmp_path, case):
    changes, parts = LAYOUT_ERRORS[case]
    path = _write(tmp_path, **changes)
    for load in (lambda: load_graph_split(path, "train"), lambda: load_graph_splits(path)):
        with pytest.raises(GraphDataError) as info:
            load()
        for part in parts:
            assert part in str(info.value), (case, str(info.value))


def test_unsorted_file_edges_are_sorted_on_load(tmp_path):
    path = _write(tmp_path, train_edges=np.array([[1, 2], [0, 1], [2, 3], [0, 1], [0, 3]], np.int32))
    gs = load_graph_split(path, "train")
    assert gs[0].edges.tolist() == [[0, 1], [1, 2]]
    assert gs[1].edges.tolist() == [[0, 1], [0, 3], [2, 3]]


def test_file_level_errors(tmp_path):
    with pytest.raises(GraphDataError, match="not found"):
        load_graph_splits(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(GraphDataError, match="not a readable npz"):
        load_graph_splits(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(GraphDataError, match="no graph splits found"):
        load_graph_splits(tmp_path / "other.npz")
    arrays = _good_arrays()
    arrays["val_num_nodes"] = np.array([2], np.int32)
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(GraphDataError, match=r"split 'val' is incomplete.*val_edge_ptr"):
        load_graph_splits(tmp_path / "partial.npz")
    with pytest.raises(GraphDataError, match=r"split 'test' has missing keys"):
        load_graph_split(_write(tmp_path), "test")


def test_save_is_atomic_and_validates(tmp_path, monkeypatch):
    g = Graph.from_edge_list(3, [[0, 1]])
    path = save_graph_splits(tmp_path / "d.npz", {"train": [g], "test": []})
    assert load_graph_splits(path) == {"train": [g], "test": []}
    with zipfile.ZipFile(path) as z:
        assert {i.filename for i in z.infolist()} == {
            f"{s}_{k}.npy" for s in ("train", "test") for k in ("num_nodes", "edge_ptr", "edges")
        }
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_graph_splits(path, {"train": [g, g]})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.npz"]
    with pytest.raises(GraphDataError, match=r"split 'train', graph 1: expected a Graph"):
        save_graph_splits(path, {"train": [g, nx.path_graph(3)]})
    with pytest.raises(GraphDataError, match="invalid split name"):
        save_graph_splits(path, {"bad split": [g]})
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------

SMALL = {"planar": 6, "tree": 6, "sbm": 6, "community": 12, "grid": 8, "lobster": 6}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_seeded(name):
    gen, n = GENERATORS[name], SMALL[name]
    a = gen(n, seed=3)
    assert len(a) == n and all(isinstance(g, Graph) for g in a)
    assert gen(n, seed=3) == a, "not deterministic for a fixed seed"
    assert gen(n, seed=4) != a, "identical output for different seeds"
    assert gen(n + 3, seed=3)[:n] == a, "not prefix-stable"
    assert gen(0, seed=3) == []


def test_planar_generator():
    for g in gg.planar(8, seed=0):
        G = g.to_networkx()
        assert g.num_nodes == 64 and nx.is_connected(G) and nx.check_planarity(G)[0]
        assert 2 * 64 - 3 <= g.num_edges <= 3 * 64 - 6  # a triangulation of points in the plane
        # every bounded face is a triangle: at least m - n + 1 triangles (Euler)
        assert sum(nx.triangles(G).values()) // 3 >= g.num_edges - g.num_nodes + 1
    assert all(g.num_nodes == 20 for g in gg.planar(3, n_nodes=20, seed=1))


def test_tree_generator():
    gs = gg.tree(20, seed=0)
    assert all(g.num_nodes == 64 and nx.is_tree(g.to_networkx()) for g in gs)
    assert len({g.edges.tobytes() for g in gs}) == 20


def test_grid_generator():
    gs = gg.grid(8, seed=0)
    assert all(is_grid(g.to_networkx()) for g in gs)
    full = gg.grid(100, seed=5)  # exactly the 100 reference grids, shuffled
    shapes = sorted((g.num_nodes, g.num_edges) for g in full)
    expected = sorted((r * c, 2 * r * c - r - c) for r in range(10, 20) for c in range(10, 20))
    assert shapes == expected
    assert [g.num_nodes for g in full] != [g.num_nodes for g in gg.grid(100, seed=6)]
    g = gg.grid(1, seed=0)[0]
    r_c = [(r, g.num_nodes // r) for r in range(10, 20) if g.num_nodes % r == 0]
    assert any(Graph.from_networkx(nx.grid_2d_graph(r, c)) == g for r, c in r_c)


def test_lobster_generator():
    gs = gg.lobster(15, seed=0)
    assert all(10 <= g.num_nodes <= 100 and is_lobster(g.to_networkx()) for g in gs)
    assert len({g.num_nodes for g in gs}) > 5


def test_sbm_generator():
    gs = gg.sbm(30, seed=0)
    sizes = [g.num_nodes for g in gs]
    assert all(40 <= n <= 200 for n in sizes) and len(set(sizes)) > 10
    # between-block density is low: at most a few % of all pairs are edges overall
    dens = [g.num_edges / (g.num_nodes * (g.num_nodes - 1) / 2) for g in gs]
    assert all(0.04 < d < 0.2 for d in dens), dens
    assert all(g.num_components() == 1 for g in gg.sbm(10, seed=1, connected_only=True))
    small = gg.sbm(5, seed=0, n_blocks=(2, 2), block_size=(20, 20), p_in=1.0, p_out=0.0)
    for g in small:
        assert g.num_nodes == 40 and g.num_edges == 2 * 190 and g.num_components() == 2


def test_community_generator():
    gs = gg.community(40, seed=0)
    assert {g.num_nodes for g in gs} <= {12, 14, 16, 18, 20}
    assert len({g.num_nodes for g in gs}) >= 4
    for g in gs:
        c = g.num_nodes // 2
        cross = ((g.edges[:, 0] < c) & (g.edges[:, 1] >= c)).sum()
        assert 1 <= cross <= 6 and g.num_components() == 1
    free = gg.community(10, seed=0, fixed_community_seeds=False)
    assert len({g.edges.tobytes() for g in free}) == 10


def test_generator_argument_errors():
    with pytest.raises(GraphDataError, match="n_graphs must be >= 0"):
        gg.planar(-1)
    with pytest.raises(GraphDataError, match="seed must be an integer"):
        gg.tree(2, seed=1.5)
    with pytest.raises(GraphDataError, match="n_nodes must be >= 3"):
        gg.planar(1, n_nodes=2)
    with pytest.raises(GraphDataError, match="only 0 of 1 graphs"):
        gg.lobster(1, seed=0, min_nodes=5000, max_nodes=6000, max_tries=20)


# ---------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------


def test_make_dataset_splits_one_stream():
    d = make_dataset("tree", 5, 2, 3, seed=7)
    assert list(d) == ["train", "val", "test"]
    assert [len(v) for v in d.values()] == [5, 2, 3]
    assert d["train"] + d["val"] + d["test"] == gg.tree(10, seed=7)
    assert make_dataset("planar", 2, 0, 1, seed=0, n_nodes=16)["val"] == []
    assert make_dataset("planar", 1, 0, 0, seed=0, n_nodes=16)["train"][0].num_nodes == 16
    with pytest.raises(GraphDataError, match="unknown generator 'trees'"):
        make_dataset("trees", 1, 1, 1)


def test_get_splits_sources(graphs_dir, shared_data, tmp_path, monkeypatch):
    gen = get_splits("grid", n_train=3, n_val=1, n_test=2, seed=1)
    assert [len(v) for v in gen.values()] == [3, 1, 2]
    assert get_splits("tree", n_train=4, n_val=0, n_test=0, n_nodes=10)["train"][0].num_nodes == 10
    assert [len(v) for v in get_splits("sbm", n_train=2, n_val=1, n_test=1).values()] == [2, 1, 1]
    # a bare name with data_dir is a file, in data_dir or its graphs/ folder
    from_graphs = get_splits("planar", graphs_dir)
    assert [len(v) for v in from_graphs.values()] == [128, 32, 40]
    assert get_splits("planar", shared_data) == from_graphs
    assert get_splits(str(graphs_dir / "ego_small.npz"))["test"][0].num_nodes >= 4
    assert get_splits(graphs_dir / "tree.npz")["val"] == load_graph_split(graphs_dir / "tree.npz", "val")
    monkeypatch.setenv(gg.DATA_DIR_ENV, str(shared_data))
    assert len(get_splits("enzymes")["train"]) == 470
    with pytest.raises(GraphDataError) as info:
        get_splits("lobster", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "lobster.npz") in msg and "shared data folder" in msg
    assert "generator name" in msg
    with pytest.raises(GraphDataError, match="apply only to generators"):
        get_splits("planar", graphs_dir, n_train=3)
    monkeypatch.delenv(gg.DATA_DIR_ENV)
    with pytest.raises(GraphDataError, match="not a generator name"):
        get_splits("ego_small")
    with pytest.raises(GraphDataError, match=r"graph file not found: .*missing\.npz"):
        get_splits(str(tmp_path / "missing.npz"))
