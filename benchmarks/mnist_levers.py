"""MNIST ablation: the three levers of the refiner, the DDPM and AR baselines, and noise shifts.

    python benchmarks/mnist_levers.py --budget-minutes 240 [--samples 1000] [--steps N] [--runs NAME ...]

(The quality-versus-compute frontier under the fair protocol is ``benchmarks/mnist.py``.)

What runs, all class-conditional on the same data, trainer, sampler settings and metrics (the image
domain's ``c2f_evaluate``: Fréchet distance on the in-project LeNet, precision/recall, class
accuracy, and the same metrics for real training images, the floor):

* the refiner grid: space (latent vs pixel) x target (index, bits, continuous), and the frequency
  partition: fewer / more scales and full-state (Gaussian) instead of residual (Laplacian) targets;
* the baselines: one pixel DDPM sampled by ancestral DDPM with 1000 steps and DDIM with 50 and 10,
  and a next-token AR over the latent refiner's codes;
* noise-shift curves: the latent and the pixel refiner sampled with Gaussian noise of relative
  size sigma added to the state after one or two scales.

Budget: ``--budget-minutes`` is the training time, split equally across the training runs; each
run's number of steps comes from timing a few steps of its model (``--steps`` fixes it instead).
Tokenizers, sampling and evaluation come on top and are reported. Every finished piece leaves a
``metrics.json`` and is reused when the command runs again (a killed training resumes from its
checkpoint), so the command can be interrupted and restarted. Writes ``--doc`` (a table of every
setting and baseline, the machine and the command) and its plots next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.build import seconds_per_step  # noqa: E402
from core.run import compose_config, run  # noqa: E402
from core.train import resume_override  # noqa: E402

LATENT_SCALES = {"default": [1, 2, 3, 4, 5, 7], "fewer": [1, 3, 5, 7], "more": [1, 2, 3, 4, 5, 6, 7]}
PIXEL_SCALES = {"default": [1, 2, 4, 7, 14, 28], "fewer": [1, 4, 14, 28],
                "more": [1, 2, 3, 4, 6, 8, 11, 14, 20, 28]}
DDPM_SAMPLERS = [("ddpm-1000", "ddpm", 1000), ("ddim-50", "ddim", 50), ("ddim-10", "ddim", 10)]


@dataclass
class Setting:
    name: str
    space: str              # latent | pixel (the DDPM: pixel)
    target: str = "index"
    scales: str = "default"
    state: str = "residual"
    kind: str = "refiner"   # refiner | ddpm | ar
    overrides: list = field(default_factory=list)

    @property
    def scale_list(self) -> list[int]:
        return (LATENT_SCALES if self.space == "latent" else PIXEL_SCALES)[self.scales]


def grid() -> list[Setting]:
    out = []
    for space in ("latent", "pixel"):
        for target in ("index", "bits", "continuous"):
            out.append(Setting(f"{space}-{target}", space, target=target))
        out.append(Setting(f"{space}-full", space, state="full"))
        for scales in ("fewer", "more"):
            out.append(Setting(f"{space}-{scales}", space, scales=scales))
    # constant guidance for the DDPM: a ramp from 0 at pure noise would leave the class to chance
    out.append(Setting("ddpm", "pixel", kind="ddpm", overrides=["domain.baseline=ddpm",
                                                                 "sample.guidance_schedule=constant"]))
    out.append(Setting("ar", "latent", kind="ar", overrides=["domain.baseline=ar"]))
    return out


TOKENIZER_CODES = 64


def overrides(s: Setting, args, tokenizers: dict) -> list[str]:
    over = ["domain=image", f"domain.data_dir={args.data_dir}", f"seed={args.seed}",
            f"progress={str(not args.quiet).lower()}", f"domain.space={s.space}",
            f"model.target={s.target}", f"model.target_state={s.state}",
            f"domain.tokenizer.train.steps={args.tokenizer_steps}",
            # the ablation's codebook, pinned: its pieces are reused by folder (no config hash),
            # and the image domain's default has since become 256 codes
            f"domain.tokenizer.num_codes={TOKENIZER_CODES}"]
    if args.limit:
        over.append(f"domain.limit={args.limit}")
    scales = "[" + ",".join(map(str, s.scale_list)) + "]"
    if s.space == "latent":
        over += [f"domain.tokenizer.scales={scales}", f"domain.tokenizer_path={tokenizers[s.scales]}"]
    else:
        over.append(f"domain.pixel_scales={scales}")
    return over + s.overrides + list(args.override)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def say(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- the pieces of work
def train_tokenizer(scales: str, args) -> tuple[Path, dict]:
    folder = Path(args.out) / "tokenizers" / scales
    done = _load(folder / "metrics.json")
    if done is None:
        say(f"tokenizer for latent scales {LATENT_SCALES[scales]} ({args.tokenizer_steps} steps)")
        s = Setting("tok", "latent", scales=scales)
        over = overrides(s, args, {scales: "null"}) + ["task=train_tokenizer"]
        done = run(compose_config(over), folder)
    return folder / "tokenizer.pt", done


def train(s: Setting, over: list[str], share_seconds: float, args) -> dict:
    folder = Path(args.out) / s.name / "train"
    done = _load(folder / "metrics.json")
    if done is not None:
        return done
    plan = _load(folder / "plan.json")  # a restarted benchmark keeps its step counts
    if plan is None:
        if args.steps:
            plan = {"steps": args.steps, "seconds_per_step": None}
        else:
            sps = seconds_per_step(compose_config(over))
            plan = {"steps": max(1, int(share_seconds / sps)), "seconds_per_step": sps}
        write_json_atomic(plan, folder / "plan.json")
    est = ""
    if plan["seconds_per_step"]:
        est = f", about {plan['steps'] * plan['seconds_per_step'] / 60:.1f} min"
    say(f"train {s.name}: {plan['steps']} steps{est}")
    return run(compose_config(over + ["task=train", f"train.steps={plan['steps']}", resume_override(folder)]),
               folder)


def sample_and_evaluate(label: str, over: list[str], checkpoint: Path, folder: Path) -> dict:
    done = _load(folder / "metrics.json")
    if done is not None:
        return done
    say(f"sample + evaluate {label}")
    metrics = run(compose_config(over + ["task=sample", f"checkpoint={checkpoint}"]), folder / "sample")
    metrics.update(run(compose_config(over + ["task=evaluate",
                                              f"samples_path={folder / 'sample' / 'samples.pt'}"]),
                       folder / "evaluate"))
    write_json_atomic(metrics, folder / "metrics.json")
    return metrics


# ---------------------------------------------------------------- report
def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{digits}g}"
    return str(v)


def pixel_band_errors(args, scales: list[int], n: int = 1000) -> list[float]:
    """Image MSE of the pixel pyramid (the pixel refiner's scalar quantiser) decoded from its first
    k bands: the data-space counterpart of the tokenizer's reconstruction-by-band."""
    from core.grid import GridOps
    from core.pyramid import ResidualPyramid
    from core.quantizers import ScalarQuantizer
    from domains.image.data import mnist_tensor_data

    cfg = compose_config(["domain=image"])
    x = mnist_tensor_data(args.data_dir, "train", n).x
    q = ScalarQuantizer(1, cfg.model.num_codes, cfg.model.quant_lo, cfg.model.quant_hi)
    pyramid = ResidualPyramid(GridOps(scales, up_mode=cfg.domain.up_mode), q, cfg.model.variant)
    codes = pyramid.encode(x).codes
    return [float((pyramid.decode(codes, upto=k) - x).pow(2).mean()) for k in range(1, len(scales) + 1)]


def plots(rows, shift_rows, tokenizers, args, doc: Path) -> list[str]:
    """The figures, written next to ``doc`` and named after it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        with atomic_path(doc.parent / name, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
        written.append(name)

    # quality against network calls
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {"latent": "tab:blue", "pixel": "tab:orange", "ddpm": "tab:green", "ar": "tab:red"}
    ddpm = sorted((r for r in rows if r["kind"] == "ddpm"), key=lambda r: r["m"]["nfe"])
    if ddpm:
        ax.plot([r["m"]["nfe"] for r in ddpm], [r["m"].get("fd_over_floor", r["m"]["fd"]) for r in ddpm],
                "-o", color=colours["ddpm"], label="DDPM / DDIM")
    for r in rows:
        m = r["m"]
        colour = colours["ddpm" if r["kind"] == "ddpm" else "ar" if r["kind"] == "ar" else r["space"]]
        if r["kind"] != "ddpm":
            ax.scatter(m["nfe"], m.get("fd_over_floor", m["fd"]), color=colour, s=25)
        ax.annotate(r["name"], (m["nfe"], m.get("fd_over_floor", m["fd"])), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    for key, label in (("latent", "refiner, latent"), ("pixel", "refiner, pixel"), ("ar", "AR over codes")):
        ax.scatter([], [], color=colours[key], label=label)
    ax.set(xscale="log", yscale="log", xlabel="network calls per sample (NFE)",
           ylabel="FD / real-data floor", title="MNIST: quality against network calls")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, f"{doc.stem}_quality_vs_nfe.png")

    # reconstruction error against bands
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for scales, (_, m) in tokenizers.items():
        sizes = LATENT_SCALES[scales]
        bands = [m[f"recon_mse/bands{k}"] for k in range(1, len(sizes) + 1)]
        ax.plot(torch.tensor(sizes).pow(2).cumsum(0).tolist(), bands, "-o", color="tab:blue",
                alpha=1.0 if scales == "default" else 0.5, label=f"latent (tokenizer) {sizes}")
    for scales in ("default", "fewer", "more"):
        sizes = PIXEL_SCALES[scales]
        ax.plot(torch.tensor(sizes).pow(2).cumsum(0).tolist(), pixel_band_errors(args, sizes), "-s",
                color="tab:orange", alpha=1.0 if scales == "default" else 0.5, label=f"pixel {sizes}")
    ax.set(xscale="log", yscale="log", xlabel="tokens used (first k bands)",
           ylabel="image MSE of the reconstruction", title="Reconstruction error by band")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, f"{doc.stem}_bands.png")

    # sample grids
    shown = [r for r in rows if r["name"] in ("latent-index", "pixel-index", "ddpm-1000", "ddim-50", "ar")]
    if shown:
        loaded = [torch.load(r["samples"], weights_only=True) for r in shown]
        per = min(4, min(int((s["cond"] == c).sum()) for s in loaded for c in range(10)))
        fig, axes = plt.subplots(1, len(shown), figsize=(2.8 * len(shown), 0.28 * per + 0.5), squeeze=False)
        for ax, r, saved in zip(axes[0], shown, loaded):
            x, cond = saved["samples"], saved["cond"]
            tiles = torch.ones(per, 10, 30, 30)
            for c in range(10):
                tiles[:, c, 1:29, 1:29] = x[cond == c][:per, 0].clamp(-1, 1) * 0.5 + 0.5
            ax.imshow(tiles.permute(0, 2, 1, 3).reshape(per * 30, 300).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_title(r["name"], fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        save(fig, f"{doc.stem}_samples.png")

    # noise shift
    if shift_rows:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for (space, k), points in sorted(shift_rows.items()):
            points = sorted(points)
            style = "-o" if k == min(kk for _, kk in shift_rows) else "--s"
            for ax, key in zip(axes, ("fd_over_floor", "class_accuracy")):
                ax.plot([p[0] for p in points], [p[1].get(key, float("nan")) for p in points], style,
                        color=colours[space], label=f"{space}, after scale {k}")
        axes[0].set(yscale="log", xlabel="shift sigma (x clean-state std)", ylabel="FD / floor",
                    title="Noise shift: quality")
        axes[1].set(xlabel="shift sigma (x clean-state std)", ylabel="class accuracy",
                    title="Noise shift: class accuracy")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"{doc.stem}_noise_shift.png")
    return written


def write_doc(rows, shift_rows, tokenizers, args, total_seconds: float):
    doc = Path(args.doc)
    images = plots(rows, shift_rows, tokenizers, args, doc)
    floor = next((r["m"] for r in rows if "floor_fd" in r["m"] and r["m"]["samples"] == args.samples), {})
    lines = ["# MNIST: levers of the refiner, baselines, noise shift", "",
             f"Command: `python benchmarks/mnist_levers.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, CPU only. "
             f"Training budget: {args.budget_minutes:g} minutes split equally across the training "
             f"runs{' (overridden: ' + str(args.steps) + ' steps each)' if args.steps else ''}; this "
             f"invocation took {total_seconds / 60:.1f} minutes (finished pieces of earlier ones "
             "are reused).", "",
             "Samples per setting as in the table, classes cycling 0-9, scored against the MNIST "
             "test images: Fréchet distance (FD) on the in-project LeNet's 128-d features, "
             "improved precision/recall (k = 3), class accuracy of the LeNet on the requested "
             "class. FD / floor divides by the FD of as many real training images (the floor; "
             f"for {args.samples} images: FD {_fmt(floor.get('floor_fd'))}, "
             f"precision {_fmt(floor.get('floor_precision'))}, "
             f"recall {_fmt(floor.get('floor_recall'))}, class accuracy "
             f"{_fmt(floor.get('floor_class_accuracy'))}); FD / floor = 1 is as good as real data "
             "at that sample size.", "",
             "| setting | space | target | scales | state | samples | FD | FD / floor | precision | "
             "recall | class acc. | NFE | s / sample | train steps | train s | parameters |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["m"]
        scales = "-".join(map(str, r["scales"])) if r["scales"] else "-"
        lines.append(
            f"| {r['name']} | {r['space']} | {r['target']} | {scales} | {r['state']} | {m['samples']:.0f} | "
            f"{_fmt(m['fd'])} | "
            f"{_fmt(m.get('fd_over_floor'))} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | "
            f"{_fmt(m.get('class_accuracy'))} | {m['nfe']:.0f} | {m['seconds_per_sample']:.4f} | "
            f"{m.get('train_steps', 0):.0f} | {m.get('train_seconds', 0):.0f} | "
            f"{m.get('parameters', 0):.0f} |")
    lines += ["", f"Settings: `space` latent = the VQ tokenizer's 7x7 latent ({TOKENIZER_CODES} codes, shared by all "
              "scales), pixel = the pyramid on the pixels (64 uniform levels in [-2, 2]); `target` "
              "index = softmax over the codes, bits = one sigmoid per bit of the index, continuous = "
              "regression of the de-quantised band (the same codes' values); `scales` = grid sizes "
              "coarse to fine; `state` residual = Laplacian bands, full = each scale codes the whole "
              "level. Baselines: a pixel DDPM (UNet, linear betas, 1000 steps, epsilon prediction; "
              "ancestral DDPM with 1000 steps, deterministic DDIM with 50 and 10; constant guidance), "
              "and a next-token transformer over the latent refiner's codes (the refiner's blocks and "
              "sizes, key/value cache). All class-conditional with classifier-free guidance "
              "(w = 2; linear ramp over scales / tokens for the refiner and the AR).", "",
              "NFE counts network calls per sample; under guidance one call carries the conditional "
              "and the null-label batch together, for every model alike. Seconds per sample are wall "
              "time of the sampling loop at the configured batch size on the machine above.", ""]
    if tokenizers:
        lines += ["Tokenizers (trained once per scale set, shared by the latent runs and the AR; "
                  "their training time is not in the train column):", "",
                  "| latent scales | steps | train s | reconstruction MSE |", "|---|---|---|---|"]
        for scales, (_, m) in tokenizers.items():
            lines.append(f"| {'-'.join(map(str, LATENT_SCALES[scales]))} | {m.get('steps', 0):.0f} | "
                         f"{m.get('train_seconds', 0):.0f} | {_fmt(m.get('recon_mse'))} |")
        lines.append("")
    if shift_rows:
        sigmas = sorted({p[0] for points in shift_rows.values() for p in points})
        lines += ["## Noise shift", "",
                  "Gaussian noise of sigma times the per-channel standard deviation of clean states "
                  "(teacher-forced training images), drawn on scale k's grid (0 = the coarsest) and "
                  "added to the state after that scale; sampling goes on from there with the token "
                  "draws of the unshifted run. "
                  f"FD / floor ({args.shift_samples} samples):", "",
                  "| space | after scale | " + " | ".join(f"sigma {s:g}" for s in sigmas) + " |",
                  "|---|---|" + "---|" * len(sigmas)]
        for (space, k), points in sorted(shift_rows.items()):
            by_sigma = {p[0]: p[1] for p in points}
            cells = [_fmt(by_sigma[s].get("fd_over_floor")) if s in by_sigma else "-" for s in sigmas]
            lines.append(f"| {space} | {k} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{name}]({name})" for name in images]
    with atomic_path(doc) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    say(f"wrote {doc} and {len(images)} plots")


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=240.0,
                    help="training time, split equally across the training runs")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (instead of the budget)")
    ap.add_argument("--tokenizer-steps", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=1000, help="samples per setting")
    ap.add_argument("--ddpm1000-samples", type=int, default=None,
                    help="samples for DDPM-1000 only, the costliest row (default: --samples)")
    ap.add_argument("--shift-samples", type=int, default=None, help="samples per noise-shift point")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.5, 1.0])
    ap.add_argument("--shift-scales", type=int, nargs="+", default=[1, 3],
                    help="scales after which to shift (0 = coarsest)")
    ap.add_argument("--runs", nargs="+", default=None,
                    help="only these training runs (setting names; ddpm covers its three samplers)")
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_mnist_ablation"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "mnist_ablation.md"))
    ap.add_argument("--cache", default=None, help="cache folder for the judge (default: $C2F_CACHE)")
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every run")
    ap.add_argument("--quiet", action="store_true", help="no progress bars inside the runs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.shift_samples = args.shift_samples or args.samples
    args.ddpm1000_samples = args.ddpm1000_samples or args.samples
    shared = (REPO.parent / "shared").resolve()
    for path in (args.out, args.doc, args.cache):
        if path and Path(path).resolve().is_relative_to(shared):
            ap.error(f"{path} is inside {shared}, which is read-only for benchmarks")
    if args.cache:
        os.environ["C2F_CACHE"] = str(Path(args.cache).resolve())
    start = time.time()

    settings = [s for s in grid() if args.runs is None or s.name in args.runs]
    if not settings:
        ap.error(f"no setting matches --runs; choose from {', '.join(s.name for s in grid())}")
    tokenizers = {}
    for scales in dict.fromkeys(s.scales for s in settings if s.space == "latent"):
        tokenizers[scales] = train_tokenizer(scales, args)
    paths = {k: v[0] for k, v in tokenizers.items()}

    share = args.budget_minutes * 60 / len(settings)
    say(f"{len(settings)} training runs, {share / 60:.1f} min each" if not args.steps else
        f"{len(settings)} training runs, {args.steps} steps each")
    rows = []
    for i, s in enumerate(settings, 1):
        say(f"({i}/{len(settings)}) {s.name}")
        over = overrides(s, args, paths)
        trained = train(s, over, share, args)
        ckpt = Path(args.out) / s.name / "train" / "checkpoints" / "last.pt"
        evals = [(s.name, "eval", over, args.samples)]
        if s.kind == "ddpm":
            evals = [(name, name, over + [f"domain.ddpm.sampler={kind}", f"domain.ddpm.steps={steps}"],
                      args.ddpm1000_samples if name == "ddpm-1000" else args.samples)
                     for name, kind, steps in DDPM_SAMPLERS]
        for name, sub, eval_over, n in evals:
            folder = Path(args.out) / s.name / f"{sub}_n{n}"  # another sample count: another folder
            m = sample_and_evaluate(name, eval_over + [f"sample.num_samples={n}"], ckpt, folder)
            m = {**trained, **m}
            rows.append({"name": name, "kind": s.kind, "space": s.space,
                         "target": s.target if s.kind == "refiner" else s.kind,
                         "scales": s.scale_list if s.kind != "ddpm" else None,
                         "state": s.state if s.kind == "refiner" else "-", "m": m,
                         "samples": folder / "sample" / "samples.pt"})

    shift_rows = {}
    for s in settings:
        if s.name not in ("latent-index", "pixel-index"):
            continue
        ckpt = Path(args.out) / s.name / "train" / "checkpoints" / "last.pt"
        for k in args.shift_scales:
            for sigma in args.sigmas:
                over = overrides(s, args, paths) + [f"sample.num_samples={args.shift_samples}",
                                                    f"sample.shift_scale={k}", f"sample.shift_sigma={sigma}"]
                folder = Path(args.out) / s.name / "shift" / f"scale{k}_sigma{sigma:g}_n{args.shift_samples}"
                label = f"{s.name} shift after scale {k}, sigma {sigma:g}"
                m = sample_and_evaluate(label, over, ckpt, folder)
                shift_rows.setdefault((s.space, k), []).append((sigma, m))

    write_doc(rows, shift_rows, tokenizers, args, time.time() - start)


if __name__ == "__main__":
    main()
