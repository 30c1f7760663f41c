"""MNIST: quality against compute for the refiner, DDPM/DDIM and the next-token AR, on equal terms.

    python benchmarks/mnist.py --budget-minutes 25 [--seeds 0 1 2] [--models refiner ddpm ar]
                               [--samples 1000] [--max-minutes M] [--report-only]

The protocol (each point is a mechanism of the core, so every benchmark can use it):

* **Equal training budgets by wall clock.** Every model trains for ``--budget-minutes`` under
  ``train.max_seconds`` (stopped at a step boundary with a checkpoint; a killed run resumes and is
  charged what it already spent). The latent models (refiner, AR) are charged their tokenizer's
  training time: their own budget is what is left of the same total. The cosine learning rate
  decays over the budget's seconds (``train.lr_clock``), so every model anneals fully however
  fast its steps turn out to be; the step count (twice a probe's estimate) is only a cap.
* **The same tricks:** EMA of the weights (``--ema``) for every model, classifier-free guidance
  from 10% dropped labels for every model. Whether a model samples with its EMA or its raw
  weights is chosen on validation like any sampler setting (``sample.use_ema``): a constant decay
  of 0.999 over two thousand steps still averages in the early, poor weights.
* **Never tuned on test.** The last 5000 MNIST training images are a validation split nobody
  trains on (``domain.val_size``). Guidance weight and schedule, temperature and refinement rounds
  are chosen on it (``domain.eval_split=val``); test is scored once per frontier point, and the
  headline row is the validation-best refiner setting within ``--headline-nfe`` network calls.
  The DDPM's guidance weight is chosen on validation with DDIM-10 (``--ddpm-weights``, from 0,
  unguided, up to the refiner's top weight of 4: a width-16 DDPM chose the lowest weight of a grid
  starting at 0.5, and a DDPM with fewer steps in its 25 minutes the top of a grid ending at 2)
  and used at every step count;
  the refiner's and the AR's weight and schedule at zero refinement rounds, temperature after.
* **Same sample counts:** ``--samples`` for every row, validation and test alike; FD, unbiased
  KID, precision/recall and class accuracy from the image domain's ``c2f_evaluate``, with the
  real-vs-real floor at the same sample count.
* **Compute:** NFE (every network pass), whether guidance doubles the batch, FLOPs per sample
  (``torch.utils.flop_counter``) and seconds per sample, from each sample task's ``metrics.json``.
* **Provenance:** every piece (tokenizer, training run, sample+evaluate) lives in its own folder
  with ``provenance.json`` (config hash, commit); a piece is reused only when its config hash
  matches, and a mismatch is refused (``core.provenance``). Every row names its piece. Scores
  also carry the fingerprint of the judge that made them; when the judge changes they are
  redone from the saved samples (the samples stand: their config has not changed).
* **Spread:** with several ``--seeds`` (tokenizer and models retrained per seed), the headline rows
  are scored for every seed and reported as mean and range; settings are chosen on the first seed.

Pieces are done in order of their value (refiner rows, then DDIM from few to many steps, DDPM-1000,
the AR, further seeds) and the report is rewritten after each stage, so an interrupted run leaves a
report of what is finished; running the command again continues where it stopped (DDPM-1000's
sample batches are resumable too). ``--max-minutes`` stops starting new pieces after that long.
Writes ``--doc`` (``docs/results/mnist.md``), its twin ``mnist.json`` and the frontier plot.
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

import torch  # noqa: E402

from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.provenance import amend_piece, check_piece, provenance_label, record_piece  # noqa: E402
from core.build import seconds_per_step  # noqa: E402
from core.run import compose_config, run  # noqa: E402
from core.train import resume_override  # noqa: E402

VAL_SIZE = 5000
SCHEDULES = {"constant": {}, "linear": {}, "interval-coarse": {"interval": [0, 2]},
             "interval-fine": {"interval": [2, 5]}}
ROUNDS = [0, 1, 2, 4]


class OutOfTime(Exception):
    pass


def say(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- pieces
class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.deadline = time.time() + args.max_minutes * 60 if args.max_minutes else None
        self.out_of_time = False
        self.weights = {}  # model -> "ema" | "raw", chosen on val (choose_weights)

    @property
    def judge(self) -> str:
        """The fingerprint of the judge that scores (``judge_fingerprint``): scores by another are
        redone from their saved samples."""
        if not hasattr(self, "_judge"):
            from domains.image.classifier import judge_fingerprint, load_or_train_classifier
            model, _ = load_or_train_classifier(self.args.data_dir, seed=0, progress=not self.args.quiet)
            self._judge = judge_fingerprint(model)
        return self._judge

    def piece(self, folder: Path, config: dict, make, rescore=None, amend=None):
        """Reuse ``folder``'s metrics if its provenance matches ``config``; else make them.
        ``rescore()`` (pieces scored by the judge) evaluates the piece's saved samples again: it
        runs instead of ``make`` when only the judge changed. ``amend`` = (keys, reason): a
        record that differs from ``config`` at those keys alone is re-keyed (and says so)."""
        if amend is not None:
            amend_piece(folder, config, amend[1], amend[0])
        record = check_piece(folder, config)  # refuses a folder made with another config
        done = _load(folder / "metrics.json")
        fresh = done is not None and (rescore is None or done.get("judge") == self.judge)
        if record is not None and fresh:
            return {**done, "provenance": provenance_label(record), "config_hash": record["config_hash"],
                    "piece": str(folder)}
        if self.args.report_only:
            return None
        if self.out_of_time or (self.deadline and time.time() > self.deadline):
            self.out_of_time = True
            raise OutOfTime
        if record is not None and done is not None:  # the samples stand; the judge is new
            say(f"scoring {folder} again with judge {self.judge}")
            metrics = {**done, **rescore(), "judge": self.judge}
        else:
            record = record_piece(folder, config)
            metrics = make()
            if rescore is not None:
                metrics["judge"] = self.judge
        write_json_atomic(metrics, folder / "metrics.json")
        return {**metrics, "provenance": provenance_label(record), "config_hash": record["config_hash"],
                "piece": str(folder)}

    def base(self, seed: int) -> list[str]:
        a = self.args
        return ["domain=image", f"domain.data_dir={a.data_dir}", f"seed={seed}",
                f"progress={str(not a.quiet).lower()}", f"domain.val_size={VAL_SIZE}",
                f"train.ema={a.ema}", f"domain.tokenizer.train.steps={a.tokenizer_steps}"]

    @staticmethod
    def hashed(over: list[str]) -> dict:
        """The overrides that define a piece (not where files are or how chatty it is), by key."""
        skip = ("progress=", "domain.data_dir=", "domain.tokenizer_path=", "checkpoint=",
                "samples_path=", "train.steps=", "train.resume=", "distill.teacher=", "distill.pairs_dir=")
        return dict(sorted(o.split("=", 1) for o in over if not o.startswith(skip)))

    # --- tokenizer and models
    def tokenizer(self, seed: int) -> tuple[Path, dict]:
        folder = self.out / f"tokenizer_s{seed}"
        over = self.base(seed) + ["task=train_tokenizer"]
        from omegaconf import OmegaConf
        # the resolved settings, not only the overrides: a tokenizer made under other defaults (say,
        # another codebook size) is refused rather than reused, and every piece keyed on it follows
        cfg = compose_config(over)
        settings = OmegaConf.to_container(cfg.domain.tokenizer, resolve=True)
        m = self.piece(folder, {"piece": "tokenizer", "overrides": self.hashed(over), "trainer": "core.train",
                                "settings": settings},
                       lambda: (say(f"tokenizer, seed {seed}"), run(cfg, folder))[1])
        return folder / "tokenizer.pt", m

    def model_overrides(self, model: str, seed: int, tok: Path | None) -> list[str]:
        over = self.base(seed)
        if model == "refiner" or model.startswith("student"):  # a student has its teacher's settings
            over += ["domain.space=latent", "model.refine=true", f"domain.tokenizer_path={tok}"]
        elif model == "ar":
            over += ["domain.space=latent", "domain.baseline=ar", f"domain.tokenizer_path={tok}"]
        else:
            over += ["domain.baseline=ddpm"]
        return over + list(self.args.override)

    def train(self, model: str, seed: int, tok_piece) -> dict | None:
        tok_path, tok_m = tok_piece if tok_piece else (None, None)
        if model != "ddpm" and tok_m is None:
            return None
        charged = float(tok_m["train_seconds"]) if model != "ddpm" else 0.0
        budget = self.args.budget_minutes * 60 - charged
        if budget <= 0:
            raise SystemExit(f"the tokenizer took {charged:.0f} s, more than --budget-minutes")
        over = self.model_overrides(model, seed, tok_path) + [f"train.max_seconds={budget:.0f}",
                                                             "train.lr_clock=true"]
        folder = self.out / f"{model}_s{seed}" / "train"
        # the pixel DDPM never reads the tokenizer: only the latent models are keyed on it
        config = {"piece": "train", "overrides": self.hashed(over),
                  "tokenizer": tok_m["config_hash"] if tok_m and model != "ddpm" else None}

        def make():
            plan = _load(folder / "plan.json")
            if plan is None:
                # the learning rate follows the clock (train.lr_clock), so the step count is only
                # a cap: twice what the fastest of a few probe steps predicts, so that the clock,
                # not the cap, ends every run even when the real steps run faster than the probe
                timings = {}
                seconds_per_step(compose_config(over), probe_steps=5, timings=timings)
                sps = min(timings["step_seconds"])
                plan = {"steps": max(1, int(2 * budget / sps)), "seconds_per_step": sps}
                write_json_atomic(plan, folder / "plan.json")
            say(f"train {model}, seed {seed}: {budget:.0f} s, planned {plan['steps']} steps")
            m = run(compose_config(over + ["task=train", f"train.steps={plan['steps']}",
                                           resume_override(folder)]), folder)
            return {**m, "tokenizer_seconds": charged, "budget_seconds": budget + charged}
        amend = (("tokenizer",), "the pixel DDPM never reads the tokenizer") if model == "ddpm" else None
        m = self.piece(folder, config, make, amend=amend)
        if m is not None:
            m["overrides"] = over
            record = _load(folder / "provenance.json") or {}
            m["previous_hashes"] = [a["old_hash"] for a in record.get("amended", [])]
        return m

    # --- distillation
    def distill(self, spec: str, seed: int, teacher: dict, setting: tuple, tok: Path) -> dict | None:
        """The student ``spec`` (``student_spec``) of the refiner ``teacher`` at its sampler
        ``setting`` (name, overrides), trained on ``--distill-pairs`` of its samples. Charged:
        the teacher's training, the pairs and the student's training."""
        name, sample = setting
        a = self.args
        kind, calls, minutes, label = student_spec(spec, a.distill_minutes)
        budget = minutes * 60
        if self.weights.get("refiner") == "raw":
            sample = sample + ["sample.use_ema=false"]
        over = self.model_overrides("refiner", seed, tok) + sample + [
            f"distill.student={kind}", f"distill.calls={calls}", f"distill.pairs={a.distill_pairs}",
            "distill.val_pairs=1000", "train.ema_warmup=true", f"train.max_seconds={budget:.0f}",
            "train.lr_clock=true",
            # the students of one teacher setting share its pairs (keyed by what made them)
            f"distill.pairs_dir={self.out / f'pairs_s{seed}_{name}'}"]
        folder = self.out / f"{label}_s{seed}" / "train"
        config = {"piece": "distill", "overrides": self.hashed(over), "teacher": teacher["config_hash"]}
        ckpt = Path(teacher["piece"]) / "checkpoints" / "last.pt"

        def make():
            # the student's step costs about its teacher's (the same backbone); the clock decides
            sps = (_load(Path(teacher["piece"]) / "plan.json") or {}).get("seconds_per_step", 1.0)
            steps = max(1, int(2 * budget / sps))  # a cap: the clock ends the run (lr_clock)
            say(f"distil a {kind} student in {calls} call(s) from refiner {name}, seed {seed}: "
                f"{a.distill_pairs} pairs, {budget:.0f} s, planned {steps} steps")
            m = run(compose_config(over + ["task=distill", f"distill.teacher={ckpt}", f"train.steps={steps}",
                                           resume_override(folder)]), folder)
            teacher_s = teacher["train_seconds"] + teacher.get("tokenizer_seconds", 0.0)
            return {**m, "teacher_setting": name, "teacher_seconds": teacher_s,
                    "charged_seconds": teacher_s + m["pair_seconds"] + m["train_seconds"]}
        return self.piece(folder, config, make)

    # --- sample + evaluate
    def score(self, model: str, seed: int, trained: dict, split: str, name: str, sample: list[str],
              tok: Path | None, weights: str | None = None, samples: int | None = None) -> dict | None:
        """Sample and evaluate one setting; ``weights`` (default: the model's val choice) says
        whether the EMA or the raw weights of the checkpoint sample; ``samples`` (default
        ``--samples``) is for a row timed on fewer samples (its floor is at its own count)."""
        setting = sample  # without the weights choice: what tuning hands on
        if (weights or self.weights.get(model, "ema")) == "raw":
            name, sample = f"{name}_raw", sample + ["sample.use_ema=false"]
        n = samples or self.args.samples
        folder = self.out / f"{model}_s{seed}" / split / f"{name}_n{n}"
        over = self.model_overrides(model, seed, tok) + sample + [
            f"sample.num_samples={n}", f"domain.eval_split={split}", "sample.flops_samples=4"]
        config = {"piece": "score", "overrides": self.hashed(over), "model": trained["config_hash"]}
        ckpt = Path(trained["piece"]) / "checkpoints" / "last.pt"

        def evaluate():
            return run(compose_config(over + ["task=evaluate",
                                              f"samples_path={folder / 'sample' / 'samples.pt'}"]),
                       folder / "evaluate")

        def make():
            say(f"{model} s{seed} {split}: {name}")
            m = run(compose_config(over + ["task=sample", f"checkpoint={ckpt}"]), folder / "sample")
            m.update(evaluate())
            return m
        # a model re-keyed by an amendment is the same checkpoint: its scores follow it
        stored = (_load(folder / "provenance.json") or {}).get("config", {}).get("model")
        amend = ((("model",), f"the model piece was re-keyed from {stored}")
                 if stored in trained.get("previous_hashes", []) else None)
        m = self.piece(folder, config, make, rescore=evaluate, amend=amend)
        if m is None:
            return None
        return {"model": model, "seed": seed, "split": split, "setting": name, "sample": setting,
                "train_seconds": trained.get("charged_seconds",
                                             trained["train_seconds"] + trained.get("tokenizer_seconds", 0.0)),
                "train_steps": trained["train_steps"], "m": m}


def ceilings(b: Bench, seed: int, tok_piece) -> list[dict]:
    """Two rows no generator is trained for, scored against the test images like every sample
    set: ``--samples`` real validation images (what a perfect copy of the training distribution
    reaches at this sample count, beside the floor made of training images), and the tokenizer's
    reconstructions of the same images (the best any model over the tokenizer's codes can do)."""
    import torch as _torch

    from core.plugins import get_domain
    from domains.image.tokenizer import load_tokenizer

    tok_path, tok_m = tok_piece
    n = b.args.samples
    rows = []
    for name in ("real-val", "tokenizer-recon"):
        folder = b.out / f"tokenizer_s{seed}" / "test" / f"{name}_n{n}"
        over = b.base(seed) + ["domain.space=latent", f"domain.tokenizer_path={tok_path}", "domain.eval_split=test"]
        config = {"piece": "ceiling", "name": name, "overrides": b.hashed(over),
                  "tokenizer": tok_m["config_hash"] if name == "tokenizer-recon" else None}

        def evaluate(folder=folder, over=over):
            return run(compose_config(over + ["task=evaluate", f"samples_path={folder / 'samples.pt'}"]),
                       folder / "evaluate")

        def make(name=name, folder=folder, over=over, evaluate=evaluate):
            say(f"{name}, seed {seed}")
            cfg = compose_config(over)
            val = get_domain("image").c2f_load_data(cfg=cfg, split="val")
            x, cond = val.x[:n], val.cond[:n]
            if name == "tokenizer-recon":
                tok = load_tokenizer(tok_path).eval()
                with _torch.no_grad():
                    x = _torch.cat([tok.reconstruct(x[i:i + 250]) for i in range(0, len(x), 250)])
            path = folder / "samples.pt"
            folder.mkdir(parents=True, exist_ok=True)
            _torch.save({"samples": x, "cond": cond}, path)
            return {**evaluate(), "nfe": 0, "seconds_per_sample": 0.0, "samples": len(x)}
        m = b.piece(folder, config, make, rescore=evaluate)
        if m is not None:
            rows.append({"model": "tokenizer" if name == "tokenizer-recon" else "real", "seed": seed,
                         "split": "test", "setting": name, "sample": [],
                         "train_seconds": tok_m["train_seconds"] if name == "tokenizer-recon" else 0.0,
                         "train_steps": tok_m.get("steps", 0) if name == "tokenizer-recon" else 0, "m": m})
    return rows


def choose_weights(b: Bench, model: str, seed: int, trained: dict, name: str, sample: list[str],
                   tok: Path | None) -> str:
    """EMA or raw weights, whichever scores better on val at the model's shipped setting: a short
    run can end before a slow EMA has caught up with the weights it averages."""
    try:
        rows = {w: b.score(model, seed, trained, "val", name, sample, tok, weights=w) for w in ("ema", "raw")}
    except OutOfTime:
        return "ema"
    if not all(rows.values()):
        return "ema"
    b.weights[model] = min(rows, key=lambda w: rows[w]["m"]["fd"])
    say(f"{model}: sampling with the {b.weights[model]} weights (val FD "
        + ", ".join(f"{w} {r['m']['fd']:.3g}" for w, r in rows.items()) + ")")
    return b.weights[model]


# ---------------------------------------------------------------- sampler settings
def student_spec(spec: str, default_minutes: float) -> tuple[str, int, float, str]:
    """``noise-2`` or ``noise-2-20m`` -> (kind, calls, training minutes, label). The label names
    the student's folder and rows; a budget other than ``--distill-minutes`` is part of it."""
    parts = spec.split("-")
    if len(parts) not in (2, 3) or parts[0] not in ("noise", "skip") or not parts[1].isdigit() \
            or int(parts[1]) < 1 or (len(parts) == 3 and not parts[2].endswith("m")):
        raise ValueError(spec)
    minutes = float(parts[2][:-1]) if len(parts) == 3 else default_minutes
    label = f"student-{parts[0]}{parts[1]}" + (f"-{minutes:g}m" if len(parts) == 3 else "")
    return parts[0], int(parts[1]), minutes, label


def guidance(weight: float, schedule: str) -> list[str]:
    kind = "interval" if schedule.startswith("interval") else schedule
    over = [f"sample.guidance={weight}", f"sample.guidance_schedule={kind}"]
    if "interval" in SCHEDULES[schedule]:
        first, last = SCHEDULES[schedule]["interval"]
        over.append(f"sample.guidance_interval=[{first},{last}]")
    return over


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["m"]["fd"])


def tune_refiner(b: Bench, model: str, seed: int, trained: dict, tok: Path) -> dict:
    """Per guidance schedule: weight (T = 1, no rounds), then temperature, chosen on val."""
    chosen = {}
    schedules = SCHEDULES if model == "refiner" else {"constant": {}, "linear": {}}
    for schedule in schedules:
        rows = [b.score(model, seed, trained, "val", f"{schedule}_w{w:g}", guidance(w, schedule), tok)
                for w in b.args.weights]
        rows = [r for r in rows if r]
        if not rows:
            continue
        w = float(best(rows)["sample"][0].split("=")[1])
        temps = [b.score(model, seed, trained, "val", f"{schedule}_w{w:g}_T{t:g}",
                         guidance(w, schedule) + [f"sample.temperature={t}"], tok)
                 for t in b.args.temperatures if t != 1.0]
        pick = best(rows + [r for r in temps if r])
        chosen[schedule] = pick["sample"]
    return chosen


def rounds_setting(sample: list[str], r: int) -> list[str]:
    return sample + [f"sample.refine_rounds={r}"] if r else sample


# ---------------------------------------------------------------- report
def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{digits}g}"
    return str(v)


