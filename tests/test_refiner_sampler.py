"""Backward-process invariants: masks mask, the cache matches the full pass, one call per scale."""
import pytest
import torch

from core.refiner import attention_mask
from core.sampler import (Guidance, NoiseShift, TokenScheduler, filter_logits, generate,
                          member_seeds)
from sampler_cases import SIZES, grid_model



def make_model(target="index", mask="block_causal", num_classes=10):
    return grid_model(target, mask, num_classes, calibrate=False)


def scale_slices():
    out, start = [], 0
    for s in SIZES:
        out.append(slice(start, start + s * s))
        start += s * s
    return out


@pytest.mark.parametrize("mask", ["block_causal", "markov"])
def test_masks_really_mask(mask):
    model = make_model(mask=mask)
    ctx = torch.randn(3, 85, 1)
    cond = torch.tensor([1, 2, 3])
    base = model.refiner(ctx, cond)
    sl = scale_slices()
    changed = ctx.clone()
    changed[:, sl[1]] += 1.0  # perturb the inputs of scale 2 (index 1)
    out = model.refiner(changed, cond)
    assert torch.equal(out[:, sl[0]], base[:, sl[0]])  # coarser scale untouched
    assert not torch.allclose(out[:, sl[1]], base[:, sl[1]])  # the scale itself sees it
    finer_changed = not torch.allclose(out[:, sl[2]], base[:, sl[2]])
    assert finer_changed == (mask == "block_causal")  # markov: finer scales see only their own input


def test_mask_layout():
    m = attention_mask([1, 2], "block_causal")
    assert m.tolist() == [[True, False, False, False], [True, True, False, False],
                          [True, True, True, True], [True, True, True, True]]
    m = attention_mask([1, 2], "markov")
    assert m[2].tolist() == [True, False, True, True]
    with pytest.raises(ValueError, match="unknown attention mask"):
        attention_mask([1], "diagonal")


@pytest.mark.parametrize("mask", ["block_causal", "markov"])
def test_kv_cache_step_matches_full_pass(mask):
    model = make_model(mask=mask)
    ctx = torch.randn(2, 85, 1)
    cond = torch.tensor([4, 10])
    full = model.refiner(ctx, cond)
    cache = []
    for k, sl in enumerate(scale_slices()):
        step = model.refiner.step(ctx[:, sl], k, cond, cache)
        assert torch.allclose(step, full[:, sl], atol=1e-5), k


@pytest.mark.parametrize("target", ["index", "bits", "continuous"])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_one_refiner_call_per_scale(target, guidance):
    model = make_model(target=target)
    calls = []
    original = model.refiner.step
    model.refiner.step = lambda *a, **kw: calls.append(a[1]) or original(*a, **kw)
    sampler = TokenScheduler(top_k=5, guidance=Guidance(guidance, "linear"))
    cond = torch.arange(6) % 10
    samples, nfe = generate(model, sampler, cond, member_seeds(0, cond))
    assert calls == [0, 1, 2, 3] and nfe == 4
    assert samples.shape == (6, 1, 8, 8) and torch.isfinite(samples).all()


def test_member_is_the_same_whatever_its_batch():
    model = make_model()
    sampler = TokenScheduler(guidance=Guidance(1.0))
    cond = torch.tensor([3, 5, 7, 9])
    all_four, _ = generate(model, sampler, cond, member_seeds(11, cond))
    third_alone, _ = generate(model, sampler, cond[2:3], member_seeds(11, cond[2:3], start=2))
    assert torch.allclose(all_four[2:3], third_alone, atol=1e-6)
    assert not torch.allclose(all_four[0], all_four[1])
    again, _ = generate(model, sampler, cond, member_seeds(11, cond))
    assert torch.equal(again, all_four)


def test_guidance_schedules_give_the_weights_they_promise():
    s = TokenScheduler(guidance=Guidance(3.0, "linear"))
    s.set_scales(4)
    assert s.weights == [0.0, 1.0, 2.0, 3.0]
    assert Guidance(2.0).weights(3) == [2.0, 2.0, 2.0]
    assert Guidance(2.0, "interval", (1, 2)).weights(5) == [0.0, 2.0, 2.0, 0.0, 0.0]
    assert Guidance(2.0, "interval", (-2, -1)).weights(5) == [0.0, 0.0, 0.0, 2.0, 2.0]
    assert not Guidance(0.0, "linear").guided and Guidance(0.5).guided
    with pytest.raises(ValueError, match="schedule"):
        Guidance(1.0, "cosine")
    with pytest.raises(ValueError, match=">= 0"):
        Guidance(-1.0)


