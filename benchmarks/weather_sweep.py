"""Weather: one training setting chosen on the validation period, then scored on test over seeds.

    python benchmarks/weather_sweep.py [--setting domain.state_noise] [--values 0 0.1 0.2 0.3]
                                       [--seeds 0 1 2] [--override key=value ...]

Each value of ``--setting`` trains the main weather run (``+experiment=weather_main``, seed 0)
and forecasts the validation period (``domain.val_period``) as well as the test year. The value is
chosen on validation alone: the worst CRPS ratio to the limit (the linear store's oracle ensemble
of the same size) over ``--channels`` and every lead, with the model's calibration cross-fitted
(``calibrate.cross_fitted``) so that no validation forecast is corrected by a fit to itself.
The chosen value is then trained with the other ``--seeds``, and the test year's scores are
reported as the mean and range over seeds, beside the first value (the reference, one seed).

Every run is a cached piece (``core.provenance``): rerunning the command reuses finished runs,
resumes a killed one from its checkpoint, and refuses a folder made with another config.
Writes ``docs/results/weather_sweep.md``, its twin ``.json`` and a figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.results_twin import twin  # noqa: E402
from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.provenance import check_piece, provenance_label, record_piece  # noqa: E402
from core.run import compose_config, run  # noqa: E402
from core.train import resume_override  # noqa: E402


def _stamp(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def piece(base: list[str], folder: Path) -> tuple[dict, dict]:
    """One main run (train, forecast, evaluate) in ``folder``: (its metrics, its provenance)."""
    cfg = compose_config(base)
    record = check_piece(folder, cfg)
    if record is None:
        _stamp(f"run {folder}")
        t0 = time.time()
        m = run(compose_config(base + [resume_override(folder)]), folder)
        m["wall_seconds"] = time.time() - t0  # of this call: a resumed run counts only its rest
        write_json_atomic(m, folder / "metrics.json")
        record = record_piece(folder, cfg)
    return json.loads((folder / "metrics.json").read_text()), record


def ratio(m: dict, channel: str, lead: str, prefix: str = "") -> float:
    """CRPS of the model over the limit's (the oracle ensemble) at one channel and lead."""
    model, limit = m.get(f"{prefix}crps/{channel}/{lead}"), m.get(f"{prefix}oracle/crps/{channel}/{lead}")
    if model is None or not limit:
        raise KeyError(f"no {prefix}crps/{channel}/{lead} with its oracle: the runs need the built-in "
                       "linear store and a domain.val_period")
    return model / limit


def validation_criterion(m: dict, channels, leads) -> float:
    """The worst validation CRPS ratio to the oracle over ``channels`` and ``leads`` (the bar is
    on every lead). Reads only ``val/`` keys: the test period never takes part in the choice."""
    return max(ratio(m, ch, lead, prefix="val/") for ch in channels for lead in leads)


def choose(by_value: dict, channels, leads):
    """The value with the lowest validation criterion (ties: the first given)."""
    return min(by_value, key=lambda v: validation_criterion(by_value[v], channels, leads))


def _lead_labels(cfg) -> list[str]:
    hours = cfg.domain.step_hours
    return [f"{hours * (i + 1):g}h" for i in range(int(cfg.domain.forecast.lead_steps))]


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{min(values):.3f}, {max(values):.3f}]"


