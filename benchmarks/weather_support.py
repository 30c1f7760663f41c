"""Weather: the support's resolution, HEALPix nside 8 against nside 16 with local windows.

    python benchmarks/weather_support.py [--supports nside8 nside16 default] [--seeds 0]
                                         [--seeds-for default=0,1,2]

Each support is one main run (``python -m core.run +experiment=weather_main`` plus its
overrides), a cached piece with its config hash and commit (``core.provenance``; a finished run is
reused, a run under another config refused). The page gives, per support, the test CRPS over the
oracle ensemble's and the spread/skill at every lead, the run's cost, and spread/skill *by scale*:
the ensemble's spread and the ensemble mean's error split into bands of zonal wavenumber (FFT
along each latitude circle within 60 degrees of the equator, area-weighted) at one lead. A support
that cannot hold the grid's finest scales leaves that band's spread near zero while its error is
not, and its spread maps show the support's pixels (the diamond pattern of HEALPix nside 8).
A last table measures how far the time-mean spread dips along the edges of the 12 base pixels
(the edges of the local windows), against the oracle ensemble of the same size.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from core.io import atomic_path, write_json_atomic  # noqa: E402
from core.provenance import provenance_label  # noqa: E402
from core.run import compose_config  # noqa: E402
from domains.weather.oracle import LinearStoreOracle  # noqa: E402
from domains.weather.synthetic import ensure_synthetic  # noqa: E402
from weather_sweep import _spread, piece, ratio  # noqa: E402

# the supports compared: their overrides of the main run. nside8 is the previous default and
# nside16 the same run on the finer support with local windows, both under the previous budget
# (690 s of training, 40 validation forecasts); default is the default run (nside 16, 480 s, 20
# validation forecasts: under 15 minutes on 2 cores)
EARLIER_BUDGET = ["train.max_seconds=690", "domain.forecast.val_every_hours=48",
                  "domain.forecast.val_max_inits=40"]
SUPPORTS = {
    "nside8": ["domain.nsides=[1,2,4,8]", "refiner.window=0", "refiner.train_windows=1.0"] + EARLIER_BUDGET,
    "nside16": ["domain.nsides=[1,2,4,8,16]", "refiner.window=256", "refiner.train_windows=0.25"] + EARLIER_BUDGET,
    "default": [],
}
CHANNELS = (("z500", "geopotential", 500), ("t850", "temperature", 850))
BANDS = ((1, 4), (5, 8), (9, 16), (17, 32))  # zonal wavenumbers, inclusive


def _field(ds: xr.Dataset, var: str, level: int) -> xr.DataArray:
    f = ds[var]
    return f.sel(level=level) if "level" in f.dims else f


def spread_skill_by_band(forecast: Path, truth: xr.Dataset, var: str, level: int, lead_days: int,
                         max_lat: float = 60.0) -> dict:
    """Per band of zonal wavenumber: sqrt((M+1)/M * spread power / error power), the spread/skill
    ratio of that band (1: the members differ at that scale as much as the truth differs from
    their mean), and the band's share of the error power."""
    fc = xr.open_zarr(forecast, consolidated=True)
    f = _field(fc, var, level).sel(prediction_timedelta=np.timedelta64(lead_days, "D"))
    f = f.transpose("time", "number", "latitude", "longitude")
    lat = f.latitude.values
    rows = np.abs(lat) <= max_lat
    x = f.values[:, :, rows]                                            # [T, M, lat, lon]
    valid = f.time.values + np.timedelta64(lead_days, "D")
    y = _field(truth, var, level).sel(time=valid).transpose("time", "latitude", "longitude").values[:, rows]
    M = x.shape[1]
    mean = x.mean(1)
    w = np.cos(np.deg2rad(lat[rows]))[None, :, None]
    spread = (np.abs(np.fft.rfft(x - mean[:, None], axis=-1)) ** 2).sum(1) / (M - 1)  # [T, lat, k]
    error = np.abs(np.fft.rfft(y - mean, axis=-1)) ** 2
    total = float((error * w).sum())
    out = {}
    for lo, hi in BANDS:
        s, e = (float((p[..., lo:hi + 1] * w).sum()) for p in (spread, error))
        out[f"k{lo}-{hi}"] = {"spread_skill": float(np.sqrt((M + 1) / M * s / e)), "error_share": e / total}
    return out