def test_interval_guidance_acts_only_on_its_scales():
    model = make_model()
    cond = torch.arange(4)
    seen = []
    predict = model.predict
    model.predict = lambda state, k, c, **kw: seen.append((k, len(c))) or predict(state, k, c, **kw)
    plain, _ = generate(model, TokenScheduler(), cond, member_seeds(0, cond))
    off, _ = generate(model, TokenScheduler(guidance=Guidance(3.0, "interval", (4, 5))), cond,
                      member_seeds(0, cond))
    late, _ = generate(model, TokenScheduler(guidance=Guidance(3.0, "interval", (3, 3))), cond,
                       member_seeds(0, cond))
    assert torch.allclose(plain, off, atol=1e-5)  # an interval past the last scale guides nothing
    assert not torch.equal(plain, late)
    assert seen[-4:] == [(0, 8), (1, 8), (2, 8), (3, 8)]  # the batch is doubled throughout


def test_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, :2]).all()
    nucleus = filter_logits(logits, top_p=0.5)
    assert torch.isfinite(nucleus[0, 3]) and torch.isinf(nucleus[0, 0])


def test_zero_temperature_is_greedy():
    model = make_model()
    sampler = TokenScheduler(temperature=0.0)
    cond = torch.tensor([1, 1])
    out, _ = generate(model, sampler, cond, member_seeds(0, cond))
    assert torch.equal(out[0], out[1])


# ---------------------------------------------------------------- noise shift
def calibrated(model):
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model.calibrate_shift((x, None))
    return model


@pytest.mark.parametrize("target", ["index", "bits", "continuous"])
def test_noise_shift_with_zero_sigma_is_the_unshifted_run(target):
    model = calibrated(make_model(target=target))
    cond = torch.arange(5) % 10
    seeds = member_seeds(3, cond)
    guided = TokenScheduler(guidance=Guidance(1.0))
    plain, _ = generate(model, guided, cond, seeds)
    zero, nfe = generate(model, guided, cond, seeds, [NoiseShift(1, 0.0)])
    assert torch.equal(plain, zero) and nfe == 4
    moved, _ = generate(model, guided, cond, seeds, [NoiseShift(1, 1.0)])
    assert not torch.allclose(plain, moved)


def test_noise_shift_grows_with_sigma_and_keeps_members_independent():
    model = calibrated(make_model(target="continuous"))
    cond = torch.tensor([3, 5, 7, 9])
    seeds = member_seeds(11, cond)
    plain, _ = generate(model, TokenScheduler(), cond, seeds)
    moves = []
    for sigma in (0.1, 0.5, 2.0):
        shifted, _ = generate(model, TokenScheduler(), cond, seeds, [NoiseShift(2, sigma)])
        moves.append(float((shifted - plain).abs().mean()))
    assert 0 < moves[0] < moves[1] < moves[2]
    sampler, shift = TokenScheduler(guidance=Guidance(1.0)), [NoiseShift(2, 0.5)]
    all_four, _ = generate(model, sampler, cond, seeds, shift)
    third_alone, _ = generate(model, sampler, cond[2:3], member_seeds(11, cond[2:3], start=2), shift)
    assert torch.allclose(all_four[2:3], third_alone, atol=1e-6)


def test_perturb_draws_noise_of_the_calibrated_size_on_the_scale_grid():
    model = calibrated(make_model())
    k = 3  # the 8x8 scale: laplacian states live on the scale's own grid
    z = torch.zeros(400, 1, 8, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(400)]
    out = model.perturb({"z": z.clone(), "cache": []}, k, 0.5, gens)["z"]
    ratio = float(out.std()) / (0.5 * float(model.shift_std[k][0]))
    assert abs(ratio - 1) < 0.03
    # the doubled batch of guidance: both halves get the member's noise
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    doubled = model.perturb({"z": torch.zeros(6, 1, 8, 8), "cache": []}, k, 1.0, gens)["z"]
    assert torch.equal(doubled[:3], doubled[3:])
    # calibration: one per-channel std per scale, from clean (teacher-forced) states
    assert len(model.shift_std) == 4 and all(s.shape == (1,) for s in model.shift_std)
    assert float(model.shift_std[0]) < float(model.shift_std[3])  # coarse means vary less than pixels


def test_noise_shift_errors_are_clear():
    from omegaconf import OmegaConf
    from core.sampler import from_config
    with pytest.raises(ValueError, match="shift_scale"):
        from_config(OmegaConf.create({"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance": 0.0,
                                      "guidance_schedule": "constant", "shift_sigma": 0.5,
                                      "shift_scale": None}))
    with pytest.raises(ValueError, match="shift_sigma"):
        NoiseShift(1, -1.0)
    model = make_model()
    cond = torch.tensor([1])
    with pytest.raises(RuntimeError, match="calibrate_shift"):
        generate(model, TokenScheduler(), cond, member_seeds(0, cond), [NoiseShift(1, 0.5)])
    with pytest.raises(ValueError, match="out of range"):
        generate(calibrated(model), TokenScheduler(), cond, member_seeds(0, cond), [NoiseShift(4, 0.5)])

    class NoPerturb(torch.nn.Module):  # a protocol model without the optional hook
        num_scales, null_label = 2, 10

    with pytest.raises(ValueError, match="perturb"):
        generate(NoPerturb(), TokenScheduler(), cond, member_seeds(0, cond), [NoiseShift(0, 0.5)])
