"""Training loop: seeded, checkpointed, resumable.

Everything random in step s (the batch, label dropout, dropout) is drawn from generators seeded
by (seed, s), and the learning rate is a function of s. A run killed after its checkpoint at step
s and resumed from it therefore ends with exactly the parameters of an uninterrupted run.

``max_seconds`` > 0 is a wall-clock training budget: the checkpoint carries the training seconds
spent so far, so the budget is charged across resumes, and once it is used up the trainer writes a
checkpoint at that step boundary and stops. The LR schedule follows the planned ``steps``, or with
``lr_clock`` the share of the budget spent: then the cosine ends when the clock stops training,
whatever a step costs, and ``steps`` is only a cap (runs are then as reproducible as the clock).
Resuming with a larger budget (or 0, none) continues exactly where it stopped.

Under torchrun every process takes its contiguous share of each global batch and
DistributedDataParallel averages the gradients, so N processes follow the trajectory of one
process with the same global batch (exactly, when the loss draws no random numbers; with label
dropout or random coarsenings each rank draws its own, so runs agree in distribution only). Rank
0 alone writes.

Devices (``core.device``): the model and each batch go to ``device``; the generators stay on the
CPU, so the batches and random draws of step s are the same on every device. ``precision`` bf16 /
fp16 runs the forward pass under autocast (fp16 with loss scaling, whose state the checkpoint
keeps), ``compile`` through ``torch.compile``; checkpoints hold CPU tensors of the uncompiled
model, so they load on any device and with compile on or off.

Files in ``run_dir``: ``checkpoints/last.pt`` (model, EMA, optimiser, step, training seconds; written atomically
and loaded with ``weights_only=True``) and ``train_log.jsonl`` (one line of flat numbers per
logged step; lines past the checkpoint are dropped on resume, so the log never repeats a step).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from core import distributed
from core.device import autocast, check_precision, compile_module, grad_scaler, to_cpu, to_device
from core.errors import InputError, MissingFileError, is_disk_full
from core.io import atomic_path, save_atomic


@dataclass
class TrainSection:
    """The ``train:`` section of the config (``core.config`` checks it)."""
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0    # 0 disables
    ema: float = 0.0          # 0 disables; else the EMA decay, used for sampling
    ema_warmup: bool = False  # decay min(ema, (1 + s) / (10 + s)) at step s, as diffusers' EMAModel
    log_every: int = 25
    ckpt_every: int = 200
    resume: bool = False
    extend: bool = False      # resuming with more steps: the first planned steps keep their schedule
    max_seconds: float = 0.0  # wall-clock training budget, summed over resumes; 0 = none
    lr_clock: bool = False    # with max_seconds: the cosine decays over the budget's seconds, not steps
    precision: str = "fp32"   # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    compile: bool = False     # run the forward pass through torch.compile
    compile_mode: str = "default"  # torch.compile's mode: default | reduce-overhead | max-autotune


@dataclass
class TrainConfig(TrainSection):
    """What ``train`` reads: the section plus what the run decides (seed, progress, device) and
    AdamW's betas (the tokenizer and the judge use torch's default (0.9, 0.999))."""
    betas: tuple = (0.9, 0.95)
    seed: int = 0
    progress: bool = True
    device: str = "cpu"       # a torch device (core.device resolves the ``device`` setting)
    desc: str = "train"       # the progress bar's label


def lr_at(step: int, cfg: TrainConfig, schedule_steps: int | None = None,
          progress: float | None = None) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr`` at ``schedule_steps`` (default
    ``cfg.steps``); steps past it (an extended run) stay at ``min_lr_ratio * lr``. ``progress``
    (the share of a wall-clock budget spent, for ``lr_clock``) replaces the step share."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if progress is not None:
        t = min(1.0, max(0.0, progress))
    else:
        t = min(1.0, (step - cfg.warmup) / max(1, (schedule_steps or cfg.steps) - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def ema_decay(step: int, cfg: TrainConfig) -> float:
    """The EMA decay after step ``step``. With a constant 0.999, 37% of the average is weights
    more than a thousand steps old (0.999^1000), which in a run of two thousand steps are the
    early, poor ones. The warm-up starts the average from recent weights and reaches ``ema``
    later."""
    return min(cfg.ema, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def batch_indices(step: int, num_items: int, batch_size: int, seed: int) -> torch.Tensor:
    """Items of step ``step``: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    if num_items <= 0:
        raise ValueError("cannot train on an empty data set")
    start = step * batch_size
    out, pos = [], start
    while pos < start + batch_size:
        epoch, offset = divmod(pos, num_items)
        perm = torch.randperm(num_items, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
        take = min(num_items - offset, start + batch_size - pos)
        out.append(perm[offset: offset + take])
        pos += take
    return torch.cat(out)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}. Pass checkpoint=<run folder>/checkpoints/last.pt "
                         "of a trained run (or train one here with task=train)")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint {path} is empty (0 bytes): it was truncated. Use another "
                         "checkpoint or train again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        if is_disk_full(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"checkpoint {path} cannot be read ({first}): it is damaged or not a "
                         "checkpoint of this project. Use another one or train again") from None