def row_record(r: dict) -> dict:
    m = r["m"]
    keys = ("nfe", "nfe_backbone", "guidance_doubles_batch", "flops_per_sample", "seconds_per_sample",
            "sample_batch_size", "fd", "floor_fd", "fd_over_floor", "kid", "floor_kid", "precision",
            "recall", "class_accuracy", "samples")
    return {"model": r["model"], "seed": r["seed"], "split": r["split"], "setting": r["setting"],
            "sample_overrides": r["sample"], **{k: m.get(k) for k in keys},
            "train_seconds": r["train_seconds"], "train_steps": r["train_steps"],
            "headline": r.get("headline", False), "provenance": m["provenance"], "piece": m["piece"],
            **({"teacher": r["teacher"], **{f"distill_{k}": r["distill"].get(k) for k in DISTILL_KEYS}}
               if r.get("distill") else {})}


DISTILL_KEYS = ("pairs", "pair_seconds", "train_seconds", "train_steps", "teacher_seconds", "charged_seconds",
                "agreement", "agreement/exact_samples", "agreement_ema", "agreement_ema/exact_samples",
                "val_loss", "val_loss_ema", "provenance")


def spread(rows: list[dict], key: str) -> str:
    values = [r["m"][key] for r in rows if r["m"].get(key) is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return _fmt(mean)
    return f"{_fmt(mean)} ({_fmt(min(values))}–{_fmt(max(values))})"


def plot(rows: list[dict], doc: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [r for r in rows if r["split"] == "test" and r["seed"] == rows[0]["seed"]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    colours = {"refiner": "tab:blue", "ddpm": "tab:green", "ar": "tab:red", "student-noise1": "tab:orange",
               "student-noise2": "darkorange", "student-skip3": "tab:brown"}
    xs = [("nfe", "network passes per sample (NFE)"), ("flops_per_sample", "FLOPs per sample"),
          ("seconds_per_sample", "seconds per sample (2 CPU cores)")]
    ys = [("fd_over_floor", "FD / real-vs-real floor"), ("kid", "KID (unbiased)")]
    groups = {}
    levels = [r for r in test if r["model"] in ("real", "tokenizer")]
    for r in test:
        if r in levels:
            continue
        key = (r["model"], r["setting"].split("_R")[0] if r["model"] != "ddpm" else "ddpm")
        groups.setdefault(key, []).append(r)
    for i, (ykey, ylabel) in enumerate(ys):
        for j, (xkey, xlabel) in enumerate(xs):
            ax = axes[i, j]
            for (model, label), points in sorted(groups.items()):
                points = sorted(points, key=lambda r: r["m"]["nfe"])
                px = [p["m"].get(xkey) for p in points]
                py = [p["m"].get(ykey) for p in points]
                style = "s" if model == "ar" else "D" if model.startswith("student") else "-o"
                shades = {"constant": "tab:blue", "linear": "tab:cyan", "interval-coarse": "tab:purple",
                          "interval-fine": "navy"}
                colour = (shades.get(label.replace("_raw", ""), colours[model]) if model == "refiner"
                          else colours.get(model, "tab:olive"))
                ax.plot(px, py, style, color=colour, ms=4, label=f"{model} {label}" if model != "ddpm" else model)
                if model == "ddpm":
                    for p, x, y in zip(points, px, py):
                        ax.annotate(p["setting"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            for r, style in zip(levels, (":", "--")):
                ax.axhline(r["m"][ykey], color="grey", ls=style, lw=1, label=r["setting"])
            ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
            if ykey == "fd_over_floor":
                ax.set_yscale("log")
                ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    fig.suptitle("MNIST test: quality against compute (refiner lines: rounds 0, 1, 2, 4 per guidance schedule)",
                 fontsize=9)
    fig.tight_layout()
    name = f"{doc.stem}_frontier.png"
    with atomic_path(doc.parent / name, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return name


def write_report(b: Bench, rows: list[dict], trained: dict, tokenizers: dict, pending: list[str],
                 elapsed: float):
    args = b.args
    doc = Path(args.doc)
    rows = [r for r in rows if r]
    test = [r for r in rows if r["split"] == "test"]
    first = args.seeds[0]
    image = plot(rows, doc) if any(r["seed"] == first for r in test) else None
    floor = next((r["m"] for r in test), {})
    lines = ["# MNIST: quality against compute, on equal terms", "",
             f"Command: `python benchmarks/mnist.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} torch threads, CPU only. This invocation: "
             f"{elapsed / 60:.1f} minutes (finished pieces of earlier ones are reused).", "",
             f"Protocol (see the docstring of `benchmarks/mnist.py`): {args.budget_minutes:g} minutes of "
             "training per model, the tokenizer's time charged to the latent models; EMA "
             f"{args.ema} for all, and each model samples with its EMA or its raw weights, "
             "whichever scores better on validation at its shipped setting (`_raw` in a setting "
             f"name: the raw weights); settings chosen on a validation split of {VAL_SIZE} MNIST training "
             f"images; {args.samples} samples per row, scored against the MNIST test images (the "
             f"floor: {args.samples} real training images, FD {_fmt(floor.get('floor_fd'))}, KID "
             f"{_fmt(floor.get('floor_kid'))}). NFE counts every network pass per sample; under "
             "guidance one pass carries both halves of the batch (`2x` in the table), which FLOPs "
             "count. Seconds per sample are wall time of the sampling loop at the batch size shown. "
             "Two rows are no generator: `real-val` is as many real validation images (what a perfect "
             "model of the training distribution reaches at this sample count), `tokenizer-recon` "
             "the tokenizer's reconstructions of them (the best any model over its codes can reach); "
             "the plot draws them as grey lines.", ""]
    heads = [r for r in test if r.get("headline")]
    if heads:
        lines += ["## Headline rows", "", "Mean (range) over training seeds "
                  f"{', '.join(map(str, sorted({r['seed'] for r in heads})))}.", "",
                  "| row | setting | NFE | seeds | FD / floor | KID | precision | recall | class acc. | s / sample |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by = {}
        for r in heads:
            by.setdefault((r["model"], r["setting"]), []).append(r)
        for (model, setting), group in by.items():
            lines.append(f"| {model} | {setting} | {group[0]['m']['nfe']:.0f} | {len(group)} | "
                         f"{spread(group, 'fd_over_floor')} | {spread(group, 'kid')} | "
                         f"{spread(group, 'precision')} | {spread(group, 'recall')} | "
                         f"{spread(group, 'class_accuracy')} | {spread(group, 'seconds_per_sample')} |")
        lines.append("")
    lines += ["## Frontier (test, seed " + str(first) + ")", "",
              "| model | setting | NFE | guided | GFLOPs / sample | s / sample | FD | FD / floor | KID | "
              "precision | recall | class acc. | samples | train s | steps | piece |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted([r for r in test if r["seed"] == first], key=lambda r: (r["model"], r["m"]["nfe"])):
        m = r["m"]
        flops = m.get("flops_per_sample")
        lines.append(
            f"| {r['model']} | {r['setting']} | {m['nfe']:.0f} | "
            f"{'2x' if m.get('guidance_doubles_batch') else '1x'} | "
            f"{_fmt(flops / 1e9 if flops else None)} | {m['seconds_per_sample']:.4f} | {_fmt(m['fd'])} | "
            f"{_fmt(m.get('fd_over_floor'))} | {_fmt(m.get('kid'))} | {_fmt(m['precision'])} | "
            f"{_fmt(m['recall'])} | {_fmt(m.get('class_accuracy'))} | {m['samples']:.0f} | "
            f"{r['train_seconds']:.0f} | {r['train_steps']:.0f} | {m['provenance']} |")
    lines.append("")
    students = [r for r in test if r.get("distill") and r["seed"] == first]
    if students:
        lines += ["## Distillation (test, seed " + str(first) + ")", "",
                  "Each student is trained on its teacher's samples at the teacher setting named (guidance and "
                  "temperature distilled: the student samples unguided, one pass per call); `noise` students "
                  "read the teacher's sampling noise and take the argmax, `skip` students draw each group of "
                  "scales. Teacher time counts the teacher's own training and tokenizer; the pairs are the "
                  "teacher's sampling time; agreement is the share of held-out teacher tokens a noise student "
                  "reproduces from their noise.", "",
                  "| student | teacher setting | NFE | FD | teacher FD | FD / teacher FD | FD / floor | KID | "
                  "s / sample | pairs | pairs s | student train s | teacher train s | agreement | exact samples |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in students:
            m, d = r["m"], r["distill"]
            teacher = next((t for t in test if t["model"] == "refiner" and t["seed"] == first
                            and t["setting"].split("_raw")[0] == r["teacher"]), None)
            tfd = teacher["m"]["fd"] if teacher else None
            agree = "agreement" if r["setting"].endswith("_raw") else "agreement_ema"  # of the weights that sampled
            lines.append(f"| {r['model']} | {r['teacher']}{'' if teacher is None else ' (' + teacher['setting'] + ')'} | "
                         f"{m['nfe']:.0f} | {_fmt(m['fd'])} | {_fmt(tfd)} | "
                         f"{_fmt(m['fd'] / tfd if tfd else None)} | {_fmt(m.get('fd_over_floor'))} | "
                         f"{_fmt(m.get('kid'))} | {m['seconds_per_sample']:.4f} | {d.get('pairs', 0):.0f} | "
                         f"{d.get('pair_seconds', 0):.0f} | {d.get('train_seconds', 0):.0f} | "
                         f"{d.get('teacher_seconds', 0):.0f} | {_fmt(d.get(agree))} | "
                         f"{_fmt(d.get(agree + '/exact_samples'))} |")
        lines.append("")
    val = [r for r in rows if r["split"] == "val" and r["seed"] == first]
    if val:
        lines += ["## Validation sweeps (seed " + str(first) + ")", "",
                  "| model | setting | NFE | FD / floor | KID | class acc. |", "|---|---|---|---|---|---|"]
        for r in sorted(val, key=lambda r: (r["model"], r["setting"])):
            m = r["m"]
            lines.append(f"| {r['model']} | {r['setting']} | {m['nfe']:.0f} | {_fmt(m.get('fd_over_floor'))} | "
                         f"{_fmt(m.get('kid'))} | {_fmt(m.get('class_accuracy'))} |")
        lines.append("")
    lines += ["## Training", "", "| model | seed | train s (incl. tokenizer) | tokenizer s | steps | "
              "planned | stopped by the clock | final loss |", "|---|---|---|---|---|---|---|---|"]
    for (model, seed), m in sorted(trained.items()):
        if m:
            lines.append(f"| {model} | {seed} | {m['train_seconds'] + m.get('tokenizer_seconds', 0):.0f} | "
                         f"{m.get('tokenizer_seconds', 0):.0f} | {m['train_steps']:.0f} | "
                         f"{m.get('planned_steps', 0):.0f} | {'yes' if m.get('stopped_by_time') else 'no'} | "
                         f"{_fmt(m.get('final_loss'))} |")
    lines.append("")
    if pending:
        lines += ["## Not yet run", "", "These pieces were not finished when this report was written; "
                  "the same command continues with them:", ""] + [f"- {p}" for p in pending] + [""]
    if image:
        lines.append(f"![{image}]({image})")
    with atomic_path(doc) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    twin = {"command": f"python benchmarks/mnist.py {' '.join(sys.argv[1:])}",
            "protocol": {"budget_minutes": args.budget_minutes, "ema": args.ema, "val_size": VAL_SIZE,
                         "samples": args.samples, "seeds": args.seeds},
            "rows": [row_record(r) for r in rows], "pending": pending}
    write_json_atomic(twin, doc.with_suffix(".json"))
    say(f"wrote {doc} ({len(rows)} rows, {len(pending)} pending)")


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=25.0, help="training time per model")
    ap.add_argument("--models", nargs="+", default=["refiner", "ddpm", "ar"], choices=["refiner", "ddpm", "ar"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=1000, help="samples per row (val and test)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0, 4.0],
                    help="guidance weights tried on val for the refiner and the AR")
    ap.add_argument("--ddpm-weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0],
                    help="guidance weights tried on val for the DDPM (w = 0: unguided, half the FLOPs)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.9, 0.8])
    ap.add_argument("--headline-nfe", type=int, default=12)
    ap.add_argument("--ddim-steps", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    ap.add_argument("--ancestral-steps", type=int, default=1000, help="steps of the ancestral DDPM row")
    ap.add_argument("--ancestral-samples", type=int, default=None,
                    help="samples of the ancestral row (default --samples; fewer: timed, FD noisier)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--tokenizer-steps", type=int, default=2000)
    ap.add_argument("--students", nargs="*", default=["noise-1", "noise-2", "skip-3"],
                    help="few-call students of the refiner: <noise|skip>-<calls>[-<minutes>m]")
    ap.add_argument("--distill-minutes", type=float, default=10.0, help="training time per student")
    ap.add_argument("--distill-pairs", type=int, default=20000, help="teacher samples per student")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new piece after this long")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from finished pieces")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_mnist_frontier"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "mnist.md"))
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every model")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    for spec in args.students:
        try:
            student_spec(spec, args.distill_minutes)
        except ValueError:
            ap.error(f"--students {spec}: write <noise|skip>-<calls>[-<minutes>m], e.g. noise-1 noise-2 "
                     "skip-3 noise-1-20m")
    shared = (REPO.parent / "shared").resolve()
    for path in (args.out, args.doc):
        if Path(path).resolve().is_relative_to(shared):
            ap.error(f"{path} is inside {shared}, which is read-only for benchmarks")
    b = Bench(args)
    start = time.time()
    rows, trained, tokenizers, pending = [], {}, {}, []
    first = args.seeds[0]
    latent = [m for m in args.models if m != "ddpm"]

    def report():
        write_report(b, rows, trained, tokenizers, pending, time.time() - start)

    def attempt(label, fn, *a, **kw):
        try:
            out = fn(*a, **kw)
        except OutOfTime:
            out = None
        if out is None:
            pending.append(label)
        return out

    def headline_rows(model, seed, chosen_refiner):
        out = []
        tok = tokenizers.get(seed, (None, None))[0]
        t = trained.get((model, seed))
        if not t:
            return out
        if model == "refiner" and chosen_refiner:
            name, sample = chosen_refiner
            out.append(attempt(f"refiner s{seed} test {name}", b.score, model, seed, t, "test", name, sample, tok))
        if model == "ddpm" and ddpm_weight is not None:
            # DDPM-1000 costs hours: the first seed only
            for steps in [s for s in args.ddim_steps if s <= args.headline_nfe * 2]:
                name = f"ddim-{steps}"
                sample = ["domain.ddpm.sampler=ddim", f"domain.ddpm.steps={steps}",
                          f"sample.guidance={ddpm_weight}", "sample.guidance_schedule=constant"]
                out.append(attempt(f"ddpm s{seed} test {name}", b.score, model, seed, t, "test", name, sample, tok))
        for r in out:
            if r:
                r["headline"] = True
        return [r for r in out if r]

    # 1. first seed: tokenizer, models
    if latent:
        tok = attempt(f"tokenizer s{first}", b.tokenizer, first)
        if tok:
            tokenizers[first] = tok
    if first in tokenizers:
        rows += attempt(f"ceilings s{first}", ceilings, b, first, tokenizers[first]) or []
    for model in args.models:
        trained[(model, first)] = attempt(f"train {model} s{first}", b.train, model, first, tokenizers.get(first))
    report()

    # 2. the refiner: tune on val, frontier on test
    chosen_refiner = chosen_plain = None
    t = trained.get(("refiner", first))
    if t:
        tok = tokenizers[first][0]
        rows += [attempt(f"refiner val linear_w2 {w}", b.score, "refiner", first, t, "val", "linear_w2",
                         guidance(2.0, "linear"), tok, weights=w) for w in ("ema", "raw")]
        choose_weights(b, "refiner", first, t, "linear_w2", guidance(2.0, "linear"), tok)
        chosen = attempt("refiner val tuning", tune_refiner, b, "refiner", first, t, tok) or {}
        candidates, plain = [], []
        for schedule, sample in chosen.items():
            for r in ROUNDS:
                name = f"{schedule}_R{r}"
                v = attempt(f"refiner val {name}", b.score, "refiner", first, t, "val", name,
                            rounds_setting(sample, r), tok)
                test_row = attempt(f"refiner test {name}", b.score, "refiner", first, t, "test", name,
                                   rounds_setting(sample, r), tok)
                if v and test_row and v["m"]["nfe"] <= args.headline_nfe:
                    candidates.append((v["m"]["fd"], len(candidates), name, rounds_setting(sample, r), test_row))
                if v and test_row and r == 0:
                    plain.append((v["m"]["fd"], len(plain), name, sample, test_row))
                rows += [v, test_row]
        if candidates:
            _, _, name, sample, test_row = min(candidates)
            chosen_refiner = (name, sample)
            test_row["headline"] = True
        if plain:  # the teacher of the noise students: the val-best setting without refinement
            _, _, name, sample, test_row = min(plain)
            chosen_plain = (name, sample, test_row)
        report()

    # 3. the DDPM: guidance weight on val with DDIM-10, then DDIM and DDPM-1000 on test
    ddpm_weight = None
    t = trained.get(("ddpm", first))
    if t:
        ddim10 = ["domain.ddpm.sampler=ddim", "domain.ddpm.steps=10"]
        rows += [attempt(f"ddpm val ddim-10_w2 {w}", b.score, "ddpm", first, t, "val", "ddim-10_w2",
                         ddim10 + ["sample.guidance=2.0", "sample.guidance_schedule=constant"], None,
                         weights=w) for w in ("ema", "raw")]
        choose_weights(b, "ddpm", first, t, "ddim-10_w2", ddim10 + ["sample.guidance=2.0",
                       "sample.guidance_schedule=constant"], None)
        val = [attempt(f"ddpm val ddim-10 w{w:g}", b.score, "ddpm", first, t, "val", f"ddim-10_w{w:g}",
                       ["domain.ddpm.sampler=ddim", "domain.ddpm.steps=10", f"sample.guidance={w}",
                        "sample.guidance_schedule=constant"], None) for w in args.ddpm_weights]
        rows.extend(val)
        val = [v for v in val if v]
        if len(val) == len(args.ddpm_weights):
            ddpm_weight = float(best(val)["sample"][2].split("=")[1])
            for steps in args.ddim_steps:
                r = attempt(f"ddpm test ddim-{steps}", b.score, "ddpm", first, t, "test", f"ddim-{steps}",
                            ["domain.ddpm.sampler=ddim", f"domain.ddpm.steps={steps}",
                             f"sample.guidance={ddpm_weight}", "sample.guidance_schedule=constant"], None)
                if r and steps <= args.headline_nfe * 2:
                    r["headline"] = True
                rows.append(r)
                report()
        report()

    # 3b. few-call students of the refiner, all of its val-best setting without refinement
    # (refinement rounds draw from streams a noise student does not read); each scored on val (EMA
    # or raw weights) and once on test
    t = trained.get(("refiner", first))
    if t and args.students:
        tok = tokenizers[first][0]
        for spec in args.students:
            setting = chosen_plain  # one teacher row for all students: their pairs are shared
            if setting is None:
                continue
            teacher_name, teacher_sample, teacher_row = setting
            student = attempt(f"distil {spec}", b.distill, spec, first, t, (teacher_name, teacher_sample), tok)
            if not student:
                continue
            model = student_spec(spec, args.distill_minutes)[3]
            name = f"of_{teacher_name}"
            choose_weights(b, model, first, student, name, [], tok)
            v = attempt(f"{model} val", b.score, model, first, student, "val", name, [], tok)
            r = attempt(f"{model} test", b.score, model, first, student, "test", name, [], tok)
            if r:
                r["headline"] = True
                r["teacher"] = teacher_name
                r["distill"] = student
            rows += [v, r]
            report()

    # 4. the AR over the refiner's codes
    t = trained.get(("ar", first))
    if t:
        tok = tokenizers[first][0]
        rows += [attempt(f"ar val linear_w2 {w}", b.score, "ar", first, t, "val", "linear_w2",
                         guidance(2.0, "linear"), tok, weights=w) for w in ("ema", "raw")]
        choose_weights(b, "ar", first, t, "linear_w2", guidance(2.0, "linear"), tok)
        chosen = attempt("ar val tuning", tune_refiner, b, "ar", first, t, tok) or {}
        for schedule, sample in chosen.items():
            rows.append(attempt(f"ar test {schedule}", b.score, "ar", first, t, "test", schedule, sample, tok))
        report()

    # 5. the ancestral DDPM last: its 1000 steps cost as much as everything else together
    t = trained.get(("ddpm", first))
    if t and ddpm_weight is not None:
        n = args.ancestral_steps
        count = args.ancestral_samples or args.samples
        r = attempt(f"ddpm test ddpm-{n}", b.score, "ddpm", first, t, "test", f"ddpm-{n}",
                    ["domain.ddpm.sampler=ddpm", f"domain.ddpm.steps={n}",
                     f"sample.guidance={ddpm_weight}", "sample.guidance_schedule=constant"], None,
                    samples=count)
        if r:
            # on fewer samples it is a timing row: its FD is against a floor at its own count
            r["headline"] = count == args.samples
        rows.append(r)
        report()

    # 6. further seeds: retrain, score the headline settings
    for seed in args.seeds[1:]:
        if latent:
            tok = attempt(f"tokenizer s{seed}", b.tokenizer, seed)
            if tok:
                tokenizers[seed] = tok
        for model in [m for m in args.models if m != "ar"]:
            trained[(model, seed)] = attempt(f"train {model} s{seed}", b.train, model, seed, tokenizers.get(seed))
            rows.extend(headline_rows(model, seed, chosen_refiner))
        report()
    report()


if __name__ == "__main__":
    from core.provenance import StalePieceError
    try:
        main()
    except StalePieceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
