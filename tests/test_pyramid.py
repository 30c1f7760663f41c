"""Forward-process invariants (DESIGN.md §4) on the real sklearn digits."""
import pytest
import torch

from core.grid import GridOps
from core.pyramid import ResidualPyramid
from core.quantizers import IdentityQuantizer, ScalarQuantizer, VectorQuantizer, bits_to_index, index_to_bits
from domains.digits.data import load_digits_split

VARIANTS = [("laplacian", "residual"), ("var", "residual"), ("laplacian", "full"), ("var", "full")]


@pytest.fixture(scope="module")
def digits():
    return load_digits_split("train").x[:256]


@pytest.mark.parametrize("variant,target_state", VARIANTS)
def test_encoding_is_deterministic(digits, variant, target_state):
    pyr = ResidualPyramid(GridOps([1, 2, 4, 8]), ScalarQuantizer(1, 32, -1.5, 1.5), variant, target_state)
    a, b = pyr.encode(digits), pyr.encode(digits.clone())
    for ca, cb in zip(a.codes, b.codes):
        assert ca.dtype == torch.long and torch.equal(ca, cb)
    assert [c.shape[1] for c in a.codes] == [1, 4, 16, 64]


@pytest.mark.parametrize("variant,target_state", VARIANTS)
def test_lossless_quantizer_reconstructs_exactly(digits, variant, target_state):
    pyr = ResidualPyramid(GridOps([1, 2, 4, 8]), IdentityQuantizer(1), variant, target_state)
    codes = pyr.encode(digits).codes
    assert torch.allclose(pyr.decode(codes), digits, atol=1e-5)


@pytest.mark.parametrize("variant", ["laplacian", "var"])
def test_vq_error_never_rises_as_bands_are_added(digits, variant):
    ops = GridOps([1, 2, 4, 8])
    bands = ResidualPyramid(ops, IdentityQuantizer(1), variant).encode(digits).values
    vq = VectorQuantizer(1, num_codes=16, num_scales=4)
    vq.kmeans_init(torch.cat([b.reshape(-1, 1) for b in bands]), generator=torch.Generator().manual_seed(0))
    pyr = ResidualPyramid(ops, vq.eval(), variant)
    codes = pyr.encode(digits).codes
    with torch.no_grad():
        errors = [float((pyr.decode(codes, upto=k) - digits).pow(2).mean()) for k in range(1, 5)]
    assert all(later <= earlier + 1e-7 for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.25 * errors[0]


def test_scalar_quantizer_error_is_bounded_inside_its_range():
    q = ScalarQuantizer(2, num_codes=17, lo=-1, hi=1)
    r = torch.rand(4, 10, 2) * 2 - 1
    codes, values, _ = q(r, 0)
    assert codes.shape == (4, 10, 2) and codes.min() >= 0 and codes.max() < 17
    assert (values - r).abs().max() <= q.step / 2 + 1e-6
    assert torch.equal(q.dequantize(codes, 0), values.detach())


def test_vq_straight_through_usage_and_dead_code_reinit():
    torch.manual_seed(0)
    vq = VectorQuantizer(3, num_codes=8, num_scales=2, dead_after=2)
    vq.codebook.data[4:] = 100.0  # far away: never chosen, hence dead
    r = torch.randn(2, 5, 3, requires_grad=True)
    for _ in range(2):
        codes, values, loss = vq(r, 1)
    values.sum().backward()
    assert torch.allclose(r.grad, torch.ones_like(r))  # straight-through
    assert loss > 0 and codes.shape == (2, 5, 1)
    assert (vq.codebook.data[4:].abs() < 100).all()  # re-initialised from data
    stats = vq.usage_stats()
    assert "perplexity/scale1" in stats and "perplexity/scale0" not in stats
    assert 1.0 <= stats["perplexity/scale1"] <= 8.0


def test_bitwise_factorisation_round_trips():
    index = torch.arange(64)
    bits = index_to_bits(index, 6)
    assert bits.shape == (64, 6) and set(bits.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(bits_to_index(bits), index)
    assert bits[5].tolist() == [0, 0, 0, 1, 0, 1]


def test_bad_pyramid_settings_are_rejected():
    with pytest.raises(ValueError, match="variant"):
        ResidualPyramid(GridOps([1, 2]), IdentityQuantizer(1), "pyramidal")
    with pytest.raises(ValueError, match="coarse to fine"):
        GridOps([4, 2])


def test_quant_calibrate_sets_a_unit_per_scale_for_any_scalar_domain():
    """model.quant_calibrate: the core calibrates the scalar quantiser on training bands (the
    weather domain's setting, available to every data-space pyramid)."""
    from core.errors import ConfigError
    from core.plugins import get_domain
    from core.build import build_model
    from core.run import compose_config

    domain = get_domain("digits")
    cfg = compose_config(["domain=digits", "model.quant_calibrate=true"])
    data = domain.c2f_load_data(cfg=cfg, split="train")
    unit = build_model(cfg, domain, data).pyramid.quantizer.unit
    assert unit.shape == (4, 1) and (unit > 0).all()
    assert len(unit.unique()) == 4  # one unit per scale, from that scale's band sizes
    plain = build_model(compose_config(["domain=digits"]), domain, data).pyramid.quantizer.unit
    assert torch.equal(plain, torch.ones_like(plain))
    with pytest.raises(ConfigError, match="needs the scalar quantiser"):
        build_model(compose_config(["domain=digits", "model.quant_calibrate=true", "model.quantizer=vq"]),
                    domain, data)
