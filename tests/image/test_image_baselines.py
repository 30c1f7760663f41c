"""The MNIST baselines (DDPM with a UNet, next-token AR over the codes), the noise shift on images,
and every lever through the CLI with evaluation (a quickly trained judge keeps that fast)."""
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from core.data import TensorData
from core.io import default_cache_dir, save_atomic
from core.plugins import get_domain
from core.build import build_model
from core.run import ConfigError, compose_config, run
from core.sampler import Guidance, TokenScheduler, generate, member_seeds
from domains.image import classifier as C
from domains.image import plugin
from domains.image.baselines import DDPM, UNet, CodeAR, build_ar, build_ddpm
from domains.image.tokenizer import VQTokenizer

JUDGE_SEED = 7  # a judge of its own, so the fully trained default one is never replaced


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread saves nothing, and on a busy machine every parallel region
    waits for it (a hundredfold slowdown of these tests under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(num_classes=10, width=8, mults=(1, 2, 2), blocks=1)


def tiny_tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(channels=8, width=8).eval()


class GaussianOracle(torch.nn.Module):
    """The exact noise predictor for data ~ N(0, s^2) per pixel: E[eps | x_t] in closed form."""

    def __init__(self, s: float):
        super().__init__()
        self.s, self.abar, self.calls = s, None, 0

    def forward(self, x, t, cond):
        self.calls += 1
        abar = self.abar[t].view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * x / (abar * self.s ** 2 + 1 - abar)


def oracle_ddpm(s: float, sampler: str, steps: int) -> DDPM:
    oracle = GaussianOracle(s)
    model = DDPM(oracle, sampler=sampler, steps=steps)
    oracle.abar = model.alphas_cumprod
    return model


# ---------------------------------------------------------------- DDPM
def test_linear_schedule_and_forward_noising_statistics():
    model = DDPM(tiny_unet())
    assert model.timesteps == 1000 and len(model.betas) == 1000
    assert model.betas[0].item() == pytest.approx(1e-4) and model.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(model.alphas_cumprod, torch.cumprod(1 - model.betas.double(), 0).float())
    assert model.alphas_cumprod[-1] < 1e-4  # x_T is (almost) pure noise
    x0 = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    for t in (0, 300, 999):
        noise = torch.randn(4000, 1, 28, 28, generator=gen)
        xt = model.q_sample(x0.expand(4000, -1, -1, -1), torch.full((4000,), t), noise)
        abar = float(model.alphas_cumprod[t])
        assert (xt.mean(0) - abar ** 0.5 * x0[0]).abs().mean() < 0.02, t
        assert float(xt.std(0).mean()) == pytest.approx((1 - abar) ** 0.5, rel=0.02), t


def expected_std(model: DDPM, s: float) -> float:
    """Output std of the sampler for data N(0, s^2) with the exact noise predictor, from the
    textbook updates written as a scalar variance recursion (every step is linear in x_t)."""
    abar = model.alphas_cumprod.double()
    ts = model.sampling_timesteps()
    v = 1.0  # x_T ~ N(0, 1)
    for i, t in enumerate(ts):
        u = float(abar[t])
        p = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        a = u ** 0.5 * s ** 2 / (u * s ** 2 + 1 - u)  # E[x_0 | x_t] = a x_t
        e = (1 - u ** 0.5 * a) / (1 - u) ** 0.5      # E[eps | x_t] = e x_t
        if model.sampler == "ddim":
            v = (p ** 0.5 * a + (1 - p) ** 0.5 * e) ** 2 * v
        else:
            beta = 1 - u / p
            mean = p ** 0.5 * beta / (1 - u) * a + (1 - beta) ** 0.5 * (1 - p) / (1 - u)
            v = mean ** 2 * v + (beta * (1 - p) / (1 - u) if i + 1 < len(ts) else 0.0)
    return v ** 0.5


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddpm", 100), ("ddim", 50), ("ddim", 10)])
def test_samplers_with_the_exact_noise_predictor_follow_the_textbook_updates(sampler, steps):
    s = 0.3  # data N(0, s^2) per pixel: the update formulas alone decide the output's spread
    model = oracle_ddpm(s, sampler, steps)
    cond = torch.zeros(16, dtype=torch.long)  # 12,544 independent pixels
    x, nfe = generate(model, model.scheduler(), cond, member_seeds(0, cond))
    assert nfe == steps == model.unet.calls
    assert float(x.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(x.std()) == pytest.approx(expected_std(model, s), rel=0.04)
    if steps == 1000:  # fine steps reproduce the data distribution; coarse ones shrink it
        assert expected_std(model, s) == pytest.approx(s, rel=0.02)


def test_ddim_is_deterministic_given_the_seeds_and_members_are_independent():
    model = DDPM(tiny_unet(), sampler="ddim", steps=10).eval()
    sampler = model.scheduler(Guidance(2.0))
    cond = torch.tensor([1, 4, 7])
    a, _ = generate(model, sampler, cond, member_seeds(5, cond))
    b, _ = generate(model, sampler, cond, member_seeds(5, cond))
    assert torch.equal(a, b)
    c, _ = generate(model, sampler, cond, member_seeds(6, cond))
    assert not torch.allclose(a, c)
    alone, _ = generate(model, sampler, cond[1:2], member_seeds(5, cond[1:2], start=1))
    assert torch.allclose(alone, a[1:2], atol=1e-5)
    model.set_sampler("ddpm", 20)  # ancestral: random at every step, still reproducible
    sampler = model.scheduler(Guidance(2.0))
    d, _ = generate(model, sampler, cond, member_seeds(5, cond))
    e, _ = generate(model, sampler, cond, member_seeds(5, cond))
    assert torch.equal(d, e)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_nfe_counts_network_calls_and_guidance_shares_the_call(guidance):
    model = DDPM(tiny_unet(), sampler="ddim", steps=10).eval()
    batches = []
    original = model.unet.forward
    model.unet.forward = lambda x, t, c: batches.append(len(x)) or original(x, t, c)
    cond = torch.arange(3)
    x, nfe = generate(model, model.scheduler(Guidance(guidance)), cond, member_seeds(0, cond))
    assert nfe == 10 and len(batches) == 10
    assert set(batches) == {6 if guidance else 3}  # guided: conditional + null label in one call
    assert x.shape == (3, 1, 28, 28) and x.abs().max() <= 1
    assert model.sampling_timesteps()[0] == 999 and model.sampling_timesteps()[-1] == 0


def test_ddpm_loss_trains_and_uses_the_null_label():
    model = DDPM(tiny_unet(), label_drop=1.0)
    seen = []
    original = model.unet.forward
    model.unet.forward = lambda x, t, c: seen.append(c.clone()) or original(x, t, c)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    loss, logs = model((x, torch.arange(4)), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.equal(seen[0], torch.full((4,), 10)) and logs["mse"] > 0
    assert all(p.grad is not None for p in model.unet.parameters())
    with pytest.raises(ValueError, match="sampler"):
        model.set_sampler("euler", 10)
    with pytest.raises(ValueError, match="steps"):
        model.set_sampler("ddim", 2000)


def test_parameter_counts_of_the_baselines_match_the_refiner():
    cfg = compose_config(["domain=image"])
    tokenizer = VQTokenizer(**{k: v for k, v in OmegaConf.to_container(cfg.domain.tokenizer).items()
                               if k != "train"})
    data = TensorData(x=torch.zeros(2, 1, 28, 28), cond=torch.zeros(2, dtype=torch.long))
    with mock.patch.object(plugin, "load_or_train_tokenizer", return_value=tokenizer):
        refiner = build_model(cfg, get_domain("image"), data)  # the default: latent space
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    reference = count(refiner)
    assert 1_000_000 < reference < 1_500_000
    assert abs(count(build_ddpm(cfg)) / reference - 1) < 0.2
    # the AR has the refiner's blocks; its token and position tables weigh more at d = 128
    assert abs(count(build_ar(cfg, tokenizer)) / reference - 1) < 0.3


# ---------------------------------------------------------------- AR over the codes
def test_ar_kv_cache_step_equals_the_full_forward():
    model = CodeAR(tiny_tokenizer(), d_model=32, layers=2, heads=2).eval()
    codes = torch.randint(0, 64, (2, model.length), generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([3, 10])
    full = model.logits(codes, cond)
    state = model.init_state(cond)
    for k in range(model.length):
        step = model.predict(state, k, cond)["token"].value
        assert step.shape == (2, 1, 1, 64)
        assert torch.allclose(step[:, 0, 0], full[:, k], atol=1e-5), k
        model.add_band(state, {"token": codes[:, k:k + 1, None]}, k)


def test_ar_nfe_is_the_number_of_tokens_and_decodes_its_codes():
    tokenizer = tiny_tokenizer()
    model = CodeAR(tokenizer, d_model=32, layers=1, heads=2).eval()
    assert model.length == 1 + 4 + 9 + 16 + 25 + 49 == model.num_scales
    calls = []
    original = model.predict
    model.predict = lambda state, k, cond: calls.append(k) or original(state, k, cond)
    finished = []
    finish = model.finish
    model.finish = lambda state: finished.append(torch.stack(state["codes"], 1)) or finish(state)
    cond = torch.arange(3)
    sampler = TokenScheduler(guidance=Guidance(1.5, "linear"))
    x, nfe = generate(model, sampler, cond, member_seeds(0, cond))
    assert nfe == model.length and calls == list(range(model.length))
    assert x.shape == (3, 1, 28, 28)
    codes = finished[0][:3]  # the conditional half of the guided batch
    split = [c.unsqueeze(-1) for c in codes.split(tokenizer.tokens_per_scale, 1)]
    with torch.no_grad():
        assert torch.allclose(x, tokenizer.decode(tokenizer.pyramid.decode(split)), atol=1e-6)


def test_ar_models_the_codes_the_latent_refiner_predicts():
    tokenizer = tiny_tokenizer()
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokenizer.init_codebook(x.repeat(4, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    cfg = compose_config(["domain=image", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2"])
    data = TensorData(x=x, cond=torch.arange(4))
    with mock.patch.object(plugin, "load_or_train_tokenizer", return_value=tokenizer):
        refiner = build_model(cfg, get_domain("image"), data)
    ar = build_ar(cfg, tokenizer).train()
    assert torch.equal(ar.codes(x), torch.cat(refiner.encode(x).codes, 1)[..., 0])
    assert not ar.tokenizer.training  # frozen: training mode never reaches the codebook
    loss, logs = ar((x, torch.arange(4)), torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(64.0)).item(), rel=0.1)  # untrained
    assert tokenizer.quantizer.codebook.grad is None


# ---------------------------------------------------------------- through the CLI, on MNIST
@pytest.fixture(scope="module")
def judge(shared_data):
    """A LeNet trained for a few steps, cached where c2f_evaluate looks for seed JUDGE_SEED."""
    path = C.classifier_cache_path(default_cache_dir(), JUDGE_SEED)
    if not path.is_file():
        model, accuracy = C.train_classifier(shared_data / "mnist", path.with_suffix(".run"),
                                             seed=JUDGE_SEED, limit=2000, max_steps=30, progress=False)
        save_atomic({"version": C._CACHE_VERSION, "seed": JUDGE_SEED, "test_accuracy": accuracy,
                     "state_dict": model.state_dict()}, path)
    return path


def tiny(shared_data, *extra):
    return ["domain=image", "progress=false", f"domain.data_dir={shared_data / 'mnist'}",
            f"domain.classifier_seed={JUDGE_SEED}", "domain.eval_reference=500", "domain.limit=512",
            "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2", "train.steps=3",
            "train.batch_size=8", "sample.num_samples=20", "sample.batch_size=10",
            "domain.tokenizer.width=8", "domain.tokenizer.train.steps=3",
            "domain.tokenizer.train.batch_size=16", "domain.ddpm.width=8", "domain.ddpm.mults=[1,2,2]",
            "domain.ddpm.blocks=1", *extra]


METRICS = ("fd", "fd_over_floor", "precision", "recall", "class_accuracy", "nfe", "seconds_per_sample",
           "train_seconds", "parameters")


@pytest.mark.parametrize("extra,nfe", [
    (["domain.baseline=ddpm", "domain.ddpm.sampler=ddim", "domain.ddpm.steps=10"], 10),
    (["domain.baseline=ar"], 104),
    (["domain.space=latent", "model.target=continuous"], 6),
    (["domain.space=pixel", "model.target=continuous"], 6),
    (["domain.space=pixel", "model.target_state=full"], 6),
    (["domain.space=pixel", "domain.pixel_scales=[1,4,14,28]"], 4),
    (["domain.space=latent", "domain.tokenizer.scales=[1,3,5,7]"], 4),
], ids=["ddpm-ddim10", "ar", "latent-continuous", "pixel-continuous", "pixel-full", "pixel-fewer",
        "latent-fewer"])
def test_train_sample_evaluate(tmp_path, shared_data, judge, extra, nfe):
    m = run(compose_config(tiny(shared_data, *extra, "task=all")), tmp_path)
    for key in METRICS:
        assert key in m, key
    assert m["nfe"] == nfe and m["train_steps"] == 3 and m["samples"] == 20
    samples = torch.load(tmp_path / "samples.pt", weights_only=True)["samples"]
    assert samples.shape == (20, 1, 28, 28) and torch.isfinite(samples).all()


def test_ddpm_checkpoint_samples_with_every_sampler(tmp_path, shared_data):
    over = tiny(shared_data, "domain.baseline=ddpm", "sample.num_samples=4", "sample.batch_size=4")
    run(compose_config(over + ["task=train"]), tmp_path / "t")
    ckpt = tmp_path / "t" / "checkpoints" / "last.pt"
    for sampler, steps in (("ddim", 5), ("ddpm", 8)):
        m = run(compose_config(over + ["task=sample", f"checkpoint={ckpt}", f"domain.ddpm.sampler={sampler}",
                                       f"domain.ddpm.steps={steps}"]), tmp_path / sampler)
        assert m["nfe"] == steps
    with pytest.raises(ConfigError, match="noise shift"):
        run(compose_config(over + ["task=sample", f"checkpoint={ckpt}", "sample.shift_scale=1",
                                   "sample.shift_sigma=0.5"]), tmp_path / "shift")
    with pytest.raises(ValueError, match="latent"):
        run(compose_config(tiny(shared_data, "domain.baseline=ar", "domain.space=pixel", "task=train")),
            tmp_path / "ar")


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_noise_shift_through_the_cli(tmp_path, shared_data, space):
    over = tiny(shared_data, f"domain.space={space}", "sample.num_samples=6", "sample.batch_size=6")
    run(compose_config(over + ["task=train"]), tmp_path / "t")
    ckpt = tmp_path / "t" / "checkpoints" / "last.pt"
    out = {}
    for name, extra in (("plain", []), ("zero", ["sample.shift_scale=2", "sample.shift_sigma=0"]),
                        ("shifted", ["sample.shift_scale=2", "sample.shift_sigma=1.0"])):
        run(compose_config(over + ["task=sample", f"checkpoint={ckpt}", *extra]), tmp_path / name)
        out[name] = torch.load(tmp_path / name / "samples.pt", weights_only=True)["samples"]
    assert torch.equal(out["plain"], out["zero"])
    assert not torch.allclose(out["plain"], out["shifted"])


def _frontier_benchmark():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "mnist_frontier", Path(__file__).resolve().parents[2] / "benchmarks" / "mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_network_passes_at_the_frontier_benchmark_settings(tmp_path, shared_data, judge):
    """NFE, its backbone share, the doubled batch and FLOPs, at the settings benchmarks/mnist.py
    samples with (guidance schedules, refinement rounds, DDIM steps), not only at the defaults."""
    bench = _frontier_benchmark()
    refiner = tiny(shared_data, "domain.space=latent", "model.refine=true", "sample.flops_samples=2")
    run(compose_config(refiner + ["task=train"]), tmp_path / "refiner")
    ckpt = tmp_path / "refiner" / "checkpoints" / "last.pt"
    flops = []
    for rounds in bench.ROUNDS:
        sample = bench.rounds_setting(bench.guidance(2.0, "interval-coarse"), rounds)
        m = run(compose_config(refiner + sample + ["task=sample", f"checkpoint={ckpt}"]),
                tmp_path / f"r{rounds}")
        assert m["nfe"] == m["nfe_backbone"] == 6 * (1 + rounds) and m["guidance_doubles_batch"] == 1
        flops.append(m["flops_per_sample"])
    assert flops == sorted(flops) and flops[-1] > 3 * flops[0]
    ddpm = tiny(shared_data, "domain.baseline=ddpm", "sample.flops_samples=1")
    run(compose_config(ddpm + ["task=train"]), tmp_path / "ddpm")
    ckpt = tmp_path / "ddpm" / "checkpoints" / "last.pt"
    for steps, weight in ((5, 2.0), (5, 0.0)):
        m = run(compose_config(ddpm + ["task=sample", f"checkpoint={ckpt}", "domain.ddpm.sampler=ddim",
                                       f"domain.ddpm.steps={steps}", f"sample.guidance={weight}"]),
                tmp_path / f"ddim{steps}_{weight:g}")
        assert m["nfe"] == m["nfe_backbone"] == steps and m["guidance_doubles_batch"] == (weight > 0)
        flops.append(m["flops_per_sample"])
    assert flops[-2] == pytest.approx(2 * flops[-1], rel=0.01)  # guidance doubles the work, not NFE
