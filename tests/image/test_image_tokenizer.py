"""The image tokenizer: shapes, a deterministic pyramid, a short real MNIST training, save/load."""
import gzip
import json
import os

import numpy as np
import pytest
import torch

from core.errors import InputError
from domains.image.tokenizer import VQTokenizer, load_tokenizer, save_tokenizer, train_tokenizer

SCALE_TOKENS = [1, 4, 9, 16, 25, 49]


def _read_images(folder, split: str, limit: int) -> torch.Tensor:
    """The first ``limit`` MNIST images of a split from the IDX file, in [-1, 1]."""
    name = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}[split]
    path = folder / name
    raw = path.read_bytes() if path.exists() else gzip.decompress((folder / (name + ".gz")).read_bytes())
    assert int.from_bytes(raw[:4], "big") == 2051, "not an IDX image file"
    n, h, w = (int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in (1, 2, 3))
    x = np.frombuffer(raw, np.uint8, count=min(n, limit) * h * w, offset=16)
    return torch.from_numpy(x.reshape(-1, 1, h, w).astype(np.float32) / 127.5 - 1.0)


@pytest.fixture(scope="module")
def mnist(shared_data):
    folder = shared_data / "mnist"
    if not folder.is_dir():
        pytest.skip(f"MNIST not found in {folder}")
    return _read_images(folder, "train", 3000), _read_images(folder, "test", 500)


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    train, test = mnist
    torch.manual_seed(0)
    model = VQTokenizer(channels=16, width=16)
    metrics = train_tokenizer(model, train, tmp_path_factory.mktemp("tok"), steps=500, batch_size=32, lr=3e-3, seed=0, progress=False,
                              eval_images=test)
    return model, metrics


def test_shapes_and_size():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    model = VQTokenizer(channels=8, width=16).eval()
    assert model.channels == 8 and model.scales == [1, 2, 3, 4, 5, 7]
    assert model.pyramid.quantizer is model.quantizer and model.quantizer.num_codes == 64
    z = model.encode(x)
    assert z.shape == (3, 8, 7, 7)
    out = model.decode(z)
    assert out.shape == (3, 1, 28, 28) and out.abs().max() <= 1
    rec, losses = model(x)
    assert rec.shape == x.shape and set(losses) >= {"loss", "recon", "vq"}
    assert sum(p.numel() for p in VQTokenizer(channels=32, width=32).parameters()) < 1_000_000

    big = VQTokenizer(channels=8, width=16, latent_size=14).eval()
    assert big.scales[-1] == 14 and big.num_scales == 8
    assert big.encode(x).shape == (3, 8, 14, 14)
    assert big.reconstruct(x).shape == (3, 1, 28, 28)
    assert [c.shape[1] for c in big.codes(x)] == [s * s for s in big.scales]

    with pytest.raises(ValueError):
        VQTokenizer(latent_size=10)
    with pytest.raises(ValueError):
        VQTokenizer(scales=[1, 2, 4])  # the finest scale must be the latent grid
    with pytest.raises(ValueError):
        model.encode(torch.zeros(2, 3, 28, 28))


@pytest.mark.parametrize("variant", ["var", "laplacian"])
def test_pyramid_is_deterministic_with_expected_token_counts(mnist, variant):
    x = mnist[1][:64]
    torch.manual_seed(1)
    model = VQTokenizer(channels=8, width=16, variant=variant)
    model.init_codebook(x, generator=torch.Generator().manual_seed(0))
    a, b = model.codes(x), model.codes(x.clone())
    assert [c.shape for c in a] == [(64, n, 1) for n in SCALE_TOKENS]
    for ca, cb in zip(a, b):
        assert ca.dtype == torch.long and torch.equal(ca, cb)
        assert 0 <= int(ca.min()) and int(ca.max()) < 64
    # the core's scale model calls encode, then the pyramid: the same codes
    enc = model.pyramid.eval().encode(model.encode(x))
    assert all(torch.equal(ca, cb) for ca, cb in zip(a, enc.codes))
    # decoding all bands is the straight-through composition of the forward pass, value for value
    z_hat, _ = model.quantize(model.encode(x))
    assert torch.allclose(z_hat, model.pyramid.decode(a), atol=1e-5)


def test_reconstruction_gradient_reaches_the_encoder(mnist):
    torch.manual_seed(0)
    model = VQTokenizer(channels=8, width=16)
    _, losses = model(mnist[1][:16])
    losses["recon"].backward()  # no VQ loss: only the straight-through path can reach the encoder
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert model.quantizer.codebook.grad is None or float(model.quantizer.codebook.grad.abs().sum()) == 0