def _append_jsonl(path: Path, record: dict):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _log_records(path: Path) -> list[dict]:
    """The records of a training log; a torn line (a write cut off by a kill) is dropped."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _trim_log(path: Path, last_step: int):
    if not path.exists():
        return
    keep = [r for r in _log_records(path) if r.get("step", -1) <= last_step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))


def train(model: nn.Module, num_items: int, make_batch: Callable, cfg: TrainConfig, run_dir,
          on_step: Callable | None = None, clock: Callable[[], float] = time.perf_counter,
          record: dict | None = None) -> dict:
    """Train ``model`` (a module whose ``forward(batch, generator)`` returns ``(loss, logs)``).

    ``make_batch(indices)`` builds the batch of the given item indices. ``on_step(step, logs)``
    is called after every step (tests use it to simulate a crash). ``clock()`` measures all
    elapsed time (tests inject a fake one). ``record`` (``core.records.stamp``: the run's config
    and code version) is stored in every checkpoint. Returns summary numbers.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    log_path = run_dir / "train_log.jsonl"
    main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    check_precision(cfg.precision)
    model.to(device)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        # each rank on its own GPU (device_ids), or the CPU (gloo)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the parameters stay the model's: checkpoints have no compile prefixes
        net = compile_module(net, cfg.compile_mode)
    # weight decay on matrices, not on biases and norms, nor on what the model names in
    # ``no_weight_decay()`` (timm's convention; a codebook, say)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    decay = [p for n, p in named if p.ndim >= 2 and n not in skip]
    no_decay = [p for n, p in named if p.ndim < 2 or n in skip]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=tuple(cfg.betas))
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema > 0 else None
    scaler = grad_scaler(device, cfg.precision)

    start, spent, schedule = 0, 0.0, cfg.steps
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start = int(state["step"])
        spent = float(state.get("train_seconds", 0.0))  # older checkpoints: 0
        if cfg.extend:  # the steps planned before keep their learning rates
            schedule = int(state.get("schedule_steps") or cfg.steps)
        if main:
            _trim_log(log_path, start - 1)
    elif main and log_path.exists():
        log_path.unlink()

    def checkpoint(step, seconds):
        if main:
            # CPU tensors: a checkpoint written on a GPU loads anywhere
            save_atomic({"model": to_cpu(model.state_dict()), "optimizer": to_cpu(opt.state_dict()),
                         "ema": to_cpu(ema.state_dict()) if ema is not None else None, "step": step,
                         "train_seconds": float(seconds), "schedule_steps": schedule,
                         "grad_scaler": scaler.state_dict() if scaler.is_enabled() else None,
                         **(record or {})}, ckpt_path)
        distributed.barrier()

    model.train()
    budget = cfg.max_seconds > 0
    if cfg.lr_clock and not budget:
        raise InputError("train.lr_clock=true decays the learning rate over a wall-clock budget: "
                         "set train.max_seconds > 0 as well (or train.lr_clock=false)")
    exhausted = budget and spent >= cfg.max_seconds and start < cfg.steps
    done, seconds, stopped = start, spent, exhausted
    t0, logs, last_loss = clock(), {}, float("nan")
    bar = tqdm(range(start, start if exhausted else cfg.steps), initial=start, total=cfg.steps,
               disable=not (cfg.progress and main), desc=cfg.desc, dynamic_ncols=True)
    for step in bar:
        seed = step_seed(cfg.seed, step) if world == 1 else step_seed(cfg.seed * 7_777 + rank, step)
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        batch = make_batch(distributed.shard(batch_indices(step, num_items, cfg.batch_size, cfg.seed)))
        batch = to_device(batch, device)
        # lr_clock: the share of the budget spent before this step (the same on every rank)
        lr = lr_at(step, cfg, schedule, (spent + clock() - t0) / cfg.max_seconds if cfg.lr_clock else None)
        if cfg.lr_clock and world > 1:
            lr = distributed.broadcast_object(lr)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast(device, cfg.precision):
            loss, logs = net(batch, gen)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)  # clip the true gradients (a no-op unless fp16)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)  # fp16: skipped when the scaled gradients overflowed
        scaler.update()
        if ema is not None:
            with torch.no_grad():
                decay = ema_decay(step, cfg)
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        last_loss = float(loss.detach())
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            last_loss = distributed.mean_scalar(last_loss)
        if main and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            line = {"step": step, "loss": last_loss, "lr": lr, **logs}
            if grad_norm is not None:
                line["grad_norm"] = float(grad_norm)
            _append_jsonl(log_path, line)
            bar.set_postfix(loss=f"{last_loss:.4f}")
        seconds, done = spent + (clock() - t0), step + 1
        stop = budget and seconds >= cfg.max_seconds and done < cfg.steps
        if budget and world > 1:  # rank 0 decides, so every rank stops at the same step
            seconds, stop = distributed.broadcast_object((seconds, stop))
        if stop or (step + 1) % cfg.ckpt_every == 0 or step == cfg.steps - 1:
            checkpoint(step + 1, seconds)
        if on_step is not None:
            on_step(step, logs)
        if stop:
            stopped = True
            break
    bar.close()
    if start >= cfg.steps and not ckpt_path.exists():
        done = cfg.steps
        checkpoint(cfg.steps, seconds)
    if last_loss != last_loss and done > 0:  # nothing trained now: the loss the log ends with
        logged = [r["loss"] for r in _log_records(log_path) if "loss" in r]
        last_loss = float(logged[-1]) if logged else last_loss
    return {"train_steps": done, "train_seconds": seconds, "final_loss": last_loss,
            "stopped_by_time": float(stopped), "planned_steps": cfg.steps}


def resume_override(run_dir) -> str:
    """``train.resume=true`` when ``run_dir`` holds a checkpoint to continue, else ``=false``:
    for scripts that run a training piece again until it is done (resuming a folder without a run
    is refused)."""
    return f"train.resume={str((Path(run_dir) / 'checkpoints' / 'last.pt').is_file()).lower()}"


def resume_same_run(run_dir, identity: dict, what: str) -> bool:
    """True when ``run_dir`` holds a checkpoint of the run ``identity`` describes (pass the same
    dict as ``record={"run": identity}`` to ``train``), so training should resume there; False
    when it holds none. A checkpoint of another run is refused with a one-line error naming
    ``what`` was being trained."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if not path.is_file():
        return False
    if load_checkpoint(path).get("run") != identity:
        raise InputError(f"{run_dir} holds a {what} checkpoint of another run (other settings, data "
                         "or seed): use another folder, or delete it to train from scratch")
    return True


def load_weights(model: nn.Module, path, use_ema: bool = True) -> nn.Module:
    """Load the (EMA, when present) weights of a checkpoint written by ``train``."""
    state = load_checkpoint(path)
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval()
