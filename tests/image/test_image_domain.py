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
    for key in ("fd", "precision", "recall", "class_accuracy", "classifier_test_accuracy", "nfe"):
        assert key in m, key
    assert m["classifier_test_accuracy"] >= 0.99
