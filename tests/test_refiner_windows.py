"""Local windows in the refiner: a fine-scale position sees its window, the start token and the
global scales only; the cached step and a training pass over a share of the windows give the
features of the full pass."""
import pytest
import torch

from core.refiner import ScaleTransformer

SIZES = [4, 8, 32, 128]  # positions per scale: window 8 makes the last two scales local


def refiner(mask="block_causal", window=8, train_windows=1.0, own_channels=0):
    torch.manual_seed(0)
    positions = [torch.rand(n, 3) for n in SIZES]
    return ScaleTransformer(3, positions, num_classes=2, d_model=32, layers=2, heads=4, mask=mask,
                            window=window, train_windows=train_windows, own_channels=own_channels).eval()


def slices():
    out, start = [], 0
    for n in SIZES:
        out.append(slice(start, start + n))
        start += n
    return out


@pytest.mark.parametrize("mask", ["block_causal", "markov"])
def test_a_fine_position_sees_only_its_window_and_the_global_scales(mask):
    model = refiner(mask)
    ctx, cond = torch.randn(2, sum(SIZES), 3), torch.tensor([0, 1])
    base = model(ctx, cond)
    fine = slices()[3]
    changed = ctx.clone()
    changed[:, fine.start + 8:fine.start + 16] += 1.0  # the second window of the finest scale
    out = model(changed, cond)[:, fine]
    moved = (out - base[:, fine]).abs().amax((0, 2)) > 1e-6
    assert moved[8:16].all() and not moved[:8].any() and not moved[16:].any()
    # the other local scale is never seen by the finest one; a global scale is (block_causal)
    for scale, seen in ((2, False), (1, mask == "block_causal")):
        changed = ctx.clone()
        changed[:, slices()[scale]] += 1.0
        assert (not torch.allclose(model(changed, cond)[:, fine], base[:, fine], atol=1e-6)) == seen


@pytest.mark.parametrize("mask", ["block_causal", "markov"])
def test_the_cached_step_matches_the_full_pass(mask):
    model = refiner(mask)
    ctx, cond = torch.randn(2, sum(SIZES), 3), torch.tensor([1, 0])
    full, cache = model(ctx, cond), []
    for k, sl in enumerate(slices()):
        assert torch.allclose(model.step(ctx[:, sl], k, cond, cache), full[:, sl], atol=1e-5), k


def test_a_training_pass_over_a_share_of_the_windows_gives_their_full_features():
    model = refiner(train_windows=0.25, own_channels=3)
    ctx, cond = torch.randn(3, sum(SIZES), 3), torch.tensor([0, 1, 1])
    own, visible = torch.randn(3, sum(SIZES), 3), torch.rand(3, sum(SIZES)) < 0.5
    positions = model.training_positions(3, torch.Generator().manual_seed(0))
    # every global position, then 1 of 4 and 4 of 16 windows per item, whole
    assert positions.shape == (3, 12 + 8 + 32)
    assert torch.equal(positions[:, :12], torch.arange(12).expand(3, -1))
    assert ((positions[:, 12:].view(3, -1, 8) - 12) % 8 == torch.arange(8)).all()  # windows start at 12 + 8j
    assert not torch.equal(positions[0], positions[1])  # drawn per item
    part = model(ctx, cond, own=own, visible=visible, positions=positions)
    full = model(ctx, cond, own=own, visible=visible)
    assert torch.allclose(part, full.gather(1, positions[..., None].expand(-1, -1, 32)), atol=1e-5)
    assert refiner(train_windows=1.0).training_positions(3) is None


def test_without_windows_the_refiner_is_unchanged():
    ctx, cond = torch.randn(2, sum(SIZES), 3), torch.tensor([0, 1])
    a, b = refiner(window=0), refiner(window=1000)  # no scale above the window: all global
    assert torch.equal(a(ctx, cond), b(ctx, cond))


@pytest.mark.parametrize("window, match", [(12, "must divide"), (-1, ">= 0")])
def test_a_window_that_does_not_fit_the_scales_is_refused(window, match):
    with pytest.raises(ValueError, match=match):
        refiner(window=window)
    with pytest.raises(ValueError, match="train_windows"):
        refiner(train_windows=0.0)
