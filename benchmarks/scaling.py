"""Training and sampling throughput on 1 and 2 processes (torchrun, gloo on CPU).

    python benchmarks/scaling.py [--domain digits] [--steps 200] [--samples 400]

Runs ``task=train`` and ``task=sample`` of one domain under ``torchrun --nproc_per_node=N`` for
each N, reads the run directories' metrics and writes ``docs/results/scaling.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def launch(nproc: int, overrides: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "core.run"] + overrides
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="digits")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_scaling"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "scaling.md"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for n in args.procs:
        threads = max(1, cores // n)
        run_dir = Path(args.out) / f"n{n}"
        base = [f"domain={args.domain}", "progress=false", f"train.batch_size={args.batch_size}"]
        launch(n, base + ["task=train", f"train.steps={args.steps}", f"hydra.run.dir={run_dir / 'train'}"], threads)
        train = json.loads((run_dir / "train" / "metrics.json").read_text())
        ckpt = run_dir / "train" / "checkpoints" / "last.pt"
        launch(n, base + ["task=sample", f"checkpoint={ckpt}", f"sample.num_samples={args.samples}",
                          f"hydra.run.dir={run_dir / 'sample'}"], threads)
        sample = json.loads((run_dir / "sample" / "metrics.json").read_text())
        rows.append((n, threads, args.steps / train["train_seconds"],
                     args.steps * args.batch_size / train["train_seconds"], sample["samples_per_second"]))
        print(rows[-1], flush=True)
    lines = ["# Scaling: 1 versus 2 processes", "",
             f"Command: `python benchmarks/scaling.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Machine: {platform.machine()}, {cores} CPU cores, CPU only, torch.distributed with gloo; "
             f"domain `{args.domain}`, global batch {args.batch_size}, {args.steps} training steps, "
             f"{args.samples} samples. Each process gets cores / processes intra-op threads.", "",
             "| processes | threads each | train steps / s | train items / s | samples / s |",
             "|---|---|---|---|---|"]
    for n, threads, sps, ips, smp in rows:
        lines.append(f"| {n} | {threads} | {sps:.2f} | {ips:.0f} | {smp:.1f} |")
    lines += ["", "Both runs use the same global batch, so they follow the same training trajectory "
              "(tests/test_distributed.py); on one small machine a second process competes for "
              "the same cores, so the gain measures overheads more than scale."]
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text("\n".join(lines) + "\n")
    print("wrote", args.doc)


if __name__ == "__main__":
    main()
