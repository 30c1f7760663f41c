"""Image domain through the CLI on real MNIST: both spaces, the target levers, evaluation."""
import pytest
import torch

from core.run import compose_config, run


def tiny(shared_data, *extra):
    return ["domain=image", "progress=false", f"domain.data_dir={shared_data / 'mnist'}",
            "domain.limit=512", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
            "train.steps=3", "train.batch_size=8", "sample.num_samples=20", "sample.batch_size=10",
            "domain.tokenizer.width=8", "domain.tokenizer.train.steps=3",
            "domain.tokenizer.train.batch_size=16", *extra]


@pytest.mark.parametrize("extra", [["domain.space=pixel"], ["domain.space=pixel", "model.target=bits"],
                                   ["domain.space=latent"], ["domain.space=latent", "model.target=bits"],
                                   ["domain.space=latent", "model.target_state=full"]])
def test_spaces_and_levers_train_and_sample(tmp_path, shared_data, extra):
    over = tiny(shared_data, *extra)
    m = run(compose_config(over + ["task=train"]), tmp_path / "t")
    assert m["train_steps"] == 3
    ckpt = tmp_path / "t" / "checkpoints" / "last.pt"
    m = run(compose_config(over + ["task=sample", f"checkpoint={ckpt}"]), tmp_path / "s")
    assert m["nfe"] == 6 and m["samples"] == 20
    samples = torch.load(tmp_path / "s" / "samples.pt", weights_only=True)["samples"]
    assert samples.shape == (20, 1, 28, 28) and torch.isfinite(samples).all()
    assert (tmp_path / "s" / "samples.png").stat().st_size > 1000


def test_train_tokenizer_task_reports_bands(tmp_path, shared_data):
    m = run(compose_config(tiny(shared_data, "task=train_tokenizer")), tmp_path)
    assert (tmp_path / "tokenizer.pt").is_file()
    bands = [m[f"recon_mse/bands{k}"] for k in range(1, 7)]
    assert all(b >= 0 for b in bands) and "recon_mse" in m


def test_missing_mnist_file_is_named(tmp_path):
    over = ["domain=image", "progress=false", f"domain.data_dir={tmp_path}", "task=train"]
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        run(compose_config(over), tmp_path / "run")


@pytest.mark.slow
def test_evaluation_reports_all_metrics(tmp_path, shared_data):
    m = run(compose_config(tiny(shared_data, "domain.space=pixel", "task=all")), tmp_path)
    for key in ("fd", "kid", "precision", "recall", "class_accuracy", "classifier_test_accuracy", "nfe",
                "floor_fd", "floor_kid", "eval_split_is_val"):
        assert key in m, key
    assert m["classifier_test_accuracy"] >= 0.99 and m["eval_split_is_val"] == 0.0


# ---------------------------------------------------------------- the val split and eval_split
def _cfg(shared_data, *extra):
    return compose_config(["domain=image", "progress=false", f"domain.data_dir={shared_data / 'mnist'}",
                           *extra])


def test_val_split_is_the_tail_of_train_and_disjoint_from_it(shared_data):
    from domains.image import plugin
    from domains.image.data import mnist_tensor_data

    full = mnist_tensor_data(shared_data / "mnist", "train")
    cfg = _cfg(shared_data, "domain.val_size=1000")
    train, val = plugin.c2f_load_data(cfg, "train"), plugin.c2f_load_data(cfg, "val")
    assert len(train) == 59_000 and len(val) == 1000
    # disjoint and, in file order, together the whole training set
    assert torch.equal(torch.cat([train.x, val.x]), full.x)
    assert torch.equal(torch.cat([train.cond, val.cond]), full.cond)
    limited = plugin.c2f_load_data(_cfg(shared_data, "domain.val_size=1000", "domain.limit=100"), "train")
    assert torch.equal(limited.x, full.x[:100]) and torch.equal(limited.cond, full.cond[:100])
    assert len(plugin.c2f_load_data(_cfg(shared_data, "domain.val_size=59990", "domain.limit=100"),
                                    "train")) == 10
    # val_size=0 (the default): train is all of it, as before, and there is no val split
    cfg0 = _cfg(shared_data)
    assert cfg0.domain.val_size == 0 and cfg0.domain.eval_split == "test"
    assert torch.equal(plugin.c2f_load_data(cfg0, "train").x, full.x)
    assert len(plugin.c2f_load_data(cfg0, "test")) == 10_000
    with pytest.raises(ValueError, match="domain.val_size"):
        plugin.c2f_load_data(cfg0, "val")
    with pytest.raises(ValueError, match="domain.val_size"):
        plugin.c2f_load_data(_cfg(shared_data, "domain.val_size=60000"), "train")


