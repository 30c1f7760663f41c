"""Runs are records: the settings a checkpoint was made with, and one writer per run folder.

Every checkpoint carries the resolved config of its run and the code version (``stamp``). Before a
task writes anything into a run folder, ``run`` checks the new settings against that record:

* **Resuming training** (``train.resume=true``) refuses any change to a setting that changes the
  model or the trajectory (architecture, data, seed, optimiser, schedule, steps), listing each
  difference. Settings that only say how the run is watched or where files are (``FREE``, plus
  the domain's ``c2f_free_settings``) may change. Extending a run on purpose is
  ``train.steps=N train.extend=true``: the steps already planned keep their learning rate and the
  new ones run at the schedule's final rate (``min_lr_ratio * lr``), so nothing jumps.
* **Sampling, evaluating and forecasting** from a checkpoint take the model's settings from it. A
  model setting given on the command line that differs from the checkpoint's is an error; one left
  at its default is replaced by the checkpoint's value, with a line saying so.

``RunLock`` makes a run folder single-writer: a lock file holds the process id and host of the run
writing there, a second run is refused with a message naming the first, and the lock of a process
that no longer exists is taken over with a warning.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import time
from pathlib import Path

from core.errors import SettingsError
from core.io import process_alive
from core.provenance import current_commit, flatten as flat, plain_config

log = logging.getLogger("c2f")

# settings that never change what a run computes: how it is watched, where files are, what runs
# (device and compile change where and how fast the arithmetic runs, not what it computes;
# train.precision does change it, so it is checked)
FREE = ("task", "progress", "checkpoint", "samples_path", "overrides", "deterministic", "device",
        "train.resume", "train.extend", "train.log_every", "train.ckpt_every", "train.max_seconds",
        "train.compile", "train.compile_mode",
        "domain.data_dir", "domain.store", "domain.tokenizer_path", "distill.pairs_dir")
# a trained model's settings may differ from the sample/evaluate command's only in these
SAMPLING_FREE = FREE + ("sample", "seed", "train")


def stamp(cfg) -> dict:
    """What a checkpoint records about its run: the resolved config and the code version."""
    return {"config": json.dumps(plain_config(cfg), sort_keys=True), "code_version": current_commit()}


def recorded_config(state: dict) -> dict | None:
    """The config a checkpoint was written with (None for checkpoints that predate the record)."""
    text = state.get("config")
    return json.loads(text) if isinstance(text, str) else None


def _is_free(key: str, free) -> bool:
    return any(key == f or key.startswith(f + ".") for f in free)


# settings newer than some checkpoints, with the value that does what those checkpoints' runs did:
# a record without the key matches a run with that value
ADDED_LATER = {"train.precision": "fp32", "train.compile": False, "train.compile_mode": "default",
               "sample.precision": "fp32", "device": "auto", "model.quant_calibrate": False,
               "distill.teacher": None, "distill.student": "noise", "distill.calls": 1,
               "distill.splits": None, "distill.pairs": 20000, "distill.pairs_dir": None, "distill.val_pairs": 500,
               "distill.pair_batch": 500, "distill.init": "teacher", "distill.noise_freqs": 6}


def differences(recorded: dict, current: dict, free=FREE) -> list[tuple[str, object, object]]:
    """``(key, recorded value, current value)`` for every setting that differs, ``free`` aside."""
    a, b = flat(recorded), flat(current)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if _is_free(key, free):
            continue
        old, new = a.get(key, missing), b.get(key, missing)
        if old is missing and key in ADDED_LATER and new == ADDED_LATER[key]:
            continue
        if old != new:
            out.append((key, None if old is missing else old, None if new is missing else new))
    return out


def describe(diffs) -> str:
    return "\n".join(f"  {key}: {old!r} (checkpoint) -> {new!r} (now)" for key, old, new in diffs)


def check_resume(recorded: dict, current: dict, free=FREE, step: int = 0,
                 schedule_steps: int | None = None) -> None:
    """Refuse to resume a checkpoint (at ``step``, its learning-rate schedule planned for
    ``schedule_steps``) with settings that change the model or the trajectory.
    ``train.extend=true`` allows a larger ``train.steps``."""
    extend = bool(current.get("train", {}).get("extend", False))
    diffs = differences(recorded, current, free)
    steps_diff = [d for d in diffs if d[0] == "train.steps"]
    others = [d for d in diffs if d[0] != "train.steps"]
    planned = int(schedule_steps or recorded.get("train", {}).get("steps", 0))
    if others or (steps_diff and not extend):
        hint = ("Put the checkpoint's values back, or start a new run folder."
                + ("" if others else " To train longer on purpose: train.steps=N train.extend=true "
                   f"(the first {planned} steps keep their schedule; later steps run at the final "
                   "learning rate)."))
        raise SettingsError("cannot resume: the checkpoint was trained with other settings:\n"
                            + describe(diffs) + "\n" + hint)
    if steps_diff:
        new = int(steps_diff[0][2])
        if new < step:
            raise SettingsError(f"train.steps={new} with train.extend=true is below the checkpoint's step "
                                f"{step}; a run cannot be shortened")


def adopt(recorded: dict, current: dict, explicit: set[str], free=SAMPLING_FREE) -> tuple[dict, list]:
    """The model settings of a checkpoint for a sample/evaluate run: every differing setting is
    taken from ``recorded``, unless it was given explicitly (then it is an error)."""
    diffs = differences(recorded, current, free)
    clash = [d for d in diffs if d[0] in explicit or any(d[0].startswith(e + ".") for e in explicit)]
    if clash:
        raise SettingsError("the checkpoint was trained with other model settings than the command line "
                            "gives:\n" + describe(clash) + "\nLeave these out (the checkpoint's values are "
                            "used) or train a model with them.")
    settings, rec = flat(current), flat(recorded)
    for key, _, _ in diffs:
        if key in rec:
            settings[key] = rec[key]
        else:
            settings.pop(key, None)
    return unflatten(settings), diffs


def unflatten(settings: dict) -> dict:
    out: dict = {}
    for key, v in settings.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def explicit_keys(overrides) -> set[str]:
    """The setting names an override list sets (``a.b=1``, ``+a.b=1``, ``~a.b``)."""
    keys = set()
    for o in overrides or ():
        o = str(o).lstrip("+~")
        if "=" in o:
            keys.add(o.split("=", 1)[0])
    return keys


def nearest(key: str, known) -> str | None:
    """The known setting name closest to a misspelled ``key``."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return match[0] if match else None


# ---------------------------------------------------------------- one writer per run folder
class RunLock:
    """``with RunLock(run_dir):`` -- refuse a second writer, take over the lock of a dead one."""

    NAME = ".run.lock"

    def __init__(self, run_dir):
        self.path = Path(run_dir) / self.NAME
        self.held = False

    def __enter__(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._read()
                if other.get("host") == me["host"] and not process_alive(int(other.get("pid", -1))) \
                        or other.get("pid") == me["pid"] and other.get("host") == me["host"]:
                    log.warning("taking over the stale lock of process %s (no longer running) in %s",
                                other.get("pid"), self.path.parent)
                    self.path.unlink(missing_ok=True)
                    continue
                raise SettingsError(
                    f"another run is writing to {self.path.parent}: process {other.get('pid')} on "
                    f"{other.get('host')}, started {other.get('started')}. Wait for it to end or choose "
                    f"another folder (if that process is gone, delete {self.path}).") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise SettingsError(f"could not take the lock {self.path}")

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False