def test_short_training_reconstructs_coarse_to_fine_without_collapse(trained, mnist):
    model, metrics = trained
    pixel_variance = float(mnist[1].var())  # MSE of the best constant image: about 0.38
    assert metrics["recon_mse"] < 0.25 * pixel_variance, metrics
    assert metrics["recon_mse"] < 0.1 * metrics["initial_recon_mse"], metrics
    bands = metrics["band_mse"]
    assert len(bands) == 6 and bands[-1] == pytest.approx(metrics["recon_mse"])
    assert all(later <= earlier + 1e-4 for earlier, later in zip(bands, bands[1:])), bands
    assert bands[-1] < 0.5 * bands[0], bands
    # no coarse-scale collapse: every scale uses a good few codes on held-out images (a collapsed
    # coarsest scale, as without partial-band reconstructions, uses one code: perplexity 1)
    for k in range(6):
        assert metrics[f"codes_used/scale{k}"] * 64 >= 5, metrics
        assert metrics[f"perplexity/scale{k}"] > 3.0, metrics
    assert model.reconstruction_by_band(mnist[1]) == pytest.approx(bands)
    train_stats = model.codebook_usage()  # counts accumulated while training
    assert set(train_stats) == {f"{s}/scale{k}" for s in ("codes_used", "perplexity") for k in range(6)}


def test_training_is_seeded_and_leaves_global_rng_alone(mnist, tmp_path):
    x = mnist[0][:256]
    states = []
    for i in range(2):
        torch.manual_seed(3)
        model = VQTokenizer(channels=8, width=16, dead_after=4)
        rng = torch.get_rng_state()
        train_tokenizer(model, x, tmp_path / f"run{i}", steps=6, batch_size=16, seed=5, progress=False,
                        log_every=2, eval_images=x[:32])
        assert torch.equal(rng, torch.get_rng_state())
        logs = [json.loads(line) for line in (tmp_path / f"run{i}" / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs] == [0, 2, 4, 5] and "recon" in logs[0] and "lr" in logs[0]
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_tokenizer_resumes_exactly_after_a_kill(mnist, tmp_path):
    """Killed after its checkpoint at step 4, the tokenizer's training resumes there on the next
    call and ends with the weights (codebook, usage counts, dead-code state) of an unbroken run."""
    x = mnist[0][:256]
    kw = dict(steps=8, batch_size=16, seed=2, progress=False, ckpt_every=4, eval_images=x[:32])

    def fresh():
        torch.manual_seed(1)
        return VQTokenizer(channels=8, width=16, dead_after=3)

    whole = fresh()
    ref = train_tokenizer(whole, x, tmp_path / "whole", **kw)

    class Killed(Exception):
        pass

    def kill(step, logs):
        if step == 5:
            raise Killed
    with pytest.raises(Killed):
        train_tokenizer(fresh(), x, tmp_path / "killed", on_step=kill, **kw)
    resumed = fresh()
    out = train_tokenizer(resumed, x, tmp_path / "killed", **kw)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert out["recon_mse"] == ref["recon_mse"] and out["steps"] == 8
    logs = [json.loads(line) for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [0, 7]             # no step logged twice
    with pytest.raises(InputError, match="another run"):   # another run's folder is refused
        train_tokenizer(fresh(), x, tmp_path / "killed", **{**kw, "lr": 1e-3})


def test_save_load_round_trip(trained, mnist, tmp_path):
    model, _ = trained
    x = mnist[1][:32]
    path = save_tokenizer(model, tmp_path / "tok" / "tokenizer.pt")
    assert sorted(os.listdir(tmp_path / "tok")) == ["tokenizer.pt"]  # no temporary file left over
    loaded = load_tokenizer(path)
    assert isinstance(loaded, VQTokenizer) and loaded.config == model.config
    assert not loaded.training
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.codes(x), loaded.codes(x)))
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
        assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    assert torch.equal(model.quantizer.usage, loaded.quantizer.usage)
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"config", "state_dict"}


@pytest.mark.parametrize("change,named", [
    ({"variant": "laplacian"}, ["model.variant", "'laplacian'", "'var'"]),
    ({"scales": [1, 2, 4, 7]}, ["scales", "(4, 4)", "(3, 3)"]),
    ({"up_mode": "bilinear"}, ["up_mode", "'bilinear'", "'bicubic'"]),
])
def test_a_tokenizer_that_disagrees_with_the_model_is_refused(change, named):
    """The model's pyramid settings against a loaded tokenizer's: a conflict names both values."""
    from types import SimpleNamespace

    from core.errors import ConfigError
    from core.grid import GridOps
    from core.build import check_tokenizer

    tokenizer = VQTokenizer(channels=4, num_codes=8, scales=[1, 2, 3, 7], width=8, variant="var")
    model = SimpleNamespace(variant=change.get("variant", "var"), target_state="residual")
    ops = GridOps(change.get("scales", [1, 2, 3, 7]), up_mode=change.get("up_mode", "bicubic"))
    with pytest.raises(ConfigError) as err:
        check_tokenizer(tokenizer, ops, model)
    for text in named:
        assert text in str(err.value)
    check_tokenizer(tokenizer, GridOps([1, 2, 3, 7]), SimpleNamespace(variant="var", target_state="residual"))