def spread_map(forecast: Path, var: str, level: int, lead_days: int) -> np.ndarray:
    """The members' standard deviation at the first initial time and one lead: [lat, lon]."""
    fc = xr.open_zarr(forecast, consolidated=True)
    f = _field(fc, var, level).sel(prediction_timedelta=np.timedelta64(lead_days, "D")).isel(time=0)
    return f.transpose("number", "latitude", "longitude").values.std(0, ddof=1)


def base_pixel_edges(lat, lon) -> dict[str, np.ndarray]:
    """Grid cells [lat, lon] next to an edge of the 12 HEALPix base pixels: ``ring`` where the
    neighbour lies in another ring of four (north cap, equatorial belt, south cap: the edges of
    the nside-8 windows, which are also those of the nside-16 windows), ``within`` where it lies
    in another base pixel of the same ring (edges of the nside-16 windows only), ``inside`` the
    rest. Neighbours: east, west (around the circle), north and south."""
    import healpy

    la, lo = np.meshgrid(np.asarray(lat, float), np.asarray(lon, float), indexing="ij")
    base = healpy.ang2pix(1, lo, la, nest=True, lonlat=True)
    ring = base // 4
    other_base, other_ring = np.zeros(base.shape, bool), np.zeros(base.shape, bool)
    for axis, wrap in ((1, True), (0, False)):
        for shift in (1, -1):
            b, r = np.roll(base, shift, axis), np.roll(ring, shift, axis)
            differs_b, differs_r = b != base, r != ring
            if not wrap:  # no neighbour beyond the first and last latitude rows
                edge_row = 0 if shift == 1 else -1
                differs_b[edge_row], differs_r[edge_row] = False, False
            other_base |= differs_b
            other_ring |= differs_r
    return {"ring": other_ring, "within": other_base & ~other_ring, "inside": ~other_base}


def relative_spread(ensemble: xr.Dataset, var: str, level: int, lead_days: int) -> np.ndarray:
    """The members' spread at one lead averaged over initial times, each latitude row divided by
    its zonal mean: [lat, lon]. On the linear store the exact spread depends on latitude alone,
    so a calibrated ensemble's map is 1 everywhere up to its sampling noise."""
    f = _field(ensemble, var, level).sel(prediction_timedelta=np.timedelta64(lead_days, "D"))
    sd = f.transpose("time", "number", "latitude", "longitude").values.std(1, ddof=1).mean(0)
    return sd / sd.mean(1, keepdims=True)


