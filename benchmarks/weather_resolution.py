"""How much forecast error the HEALPix support alone forces on the 64x32 grid.

    python benchmarks/weather_resolution.py [--nsides 8 16] [--model linear]

The forecaster adds increments generated on the support to the grid state, so the part of the
state the support cannot hold (``x - to_latlon(to_healpix(x))``) is carried from the initial time
unchanged. Against the truth, that part alone costs the RMSE of its change over the lead time.
This script measures it on the test year of the built-in store (daily initial times), per
channel, support and lead, and writes ``docs/results/weather_resolution.md`` and its twin: the
floor any model on that support pays, to compare with the gap between the model and the oracle.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.io import write_json_atomic  # noqa: E402
from core.provenance import current_commit  # noqa: E402
from domains.weather.sphere import Regridder, area_weights  # noqa: E402
from domains.weather.synthetic import ensure_synthetic  # noqa: E402

CHANNELS = (("z500", "geopotential", 500), ("t850", "temperature", 850))
LEADS_DAYS = (1, 3, 5, 7, 10)


def residual_rmse(field: np.ndarray, lat, lon, nside: int) -> dict:
    """[T, lat, lon] daily states -> RMSE (area-weighted, root after the mean) of the change of
    the unresolved part over each lead, and the unresolved part's own RMS."""
    rg = Regridder(lat, lon, nside)
    x = torch.from_numpy(field).float()[:, None]
    r = field - rg.to_latlon(rg.to_healpix(x))[:, 0].numpy()
    w = area_weights(lat)
    w = (w / w.mean())[:, None]
    out = {"unresolved_rms": float(np.sqrt((r ** 2 * w).mean()))}
    for d in LEADS_DAYS:
        out[f"{d * 24}h"] = float(np.sqrt(((r[d:] - r[:-d]) ** 2 * w).mean()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsides", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--model", default="linear", choices=["linear", "qg"])
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "results" / "weather_resolution.md")
    args = ap.parse_args(argv)
    ds = xr.open_zarr(ensure_synthetic(model=args.model), consolidated=True)
    rows = []
    for name, var, level in CHANNELS:
        field = (ds[var].sel(level=level, time=slice("2017-01-01", "2017-12-31"))
                 .transpose("time", "latitude", "longitude").values[::4])  # 00 UTC, daily
        for nside in args.nsides:
            rows.append({"channel": name, "nside": nside,
                         **residual_rmse(field, ds.latitude.values, ds.longitude.values, nside)})
            print(rows[-1], flush=True)
    cmd = "python benchmarks/weather_resolution.py " + " ".join(sys.argv[1:])
    leads = [f"{d * 24}h" for d in LEADS_DAYS]
    lines = ["# The error floor of the HEALPix support on the 64x32 grid", "",
             f"Command: `{cmd.strip()}` (commit {current_commit()[:7]}; the {args.model} store, "
             "test year 2017, one initial time a day).", "",
             "The forecaster adds increments made on the support to the grid state, so what the "
             "support cannot hold stays as it was at the initial time. The table gives the RMSE "
             "that alone costs at each lead (area-weighted, root after the mean), and the RMS of "
             "the unresolved part itself. An error independent of the rest adds in quadrature: a "
             "model whose other errors equal the oracle's RMSE E pays sqrt(E^2 + floor^2).", "",
             "| channel | nside | unresolved RMS | " + " | ".join(leads) + " |",
             "|---|---|---|" + "---|" * len(leads)]
    for r in rows:
        lines.append(f"| {r['channel']} | {r['nside']} | {r['unresolved_rms']:.3g} | "
                     + " | ".join(f"{r[k]:.3g}" for k in leads) + " |")
    args.doc.write_text("\n".join(lines) + "\n")
    write_json_atomic({"page": args.doc.name, "command": cmd.strip(), "rows": rows}, args.doc.with_suffix(".json"))
    print("wrote", args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
