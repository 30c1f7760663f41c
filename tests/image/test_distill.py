"""Few-step distillation (core/distill.py) on real MNIST with tiny models: the teacher's pairs are
what its noise makes, a student learns, samples through the pipeline with its calls counted, and a
teacher it cannot distil is refused."""
import json

import pytest
import torch

from core.errors import ConfigError
from core.run import compose_config, run


def tiny(shared_data, *extra):
    return ["domain=image", "progress=false", f"domain.data_dir={shared_data / 'mnist'}",
            "domain.limit=512", "domain.space=latent", "refiner.d_model=32", "refiner.layers=1",
            "refiner.heads=2", "train.steps=3", "train.batch_size=8", "sample.num_samples=12",
            "sample.batch_size=6", "sample.flops_samples=2", "domain.tokenizer.width=8",
            "domain.tokenizer.train.steps=3", "domain.tokenizer.train.batch_size=16",
            "domain.tokenizer.num_codes=64", *extra]  # 40 steps of a tiny student must show learning


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, shared_data):
    """A tiny refiner trained for within-scale refinement (the benchmark's teacher kind)."""
    folder = tmp_path_factory.mktemp("teacher")
    run(compose_config(tiny(shared_data, "model.refine=true", "train.steps=40", "train.warmup=5",
                            "train.lr=3e-3", "task=train")), folder)
    return folder / "checkpoints" / "last.pt"


def _teacher_model(shared_data, ckpt, *extra):
    from core.build import build_model, load_data
    from core.plugins import get_domain
    from core.train import load_weights
    cfg = compose_config(tiny(shared_data, "model.refine=true", *extra))
    domain = get_domain("image")
    return cfg, load_weights(build_model(cfg, domain, load_data(cfg, domain, "train")), ckpt).eval()


def test_pairs_are_the_teachers_samples_for_their_noise(shared_data, teacher):
    """The noise of a pair replays to its tokens, and its tokens decode to the teacher's sample
    drawn by the ordinary pipeline with the same seeds: guided, at a temperature, with top-p."""
    from core.distill import decode_codes, make_pairs, pair_seeds, replay_tokens
    from core.sampler import from_config, generate
    cfg, model = _teacher_model(shared_data, teacher, "sample.guidance=2.0", "sample.guidance_schedule=linear",
                                "sample.temperature=0.9", "sample.top_p=0.95")
    scheduler, extensions = from_config(cfg.sample, model)
    cond = torch.arange(8) % 10
    seeds = pair_seeds(0, cond, 0)
    noise, codes, nfe = make_pairs(model, scheduler, extensions, cond, seeds)
    assert nfe == 6 and noise.shape == codes.shape == (8, 104, 1)
    assert torch.equal(replay_tokens(model, scheduler, extensions, cond, seeds, noise), codes)
    samples, _ = generate(model, scheduler, cond, seeds)
    decoded = decode_codes(model.pyramid, model.tokenizer, codes, model.refiner.tokens_per_scale)
    assert torch.allclose(decoded, samples, atol=1e-5)  # the pipeline decoded the doubled batch
    # a noise student reads the same uniforms ahead for the same seeds, leaving the streams as they are
    from core.distill import make_student
    from core.sampler import streams
    student = make_student(compose_config(tiny(shared_data, "model.refine=true", f"distill.teacher={teacher}")),
                           model)
    gens = streams(seeds)
    assert torch.equal(student.init_state(cond, gens)["noise"], noise)
    assert torch.equal(torch.stack([torch.rand(1, generator=g) for g in gens]), noise[:, :1, 0])
    # an early call runs the scales up to its own only: the same predictions as a full pass
    two = make_student(compose_config(tiny(shared_data, "model.refine=true", f"distill.teacher={teacher}",
                                           "distill.calls=2")), model).eval()
    state = two.init_state(cond, streams(seeds))
    with torch.no_grad():
        early = two.predict(state, 0, cond)["band"].value
        full = two.forward_tokens(state["noise"], state["codes"], (two.level < 0).expand(8, -1), cond).value
    assert early.shape[1] == 14 and torch.allclose(early, full[:, :14], atol=1e-5)
    # other noise, other tokens: the map reads the noise
    other = replay_tokens(model, scheduler, extensions, cond, seeds, torch.rand_like(noise))
    assert not torch.equal(other, codes)