def edge_contrast(rel: np.ndarray, edges: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    """Mean relative spread next to ring edges and within-ring edges over that inside the base
    pixels (1: the edges do not show; below 1: spread dips along them), on ``rows``."""
    inside = float(rel[rows][edges["inside"][rows]].mean())
    return {k: float(rel[rows][edges[k][rows]].mean()) / inside for k in ("ring", "within")}


def figure(supports, by_band, maps, lead_days: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1 + len(supports), figsize=(4.2 * (1 + len(supports)), 6.4))
    labels = [f"{lo}-{hi}" for lo, hi in BANDS]
    for row, (name, _, _) in enumerate(CHANNELS):
        ax = axes[row, 0]
        for s in supports:
            ax.plot(labels, [by_band[s][name][b]["spread_skill"] for b in (f"k{lab}" for lab in labels)],
                    "o-", label=s)
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set(xlabel="zonal wavenumber", ylabel="spread/skill", title=f"{name}, day {lead_days}")
        ax.legend(fontsize=8)
        vmax = max(float(maps[s][name].max()) for s in supports)
        for col, s in enumerate(supports, 1):
            im = axes[row, col].imshow(maps[s][name][::-1], cmap="magma", vmin=0, vmax=vmax, aspect="auto")
            axes[row, col].set(title=f"{s}: {name} spread, day {lead_days}", xticks=[], yticks=[])
            fig.colorbar(im, ax=axes[row, col], fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def edge_figure(rel_maps: dict, grid_edges: dict, lead_days: int, path: Path) -> None:
    """The relative spread maps of every forecast, the base pixels' edges drawn over them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rel_maps)
    channels = [name for name, _, _ in CHANNELS]
    fig, axes = plt.subplots(len(channels), len(names), figsize=(4.2 * len(names), 3.2 * len(channels)),
                             squeeze=False)
    edge = (~grid_edges["inside"]).astype(float)
    for row, ch in enumerate(channels):
        for col, s in enumerate(names):
            ax = axes[row, col]
            im = ax.imshow(rel_maps[s][ch][::-1], cmap="RdBu_r", vmin=0.6, vmax=1.4, aspect="auto")
            ax.contour(edge[::-1], levels=[0.5], colors="k", linewidths=0.4, alpha=0.5)
            ax.set(title=f"{s}: {ch} spread / zonal mean, day {lead_days}", xticks=[], yticks=[])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supports", nargs="+", default=list(SUPPORTS), choices=list(SUPPORTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of every support")
    ap.add_argument("--seeds-for", nargs="*", default=[], metavar="SUPPORT=0,1,2",
                    help="other seeds for one support, e.g. default=0,1,2")
    ap.add_argument("--lead-days", type=int, default=3, help="the lead of the by-scale table and maps")
    ap.add_argument("--out", default=str(REPO / "outputs" / "weather_support"))
    ap.add_argument("--doc", default=str(REPO / "docs" / "results" / "weather_support.md"))
    ap.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for every run")
    args = ap.parse_args(argv)
    seeds_of = {s: list(args.seeds) for s in args.supports}
    for item in args.seeds_for:
        name, _, values = item.partition("=")
        if name not in seeds_of or not values:
            ap.error(f"--seeds-for {item}: give SUPPORT=seed,seed,... for one of {', '.join(args.supports)}")
        seeds_of[name] = [int(v) for v in values.split(",")]

    base = ["+experiment=weather_main", "progress=true"] + args.override
    cfg = compose_config(base)
    leads = [f"{24 * d}h" for d in (1, 3, 5, 7, 10)
             if 24 * d <= cfg.domain.forecast.lead_steps * cfg.domain.step_hours]
    store = ensure_synthetic(**cfg.domain.synthetic)
    truth = xr.open_zarr(store, consolidated=True)
    grid_edges = base_pixel_edges(truth.latitude.values, truth.longitude.values)
    rows = np.abs(truth.latitude.values) <= 75.0   # the edges crowd together at the poles
    runs, by_band, maps, edges, rel_maps = {}, {}, {}, {}, {}
    for s in args.supports:
        for seed in seeds_of[s]:
            folder = Path(args.out) / f"{s}-seed{seed}"
            runs[s, seed] = (*piece(base + SUPPORTS[s] + [f"seed={seed}"], folder), folder)
            fc = xr.open_zarr(folder / "forecast.zarr", consolidated=True)
            for name, var, level in CHANNELS:
                rel = relative_spread(fc, var, level, args.lead_days)
                edges.setdefault(s, {}).setdefault(name, []).append(edge_contrast(rel, grid_edges, rows))
                rel_maps.setdefault(s, {}).setdefault(name, rel)
        folder = runs[s, seeds_of[s][0]][2]
        by_band[s] = {name: spread_skill_by_band(folder / "forecast.zarr", truth, var, level, args.lead_days)
                      for name, var, level in CHANNELS}
        maps[s] = {name: spread_map(folder / "forecast.zarr", var, level, args.lead_days)
                   for name, var, level in CHANNELS}

    cmd = "python benchmarks/weather_support.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# Weather: the support's resolution (HEALPix nside 8 against nside 16 with local windows)", "",
             f"Command: `{cmd.strip()}`. Machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
             f"torch {torch.__version__} with {torch.get_num_threads()} threads.", "",
             "Every support is the main run (`python -m core.run +experiment=weather_main`) with these "
             "overrides, on the built-in linear store; test scores (2017) of the calibrated forecast. "
             "A support's overrides hold its whole budget: those without a `train.max_seconds` train "
             f"for the default's {cfg.train.max_seconds:g} s.", ""]
    for s in args.supports:
        lines.append(f"- `{s}`: `{' '.join(SUPPORTS[s])}`")
    lines += ["", "## CRPS / oracle ensemble (over a support's seeds: mean [min, max])", "",
              "| support | " + " | ".join(f"{ch} {lead}" for ch, _, _ in CHANNELS for lead in leads) + " | worst |",
              "|---|" + "---|" * (len(CHANNELS) * len(leads) + 1)]
    table = {}
    for s in args.supports:
        cells, worst = [], []
        for ch, _, _ in CHANNELS:
            for lead in leads:
                r = [ratio(runs[s, seed][0], ch, lead) for seed in seeds_of[s]]
                table.setdefault(s, {})[f"{ch}/{lead}"] = r
                cells.append(_spread(r))
        worst = [max(table[s][k][i] for k in table[s]) for i in range(len(seeds_of[s]))]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {_spread(worst)} |")
    lines += ["", "## Spread/skill", "",
              "| support | " + " | ".join(f"{ch} {lead}" for ch, _, _ in CHANNELS for lead in leads) + " |",
              "|---|" + "---|" * (len(CHANNELS) * len(leads))]
    for s in args.supports:
        lines.append(f"| {s} | " + " | ".join(
            _spread([runs[s, seed][0][f"spread_skill/{ch}/{lead}"] for seed in seeds_of[s]])
            for ch, _, _ in CHANNELS for lead in leads) + " |")
    lines += ["", f"## Spread/skill by scale (day {args.lead_days}, a support's first seed)", "",
              "Zonal wavenumber bands; in brackets the band's share of the ensemble mean's error power.", "",
              "| support | channel | " + " | ".join(f"k {lo}-{hi}" for lo, hi in BANDS) + " |",
              "|---|---|" + "---|" * len(BANDS)]
    for s in args.supports:
        for name, _, _ in CHANNELS:
            lines.append(f"| {s} | {name} | " + " | ".join(
                f"{v['spread_skill']:.2f} ({v['error_share']:.0%})" for v in by_band[s][name].values()) + " |")
    # the reference: the exact limit's ensemble of the same size at the same initial times, whose
    # relative spread is 1 up to sampling noise
    first = xr.open_zarr(runs[next(iter(runs))][2] / "forecast.zarr", consolidated=True)
    oracle = LinearStoreOracle.for_store(store).ensemble(
        first.time.values, [np.timedelta64(args.lead_days, "D")], int(first.sizes["number"]), seed=0,
        variables=[var for _, var, _ in CHANNELS])
    for name, var, level in CHANNELS:
        rel = relative_spread(oracle, var, level, args.lead_days)
        edges.setdefault("oracle ensemble", {})[name] = [edge_contrast(rel, grid_edges, rows)]
        rel_maps.setdefault("oracle ensemble", {})[name] = rel
    lines += ["", f"## The base pixels' edges in the spread (day {args.lead_days})", "",
              "The members' spread averaged over the initial times, each latitude row divided by its "
              "zonal mean (the linear store's exact spread depends on latitude alone), within 75 degrees "
              "of the equator: its mean on grid cells next to an edge of the 12 HEALPix base pixels over "
              "its mean inside them. *ring*: edges between the north cap, the equatorial belt and the "
              "south cap (edges of the nside-8 and the nside-16 windows); *within*: edges between base "
              "pixels of one ring (edges of the nside-16 windows only). 1: the edges do not show; the "
              "oracle ensemble of the same size gives the sampling noise.", "",
              "| forecast | " + " | ".join(f"{name} {k}" for name, _, _ in CHANNELS for k in ("ring", "within"))
              + " |", "|---|" + "---|" * (2 * len(CHANNELS))]
    for s in edges:
        lines.append(f"| {s} | " + " | ".join(_spread([e[k] for e in edges[s][name]])
                                                for name, _, _ in CHANNELS for k in ("ring", "within")) + " |")
    lines += ["", "## Cost", "", "| support | seed | whole run min | training steps | training min | "
              "member-steps/s | refiner calls per step | provenance |", "|---|---|---|---|---|---|---|---|"]
    for (s, seed), (m, record, _) in runs.items():
        lines.append(f"| {s} | {seed} | {m.get('wall_seconds', float('nan')) / 60:.1f} | "
                     f"{int(m['train_steps'])} | {m['train_seconds'] / 60:.1f} | "
                     f"{m['forecast/member_steps_per_second']:.1f} | {m['forecast/nfe_per_member_step']:g} | "
                     f"{provenance_label(record)} |")
    doc = Path(args.doc)
    figures = doc.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    figure(args.supports, by_band, maps, args.lead_days, figures / "support.png")
    edge_figure(rel_maps, grid_edges, args.lead_days, figures / "edges.png")
    lines += ["", f"![support.png]({figures.name}/support.png)", "",
              f"![edges.png]({figures.name}/edges.png)", ""]
    doc.write_text("\n".join(lines))
    write_json_atomic({"page": doc.name, "command": cmd.strip(), "supports": {s: SUPPORTS[s] for s in args.supports},
                       "seeds": seeds_of, "crps_over_oracle": table, "by_band": by_band,
                       "edge_contrast": edges,
                       "runs": [{"support": s, "seed": seed, "provenance": record,
                                 **{k: m[k] for k in ("wall_seconds", "train_steps", "train_seconds",
                                                      "forecast/member_steps_per_second") if k in m}}
                                for (s, seed), (m, record, _) in runs.items()]},
                      doc.with_suffix(".json"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
