"""Speed per device: training steps/s and samples/s of each domain at fp32 and bf16, compile off/on.

    python benchmarks/devices.py [--devices cpu cuda] [--domains digits mnist graph weather]
        [--precisions fp32 bf16] [--compile off on] [--train-steps 10] [--samples 32]
        [--threads 2] [--out docs/results/devices]

Each row is one (domain, device, precision, compile) setting at the domain's default config
(``configs/domain/<name>.yaml``; ``mnist`` is ``domain=image``, the latent refiner):

- train: ``core.run.seconds_per_step`` (forward under autocast, backward, AdamW; the model
  compiled with ``torch.compile`` when compile is on), the mean of ``--train-steps`` steps after
  warm-up steps (3 with compile, which absorb compilation; their time is reported as
  ``warmup s``);
- sample: ``--samples`` samples drawn by the pipeline (``core.sampler.generate``) at
  ``sample.precision``, after one warm-up batch; compile applies to training only, so sampling
  is measured once per precision (the compile-on rows repeat no sampling).

The networks are untrained (speed does not depend on the weights; the graph model's sampling
draws its graphs' sizes from the data, so an untrained model does the same work per scale). The
MNIST tokenizer is the one of the default settings with 0 training steps (its k-means start),
which costs no hour of tokenizer training and runs the same operations. Devices that are not
present get rows marked "not measured". Results: ``<out>.md`` and its twin ``<out>.json``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core import device as D  # noqa: E402
from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.plugins import get_domain  # noqa: E402
from core.build import make_batch, build_model, load_data, seconds_per_step  # noqa: E402
from core.config import compose_config  # noqa: E402
from core.sampler import from_config, generate, member_seed  # noqa: E402

DOMAINS = {  # name: overrides of the domain's default config
    "digits": ["domain=digits"],
    "mnist": ["domain=image", f"domain.data_dir={REPO.parent / 'shared' / 'data' / 'mnist'}",
              "domain.tokenizer.train.steps=0"],
    "graph": ["domain=graph"],
    "weather": ["domain=weather"],
}


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cpu_cores": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        import os
        info["cpu_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def sample_seconds(cfg, samples: int) -> float:
    """Seconds per sample of the pipeline at ``cfg``'s device and sample.precision (one warm-up
    batch first)."""
    domain = get_domain(cfg.domain.name)
    device = D.set_device(cfg.device)
    data = load_data(cfg, domain, "train")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, domain, data).eval().to(device)
    cond = domain.c2f_sample_conditions(cfg=cfg, data=data, num_samples=samples)
    if cond is None:  # labels, or the field conditions of training examples (weather)
        index = torch.arange(samples) % len(data)
        cond = make_batch(cfg, domain, data, index)[1]
        if cond is None:
            cond = torch.full((samples,), model.null_label)
    cond = D.to_device(cond, device)
    scheduler, extensions = from_config(cfg.sample, model)
    seeds = [member_seed(cfg.seed, 0, i) for i in range(samples)]
    times = []
    with torch.no_grad():
        for _ in range(2):
            tick = time.perf_counter()
            with D.autocast(device, cfg.sample.precision):
                generate(model, scheduler, cond, seeds, extensions)
            D.synchronize(device)
            times.append(time.perf_counter() - tick)
    return times[-1] / samples


def measure(name: str, device: str, precision: str, compiled: bool, args) -> dict:
    overrides = DOMAINS[name] + [f"device={device}", f"train.precision={precision}",
                                 f"sample.precision={precision}", f"train.compile={str(compiled).lower()}",
                                 "progress=false"]
    cfg = compose_config(overrides)
    row = {"domain": name, "device": device, "precision": precision, "compile": "on" if compiled else "off",
           "batch_size": int(cfg.train.batch_size), "status": "ok"}
    warmup = 3 if compiled else 1
    try:
        timings = {}
        per_step = seconds_per_step(cfg, probe_steps=args.train_steps, warmup_steps=warmup, timings=timings)
        row.update(train_steps_per_s=1.0 / per_step, seconds_per_step=per_step,
                   warmup_s=timings["warmup_seconds"])
        if not compiled:
            per_sample = sample_seconds(cfg, args.samples)
            row.update(samples_per_s=1.0 / per_sample, seconds_per_sample=per_sample, samples=args.samples)
    except Exception as e:  # a setting that fails is a result too: the row says how
        row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        traceback.print_exc()
    print(row, flush=True)
    return row


def _fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def write(rows: list[dict], info: dict, command: str, out: Path):
    lines = ["# Speed per device", "",
             f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".", "",
             "Domain defaults (configs/domain/*.yaml), untrained networks (speed does not depend on the "
             "weights). Train: forward (autocast at the precision), backward and AdamW per step, after "
             "warm-up steps (3 with compile; their time, compilation included, is `warmup s`). Sample: "
             "the pipeline at `sample.precision`, after one warm-up batch; compile is a training setting, "
             "so compile-on rows have no sampling numbers.", "",
             "| domain | device | precision | compile | batch | train steps/s | s/step | warmup s "
             "| samples/s | s/sample | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["domain"], r["device"], r["precision"], r["compile"],
                                        _fmt(r.get("batch_size")), _fmt(r.get("train_steps_per_s")),
                                        _fmt(r.get("seconds_per_step")), _fmt(r.get("warmup_s"), 2),
                                        _fmt(r.get("samples_per_s")), _fmt(r.get("seconds_per_sample")),
                                        r["status"]]) + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json_atomic({"page": out.with_suffix(".md").name, "command": command, "machine": info,
                       "rows": rows}, out.with_suffix(".json"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(D.PRECISIONS))
    p.add_argument("--compile", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "docs" / "results" / "devices"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/devices.py " + " ".join(sys.argv[1:] if argv is None else argv)
    info = machine()
    rows = []
    for device in args.devices:
        present = device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())
        for name in args.domains:
            for precision in args.precisions:
                for c in args.compile:
                    if not present:
                        rows.append({"domain": name, "device": device, "precision": precision, "compile": c,
                                     "status": "not measured: no such device on this machine"})
                        continue
                    rows.append(measure(name, device, precision, c == "on", args))
                    write(rows, info, command.strip(), Path(args.out))  # each row kept as it comes
    write(rows, info, command.strip(), Path(args.out))
    print(f"wrote {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
