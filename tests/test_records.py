"""Runs are records: settings checked on resume and at sampling, one writer per folder, clean
failures, short errors (fault-injection: kill -9, a full disk, two writers, bad inputs)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.errors import DiskFullError, InputError, SettingsError
from core.io import remove_stale_temps, save_atomic
from core.records import RunLock, adopt, check_resume, differences
from core.run import compose_config, run
from core.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["domain=digits", "progress=false", "refiner.d_model=32", "refiner.heads=2", "refiner.layers=1",
        "train.steps=6", "train.batch_size=16", "train.ckpt_every=3", "train.log_every=1",
        "train.warmup=2", "sample.num_samples=10", "sample.batch_size=5"]


def train_tiny(folder, *extra):
    return run(compose_config(TINY + ["task=train", *extra]), folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    train_tiny(folder)
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in (folder / "config.yaml", folder / "metrics.json",
                                              folder / "train_log.jsonl") if p.exists()}


# ---------------------------------------------------------------- resume checks
def test_the_checkpoint_carries_the_resolved_config_and_code_version(trained):
    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    config = json.loads(state["config"])
    assert config["refiner"]["d_model"] == 32 and config["train"]["steps"] == 6
    assert state["code_version"] and state["schedule_steps"] == 6


@pytest.mark.parametrize("change, named", [(["train.lr=0.05", "seed=7"], ["train.lr", "seed"]),
                                           (["refiner.d_model=48"], ["refiner.d_model"]),
                                           (["train.steps=9"], ["train.steps", "train.extend=true"])])
def test_resume_with_changed_settings_is_refused_and_writes_nothing(trained, change, named):
    before = snapshot(trained)
    with pytest.raises(SettingsError) as err:
        train_tiny(trained, "train.resume=true", *change)
    for name in named:
        assert name in str(err.value)
    assert snapshot(trained) == before  # config.yaml and metrics.json untouched


def test_resuming_a_finished_run_reports_it_and_changes_nothing(trained, caplog):
    before = snapshot(trained)
    m = train_tiny(trained, "train.resume=true", "train.log_every=2")  # a watching setting may change
    assert m["train_steps"] == 6 and m["final_loss"] == m["final_loss"]  # not NaN
    assert snapshot(trained) == before
    assert "already finished" in caplog.text
    json.loads((trained / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON


def test_extending_keeps_the_planned_schedule_and_continues_at_the_final_rate(tmp_path):
    train_tiny(tmp_path, "train.steps=4", "train.ckpt_every=2")
    first = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    train_tiny(tmp_path, "train.steps=8", "train.resume=true", "train.extend=true")
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log[:4]] == [r["lr"] for r in first]
    cfg = compose_config(TINY).train
    floor = cfg.lr * cfg.min_lr_ratio
    assert all(abs(r["lr"] - floor) < 1e-12 for r in log[4:]) and len(log) == 8
    assert max(r["lr"] for r in log[4:]) <= min(r["lr"] for r in first)  # no jump


def test_resuming_a_folder_without_a_run_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="holds no run"):
        train_tiny(tmp_path / "empty", "train.resume=true")
    assert not (tmp_path / "empty").exists()


def test_a_new_run_in_a_folder_with_a_run_is_refused(trained):
    before = snapshot(trained)
    with pytest.raises(SettingsError, match="already holds a training run"):
        train_tiny(trained)
    assert snapshot(trained) == before


def test_sampling_takes_the_model_settings_from_the_checkpoint(trained, tmp_path, caplog):
    ckpt = trained / "checkpoints" / "last.pt"
    # the model settings left out: they come from the checkpoint, with a line saying so
    cfg = compose_config(["domain=digits", "progress=false", "task=sample", f"checkpoint={ckpt}",
                          "sample.num_samples=6", "sample.batch_size=6"])
    m = run(cfg, tmp_path / "s")
    assert m["samples"] == 6 and "refiner.d_model=32" in caplog.text
    # a conflicting model setting given explicitly is an error; a sampling setting is not
    with pytest.raises(SettingsError, match="refiner.layers"):
        run(compose_config(TINY + ["task=sample", f"checkpoint={ckpt}", "refiner.layers=3"]), tmp_path / "t")
    run(compose_config(TINY + ["task=sample", f"checkpoint={ckpt}", "sample.temperature=0.5"]), tmp_path / "u")


def test_difference_listing_ignores_watching_settings():
    old = {"train": {"lr": 1.0, "log_every": 5}, "progress": True, "sample": {"temperature": 1.0}}
    new = {"train": {"lr": 2.0, "log_every": 1}, "progress": False, "sample": {"temperature": 0.5}}
    assert [d[0] for d in differences(old, new)] == ["sample.temperature", "train.lr"]
    check_resume({"train": {"steps": 5}}, {"train": {"steps": 5}, "progress": False})
    settings, taken = adopt({"model": {"a": 1}, "seed": 3}, {"model": {"a": 2}, "seed": 4}, explicit=set())
    assert settings == {"model": {"a": 1}, "seed": 4} and [t[0] for t in taken] == ["model.a"]


# ---------------------------------------------------------------- one writer per folder
def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / RunLock.NAME
        import socket
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "started": "then"}))
        with pytest.raises(SettingsError, match=f"process {sleeper.pid}"):
            train_tiny(tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    train_tiny(tmp_path)  # the lock's process is gone: taken over
    assert "stale lock" in caplog.text and not lock.exists()


def test_two_cli_writers_on_one_folder(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "core.run", *TINY, "train.steps=400", "task=train",
           f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / RunLock.NAME).exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"process {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) <= 2
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------- clean failures
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    import shutil
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    before = (folder / "checkpoints" / "last.pt").read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") \
            from OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as err:
        train_tiny(folder, "train.resume=true", "train.steps=9", "train.extend=true")
    assert "No space left on device".lower() in str(err.value).lower() and "last.pt" in str(err.value)
    assert (folder / "checkpoints" / "last.pt").read_bytes() == before
    assert not [p for p in (folder / "checkpoints").iterdir() if p.name != "last.pt"]  # no temp left


def test_temp_files_of_killed_writes_are_removed_by_the_next_run(trained, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run"
    import shutil
    shutil.copytree(trained, folder)
    left = folder / "checkpoints" / f".last.pt.{dead.pid}.x1y2.tmp"
    left.write_bytes(b"half a checkpoint")
    mine = folder / "checkpoints" / f".last.pt.{os.getpid()}.x1y2.tmp"
    assert remove_stale_temps(folder / "checkpoints") == [left] and not left.exists()
    left.write_bytes(b"again")
    train_tiny(folder, "train.resume=true", "train.steps=7", "train.extend=true")
    assert not left.exists() and not mine.exists()


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    train_tiny(tmp_path, "train.steps=3", "train.ckpt_every=3")
    log = tmp_path / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 3, "lo')
    train_tiny(tmp_path, "train.steps=6", "train.resume=true", "train.extend=true")
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(6))


def test_kill_9_during_training_resumes_to_the_uninterrupted_parameters(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    over = [*TINY, "task=train", "train.steps=60", "train.ckpt_every=10"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "core.run", *over, f"hydra.run.dir={whole}"], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "core.run", *over, f"hydra.run.dir={killed}"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = int(load_checkpoint(ckpt)["step"])
    assert step < 60, "the run finished before it could be killed"
    assert (killed / RunLock.NAME).exists()  # a killed run's lock stays; the resume takes it over
    subprocess.run([sys.executable, "-m", "core.run", *over, "train.resume=true", f"hydra.run.dir={killed}"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    a, b = load_checkpoint(whole / "checkpoints" / "last.pt"), load_checkpoint(ckpt)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logs = [(d / "train_log.jsonl").read_text() for d in (whole, killed)]
    assert logs[0] == logs[1]


def test_kill_9_during_checkpoint_writes_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"w": torch.zeros(10)}, path)
    script = (f"import torch, sys; sys.path.insert(0, {str(REPO)!r})\n"
              "from core.io import save_atomic\n"
              "i = 0\n"
              "while True:\n"
              f"    save_atomic({{'w': torch.full((2_000_000,), float(i))}}, {str(path)!r}); i += 1\n")
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        w = torch.load(path, weights_only=True)["w"]
        assert torch.all(w == w[0])  # a whole file: one of the writes, never a mix or a torn one
    remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------- short errors for user mistakes
def _cli(tmp_path, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "core.run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def _cli_here(tmp_path, monkeypatch, capsys, *args):
    """The command line in this process (as ``python -m core.run``, without the start-up time)."""
    from core.run import cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["core.run", *args])
    with pytest.raises(SystemExit) as exit_:
        cli()
    return exit_.value.code, capsys.readouterr().err


def _bad_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"samples": torch.zeros(3, 1, 8, 8)}, tmp_path / "nocond.pt")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["train.stpes=5"], "did you mean 'train.steps'"),
    (["+train.stpes=5"], "did you mean 'train.steps'"),
    (["domain=digits", "domain.scaels=[1,2]"], "did you mean 'domain.scales'"),
    (["domain=digits", "train.steps=-5"], "train.steps=-5 is not allowed"),
    (["domain=digits", "sample.batch_size=0"], "sample.batch_size=0 is not allowed"),
    (["domain=digits", "task=sample"], "pass checkpoint="),
    (["domain=digits", "task=sample", "checkpoint=empty.pt"], "is empty (0 bytes)"),
    (["domain=digits", "task=evaluate", "samples_path=empty.pt"], "is empty (0 bytes)"),
    (["domain=digits", "task=evaluate", "samples_path=nocond.pt"], "'cond'"),
    (["domain=nope"], "unknown domain 'nope'"),
])
def test_user_mistakes_get_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    _bad_files(tmp_path)
    code, err = _cli_here(tmp_path, monkeypatch, capsys, *args)
    assert code == 2, err[-2000:]
    assert err.strip().startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    runs = list((tmp_path / "outputs").rglob(".hydra")) if (tmp_path / "outputs").exists() else []
    assert not runs, "a failed run left its folder behind"


def test_the_real_command_line_prints_one_line(tmp_path):
    proc = _cli(tmp_path, "domain=digits", "train.stpes=5")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: unknown setting 'train.stpes'; did you mean 'train.steps'?")
    proc = _cli(_bad_files(tmp_path), "domain=digits", "task=sample", "checkpoint=empty.pt")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob(".hydra"))


def test_uint8_and_out_of_range_images(tmp_path, shared_data):
    from domains.image.plugin import _pixels
    real = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.allclose(_pixels(real), real.float() / 127.5 - 1)
    with pytest.raises(InputError, match="range over"):
        _pixels(real.float())


def test_a_checkpoint_older_than_a_setting_matches_its_old_behaviour():
    """A record without train.precision (written before it existed) trained in fp32: resuming it
    at fp32 is no change, at bf16 it is; changing the device is always allowed."""
    old = {"train": {"steps": 10}, "device": "cpu"}
    assert differences(old, {"train": {"steps": 10, "precision": "fp32", "compile": False}, "device": "cuda"}) == []
    assert differences(old, {"train": {"steps": 10, "precision": "bf16"}}) == [("train.precision", None, "bf16")]
    check_resume(old, {"train": {"steps": 10, "precision": "fp32"}, "device": "auto"}, step=5)
    with pytest.raises(SettingsError, match="train.precision"):
        check_resume(old, {"train": {"steps": 10, "precision": "fp16"}}, step=5)
