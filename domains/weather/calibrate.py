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

``calibrate=mean_spread`` first corrects the ensemble mean, EMOS-style: a one-step model's mean
drifts in a long rollout (its own errors compound), while the truth's predictable part decays
towards climatology. At each lead and channel two weights are fitted by area-weighted least
squares of the observed change from the initial state x0 on two predictors, the forecast mean's
change and the climatology's (``scores.climatology_forecast`` of the training period),

    y - x0 ~ a (m - x0) + b (c - x0),

and every member is shifted so that the ensemble mean becomes x0 + a (m - x0) + b (c - x0); the
deviations from the mean are untouched, and the spread factors are then fitted on the shifted
forecasts. The weights are saved beside the factors (``mean_weights`` in ``spread_factors.json``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from domains.weather.scores import _aligned, _spatial_mean, _weights, flatten_scores, spread_skill

MODES = ("none", "spread", "mean_spread")
PREDICTORS = ("forecast", "climatology")   # of the mean correction (mean_spread)


def calibration_mode(cfg) -> str:
    """``domain.forecast.calibrate``, checked: one of ``MODES``."""
    mode = str(cfg.domain.forecast.get("calibrate", "none"))
    if mode not in MODES:
        raise ValueError(f"domain.forecast.calibrate must be one of {', '.join(MODES)}, got '{mode}'")
    return mode


def calibrating(cfg) -> bool:
    """Whether this run calibrates: a calibration mode other than none and a validation period
    (checked against the training and test periods)."""
    from domains.weather.fields import val_period

    return calibration_mode(cfg) != "none" and val_period(cfg) is not None


def calibrate_forecast(run_dir, val_truth: xr.Dataset, test_truth: xr.Dataset, netcdf: bool,
                       mode: str = "spread", train_truth: xr.Dataset | None = None) -> dict:
    """Fit the calibration (``mode``) on ``<run_dir>/validation.zarr`` against ``val_truth``,
    write it and the calibrated ``forecast.zarr`` (and ``.nc``) from ``forecast_raw.zarr``
    (whose initial states are read from ``test_truth``); its metrics. ``mean_spread`` also needs
    the training period's truth (``train_truth``), whose climatology is a predictor."""
    from domains.weather.forecast import write_forecast_store

    run_dir = Path(run_dir)
    val_fc = xr.open_zarr(run_dir / "validation.zarr", consolidated=True).load()
    weights, factors = fit_calibration(val_fc, val_truth, mode, train_truth)
    save_spread_factors(factors, run_dir / "spread_factors.json", weights)
    raw = xr.open_zarr(run_dir / "forecast_raw.zarr", consolidated=True).load()
    calibrated = apply_calibration(raw, test_truth, weights, factors, train_truth)
    what = "mean weights and spread factors" if weights is not None else "spread factors"
    calibrated.attrs["calibration"] = f"{what} of spread_factors.json (raw: forecast_raw.zarr)"
    write_forecast_store(calibrated, run_dir / "forecast.zarr", netcdf)
    out = flatten_scores(factors.expand_dims(metric=["spread_factor"]))
    if weights is not None:
        for name in PREDICTORS:
            out.update(flatten_scores(weights.sel(predictor=name, drop=True)
                                      .expand_dims(metric=[f"mean_weight_{name}"])))
    return out


def fit_calibration(forecast: xr.Dataset, truth: xr.Dataset, mode: str,
                    train_truth: xr.Dataset | None = None):
    """``(mean weights or None, spread factors)`` of ``mode`` fitted on ``forecast``; the
    factors are fitted after the mean is corrected."""
    if mode not in ("spread", "mean_spread"):
        raise ValueError(f"no calibration to fit for mode '{mode}'")
    weights = None
    if mode == "mean_spread":
        if train_truth is None:
            raise ValueError("calibrate=mean_spread needs the training period's truth (its climatology)")
        predictors = _predictors(forecast, truth, train_truth)  # the climatology once, for both
        weights = fit_mean_weights(forecast, truth, train_truth, predictors)
        forecast = apply_mean_weights(forecast, truth, weights, train_truth, predictors)
    return weights, fit_spread_factors(forecast, truth)


def apply_calibration(forecast: xr.Dataset, truth: xr.Dataset, weights, factors,
                      train_truth: xr.Dataset | None = None) -> xr.Dataset:
    """The mean correction (if ``weights``; the initial states are read from ``truth``, the
    climatology from ``train_truth``), then the spread factors."""
    if weights is not None:
        forecast = apply_mean_weights(forecast, truth, weights, train_truth)
    return apply_spread_factors(forecast, factors)


def _predictors(forecast: xr.Dataset, truth: xr.Dataset, train_truth: xr.Dataset):
    """``x0``, the ensemble mean's change ``m - x0`` and the climatology's ``c - x0``."""
    from domains.weather.scores import climatology_forecast

    names = list(forecast.data_vars)
    init = forecast["time"].values.astype("datetime64[ns]")
    missing = np.setdiff1d(init, truth["time"].values.astype("datetime64[ns]"))
    if missing.size:
        raise ValueError(f"the truth lacks {missing.size} initial times (first: {str(missing[0])[:19]}); "
                         "the mean correction needs the initial states")
    clim = climatology_forecast(train_truth[names], init, forecast["prediction_timedelta"].values)
    x0 = truth[names].sel(time=init).assign_coords(time=forecast["time"].values)
    clim = clim.isel(number=0, drop=True)
    if "level" in forecast.dims:
        x0, clim = (d.sel(level=forecast["level"].values) for d in (x0, clim))
    clim = clim.assign_coords(latitude=forecast["latitude"].values, longitude=forecast["longitude"].values)
    return x0, forecast.mean("number") - x0, clim - x0


def fit_mean_weights(forecast: xr.Dataset, truth: xr.Dataset, train_truth: xr.Dataset,
                     predictors=None) -> xr.Dataset:
    """Weights ``a, b`` per variable, lead (and level), along ``predictor``: the area-weighted
    least-squares fit of the observed change ``y - x0`` on ``a (m - x0) + b (c - x0)``
    (``predictors``: ``_predictors`` of these forecasts, if already computed)."""
    x0, change, towards_clim = predictors or _predictors(forecast, truth, train_truth)
    observed = _aligned(forecast, truth) - x0
    w = _weights(forecast, None)

    def mean(x):
        return _spatial_mean(x, w).mean("time")

    a11, a12, a22 = mean(change ** 2), mean(change * towards_clim), mean(towards_clim ** 2)
    b1, b2 = mean(change * observed), mean(towards_clim * observed)
    det = a11 * a22 - a12 ** 2
    a, b = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
    # collinear predictors (a mean that does not move, a forecast that is climatology) leave
    # nothing to fit: the mean stays as forecast (a = 1, b = 0) rather than taking 1e16 weights
    ok = np.isfinite(a) & np.isfinite(b) & (det > 1e-9 * a11 * a22) & (abs(a) < 10) & (abs(b) < 10)
    return xr.concat([a.where(ok, 1.0), b.where(ok, 0.0)],
                     dim=xr.DataArray(list(PREDICTORS), dims="predictor"))


def apply_mean_weights(forecast: xr.Dataset, truth: xr.Dataset, weights: xr.Dataset,
                       train_truth: xr.Dataset, predictors=None) -> xr.Dataset:
    """Members shifted so that the ensemble mean becomes ``x0 + a (m - x0) + b (c - x0)``; the
    deviations from the mean are unchanged."""
    _, change, towards_clim = predictors or _predictors(forecast, truth, train_truth)
    out = forecast.copy()
    for var in forecast.data_vars:
        if var not in weights:
            continue
        a = _on_forecast(weights[var].sel(predictor="forecast", drop=True), forecast)
        b = _on_forecast(weights[var].sel(predictor="climatology", drop=True), forecast)
        x = forecast[var]
        shift = (a - 1) * change[var] + b * towards_clim[var]
        out[var] = (x + shift).astype(x.dtype).transpose(*x.dims)
    return out


def _on_forecast(table: xr.DataArray, forecast: xr.Dataset) -> xr.DataArray:
    """A per-lead (and level) table on the forecast's leads and levels."""
    table = table.sel(prediction_timedelta=forecast["prediction_timedelta"])
    return table.sel(level=forecast["level"]) if "level" in table.dims else table


def fit_spread_factors(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """One factor per variable, lead (and level): skill / corrected spread on these forecasts."""
    ratio = spread_skill(forecast, truth)
    factor = 1.0 / ratio
    # no spread (identical members, up to rounding) or no error: nothing to scale, rather than
    # a factor of 1e16 or 0
    return factor.where(np.isfinite(factor) & (factor > 1e-3) & (factor < 1e3), 1.0)


def cross_fitted(forecast: xr.Dataset, truth: xr.Dataset, mode: str = "spread",
                 train_truth: xr.Dataset | None = None) -> xr.Dataset:
    """``forecast`` calibrated out of sample: its initial times are split into two alternating
    halves and each half gets the calibration (``mode``) fitted on the other, so that no
    forecast is corrected by a fit to itself. This is how a validation score of a calibrated
    model is fair: fitted on the whole period, the factors would make spread/skill exactly 1."""
    n = forecast.sizes["time"]
    if n < 2:
        raise ValueError(f"cross-fitting needs at least 2 initial times, the forecast has {n}; "
                         "raise domain.forecast.val_max_inits")
    halves = [forecast.isel(time=slice(i, None, 2)) for i in (0, 1)]
    parts = [apply_calibration(halves[i], truth,
                               *fit_calibration(halves[1 - i], truth, mode, train_truth), train_truth)
             for i in (0, 1)]
    return xr.concat(parts, dim="time").sortby("time")


def apply_spread_factors(forecast: xr.Dataset, factors: xr.Dataset) -> xr.Dataset:
    """Members ``mean + factor * (member - mean)``, the factor of each variable, lead, level."""
    out = forecast.copy()
    for var in forecast.data_vars:
        if var not in factors:
            continue
        f = _on_forecast(factors[var], forecast)
        x = forecast[var]
        mean = x.mean("number")
        out[var] = (mean + f * (x - mean)).astype(x.dtype).transpose(*x.dims)
    return out


def save_spread_factors(factors: xr.Dataset, path, weights: xr.Dataset | None = None) -> Path:
    """``{"lead_hours": [...], "factors": {var: {level or "": [per lead]}}}`` and, with a mean
    correction, ``"mean_weights": {predictor: {var: ...}}`` laid out alike; atomically."""
    from core.io import write_json_atomic

    hours = (factors["prediction_timedelta"].values / np.timedelta64(1, "h")).tolist()
    saved = {"lead_hours": hours, "factors": _table(factors)}
    if weights is not None:
        saved["mean_weights"] = {name: _table(weights.sel(predictor=name, drop=True)) for name in PREDICTORS}
    write_json_atomic(saved, Path(path))
    return Path(path)


def _table(ds: xr.Dataset) -> dict:
    table = {}
    for var in ds.data_vars:
        da = ds[var].transpose(*[d for d in ("level", "prediction_timedelta") if d in ds[var].dims])
        if "level" in da.dims:
            table[var] = {str(int(lev)): da.sel(level=lev).values.tolist() for lev in da["level"].values}
        else:
            table[var] = {"": da.values.tolist()}
    return table


def load_spread_factors(path) -> xr.Dataset:
    saved = json.loads(Path(path).read_text())
    return _from_table(saved["factors"], saved["lead_hours"])


def load_mean_weights(path) -> xr.Dataset | None:
    """The mean correction's weights saved beside the factors; None for a spread-only one."""
    saved = json.loads(Path(path).read_text())
    if "mean_weights" not in saved:
        return None
    return xr.concat([_from_table(saved["mean_weights"][name], saved["lead_hours"]) for name in PREDICTORS],
                     dim=xr.DataArray(list(PREDICTORS), dims="predictor"))


def _from_table(table: dict, lead_hours) -> xr.Dataset:
    leads = (np.asarray(lead_hours) * 3600).astype("timedelta64[s]").astype("timedelta64[ns]")
    data = {}
    for var, by_level in table.items():
        if list(by_level) == [""]:
            data[var] = ("prediction_timedelta", np.asarray(by_level[""]))
        else:
            levels = sorted(by_level, key=int)
            data[var] = (("level", "prediction_timedelta"), np.asarray([by_level[k] for k in levels]))
    coords = {"prediction_timedelta": leads}
    if any(list(v) != [""] for v in table.values()):
        levels = sorted({int(k) for v in table.values() for k in v if k})
        coords["level"] = np.asarray(levels, dtype=np.int64)
    return xr.Dataset(data, coords)
