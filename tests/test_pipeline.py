"""The scheduler/pipeline split: earlier samples reproduced (the same draws; values bit for bit on
the reference's CPU, to float rounding on others), within-scale refinement,
and compute accounting (every network pass counted, FLOPs beside NFE)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.compute import count_flops
from core.run import compose_config, run
from core.sampler import (Guidance, Redraw, Refine, TokenScheduler, from_config, generate,
                          member_seeds)
from sampler_cases import CASES, grid_model, weather_case

REFERENCE = Path(__file__).parent / "data" / "sampler_reference.pt"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, weights_only=True)


def sample_section(**settings):
    """A ``sample`` config section with the defaults of ``core.run.SampleConfig``."""
    from core.config import SampleConfig
    section = OmegaConf.structured(SampleConfig)
    names = {"schedule": "guidance_schedule"}
    for key, value in settings.items():
        section[names.get(key, key)] = value
    return section


@pytest.mark.parametrize("name", sorted(CASES))
def test_pipeline_draws_the_samples_of_the_earlier_sampler(name, reference):
    build, kw, cond, settings = CASES[name]
    model = build(**kw)
    cond = torch.tensor(cond)
    scheduler, extensions = from_config(sample_section(**settings), model)
    stats = {}
    out, nfe = generate(model, scheduler, cond, member_seeds(0, cond), extensions, stats)
    ref = reference[name]
    if "samples" in ref:
        # the same draws: bit for bit on the CPU that drew the reference; another CPU's float
        # kernels round the decoded values in the last bits (seen: 1e-6), where one other token
        # or noise draw moves them by orders of magnitude more
        assert torch.allclose(out, ref["samples"], rtol=0, atol=1e-5)
        assert nfe == ref["nfe"]  # one pass per step, guidance in the same pass
    else:  # graphs: the same edges; NFE now also counts the edge head's passes
        assert [g.num_nodes for g in out] == ref["nodes"]
        assert all(torch.equal(torch.as_tensor(g.edges.copy()), e) for g, e in zip(out, ref["edges"]))
        assert stats["nfe_backbone"] == ref["nfe"] and nfe == ref["nfe"] + stats["nfe_head"]
    assert stats.get("redraws", 0) == ref["redraws"]


def test_pipeline_draws_the_earlier_weather_members(reference):
    model, cond, settings = weather_case()
    scheduler, extensions = from_config(sample_section(**settings), model)
    out, nfe = generate(model, scheduler, cond, [0, 1], extensions)
    assert torch.equal(out, reference["weather"]["samples"]) and nfe == reference["weather"]["nfe"]


# ---------------------------------------------------------------- within-scale refinement
def refinable(target="index"):
    from core.grid import GridOps
    from core.model import ScaleModel
    from core.pyramid import ResidualPyramid
    from core.quantizers import ScalarQuantizer
    from core.refiner import ScaleTransformer
    from core.targets import make_head
    torch.manual_seed(0)
    ops = GridOps([1, 2, 4, 8])
    q = ScalarQuantizer(1, 16, -1.5, 1.5)
    refiner = ScaleTransformer(1, [ops.positions(k) for k in range(4)], 10, d_model=32, layers=2,
                               heads=2, own_channels=1)
    return ScaleModel(ResidualPyramid(ops, q), refiner, make_head(target, 32, q), 1, 10,
                      refine_share=0.5).eval()


@pytest.mark.parametrize("target", ["index", "bits"])
def test_refinement_rounds_are_network_passes_counted_in_nfe(target):
    model = refinable(target)
    cond = torch.arange(5)
    seen = []
    repredict = model.repredict
    model.repredict = lambda state, k, c, tokens, keep: seen.append((k, keep)) or repredict(state, k, c, tokens, keep)
    sched = TokenScheduler(guidance=Guidance(1.0, "linear"))
    plain, nfe0 = generate(model, sched, cond, member_seeds(0, cond), [Refine(0)])
    stats = {}
    refined, nfe = generate(model, sched, cond, member_seeds(0, cond), [Refine(2)], stats)
    assert nfe0 == 4 and nfe == 4 * 3 == stats["nfe_backbone"] and stats["refine_passes"] == 8
    assert not torch.equal(plain, refined)
    # the least confident share is re-predicted: cosine shares cos(pi/6), cos(pi/3) of each scale
    for k, keep in seen:
        assert keep.shape == (10, [1, 4, 16, 64][k])  # the doubled batch of guidance
        assert torch.equal(keep[:5], keep[5:])
    shown = [int((~keep[0]).sum()) for k, keep in seen if k == 3]
    assert shown == [round(0.866 * 64), round(0.5 * 64)]
    # only the finest scale, linear shares
    seen.clear()
    _, nfe = generate(model, sched, cond, member_seeds(0, cond), [Refine(4, "linear", [-1])])
    assert nfe == 4 + 4 and {k for k, _ in seen} == {3}
    assert [int((~keep[0]).sum()) for _, keep in seen] == [round(s * 64) for s in (0.8, 0.6, 0.4, 0.2)]
    # a member does not depend on its batch
    alone, _ = generate(model, sched, cond[2:3], member_seeds(0, cond)[2:3], [Refine(2)])
    assert torch.allclose(alone, refined[2:3], atol=1e-5)


def test_refinement_needs_a_model_trained_for_it():
    cond = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="model.refine=true"):
        generate(grid_model(), TokenScheduler(), cond, member_seeds(0, cond), [Refine(1)])
    with pytest.raises(ValueError, match="refine_scales"):
        generate(refinable(), TokenScheduler(), cond, member_seeds(0, cond), [Refine(1, scales=[4])])
    with pytest.raises(ValueError, match="schedule"):
        Refine(1, "exponential")
    # zero rounds on any model is the plain run
    out, nfe = generate(grid_model(), TokenScheduler(), cond, member_seeds(0, cond), [Refine(0)])
    assert nfe == 4


def test_stepping_a_scale_again_replaces_its_cache_entries():
    model = refinable()
    refiner = model.refiner
    cond = torch.tensor([3, 4])
    contexts = [torch.randn(2, n, 1, generator=torch.Generator().manual_seed(n)) for n in (1, 4, 16, 64)]
    cache = []
    once = [refiner.step(c, k, cond, cache) for k, c in enumerate(contexts)]
    cache = []
    twice = []
    for k, c in enumerate(contexts):
        own = torch.randn(2, c.shape[1], 1)
        refiner.step(c, k, cond, cache, own=own, visible=torch.ones(2, c.shape[1], dtype=torch.bool))
        twice.append(refiner.step(c, k, cond, cache))  # the same scale, fully masked again
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(once, twice))
    assert cache[0]["k"].shape[2] == 1 + 1 + 4 + 16 + 64


def test_refinement_training_runs_and_sampling_counts_its_rounds(tmp_path):
    over = ["domain=digits", "progress=false", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
            "train.steps=3", "train.batch_size=16", "train.warmup=1", "model.refine=true",
            "sample.num_samples=6", "sample.batch_size=6", "sample.refine_rounds=2", "task=train"]
    m = run(compose_config(over), tmp_path)
    log = [line for line in (tmp_path / "train_log.jsonl").read_text().splitlines() if line]
    assert "masked_share" in log[0]
    m = run(compose_config(over[:-1] + ["task=sample", "sample.guidance=1.0"]), tmp_path)
    assert m["nfe"] == 4 * 3 == m["nfe_backbone"] and m["guidance_doubles_batch"] == 1
    assert m["refine_passes_per_sample"] == 8 and m["flops_per_sample"] > 0
    # a model trained without it refuses, with the fix in the message
    plain = tmp_path / "plain"
    over_plain = [o for o in over if o != "model.refine=true"]
    run(compose_config(over_plain), plain)
    from core.run import ConfigError
    with pytest.raises(ConfigError, match="model.refine=true"):
        run(compose_config(over_plain[:-1] + ["task=sample"]), plain)


# ---------------------------------------------------------------- compute accounting
def test_flops_count_attention_and_guidance_doubles_them():
    model = grid_model()
    cond = torch.arange(4)

    def flops(guidance):
        return count_flops(generate, model, TokenScheduler(guidance=Guidance(guidance)), cond,
                           member_seeds(0, cond))[1]

    plain, guided = flops(0.0), flops(1.5)
    assert guided == pytest.approx(2 * plain, rel=0.05)
    q = torch.randn(1, 2, 5, 8)
    _, attention = count_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert attention == 2 * 2 * (2 * 5 * 5 * 8)


def test_redraw_passes_of_a_head_are_counted():
    from domains.graph.model import GraphScaleModel
    torch.manual_seed(0)
    model = GraphScaleModel(d_model=16, layers=1, heads=2, edge_rounds=2, constraint="tree").eval()
    cond = torch.tensor([10, 12])
    heads = []
    edge_logits = model.refiner.edge_logits
    model.refiner.edge_logits = lambda *a, **k: heads.append(1) or edge_logits(*a, **k)
    plain = {}
    generate(model, TokenScheduler(), cond, member_seeds(0, cond), [], plain)
    # at most two edge rounds per level (a round with no edge to choose is not run)
    assert plain["nfe_head"] == len(heads) <= 2 * plain["nfe_backbone"]
    heads.clear()
    redrawn = {}
    generate(model, TokenScheduler(), cond, member_seeds(0, cond), [Redraw(30)], redrawn)
    assert redrawn["nfe_head"] == len(heads)
    assert redrawn["redraws"] > 0 and redrawn["nfe_head"] > 2 * redrawn["nfe_backbone"]


def test_an_interrupted_sample_task_resumes_from_its_finished_batches(tmp_path, monkeypatch):
    import core.run as core_run
    over = ["domain=digits", "progress=false", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
            "train.steps=2", "train.batch_size=8", "train.warmup=1", "sample.num_samples=6",
            "sample.batch_size=3", "sample.flops_samples=0"]
    run(compose_config(over + ["task=train"]), tmp_path)
    first = run(compose_config(over + ["task=sample"]), tmp_path)
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)["samples"]
    parts = sorted((tmp_path / "sample_parts").glob("part_*.pt"))
    assert len(parts) == 2
    parts[1].unlink()  # as if killed during the second batch
    calls = []
    original = core_run.generate
    monkeypatch.setattr(core_run, "generate", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    again = run(compose_config(over + ["task=sample"]), tmp_path)
    assert len(calls) == 1 and again["nfe"] == first["nfe"]
    assert torch.equal(torch.load(tmp_path / "samples.pt", weights_only=True)["samples"], samples)
    # other settings: the finished batches are not reused
    run(compose_config(over + ["task=sample", "sample.temperature=0.5"]), tmp_path)
    assert len(calls) == 3


def test_every_built_in_model_follows_the_protocol():
    from core.protocol import ChecksBands, HasScheduler, Perturbable, Refinable, ScaleModelProtocol
    from sampler_cases import ar_model, ddpm_model, graph_model
    grid, graph, ddpm, ar = grid_model(), graph_model(), ddpm_model(), ar_model()
    for model in (grid, graph, ddpm, ar, refinable()):
        assert isinstance(model, ScaleModelProtocol), type(model).__name__
    assert isinstance(ddpm, HasScheduler) and not isinstance(grid, HasScheduler)
    assert isinstance(graph, ChecksBands) and isinstance(grid, Perturbable)
    assert isinstance(grid, Refinable) and not grid.refine_trained and refinable().refine_trained
    assert not isinstance(ar, Refinable)
