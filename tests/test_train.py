"""Trainer: resume after a crash equals an uninterrupted run; atomic checkpoints; schedule."""
import json

import pytest
import torch

from core.run import build_model, compose_config
from core.plugins import get_domain
from core.train import TrainConfig, batch_indices, load_checkpoint, lr_at, train


def tiny_digits(ema=0.0):
    cfg = compose_config(["domain=digits", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2"])
    domain = get_domain("digits")
    data = domain.c2f_load_data(cfg=cfg, split="train")
    torch.manual_seed(0)
    model = build_model(cfg, domain, data)
    tcfg = TrainConfig(steps=6, batch_size=16, ckpt_every=3, log_every=1, warmup=2, ema=ema,
                       progress=False, seed=3)
    return model, data, tcfg


class Crash(Exception):
    pass


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_equals_uninterrupted(tmp_path, ema):
    model, data, tcfg = tiny_digits(ema)
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    train(model, len(data), batch, tcfg, tmp_path / "straight")
    reference = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")

    model2, _, _ = tiny_digits(ema)

    def crash(step, logs):
        if step == 4:  # after the checkpoint at step 3, before the next one
            raise Crash

    with pytest.raises(Crash):
        train(model2, len(data), batch, tcfg, tmp_path / "crashed", on_step=crash)
    assert load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")["step"] == 3
    model3, _, _ = tiny_digits(ema)
    tcfg.resume = True
    train(model3, len(data), batch, tcfg, tmp_path / "crashed")
    resumed = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")
    assert resumed["step"] == reference["step"] == 6
    for key in ("model", "ema"):
        if reference[key] is None:
            continue
        for name, tensor in reference[key].items():
            assert torch.equal(tensor, resumed[key][name]), (key, name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(6))  # no step logged twice
    assert not list((tmp_path / "crashed" / "checkpoints").glob(".*tmp*"))


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(s, 10, 4, seed=1) for s in range(5)])  # 2 epochs exactly
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, 10, 4, seed=1), batch_indices(3, 10, 4, seed=1))
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, 0, 4, seed=1)


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(50, cfg) < lr_at(20, cfg)


def test_checkpoint_loading_refuses_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