def test_tokenizer_trains_on_the_train_part_only(shared_data, tmp_path, monkeypatch):
    from domains.image import plugin
    from domains.image import tokenizer as T

    seen = []
    monkeypatch.setattr(T, "train_tokenizer",
                        lambda model, images, run_dir, **kw: seen.append((images, run_dir)) or {})
    monkeypatch.setattr(T, "save_tokenizer", lambda model, path: path)
    cfg = _cfg(shared_data, "domain.val_size=500", "domain.tokenizer.width=8")
    plugin.train_and_save_tokenizer(cfg, tmp_path / "tok.pt")
    images, run_dir = seen[0]
    assert torch.equal(images, plugin.c2f_load_data(cfg, "train").x) and len(images) == 59_500
    assert run_dir == tmp_path / "tok.run"   # where a killed training resumes
    # a tokenizer trained without the val images is cached apart; val_size=0 keeps the old name
    cfg0 = _cfg(shared_data, "domain.tokenizer.width=8")
    assert plugin.tokenizer_cache_path(cfg) != plugin.tokenizer_cache_path(cfg0)


@pytest.fixture
def untrained_judge(monkeypatch):
    """c2f_evaluate with an untrained LeNet in place of the trained judge (the metric code is
    the same; only the numbers differ), and a fresh floor cache."""
    from domains.image import classifier as C
    from domains.image import plugin

    torch.manual_seed(0)
    judge = C.LeNet().eval()
    monkeypatch.setattr(plugin, "_judge", lambda data_dir, seed, progress: (judge, 0.5))
    plugin._floor.cache_clear()
    yield judge
    plugin._floor.cache_clear()


def test_eval_split_picks_the_reference_and_the_floor_avoids_val(shared_data, tmp_path, untrained_judge):
    from domains.image import plugin
    from domains.image.data import mnist_tensor_data
    from domains.image.metrics import image_metrics

    judge = untrained_judge
    test = mnist_tensor_data(shared_data / "mnist", "test")
    full = mnist_tensor_data(shared_data / "mnist", "train")
    samples = {"samples": test.x[:40], "cond": test.cond[:40]}

    def floor_index(n_train):
        return torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[:40]

    # eval_split=val: the val images (here the first eval_reference of them) are the reference
    cfg = _cfg(shared_data, "domain.val_size=300", "domain.eval_split=val", "domain.eval_reference=200")
    out = plugin.c2f_evaluate(cfg, samples, tmp_path)
    val = full.x[-300:][:200]
    expect = image_metrics(judge, samples["samples"], samples["cond"], val)
    assert out["eval_split_is_val"] == 1.0
    assert out["fd"] == expect["fd"] and out["kid"] == expect["kid"]
    assert out["precision"] == expect["precision"] and out["recall"] == expect["recall"]
    idx = floor_index(60_000 - 300)   # the floor's real "samples": training part only
    floor = image_metrics(judge, full.x[idx], full.cond[idx], val)
    assert all(out[f"floor_{k}"] == v for k, v in floor.items())

    # eval_split=test with val_size=0: exactly today's numbers (first N test images, floor drawn
    # by randperm over all 60,000 training images)
    out = plugin.c2f_evaluate(_cfg(shared_data, "domain.eval_reference=200"), samples, tmp_path)
    expect = image_metrics(judge, samples["samples"], samples["cond"], test.x[:200])
    idx = floor_index(60_000)
    floor = image_metrics(judge, full.x[idx], full.cond[idx], test.x[:200])
    assert out["eval_split_is_val"] == 0.0
    assert all(out[k] == v for k, v in expect.items())
    assert all(out[f"floor_{k}"] == v for k, v in floor.items())
    assert out["fd_over_floor"] == out["fd"] / out["floor_fd"]


def test_bad_eval_split_is_named(shared_data, tmp_path, untrained_judge):
    from domains.image import plugin

    x = torch.zeros(8, 1, 28, 28)
    samples = {"samples": x, "cond": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"domain.eval_split 'tset'; choose one of test, val"):
        plugin.c2f_evaluate(_cfg(shared_data, "domain.eval_split=tset"), samples, tmp_path)
    with pytest.raises(ValueError, match="domain.val_size"):   # val needs a val split
        plugin.c2f_evaluate(_cfg(shared_data, "domain.eval_split=val"), samples, tmp_path)
