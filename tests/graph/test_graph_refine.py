"""Within-scale refinement on graphs: the core's ``Refine`` re-predicts a level's least confident
edge patterns through the graph model's view (``core.protocol.RefinesView``); each round is one
edge-head pass, counted in NFE; no-choice edges and padding are never re-predicted."""
import numpy as np
import pytest
import torch

from core.protocol import Refinable, RefinesView
from core.run import compose_config, run
from core.sampler import Refine, TokenScheduler, generate, member_seeds
from domains.graph.coarsen import build_pyramid
from domains.graph.model import GraphScaleModel


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def refinable(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(d_model=16, layers=1, heads=2, edge_rounds=4, edge_layers=1, edge_dim=8,
                separated=True, edge_order="walk", refine=True)
    return GraphScaleModel(**{**opts, **kw}).eval()


def spy_on_refinement(model) -> list:
    """(keep, fixed) of every refinement pass: the positions shown, and those the view fixes."""
    seen, fixed_of_level = [], []
    repredict, view = model.repredict, model.refine_view

    def remember(state, k, predictions, tokens):
        out = view(state, k, predictions, tokens)
        fixed_of_level.append(out[2])
        return out

    def spy(state, k, c, tokens, keep):
        seen.append((keep.clone(), fixed_of_level[-1]))
        return repredict(state, k, c, tokens, keep)

    model.repredict, model.refine_view = spy, remember
    return seen


def test_zero_rounds_is_the_plain_sampler_and_rounds_are_head_passes():
    model = refinable()
    cond = torch.tensor([24, 11, 17])
    seeds = member_seeds(0, cond)
    plain_stats, zero_stats, stats = {}, {}, {}
    plain, nfe_plain = generate(model, TokenScheduler(), cond, seeds, [], plain_stats)
    zero, nfe_zero = generate(model, TokenScheduler(), cond, seeds, [Refine(0)], zero_stats)
    assert nfe_zero == nfe_plain and all(np.array_equal(a.edges, b.edges) for a, b in zip(plain, zero))

    heads = []
    edge_logits = model.refiner.edge_logits
    model.refiner.edge_logits = lambda *a, **k: heads.append(1) or edge_logits(*a, **k)
    seen = spy_on_refinement(model)
    backbone, levels = [], []
    forward, add_band = model.refiner.forward, model.add_band
    model.refiner.forward = lambda *a: backbone.append(1) or forward(*a)
    model.add_band = lambda *a: levels.append(1) or add_band(*a)
    refined, nfe = generate(model, TokenScheduler(), cond, seeds, [Refine(2, "linear")], stats)
    model.refiner.edge_logits, model.refiner.forward, model.add_band = edge_logits, forward, add_band
    # refinement re-runs the head only: one backbone pass per level, as without it
    assert stats["nfe_backbone"] == len(backbone) == len(levels)
    assert stats["refine_passes"] == len(seen) > 0
    assert nfe == stats["nfe_backbone"] + stats["nfe_head"]
    assert stats["nfe_head"] == len(heads)  # every head pass counted, the rounds' and refinement's
    assert [g.num_nodes for g in refined] == [24, 11, 17]
    assert not all(np.array_equal(a.edges, b.edges) for a, b in zip(plain, refined))
    for keep, fixed in seen:  # padding and no-choice edges always stay
        assert not bool((~keep & fixed).any())


def test_refine_max_share_bounds_the_share_re_predicted():
    model = refinable(edge_rounds=1, edge_layers=0, separated=False, edge_order="priority")
    cond = torch.tensor([30])
    seen = spy_on_refinement(model)
    generate(model, TokenScheduler(), cond, member_seeds(0, cond), [Refine(1, "linear", max_share=0.2)])
    # linear, one round: half the free edges, times 0.2 (at least one)
    shares = [(int((~keep & ~fixed).sum()), int((~fixed).sum())) for keep, fixed in seen]
    assert shares and all(redo == max(1, round(0.1 * free)) for redo, free in shares)
    with pytest.raises(ValueError, match="refine_max_share"):
        Refine(1, max_share=0)


def test_a_graph_model_trained_without_it_refuses_rounds():
    model = GraphScaleModel(d_model=16, layers=1, heads=2).eval()
    assert isinstance(model, Refinable) and isinstance(model, RefinesView) and not model.refine_trained
    cond = torch.tensor([8])
    with pytest.raises(ValueError, match="model.refine=true"):
        generate(model, TokenScheduler(), cond, member_seeds(0, cond), [Refine(1)])


def test_refinement_training_shows_random_subsets_with_fixed_edges(shared_data):
    from domains.graph.data import load_graph_split
    graphs = load_graph_split(shared_data / "graphs" / "planar.npz", "train")[:3]
    model = refinable(refine_share=1.0)
    rng = np.random.default_rng(0)
    pyramids = [build_pyramid(g.num_nodes, g.edges, rng, **model.pyramid_kw) for g in graphs]
    _, _, batch, pairs, pair_graph, node_tokens, _, rounds = model._level_batch(pyramids, [g.num_nodes for g in graphs])
    levels = int(batch.max()) + 1
    prefix = torch.zeros(len(pairs), dtype=torch.bool)
    shown = model._refine_shown(prefix, np.random.default_rng(1), levels, pair_graph, node_tokens, pairs)
    fixed = model._single_patterns(node_tokens, pairs) > 0
    assert bool(shown[fixed].all())  # every level shows a subset, no-choice edges always
    free = ~fixed
    assert 0 < float(shown[free].float().mean()) < 1
    # with refine_share 0 of the levels nothing changes; the loss trains on both kinds
    model.refine_share = 1e-9
    same = model._refine_shown(prefix, np.random.default_rng(1), levels, pair_graph, node_tokens, pairs)
    assert torch.equal(same, prefix)
    model.refine_share = 0.5
    model.train()
    loss, logs = model.loss(graphs, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and logs["edge_nll"] > 0


def test_main_job_trains_and_samples_with_refinement(tmp_path, shared_data):
    over = ["domain=graph", "progress=false", "domain.model.d_model=16", "domain.model.layers=1",
            "domain.model.heads=2", "train.batch_size=4", "sample.num_samples=4", "sample.batch_size=4",
            "domain.source=planar", f"domain.data_dir={shared_data / 'graphs'}", "domain.edge_rounds=4",
            "domain.edge_order=walk", "domain.separated=true", "domain.model.edge_layers=1",
            "domain.model.edge_dim=8", "train.steps=3", "model.refine=true", "task=train"]
    run(compose_config(over), tmp_path)
    m = run(compose_config(over[:-1] + ["task=sample", "sample.refine_rounds=1"]), tmp_path)
    assert m["refine_passes_per_sample"] > 0 and m["nfe"] == m["nfe_backbone"] + m["nfe_head"]


@pytest.mark.parametrize("extensions", [[], [Refine(2, max_share=0.5)]], ids=["plain", "refine"])
def test_a_sample_does_not_depend_on_its_batch(extensions):
    # graphs of different sizes pad each other's token groups, and some levels of a batch have
    # triangles where a graph alone has none: neither may change what a graph draws
    model = refinable()
    cond = torch.tensor([30, 12, 25, 7, 18])
    seeds = member_seeds(0, cond)
    together, _ = generate(model, TokenScheduler(), cond, seeds, extensions)
    for i in range(len(cond)):
        alone, _ = generate(model, TokenScheduler(), cond[i:i + 1], seeds[i:i + 1], extensions)
        assert np.array_equal(alone[0].edges, together[i].edges), f"graph {i} changed with its batch"
