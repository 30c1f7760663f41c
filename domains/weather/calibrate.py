"""Spread calibration of ensemble forecasts, fitted on a validation period.

A learned one-step model's ensemble can be too narrow at short leads (its sampled increments are
sharper than its errors) and too wide at long ones (its own errors compound in the rollout). The
correction here is the simplest one that leaves the ensemble mean alone: at each lead and channel,
every member's deviation from the ensemble mean is multiplied by one factor,

    factor = RMSE of the ensemble mean / (spread * sqrt((M + 1) / M)),

measured on forecasts from a validation period that neither training nor the test period touches
(``domain.val_period``), so that the validation spread/skill (``scores.spread_skill``) is exactly 1.
The factors are written to ``spread_factors.json``; the raw forecast stays beside the calibrated
one (``forecast_raw.zarr``) and ``task=evaluate`` scores both (``model_raw/...``; the raw
store is read beside the run's own ``forecast.zarr``, not beside a ``domain.forecast.path``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from domains.weather.scores import flatten_scores, spread_skill

MODES = ("none", "spread")


def calibrating(cfg) -> bool:
    """Whether this run calibrates: ``domain.forecast.calibrate=spread`` and a validation period
    (checked against the training and test periods)."""
    from domains.weather.fields import val_period

    mode = str(cfg.domain.forecast.get("calibrate", "none"))
    if mode not in MODES:
        raise ValueError(f"domain.forecast.calibrate must be none or spread, got '{mode}'")
    return mode == "spread" and val_period(cfg) is not None


def calibrate_forecast(run_dir, val_truth: xr.Dataset, netcdf: bool) -> dict:
    """Fit the factors on ``<run_dir>/validation.zarr`` against ``val_truth``, write them and the
    calibrated ``forecast.zarr`` (and ``.nc``) from ``forecast_raw.zarr``; their metrics."""
    from domains.weather.forecast import write_forecast_store

    run_dir = Path(run_dir)
    val_fc = xr.open_zarr(run_dir / "validation.zarr", consolidated=True).load()
    factors = fit_spread_factors(val_fc, val_truth)
    save_spread_factors(factors, run_dir / "spread_factors.json")
    raw = xr.open_zarr(run_dir / "forecast_raw.zarr", consolidated=True).load()
    calibrated = apply_spread_factors(raw, factors)
    calibrated.attrs["calibration"] = "spread factors of spread_factors.json (raw: forecast_raw.zarr)"
    write_forecast_store(calibrated, run_dir / "forecast.zarr", netcdf)
    return flatten_scores(factors.expand_dims(metric=["spread_factor"]))


def fit_spread_factors(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """One factor per variable, lead (and level): skill / corrected spread on these forecasts."""
    ratio = spread_skill(forecast, truth)
    factor = 1.0 / ratio
    # no spread (identical members, up to rounding) or no error: nothing to scale, rather than
    # a factor of 1e16 or 0
    return factor.where(np.isfinite(factor) & (factor > 1e-3) & (factor < 1e3), 1.0)


def cross_fitted(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """``forecast`` calibrated out of sample: its initial times are split into two alternating
    halves and each half gets the factors fitted on the other, so that no forecast is scaled by
    factors fitted to itself. This is how a validation score of a calibrated model is fair:
    the factors are in-sample on the whole period, and would make spread/skill exactly 1."""
    n = forecast.sizes["time"]
    if n < 2:
        raise ValueError(f"cross-fitting needs at least 2 initial times, the forecast has {n}; "
                         "raise domain.forecast.val_max_inits")
    halves = [forecast.isel(time=slice(i, None, 2)) for i in (0, 1)]
    parts = [apply_spread_factors(halves[i], fit_spread_factors(halves[1 - i], truth)) for i in (0, 1)]
    return xr.concat(parts, dim="time").sortby("time")


def apply_spread_factors(forecast: xr.Dataset, factors: xr.Dataset) -> xr.Dataset:
    """Members ``mean + factor * (member - mean)``, the factor of each variable, lead, level."""
    out = forecast.copy()
    for var in forecast.data_vars:
        if var not in factors:
            continue
        f = factors[var].sel(prediction_timedelta=forecast["prediction_timedelta"])
        if "level" in f.dims:
            f = f.sel(level=forecast["level"])
        x = forecast[var]
        mean = x.mean("number")
        out[var] = (mean + f * (x - mean)).astype(x.dtype).transpose(*x.dims)
    return out


def save_spread_factors(factors: xr.Dataset, path) -> Path:
    """``{"lead_hours": [...], "factors": {var: {level or "": [per lead]}}}``, atomically."""
    from core.io import write_json_atomic

    hours = (factors["prediction_timedelta"].values / np.timedelta64(1, "h")).tolist()
    table = {}
    for var in factors.data_vars:
        da = factors[var]
        if "level" in da.dims:
            table[var] = {str(int(lev)): da.sel(level=lev).values.tolist() for lev in da["level"].values}
        else:
            table[var] = {"": da.values.tolist()}
    write_json_atomic({"lead_hours": hours, "factors": table}, Path(path))
    return Path(path)


def load_spread_factors(path) -> xr.Dataset:
    saved = json.loads(Path(path).read_text())
    leads = (np.asarray(saved["lead_hours"]) * 3600).astype("timedelta64[s]").astype("timedelta64[ns]")
    data = {}
    for var, by_level in saved["factors"].items():
        if list(by_level) == [""]:
            data[var] = ("prediction_timedelta", np.asarray(by_level[""]))
        else:
            levels = sorted(by_level, key=int)
            data[var] = (("level", "prediction_timedelta"), np.asarray([by_level[k] for k in levels]))
    coords = {"prediction_timedelta": leads}
    if any(list(v) != [""] for v in saved["factors"].values()):
        levels = sorted({int(k) for v in saved["factors"].values() for k in v if k})
        coords["level"] = np.asarray(levels, dtype=np.int64)
    return xr.Dataset(data, coords)