@pytest.mark.parametrize("student,calls,nfe", [("noise", 1, 1), ("noise", 2, 2), ("skip", 3, 3)])
def test_distill_trains_a_student_that_samples_in_fewer_calls(tmp_path, shared_data, teacher, student, calls, nfe):
    over = tiny(shared_data, "task=distill", f"distill.teacher={teacher}", f"distill.student={student}",
                f"distill.calls={calls}", "distill.pairs=96", "distill.val_pairs=24", "distill.pair_batch=48",
                "sample.guidance=1.0", "sample.guidance_schedule=linear", "train.steps=40",
                "train.batch_size=16", "train.lr=3e-3", "train.warmup=5", "train.log_every=1",
                "distill.init=random")
    m = run(compose_config(over), tmp_path / "d")
    assert m["train_steps"] == 40 and m["pairs"] == 96 and m["student_calls"] == calls
    assert m["teacher_nfe"] == 6 and m["pair_seconds"] > 0 and m["val_loss"] > 0
    log = [json.loads(line) for line in (tmp_path / "d" / "train_log.jsonl").read_text().splitlines()]
    first, last = (sum(r["loss"] for r in part) / 5 for part in (log[:5], log[-5:]))
    assert last < 0.95 * first, (first, last)
    if student == "noise":
        assert 0 <= m["agreement"] <= 1 and f"agreement/call{calls - 1}" in m
    # the student samples through the ordinary pipeline: one unguided pass per call
    ckpt = tmp_path / "d" / "checkpoints" / "last.pt"
    s = run(compose_config(tiny(shared_data, "task=sample", f"checkpoint={ckpt}", "sample.guidance=2.0")),
            tmp_path / "s")
    assert s["nfe"] == s["nfe_backbone"] == nfe and s["guidance_doubles_batch"] == 0
    assert s["flops_per_sample"] > 0
    samples = torch.load(tmp_path / "s" / "samples.pt", weights_only=True)["samples"]
    assert samples.shape == (12, 1, 28, 28) and torch.isfinite(samples).all()


def test_the_pairs_are_cached_and_resuming_continues(tmp_path, shared_data, teacher):
    over = tiny(shared_data, "task=distill", f"distill.teacher={teacher}", "distill.pairs=24",
                "distill.val_pairs=0", "distill.pair_batch=24", "train.steps=4", "train.ckpt_every=2")
    first = run(compose_config(over), tmp_path)
    pairs = tmp_path / "pairs" / "pairs.pt"
    stamp = pairs.stat().st_mtime_ns
    again = run(compose_config(over[:-2] + ["train.steps=8", "train.extend=true", "train.resume=true",
                                            "train.ckpt_every=2"]), tmp_path)
    assert first["train_steps"] == 4 and again["train_steps"] == 8
    assert pairs.stat().st_mtime_ns == stamp  # the teacher did not sample again


def test_a_teacher_it_cannot_distil_is_refused(tmp_path, shared_data, teacher):
    base = tiny(shared_data, "task=distill", "distill.pairs=8", "distill.val_pairs=0")
    with pytest.raises(ConfigError, match="distill.teacher"):
        run(compose_config(base), tmp_path / "none")
    with pytest.raises(Exception, match="no checkpoint"):
        run(compose_config(base + [f"distill.teacher={tmp_path / 'missing.pt'}"]), tmp_path / "missing")
    # the wrong domain: a graph teacher named in an image run
    with pytest.raises(ConfigError, match="domain"):
        from core.distill import check_teacher
        from core.plugins import get_domain
        cfg = compose_config(["domain=graph", f"distill.teacher={teacher}"])
        check_teacher(cfg, get_domain("graph"))
    # the wrong shape: a DDPM is no coarse-to-fine teacher
    ddpm = tmp_path / "ddpm"
    run(compose_config(tiny(shared_data, "domain.baseline=ddpm", "domain.ddpm.width=8",
                            "domain.ddpm.mults=[1,2,2]", "domain.ddpm.blocks=1", "task=train")), ddpm)
    with pytest.raises(ConfigError, match="scale model"):
        run(compose_config(base + [f"distill.teacher={ddpm / 'checkpoints' / 'last.pt'}"]), tmp_path / "ddpm_s")
    # too many calls, and a noise student of a teacher that refines
    with pytest.raises(ConfigError, match="distill.calls"):
        run(compose_config(base + [f"distill.teacher={teacher}", "distill.calls=7"]), tmp_path / "calls")
    with pytest.raises(ConfigError, match="refine_rounds"):
        run(compose_config(base + [f"distill.teacher={teacher}", "sample.refine_rounds=1"]), tmp_path / "rounds")
    with pytest.raises(ConfigError, match="shift_scale"):
        run(compose_config(base + [f"distill.teacher={teacher}", "sample.shift_scale=1"]), tmp_path / "shift")
    with pytest.raises(ConfigError, match="task=distill"):
        run(compose_config(tiny(shared_data, "task=train", f"distill.teacher={teacher}")), tmp_path / "train")
