"""Trainer: resume after a crash equals an uninterrupted run; atomic checkpoints; schedule."""
import json

import pytest
import torch

from core.build import build_model
from core.run import compose_config
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


class FakeClock:
    """Advances ``tick`` seconds per call, so the trainer sees one tick per step."""

    def __init__(self, tick=1.0):
        self.now, self.tick = 0.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def _weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_at_step_boundary_and_resume_equals_uninterrupted(tmp_path):
    model, data, tcfg = tiny_digits(ema=0.9)
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    straight = train(model, len(data), batch, tcfg, tmp_path / "straight", clock=FakeClock())
    assert straight["train_steps"] == straight["planned_steps"] == 6
    assert straight["stopped_by_time"] == 0.0 and straight["train_seconds"] == 6.0
    reference = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")

    tcfg.max_seconds = 3.5  # one tick per step: spent 4 s after step 3, off the ckpt_every=3 grid
    model2, _, _ = tiny_digits(ema=0.9)
    stopped = train(model2, len(data), batch, tcfg, tmp_path / "budget", clock=FakeClock())
    state = load_checkpoint(tmp_path / "budget" / "checkpoints" / "last.pt")
    assert stopped["train_steps"] == state["step"] == 4 < tcfg.steps
    assert stopped["stopped_by_time"] == 1.0 and stopped["planned_steps"] == 6
    assert stopped["train_seconds"] == state["train_seconds"] == 4.0

    tcfg.max_seconds, tcfg.resume = 0.0, True
    model3, _, _ = tiny_digits(ema=0.9)
    resumed = train(model3, len(data), batch, tcfg, tmp_path / "budget", clock=FakeClock())
    final = load_checkpoint(tmp_path / "budget" / "checkpoints" / "last.pt")
    assert resumed["train_steps"] == final["step"] == 6 and resumed["stopped_by_time"] == 0.0
    assert resumed["train_seconds"] == final["train_seconds"] == 6.0  # 4 s before + 2 s now
    for key in ("model", "ema"):
        assert _weights_equal(reference[key], final[key]), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "budget" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(6))


def test_resume_with_spent_time_budget_trains_no_further(tmp_path):
    model, data, tcfg = tiny_digits()
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    tcfg.max_seconds = 2.0
    first = train(model, len(data), batch, tcfg, tmp_path, clock=FakeClock())
    before = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert first["train_steps"] == before["step"] == 2 and first["stopped_by_time"] == 1.0

    tcfg.resume = True
    calls = []
    model2, _, _ = tiny_digits()
    again = train(model2, len(data), batch, tcfg, tmp_path, clock=FakeClock(),
                  on_step=lambda step, logs: calls.append(step))
    after = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert calls == [] and after["step"] == 2
    assert again["train_steps"] == 2 and again["stopped_by_time"] == 1.0
    assert again["train_seconds"] == 2.0
    assert _weights_equal(before["model"], after["model"])
    assert _weights_equal(before["model"], model2.state_dict())


def test_lr_clock_decays_over_the_budget_and_resumes_on_the_spent_share(tmp_path):
    import math

    from core.errors import InputError
    from core.train import lr_at
    model, data, tcfg = tiny_digits()
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    tcfg.lr_clock = True
    with pytest.raises(InputError, match="max_seconds"):
        train(model, len(data), batch, tcfg, tmp_path / "none", clock=FakeClock())
    # the fake clock ticks once for the LR and once at the step's end: 2 s a step; the step count
    # (a cap of 100) would barely move a step-based cosine, the budget of 16 s ends it
    tcfg.steps, tcfg.max_seconds = 100, 16.0
    out = train(model, len(data), batch, tcfg, tmp_path / "clock", clock=FakeClock())
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "clock" / "train_log.jsonl").read_text().splitlines()]
    assert out["train_steps"] == 8 and out["stopped_by_time"] == 1.0
    assert lrs[2:] == sorted(lrs[2:], reverse=True)  # past the warm-up: decaying
    # the last step starts at 15 of 16 s: nearly the floor, where a step schedule would sit near the top
    assert lrs[-1] == pytest.approx(lr_at(7, tcfg, progress=15 / 16))
    assert lrs[-1] < 0.2 * tcfg.lr < lr_at(7, tcfg)
    # resumed with a larger budget, the share counts the seconds spent before
    tcfg.max_seconds, tcfg.resume = 32.0, True
    more = train(tiny_digits()[0], len(data), batch, tcfg, tmp_path / "clock", clock=FakeClock())
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "clock" / "train_log.jsonl").read_text().splitlines()]
    assert more["train_steps"] == 16 and len(lrs) == 16
    assert lrs[8] == pytest.approx(tcfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 17 / 32))))


def test_checkpoint_without_train_seconds_counts_as_zero(tmp_path):
    model, data, tcfg = tiny_digits()
    batch = lambda idx: (data.x[idx], data.cond[idx])  # noqa: E731
    tcfg.steps = 3
    train(model, len(data), batch, tcfg, tmp_path, clock=FakeClock())
    path = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["train_seconds"]  # as written before the budget existed
    torch.save(state, path)
    tcfg.steps, tcfg.resume, tcfg.max_seconds = 6, True, 1.5
    out = train(tiny_digits()[0], len(data), batch, tcfg, tmp_path, clock=FakeClock())
    assert out["train_steps"] == 5 and out["train_seconds"] == 2.0 and out["stopped_by_time"] == 1.0


def test_ema_warmup_starts_from_recent_weights():
    from core.train import ema_decay
    cfg = TrainConfig(ema=0.999, ema_warmup=True)
    assert ema_decay(0, cfg) == pytest.approx(0.1) and ema_decay(2000, cfg) == pytest.approx(2001 / 2010)
    assert ema_decay(10**6, cfg) == 0.999
    assert ema_decay(0, TrainConfig(ema=0.999)) == 0.999  # off: the constant decay
