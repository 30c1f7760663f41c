"""MNIST: what the tokenizer's settings do to its ceiling, the best FD any model over its codes can reach.

    python benchmarks/mnist_tokenizer.py [--variants base codes256 ...] [--samples 1000]
                                         [--refiner-minutes M [--refiner-variants ...]]

Each variant is a set of ``domain.tokenizer.*`` overrides on top of the frontier's tokenizer
(``benchmarks/mnist.py``: same seed, same 5000-image validation split left out of training). It is
trained through the same piece (``Bench.tokenizer``, provenance-keyed, reused when its config
matches) and scored as the frontier scores its ceiling rows: the reconstructions of ``--samples``
validation images against the test images, FD / floor and KID from the image domain's judge.
Its training time is reported beside, since the frontier charges it to the latent models.

With ``--refiner-minutes M``, the frontier's refiner (its sizes, masked-refinement training) is
also trained for M minutes of wall clock over each tokenizer in ``--refiner-variants`` (the same
M for every variant, the tokenizer's time not charged; it is reported beside) and scored on
validation at the frontier's usual settings without refinement rounds (linear ramp w = 3,
fine-scale interval w = 2; raw weights, which the frontier chose at short budgets). This says whether a larger codebook, which lowers the ceiling, is harder to learn.
Another ``--refiner-minutes`` is another training piece: give it another ``--out``.
Writes ``--doc`` (default ``docs/results/mnist_tokenizer.md``) and its JSON twin.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.mnist import Bench, ceilings, guidance, say  # noqa: E402
from core.io import write_json_atomic  # noqa: E402

VARIANTS = {
    "base": [],  # the current defaults
    "codes64": ["domain.tokenizer.num_codes=64"],
    "codes256": ["domain.tokenizer.num_codes=256"],
    "codes512": ["domain.tokenizer.num_codes=512"],
    "width48": ["domain.tokenizer.width=48"],  # about twice the tokenizer's time per step
}


class VariantBench(Bench):
    """The frontier's pieces with a variant's tokenizer overrides added to every config."""

    def __init__(self, args, extra: list[str]):
        super().__init__(args)
        self.extra = list(extra)

    def base(self, seed: int) -> list[str]:
        over = super().base(seed)
        # a variant's steps replace the frontier's --tokenizer-steps, not add a second value
        keys = {o.split("=", 1)[0] for o in self.extra}
        return [o for o in over if o.split("=", 1)[0] not in keys] + self.extra


REFINER_SETTINGS = {"linear_w3": guidance(3.0, "linear"), "interval-fine_w2": guidance(2.0, "interval-fine")}


def _row(name: str, label: str, m: dict, train_seconds: float, steps, recon_mse=None) -> dict:
    return {"variant": name, "overrides": VARIANTS[name], "row": label, "fd": m["fd"], "floor_fd": m["floor_fd"],
            "fd_over_floor": m["fd_over_floor"], "kid": m["kid"], "precision": m["precision"],
            "recall": m["recall"], "train_seconds": train_seconds, "steps": steps, "recon_mse": recon_mse,
            "provenance": m["provenance"], "piece": m["piece"]}


def refiner_rows(b: VariantBench, vargs, name: str, tok) -> list[dict]:
    """The frontier's refiner, trained ``--refiner-minutes`` over this variant's tokenizer (its own
    time not charged, see the docstring), scored on val at ``REFINER_SETTINGS``."""
    tok_path, tok_m = tok
    vargs.budget_minutes = tok_m["train_seconds"] / 60 + vargs.refiner_minutes
    trained = b.train("refiner", vargs.seed, tok)
    rows = []
    for setting, sample in REFINER_SETTINGS.items():
        r = b.score("refiner", vargs.seed, trained, "val", setting, sample, tok_path, weights="raw")
        rows.append(_row(name, f"refiner val {setting} (raw)", r["m"], trained["train_seconds"],
                         trained["train_steps"]))
        say(f"{name} refiner {setting}: FD/floor {r['m']['fd_over_floor']:.3f} after {trained['train_steps']} steps")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["codes64", "codes256", "codes512"], choices=sorted(VARIANTS))
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_mnist_tokenizer"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "mnist_tokenizer.md"))
    ap.add_argument("--refiner-minutes", type=float, default=0.0,
                    help="train a refiner this long over each of --refiner-variants (0: none)")
    ap.add_argument("--refiner-variants", nargs="+", default=None, choices=sorted(VARIANTS),
                    help="variants whose tokenizer gets a refiner (default: all of --variants)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.refiner_variants and not set(args.refiner_variants) <= set(args.variants):
        ap.error("--refiner-variants must be among --variants")
    if args.refiner_variants and args.refiner_minutes <= 0:
        ap.error("--refiner-variants needs --refiner-minutes M > 0")
    # the settings Bench reads that this benchmark does not vary
    args.ema, args.tokenizer_steps, args.max_minutes, args.report_only = 0.999, 2000, None, False
    args.override = []
    start = time.time()
    rows = []
    for name in args.variants:
        vargs = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / name)})
        b = VariantBench(vargs, VARIANTS[name])
        tok = b.tokenizer(args.seed)
        for r in ceilings(b, args.seed, tok):
            m = r["m"]
            rows.append(_row(name, r["setting"], m, r["train_seconds"], r["train_steps"],
                             tok[1].get("recon_mse") if r["model"] == "tokenizer" else None))
            say(f"{name} {r['setting']}: FD/floor {m['fd_over_floor']:.3f}, KID {m['kid']:.4f}")
        if args.refiner_minutes > 0 and name in (args.refiner_variants or args.variants):
            rows += refiner_rows(b, vargs, name, tok)
    command = "python benchmarks/mnist_tokenizer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# MNIST tokenizer variants: the ceiling of the latent models", "",
             f"Command: `{command}` ({(time.time() - start) / 60:.0f} min with reused pieces). "
             f"Seed {args.seed}; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}). "
             f"Rows `real-val` and `tokenizer-recon`: {args.samples} validation images, and their "
             "reconstructions, scored against the test images (the frontier's ceiling rows). Rows "
             f"`refiner val`: {args.samples} samples of the refiner scored against the validation "
             "images (their own floor). `train s` is the row's own training time: the refiners' "
             "tokenizer time is not charged here.", "",
             "| variant | overrides | row | FD / floor | KID | precision | recall | recon MSE | train s | steps | provenance |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mse = "-" if r["recon_mse"] is None else f"{r['recon_mse']:.4f}"
        lines.append(f"| {r['variant']} | {' '.join(r['overrides']) or '(defaults)'} | {r['row']} | "
                     f"{r['fd_over_floor']:.2f} | {r['kid']:.4f} | {r['precision']:.2f} | {r['recall']:.2f} | "
                     f"{mse} | {r['train_seconds']:.0f} | {r['steps']:.0f} | {r['provenance']} |")
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")
    write_json_atomic({"command": command, "rows": rows}, doc.with_suffix(".json"))
    print(json.dumps([{k: r[k] for k in ("variant", "row", "fd_over_floor", "train_seconds")} for r in rows]))


if __name__ == "__main__":
    main()