def figure(values, val_scores, test_ratios, reference, leads, channels, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [float(lead[:-1]) / 24 for lead in leads]
    fig, axes = plt.subplots(1, 1 + len(channels), figsize=(4.2 * (1 + len(channels)), 3.4))
    axes[0].plot([float(v) for v in values], [val_scores[v] for v in values], "o-")
    axes[0].axhline(1.05, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="value", ylabel="worst val CRPS / oracle", title="validation")
    for ax, ch in zip(axes[1:], channels):
        runs = test_ratios[ch]  # [seed][lead]
        mean = [sum(r[i] for r in runs) / len(runs) for i in range(len(leads))]
        ax.fill_between(hours, [min(r[i] for r in runs) for i in range(len(leads))],
                        [max(r[i] for r in runs) for i in range(len(leads))], alpha=0.3)
        ax.plot(hours, mean, "o-", label=f"chosen ({len(runs)} seeds)")
        ax.plot(hours, reference[ch], "s--", label="reference (1 seed)")
        ax.axhline(1.05, color="grey", ls=":", lw=1)
        ax.set(xlabel="lead (days)", ylabel="test CRPS / oracle", title=ch)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="domain.state_noise")
    ap.add_argument("--values", nargs="+", default=["0.0", "0.1", "0.2", "0.3"],
                    help="the first is the reference (the default's value)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the first chooses")
    ap.add_argument("--channels", nargs="+", default=["z500", "t850"])
    ap.add_argument("--out", default=str(REPO / "outputs" / "weather_sweep"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "weather_sweep.md"))
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every run")
    args = ap.parse_args(argv)

    base = ["+experiment=weather_main", "progress=true", "task=all"] + args.override
    cfg = compose_config(base)
    leads = _lead_labels(cfg)
    out = Path(args.out)
    name = args.setting.split(".")[-1]

    def runs_of(value, seed):
        return piece(base + [f"{args.setting}={value}", f"seed={seed}"], out / f"{name}={value}" / f"seed{seed}")

    first = {v: runs_of(v, args.seeds[0]) for v in args.values}
    val_scores = {v: validation_criterion(first[v][0], args.channels, leads) for v in args.values}
    chosen = choose({v: first[v][0] for v in args.values}, args.channels, leads)
    _stamp(f"chosen {args.setting}={chosen} (worst validation ratio {val_scores[chosen]:.3f})")
    seeds = [first[chosen]] + [runs_of(chosen, s) for s in args.seeds[1:]]

    shown = [f"{24 * d}h" for d in (1, 3, 5, 7, 10) if f"{24 * d}h" in leads]
    cmd = "python benchmarks/weather_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
    title = (f"# Weather: {args.setting} chosen on validation, scored on test" if len(args.values) > 1
             else f"# Weather: {args.setting}={chosen} on validation and on test over seeds")
    lines = [
        title,
        "",
        f"Command: `{cmd.strip()}` (each run is `python -m core.run +experiment=weather_main "
        f"{args.setting}=<value> seed=<seed>`{' ' + ' '.join(args.override) if args.override else ''}).",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads.",
        "",
        f"Chosen on the validation period ({cfg.domain.val_period[0]} to {cfg.domain.val_period[1]}, "
        f"{int(first[args.values[0]][0].get('forecast/validation_inits', 0))} initial times, apart "
        "from training and test) by the worst CRPS ratio to the oracle ensemble over "
        f"{', '.join(args.channels)} and all {len(leads)} leads. The model's calibration "
        f"(`domain.forecast.calibrate={cfg.domain.forecast.calibrate}`) is cross-fitted there (each "
        "half of the initial times corrected by the fit on the other), so no validation forecast is "
        "corrected by a fit to itself; the test forecast uses the fit on the whole validation "
        "period, as every run does.",
        "",
        "## Validation (seed 0)",
        "",
        "| value | " + " | ".join(f"{ch} {lead}" for ch in args.channels for lead in shown)
        + " | worst, all leads | val spread/skill | training min | provenance |",
        "|---|" + "---|" * (len(args.channels) * len(shown) + 4),
    ]
    for v in args.values:
        m, record = first[v]
        cells = [f"{ratio(m, ch, lead, 'val/'):.3f}" for ch in args.channels for lead in shown]
        ss = [m[f"val/spread_skill/{ch}/{lead}"] for ch in args.channels for lead in leads]
        mark = " (chosen)" if v == chosen else ""
        lines.append(f"| {v}{mark} | " + " | ".join(cells) + f" | {val_scores[v]:.3f} | "
                     f"{min(ss):.2f}-{max(ss):.2f} | {m.get('train_seconds', math.nan) / 60:.1f} | "
                     f"{provenance_label(record)} |")
    ref = first[args.values[0]][0]
    lines += [
        "",
        f"## Test: {args.setting}={chosen} over {len(seeds)} seeds ({', '.join(map(str, args.seeds))})",
        "",
        f"CRPS / oracle ensemble: mean [min, max] over seeds; the reference is {args.setting}="
        f"{args.values[0]}, seed {args.seeds[0]}.",
        "",
        "| channel | lead | chosen | reference | chosen spread/skill | reference spread/skill |",
        "|---|---|---|---|---|---|",
    ]
    test_ratios = {ch: [[ratio(m, ch, lead) for lead in leads] for m, _ in seeds] for ch in args.channels}
    reference = {ch: [ratio(ref, ch, lead) for lead in leads] for ch in args.channels}
    for ch in args.channels:
        for lead in shown:
            i = leads.index(lead)
            ss = [m[f"spread_skill/{ch}/{lead}"] for m, _ in seeds]
            lines.append(f"| {ch} | {lead} | {_spread([r[i] for r in test_ratios[ch]])} | "
                         f"{reference[ch][i]:.3f} | {_spread(ss)} | {ref[f'spread_skill/{ch}/{lead}']:.3f} |")
    worst = [max(max(r) for r in (test_ratios[ch][s] for ch in args.channels)) for s in range(len(seeds))]
    lines += [
        "",
        f"Worst test ratio over {', '.join(args.channels)} and all leads: chosen {_spread(worst)}; "
        f"reference {max(max(reference[ch]) for ch in args.channels):.3f}.",
        "",
        "| run | whole run min | training min | training steps | provenance |",
        "|---|---|---|---|---|",
    ]
    for (m, record), s in zip(seeds, args.seeds):
        stopped = " (time budget)" if m.get("stopped_by_time") else ""
        lines.append(f"| {args.setting}={chosen}, seed {s} | {m.get('wall_seconds', math.nan) / 60:.1f} | "
                     f"{m.get('train_seconds', math.nan) / 60:.1f} | {int(m.get('train_steps', 0))}{stopped} | "
                     f"{provenance_label(record)} |")
    figures = Path(args.doc).with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    figure(args.values, val_scores, test_ratios, reference, leads, args.channels, figures / "sweep.png")
    lines += ["", f"![sweep.png]({figures.name}/sweep.png)", ""]
    Path(args.doc).write_text("\n".join(lines))
    write_json_atomic(twin(Path(args.doc)), Path(args.doc).with_suffix(".json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
