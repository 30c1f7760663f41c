"""Command line: ``python -m core.run domain=<name> task=<train|sample|evaluate|all|…>``.

The entry point and the task functions: ``main`` only composes the config (hydra,
``version_base="1.3"``; the schema and its checks are ``core/config.py``); ``run(cfg, run_dir)``
does the work and is what tests and scripts call; the model comes from ``core/build.py``. Every task writes into its run directory the composed
``config.yaml``, its artefacts and a ``metrics.json`` of flat numbers. Tasks the core does not
know are handed to the domain (``c2f_run_task``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from core import distributed
from core.build import make_batch, build_model, load_data
from core.compute import count_flops
from core.config import (CONFIG_DIR, _is_sweep, _settings_of, _with_plugin_paths, compose_config,
                         hydra_argv, validate_config)
from core.determinism import set_deterministic
from core.device import autocast, set_device, synchronize, to_device
from core.device import current as current_device
from core.errors import (ConfigError, DiskFullError, InputError, MissingFileError,  # noqa: F401
                         SettingsError, UserError)
from core.io import atomic_path, remove_stale_temps, save_atomic, write_json_atomic
from core.parts import keyed_folder
from core.plugins import available_domains, get_domain, missing_dependency
from core.protocol import Perturbable
from core.records import (FREE, SAMPLING_FREE, RunLock, adopt, check_resume, explicit_keys,
                          recorded_config, stamp)
from core.sampler import NoiseShift, from_config, generate, member_seed
from core.train import TrainConfig, load_checkpoint, load_weights, train

log = logging.getLogger("c2f")

CORE_TASKS = ("train", "sample", "evaluate", "all", "distill")
PIPELINE = ("train", "sample", "evaluate")


def _checkpoint_path(cfg, run_dir: Path) -> Path:
    return Path(cfg.checkpoint) if cfg.checkpoint else run_dir / "checkpoints" / "last.pt"


# ---------------------------------------------------------------- tasks
def task_train(cfg, domain, run_dir: Path) -> dict:
    if cfg.distill.teacher:
        raise ConfigError("distill.teacher is set: a student trains on its teacher's samples with "
                          "task=distill (task=sample then samples it)")
    data = load_data(cfg, domain, "train")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, domain, data)
    tcfg = TrainConfig(**OmegaConf.to_container(cfg.train), seed=cfg.seed, progress=cfg.progress,
                       device=str(current_device()))
    stats = train(model, len(data), lambda idx: make_batch(cfg, domain, data, idx), tcfg, run_dir,
                  record=stamp(cfg))
    stats["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return stats


def _sample_parts(cfg, run_dir: Path) -> Path:
    """The folder of finished sample batches, so a killed ``task=sample`` resumes. Its parts are
    only reused for the same checkpoint and settings; otherwise they are cleared."""
    folder = run_dir / "sample_parts"
    ckpt = _checkpoint_path(cfg, run_dir)
    key = {"sample": OmegaConf.to_container(cfg.sample, resolve=True), "seed": int(cfg.seed),
           "checkpoint": str(ckpt.resolve()), "checkpoint_mtime": ckpt.stat().st_mtime_ns,
           "domain": OmegaConf.to_container(cfg.domain, resolve=True),
           "model": OmegaConf.to_container(cfg.model, resolve=True)}
    return keyed_folder(folder, key, also=(run_dir / "samples.pt",))[0]


def task_sample(cfg, domain, run_dir: Path) -> tuple[dict, Any]:
    ckpt = _checkpoint_path(cfg, run_dir)
    if not cfg.checkpoint and not ckpt.is_file():
        raise InputError("task=sample needs a trained model: pass checkpoint=<run folder>/checkpoints/last.pt "
                         "(or use task=all to train one here first)")
    data = load_data(cfg, domain, "train")
    torch.manual_seed(cfg.seed)
    s = cfg.sample
    device = current_device()
    model = load_weights(build_model(cfg, domain, data), ckpt, use_ema=s.use_ema).to(device)
    n = s.num_samples
    cond = domain.c2f_sample_conditions(cfg=cfg, data=data, num_samples=n)
    if cond is None:
        cond = torch.arange(n) % model.num_classes if model.num_classes else torch.full((n,), model.null_label)
    try:
        scheduler, extensions = from_config(s, model)
    except ValueError as e:
        raise ConfigError(f"sample settings: {e}") from None
    if any(isinstance(e, NoiseShift) for e in extensions):
        if not isinstance(model, Perturbable):
            raise ConfigError(f"sample.shift_scale: the noise shift is not available for "
                              f"{type(model).__name__} (it has no calibrate_shift/perturb)")
        # the unit of sigma: clean states of a fixed, seeded subset of the training data
        index = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:1000]
        model.calibrate_shift(to_device(make_batch(cfg, domain, data, index), device))

    def draw(index, stats):
        c = cond[index]
        seeds = [member_seed(cfg.seed, int(ci), int(i)) for ci, i in zip(c.tolist(), index.tolist())]
        try:  # the seeds' generators stay on the CPU: member i is the same draw on every device
            with autocast(device, s.precision):
                samples, nfe = generate(model, scheduler, c.to(device), seeds, extensions, stats)
            samples = to_device(samples, "cpu")
            if isinstance(samples, torch.Tensor) and samples.is_floating_point():
                samples = samples.float()  # samples are stored in fp32 whatever the precision
            return samples, nfe
        except ValueError as e:  # an extension the model cannot do (refinement of an untrained model)
            raise ConfigError(f"sample settings: {e}") from None

    # each rank draws an interleaved share; sample i is seeded by (run seed, condition, i) alone
    mine = torch.arange(n)[distributed.rank()::distributed.world_size()]
    parts_dir = _sample_parts(cfg, run_dir)
    outputs, calls, totals, seconds = [], [], {}, 0.0
    for start in tqdm(range(0, len(mine), s.batch_size), desc="sample", disable=not cfg.progress,
                      dynamic_ncols=True):
        index = mine[start: start + s.batch_size]
        part = parts_dir / f"part_{int(index[0]):07d}_{len(index)}.pt"
        if part.is_file():  # drawn by an earlier, interrupted run with the same settings
            done = torch.load(part, weights_only=True)
        else:
            stats, tick = {}, time.perf_counter()
            out, nfe = draw(index, stats)
            synchronize(device)
            done = {"samples": out, "nfe": nfe, "seconds": time.perf_counter() - tick,
                    **{k: stats.get(k, 0) for k in ("nfe_backbone", "nfe_head", "guidance_doubles_batch",
                                                    "redraws", "refine_passes")}}
            if isinstance(out, torch.Tensor):
                save_atomic(done, part)
        totals["redraws"] = totals.get("redraws", 0) + done["redraws"]
        totals["refine_passes"] = totals.get("refine_passes", 0) + done["refine_passes"] * len(index)
        seconds += done["seconds"]
        outputs.extend(list(done["samples"]))
        calls.append((done["nfe"], done["nfe_backbone"], done["nfe_head"], done["guidance_doubles_batch"]))
    parts = distributed.gather_objects((mine.tolist(), outputs, calls))
    totals = {k: sum(t.get(k, 0) for t in distributed.gather_objects(totals)) for k in totals}
    ordered = [None] * n
    for index, items, _ in parts:
        for i, item in zip(index, items):
            ordered[i] = item
    samples = torch.stack(ordered) if isinstance(ordered[0], torch.Tensor) else ordered
    nfe, backbone, head, doubled = (max(c[j] for _, _, part in parts for c in part) for j in range(4))
    result = {"samples": samples, "cond": cond}
    if distributed.is_main():
        path = domain.c2f_save_samples(cfg=cfg, samples=result, run_dir=run_dir)
        if path is None:
            torch.save(result, run_dir / "samples.pt")
        domain.c2f_visualize(cfg=cfg, samples=result, path=run_dir / "samples.png")
    seconds = sum(distributed.gather_objects(seconds)) / distributed.world_size()
    metrics = {"nfe": nfe, "nfe_backbone": backbone, "nfe_head": head,
               "guidance_doubles_batch": doubled, "samples": n, "seconds_per_sample": seconds / n,
               "samples_per_second": n / seconds, "world_size": distributed.world_size(),
               "sample_batch_size": s.batch_size, "device": device.type}
    if s.flops_samples > 0:  # counted on a batch of their own: the counter slows the timed loop
        index = torch.arange(min(n, s.flops_samples))
        _, flops = count_flops(draw, index, {})
        metrics["flops_per_sample"] = flops / len(index)
    if s.max_redraws:
        metrics["redraws_per_sample"] = totals.get("redraws", 0) / n
    if s.refine_rounds:
        metrics["refine_passes_per_sample"] = totals.get("refine_passes", 0) / n
    return metrics, result


def task_evaluate(cfg, domain, run_dir: Path, samples=None) -> dict:
    if samples is None:
        path = Path(cfg.samples_path) if cfg.samples_path else run_dir / "samples.pt"
        samples = domain.c2f_load_samples(cfg=cfg, path=path)
        if samples is None:
            if not path.is_file():
                raise MissingFileError(f"samples file not found: {path} (run task=sample first "
                                       "or set samples_path=...)")
            samples = load_samples_file(path)
    if not isinstance(samples, dict) or "samples" not in samples or "cond" not in samples:
        found = sorted(samples) if isinstance(samples, dict) else type(samples).__name__
        raise InputError(f"samples must be a dict with 'samples' and 'cond' (the conditions, None if "
                         f"unconditional); got {found}")
    metrics = domain.c2f_evaluate(cfg=cfg, samples=samples, run_dir=run_dir)
    if metrics is None:
        raise NotImplementedError(f"domain '{domain.name}' does not implement c2f_evaluate")
    return metrics


def load_samples_file(path: Path):
    if path.stat().st_size == 0:
        raise InputError(f"samples file {path} is empty (0 bytes): sample again (task=sample)")
    try:
        return torch.load(path, weights_only=True)
    except (EOFError, RuntimeError, ValueError) as e:
        raise InputError(f"samples file {path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "sample again (task=sample)") from None


def _free_settings(cfg, domain) -> tuple[str, ...]:
    return tuple(f"domain.{k}" for k in (domain.c2f_free_settings(cfg=cfg) or ()))


def check_records(cfg: DictConfig, domain, run_dir: Path) -> tuple[DictConfig, bool]:
    """Check ``cfg`` against what ``run_dir`` and its checkpoint already hold (``core.records``).

    Returns the config to run with (a sample/evaluate/forecast run takes the model settings of its
    checkpoint) and whether the training it asks for is already finished. Raises SettingsError."""
    tasks = PIPELINE if cfg.task == "all" else (cfg.task,)
    current = OmegaConf.to_container(cfg, resolve=True)
    own = run_dir / "checkpoints" / "last.pt"
    if "train" in tasks or "distill" in tasks:
        if not cfg.train.resume:
            if own.is_file():
                raise SettingsError(f"{run_dir} already holds a training run ({own}); resume it with "
                                    "train.resume=true, or choose another folder")
            return cfg, False
        if not own.is_file():
            raise SettingsError(f"train.resume=true, but {run_dir} holds no run to resume (no "
                                "checkpoints/last.pt); leave out train.resume to start one here")
        state = load_checkpoint(own)
        recorded = recorded_config(state)
        if recorded is None:
            log.warning("the checkpoint %s records no settings (written by an older version): resuming "
                        "without checking them", own)
        else:
            if "distill" in tasks:  # a student records its teacher's model settings, not the command's
                from core.distill import PAIR_SETTINGS

                recorded, current = ({"distill": c.get("distill"), "train": c.get("train"), "seed": c.get("seed"),
                                      "sample": {k: c.get("sample", {}).get(k) for k in PAIR_SETTINGS}}
                                     for c in (recorded, current))
            check_resume(recorded, current, FREE + _free_settings(cfg, domain), int(state["step"]),
                         state.get("schedule_steps"))
        finished = int(state["step"]) >= cfg.train.steps
        if finished:
            log.warning("the run in %s is already finished (step %d of %d); nothing to train. To train "
                        "longer: train.steps=N train.extend=true", run_dir, int(state["step"]), cfg.train.steps)
        return cfg, finished
    source = _checkpoint_path(cfg, run_dir)
    recorded, origin = None, source
    if source.is_file():
        recorded = recorded_config(load_checkpoint(source))
    elif cfg.task == "evaluate":
        samples = Path(cfg.samples_path) if cfg.samples_path else run_dir / "samples.pt"
        origin = samples.parent / "config.yaml"
        if origin.is_file() and origin.resolve() != (run_dir / "config.yaml").resolve():
            recorded = OmegaConf.to_container(OmegaConf.load(origin), resolve=True)
    if recorded is None:
        return cfg, False
    adopted, taken = adopt(recorded, current, explicit_keys(cfg.overrides),
                           SAMPLING_FREE + _free_settings(cfg, domain))
    if taken:
        log.warning("settings taken from %s: %s", origin,
                    ", ".join(f"{k}={rec!r}" for k, rec, _ in taken))
        cfg = validate_config(OmegaConf.create(adopted))
    return cfg, False


def run(cfg: DictConfig, run_dir) -> dict:
    """Run ``cfg.task`` for ``cfg.domain.name`` in ``run_dir``; return (and save) its metrics.

    Nothing is written before the settings pass ``check_records``; while it runs, the folder is
    locked against a second writer (``core.records.RunLock``, held by rank 0)."""
    cfg = validate_config(cfg)
    set_deterministic(cfg.deterministic)
    device = set_device(cfg.device)  # before the process group: nccl for GPUs, gloo for CPUs
    distributed.init(device)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))  # rank 0's folder for everyone
    domain = get_domain(cfg.domain.name)
    existed = run_dir.exists()
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(run_dir) if distributed.is_main() else nullcontext():
            cfg, finished = check_records(cfg, domain, run_dir)
            done = cfg.task == "train" or (cfg.task == "distill" and (run_dir / "metrics.json").is_file())
            if finished and done:  # report it and change nothing
                stored = run_dir / "metrics.json"
                return json.loads(stored.read_text()) if stored.is_file() else {}
            try:
                return _run_tasks(cfg, domain, run_dir)
            except ModuleNotFoundError as e:  # a package the domain imports when it needs it
                if (e.name or "").split(".")[0] in ("core", "domains", "configs"):
                    raise
                raise missing_dependency(domain.name, e) from None
    except BaseException:
        if distributed.is_main() and not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run refused before it wrote anything leaves no folder
        raise


def _run_tasks(cfg: DictConfig, domain, run_dir: Path) -> dict:
    if distributed.is_main():
        for folder in [run_dir] + [p for p in run_dir.iterdir() if p.is_dir()]:
            for leftover in remove_stale_temps(folder):
                log.info("removed %s, left by a killed write", leftover)
        with atomic_path(run_dir / "config.yaml") as tmp:
            OmegaConf.save(cfg, tmp)
    distributed.barrier()
    log.info("%s: task=%s in %s", cfg.domain.name, cfg.task, run_dir)
    metrics: dict = {}
    samples = None
    # "all" is train -> sample -> evaluate; a domain may take over any step (weather's sample
    # step is a forecast) or add tasks of its own, through c2f_run_task
    for step in PIPELINE if cfg.task == "all" else (cfg.task,):
        result = domain.c2f_run_task(cfg=cfg, task=step, run_dir=run_dir)
        if result is not None:
            metrics.update(result)
        elif step == "train":
            metrics.update(task_train(cfg, domain, run_dir))
        elif step == "sample":
            sample_metrics, samples = task_sample(cfg, domain, run_dir)
            metrics.update(sample_metrics)
        elif step == "distill":
            from core.distill import task_distill
            metrics.update(task_distill(cfg, domain, run_dir))
        elif step == "evaluate":
            if distributed.is_main():
                metrics.update(task_evaluate(cfg, domain, run_dir, samples))
        else:
            raise ConfigError(f"unknown task '{step}' for domain '{domain.name}'; core tasks are "
                              f"{', '.join(CORE_TASKS)}")
    metrics = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
               for k, v in metrics.items()}
    metrics = distributed.broadcast_object(metrics)
    if distributed.is_main():
        write_json_atomic(metrics, run_dir / "metrics.json")
        log.info("metrics: %s", json.dumps(metrics, sort_keys=True, default=str))
    distributed.barrier()
    return metrics


def _remove_if_empty(folder: Path):
    """A run that failed before it made anything but its config leaves no folder behind."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "run.log", "config.yaml"}:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None):
    """The command line. A user's mistake (``core.errors.UserError``) ends in one ``error:`` line
    and exit code 2, a full disk in one line and exit code 1; ``HYDRA_FULL_ERROR=1`` shows the
    traceback instead."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    argv = list(sys.argv[1:] if argv is None else argv)
    flags, settings = hydra_argv(argv)
    if "--help" in flags or "-h" in flags:
        print(f"coarse2fine: python -m core.run domain=<name> task=<{'|'.join(CORE_TASKS)}|a domain task> "
              f"[setting=value ...]\ndomains: {', '.join(available_domains())}\n")
    multirun = "-m" in flags or "--multirun" in flags
    # misspelled or invalid settings fail here, in one line (a multirun checks its fixed settings)
    compose_config([s for s in _settings_of(settings) if not (multirun and _is_sweep(s))])
    overrides = flags + _with_plugin_paths(settings)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _entry(cfg: DictConfig):
        out = Path(HydraConfig.get().runtime.output_dir)
        OmegaConf.set_struct(cfg, False)
        cfg.overrides = list(HydraConfig.get().overrides.task)
        try:
            metrics = run(cfg, out)
        except BaseException as e:
            _remove_if_empty(out)
            _exit_if_user_error(e)  # hydra would print a traceback for any exception
            raise
        print(json.dumps(metrics, indent=2, sort_keys=True))

    saved = sys.argv
    sys.argv = [saved[0]] + overrides
    try:
        _entry()
    finally:
        sys.argv = saved


def _exit_if_user_error(e: BaseException):
    if isinstance(e, (UserError, DiskFullError)) and os.environ.get("HYDRA_FULL_ERROR") != "1":
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UserError) else 1)


def cli():
    try:
        main()
    except (UserError, DiskFullError) as e:
        _exit_if_user_error(e)
        raise


if __name__ == "__main__":
    cli()
