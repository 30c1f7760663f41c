"""Weather benchmark: the main weather run, scored against persistence and climatology.

    python benchmarks/weather.py [--steps N] [--override key=value ...]

Runs ``python -m core.run domain=weather`` (train, forecast the held-out year, evaluate) and
measures how fast the store is read (lazy zarr through xarray + dask, one time block after the
other). Writes ``docs/results/weather.md``: CRPS, ensemble-mean RMSE and spread/skill by lead time
for the headline channels beside the baselines, member-steps per second and read throughput, with
the machine and the command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from core.io import write_json_atomic  # noqa: E402
from benchmarks.results_twin import twin  # noqa: E402
from core.run import compose_config, run  # noqa: E402
from domains.weather.store import time_blocks  # noqa: E402


def read_throughput(cfg, repeats: int = 1) -> dict:
    """Megabytes per second and times per second read from the training period, block by block."""
    from domains.weather import fields as F

    ds = F.open_period(cfg, "train")
    chans = F.channel_list(cfg)
    names = list(dict.fromkeys(v for v, _ in chans))
    nbytes, ntimes, t0 = 0, 0, time.perf_counter()
    for _ in range(repeats):
        for block in time_blocks(ds[names], min_length=64):
            loaded = ds[names].isel(time=block).load()
            nbytes += sum(v.nbytes for v in loaded.data_vars.values())
            ntimes += loaded.sizes["time"]
    seconds = time.perf_counter() - t0
    return {"read_mb_per_second": nbytes / seconds / 2**20, "read_times_per_second": ntimes / seconds}


BASELINES = (("persistence", "persistence/"), ("climatology", "climatology/"),
             ("climatological ensemble", "climatology_ensemble/"))
# the limit of each built-in store: (name, metrics prefix); the first is the ratio's denominator
LIMITS = {"linear": (("oracle ensemble", "oracle/"), ("oracle exact", "oracle_exact/")),
          "qg": (("perfect model", "perfect_model/"),)}


MODELS = (("model", ""), ("model, raw", "model_raw/"))  # calibrated (when a val period is set), raw


def columns(store: str) -> tuple:
    return MODELS + LIMITS.get(store, ()) + BASELINES


def _row(m: dict, metric: str, ch: str, lead: str, store: str) -> str:
    def get(prefix):
        v = m.get(f"{prefix}{metric}/{ch}/{lead}")
        return "-" if v is None else f"{v:.4g}"

    limit_prefix = LIMITS[store][0][1] if store in LIMITS else None
    model = m.get(f"{metric}/{ch}/{lead}")
    limit = m.get(f"{limit_prefix}{metric}/{ch}/{lead}") if limit_prefix else None
    ratio = "-" if model is None or not limit else f"{model / limit:.3f}"
    return (f"| {ch} | {lead} | " + " | ".join(get(prefix) for _, prefix in columns(store))
            + f" | {ratio} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the config)")
    ap.add_argument("--out", default=str(REPO / "outputs" / "benchmark_weather"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "weather.md"))
    ap.add_argument("--fresh", action="store_true",
                    help="delete --out first (otherwise a finished run is resumed and re-scored)")
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides")
    args = ap.parse_args()

    over = ["+experiment=weather_main", "progress=true"] + args.override  # configs/experiment/
    if args.steps:
        over.append(f"train.steps={args.steps}")
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    cfg = compose_config(over)
    shown = list(over)
    first = out / "first_run.json"  # timings of the uninterrupted run, kept when re-scoring
    resumed = first.exists()
    if resumed:
        over.append("train.resume=true")
    t0 = time.time()
    m = run(compose_config(over), out)
    wall = time.time() - t0
    timed = ["train_seconds", "train_steps", "forecast/member_steps_per_second",
             "forecast/nfe_per_member_step"]
    if resumed:
        saved = json.loads(first.read_text())
        wall = saved.pop("wall_seconds")
        m.update(saved)
    else:
        write_json_atomic({"wall_seconds": wall, **{k: m[k] for k in timed if k in m}}, first)
    m.update(read_throughput(cfg))

    headline = [str(c) for c in cfg.domain.evaluate.headline]
    hours = [24 * d for d in (1, 3, 5, 7, 10) if d * 24 <= cfg.domain.forecast.lead_steps * cfg.domain.step_hours]
    leads = [f"{h}h" for h in hours]
    cmd = "python benchmarks/weather.py " + " ".join(sys.argv[1:])
    store = "real" if cfg.domain.store else str(cfg.domain.synthetic.get("model", "linear"))
    cols = columns(store)
    limit_name = LIMITS[store][0][0] if store in LIMITS else None
    title = {"linear": "the built-in linear synthetic ERA5",
             "qg": "the built-in nonlinear (two-level QG) synthetic ERA5"}.get(store, "a real store")
    limit_text = {
        "linear": [
            "The oracle is the exact limit of the built-in linear store (`domains/weather/oracle.py`): "
            "the generator's own conditional distribution given the state at the initial time. "
            "`oracle ensemble` is that many members drawn from it (the generator run on with fresh "
            "noise), scored like the model; `oracle exact` its Gaussian CRPS in closed form (an "
            "infinite ensemble; the affine channels only). `model / oracle ensemble` divides by the "
            "oracle ensemble of the same size (1 is the best any forecaster can reach).", ""],
        "qg": [
            "The store is the two-level quasi-geostrophic model of `domains/weather/qg.py` "
            "(baroclinic, chaotic, stochastically forced). The perfect model is its limit "
            "(`domains/weather/oracle.py`, `PerfectModel`): the true model run on from the store's "
            "exact state at the initial time with fresh noise, as many members as the forecast, "
            "scored like the model. `model / perfect model` divides by it (1 is the best a "
            "forecaster handed the state can reach, up to sampling error).", ""],
    }.get(store, [])
    lines = [
        f"# Weather: ensemble forecasts on {title}",
        "",
        f"Command: `{cmd.strip()}` (the main run `python -m core.run +experiment=weather_main`"
        f"{' with ' + ' '.join(shown[2:]) if len(shown) > 2 else ''}); a finished run is "
        "re-scored, with the timings of its uninterrupted run.",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads. Whole run (train, forecast, evaluate): "
        f"{wall / 60:.1f} min; training {m.get('train_seconds', float('nan')) / 60:.1f} min for "
        f"{int(m.get('train_steps', 0))} steps; {int(m.get('parameters', 0)):,} parameters.",
        "",
        f"Held-out period {cfg.domain.test_period[0]} to {cfg.domain.test_period[1]}: "
        f"{int(m['forecast/inits'])} initial times, {int(m['forecast/members'])} members, "
        f"step {cfg.domain.step_hours} h, {cfg.domain.sphere} support "
        f"{list(cfg.domain.nsides) if cfg.domain.sphere == 'healpix' else [list(x) for x in cfg.domain.latlon_sizes]}. "
        "Scores as WeatherBench2 defines them (area-weighted, RMSE of the ensemble mean with the "
        "square root after the time mean, fair CRPS, spread/skill with the sqrt((M+1)/M) "
        "correction). Persistence is the analysis at the initial time; climatology the "
        "training-period mean for the calendar day and hour (±15 days); the climatological "
        "ensemble as many training states of the same hour on the nearest calendar days as the "
        "forecast has members.",
        "",
    ] + limit_text
    for metric, heading in (("crps", "CRPS (lower is better)"), ("rmse", "RMSE of the ensemble mean")):
        lines += [f"## {heading}", "", "| channel | lead | " + " | ".join(n for n, _ in cols)
                  + f" | model / {limit_name or 'limit'} |", "|---|---|" + "---|" * (len(cols) + 1)]
        lines += [_row(m, metric, ch, lead, store) for ch in headline for lead in leads]
        lines.append("")
    lines += ["## Spread/skill (1 = calibrated)", "", "| channel | forecast | " + " | ".join(leads) + " |",
              "|---|---|" + "---|" * len(leads)]
    for ch in headline:
        for name, prefix in MODELS + LIMITS.get(store, ())[:1]:
            vals = [m.get(f"{prefix}spread_skill/{ch}/{lead}") for lead in leads]
            if any(v is not None for v in vals):
                lines.append(f"| {ch} | {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    if any(k.startswith("mean_slope/") for k in m):
        lines += ["", "## The ensemble mean against the exact mean", "",
                  "How the model's ensemble mean `m` departs from the exact conditional mean `μ` "
                  "(`oracle.mean_against_exact`; `x0` the state at the initial time). Slope: the "
                  "regression of `m - x0` on `μ - x0` (1: the mean moves as far as the truth's "
                  "expectation; below 1: too close to persistence). Distance: RMSE of `m` against "
                  "`μ`; noise: what a correct mean of this many raw members would still show (their "
                  "spread / sqrt(members)); persistence: how far `μ` moves from `x0`.", "",
                  "| channel | lead | slope | distance | noise | persistence |", "|---|---|---|---|---|---|"]
        for ch in headline:
            for lead in leads:
                vals = [m.get(f"mean_slope/{ch}/{lead}"), m.get(f"mean_distance/{ch}/{lead}"),
                        m.get(f"model_raw/mean_noise/{ch}/{lead}", m.get(f"mean_noise/{ch}/{lead}")),
                        m.get(f"persistence/mean_distance/{ch}/{lead}")]
                lines.append(f"| {ch} | {lead} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in vals) + " |")
    if any(k.startswith("spread_factor/") for k in m):
        mean_fit = any(k.startswith("mean_weight_forecast/") for k in m)
        mean_text = ("the ensemble mean is first moved to x0 + a (m - x0) + b (c - x0), with x0 the "
                     "initial state, m the raw ensemble mean and c the training climatology, a and b "
                     "fitted by least squares per channel and lead; then " if mean_fit else "")
        lines += ["", "## Calibration", "",
                  f"`domain.forecast.calibrate={cfg.domain.forecast.calibrate}`, fitted on "
                  f"{int(m.get('forecast/validation_inits', 0))} validation forecasts "
                  f"({cfg.domain.val_period[0]} to {cfg.domain.val_period[1]}, apart from training "
                  f"and test): {mean_text}each member's deviation from the ensemble mean is "
                  "multiplied by the spread factor of its channel and lead "
                  "(`domains/weather/calibrate.py`); `model, raw` is the forecast before it.", "",
                  "| channel | weight | " + " | ".join(leads) + " |", "|---|---|" + "---|" * len(leads)]
        rows = (("spread factor", "spread_factor"),)
        if mean_fit:
            rows += (("a (forecast change)", "mean_weight_forecast"), ("b (towards climatology)", "mean_weight_climatology"))
        for ch in headline:
            for label, key in rows:
                vals = [m.get(f"{key}/{ch}/{lead}") for lead in leads]
                lines.append(f"| {ch} | {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    lines += ["", "## Speed", "",
              f"- forecast: {m.get('forecast/member_steps_per_second', float('nan')):.2f} member-steps "
              f"per second ({m.get('forecast/nfe_per_member_step', float('nan')):.0f} refiner calls each)",
              f"- reading the store: {m['read_mb_per_second']:.1f} MB/s, "
              f"{m['read_times_per_second']:.0f} times/s (lazy zarr, one chunk-aligned time block "
              "after the other)", ""]
    figures = Path(args.doc).with_suffix("")  # docs/results/weather.md -> docs/results/weather/
    figures.mkdir(parents=True, exist_ok=True)
    for name in ("scorecard_crps.png", "scorecard_rmse.png", "rank_histograms.png", "forecast_maps.png"):
        if (out / name).exists():
            shutil.copy(out / name, figures / name)
            lines.append(f"![{name}]({figures.name}/{name})")
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text("\n".join(lines) + "\n")
    write_json_atomic(twin(Path(args.doc)), Path(args.doc).with_suffix(".json"))  # the page's rows
    print("\n".join(lines))


if __name__ == "__main__":
    main()
