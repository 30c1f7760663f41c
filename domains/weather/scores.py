"""Ensemble forecast scores with WeatherBench2 (WB2) definitions, on xarray.

Layouts (WB2 names throughout):

* forecast: ``time`` (initialisation), ``prediction_timedelta`` (lead, timedelta64), ``number``
  (member; added with one member when absent), optionally ``level``, then the spatial dims
  (``latitude``, ``longitude``, or any other, e.g. HEALPix pixels, then weighted uniformly);
* truth: ``time`` (valid time), optionally ``level``, the same spatial dims.

Every metric is a spatial mean weighted by cell area (``sphere.area_weights``, mean 1) at each
(init, lead), then a mean over initialisations; ``score`` returns one Dataset with a ``metric``
dimension and ``flatten_scores`` the flat ``dict`` that goes into metrics.json
(``crps/z500/72h``). Baselines (persistence, climatology) come out in the forecast layout so the
same code scores them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from core.io import atomic_path
from domains.weather.data import SHORT_NAMES
from domains.weather.sphere import area_weights

METRICS = ("rmse", "crps", "spread_skill")
_NON_SPATIAL = ("time", "prediction_timedelta", "number", "level", "metric", "rank")
_HOUR = np.timedelta64(1, "h")


# ------------------------------------------------------------------------------------- helpers

def _as_times(times) -> np.ndarray:
    return pd.DatetimeIndex(np.atleast_1d(np.asarray(times))).values.astype("datetime64[ns]")


def _as_leads(leads) -> np.ndarray:
    """Leads as timedelta64[ns]; plain numbers are hours."""
    arr = np.atleast_1d(np.asarray(leads))
    leads = pd.to_timedelta(arr, unit="h") if arr.dtype.kind in "iuf" else pd.to_timedelta(arr)
    return leads.values.astype("timedelta64[ns]")


def _with_members(fc: xr.Dataset) -> xr.Dataset:
    return fc if "number" in fc.dims else fc.expand_dims(number=[0], axis=2)


def _weights(ds, weights):
    """Area weights over latitude as a DataArray (None: uniform, when there is no latitude)."""
    if weights is None:
        if "latitude" not in ds.dims:
            return None
        weights = area_weights(ds["latitude"].values)
    if not isinstance(weights, xr.DataArray):
        weights = xr.DataArray(np.asarray(weights, float), dims="latitude",
                               coords={"latitude": ds["latitude"].values})
    return weights


def _spatial_mean(x, w):
    dims = [d for d in x.dims if d not in _NON_SPATIAL]
    return x.weighted(w).mean(dims) if w is not None else x.mean(dims)


def _aligned(fc, truth):
    return truth if "prediction_timedelta" in truth.dims else align_truth(fc, truth)


def align_truth(forecast: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """Truth at valid time = init + lead, laid out (time=init, prediction_timedelta, ...).

    Only the forecast's variables and levels are kept; spatial coordinates must match (regrid
    first), since xarray would otherwise silently score the intersection of two grids.
    """
    for dim in ("time", "prediction_timedelta"):
        if dim not in forecast.dims:
            raise ValueError(f"forecast lacks the '{dim}' dimension (WB2 forecast layout)")
    names = [v for v in forecast.data_vars]
    absent = [v for v in names if v not in truth.data_vars]
    if absent:
        raise ValueError(f"truth lacks the forecast variables {absent}")
    truth = truth[names]
    if "level" in forecast.dims and "level" in truth.dims:
        lacking = np.setdiff1d(forecast["level"].values, truth["level"].values)
        if lacking.size:
            raise ValueError(f"truth lacks the levels {lacking.tolist()}")
        truth = truth.sel(level=forecast["level"].values)
    for dim in ("latitude", "longitude"):
        if dim in forecast.dims and not (
                dim in truth.dims and truth.sizes[dim] == forecast.sizes[dim]
                and np.allclose(truth[dim].values, forecast[dim].values)):
            raise ValueError(f"forecast and truth differ in '{dim}'; put both on one grid")
    valid = (forecast["time"] + forecast["prediction_timedelta"]).values.astype("datetime64[ns]")
    have = truth["time"].values.astype("datetime64[ns]")
    missing = np.setdiff1d(np.unique(valid), have)
    if missing.size:
        shown = ", ".join(str(t)[:19] for t in missing[:10])
        more = f" (and {missing.size - 10} more)" if missing.size > 10 else ""
        raise ValueError(f"truth lacks {missing.size} valid times: {shown}{more}")
    out = truth.sel(time=xr.DataArray(valid, dims=("time", "prediction_timedelta")))
    return out.drop_vars("time").assign_coords(
        time=forecast["time"].values, prediction_timedelta=forecast["prediction_timedelta"].values,
        valid_time=(("time", "prediction_timedelta"), valid))


# ------------------------------------------------------------------------------------- metrics

def rmse_ensemble_mean(fc: xr.Dataset, truth: xr.Dataset, weights=None) -> xr.Dataset:
    """RMSE of the ensemble mean per lead (and level): sqrt AFTER the mean over inits (WB2),
    i.e. the root of the mean squared error, not the mean of per-init RMSEs."""
    fc = _with_members(fc)
    err = fc.mean("number") - _aligned(fc, truth)
    return np.sqrt(_spatial_mean(err ** 2, _weights(fc, weights)).mean("time"))


def _fair_spread(x: np.ndarray) -> np.ndarray:
    """sum_{i != j} |x_i - x_j| / (2 M (M - 1)) over the last axis in O(M log M): with x sorted,
    sum_{i,j} |x_i - x_j| = 2 sum_k (2k - M + 1) x_(k)."""
    m = x.shape[-1]
    coeff = 2 * np.arange(m) - m + 1
    return np.sort(x, axis=-1) @ coeff / (m * (m - 1))


def crps_fair_pointwise(fc: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """Fair (unbiased in ensemble size) CRPS at every point, before any averaging."""
    fc = _with_members(fc)
    skill = abs(fc - _aligned(fc, truth)).mean("number")
    if fc.sizes["number"] == 1:  # the spread term vanishes: CRPS is the absolute error
        return skill
    spread = xr.apply_ufunc(_fair_spread, fc, input_core_dims=[["number"]],
                            dask="parallelized", output_dtypes=[float])
    return skill - spread


def crps_fair(fc: xr.Dataset, truth: xr.Dataset, weights=None) -> xr.Dataset:
    """Fair CRPS = mean_i |x_i - y| - sum_{i!=j} |x_i - x_j| / (2 M (M-1)), spatially weighted
    mean, then mean over inits (the fair estimator of WeatherBench's ``CRPSEnsemble``)."""
    return _spatial_mean(crps_fair_pointwise(fc, truth), _weights(fc, weights)).mean("time")


def spread_skill(fc: xr.Dataset, truth: xr.Dataset, weights=None,
                 correct: bool = True) -> xr.Dataset:
    """Spread/skill ratio: sqrt(mean over inits of the weighted mean ensemble variance, ddof=1)
    divided by the RMSE of the ensemble mean.

    Finite-ensemble correction (``correct=True``, Fortin et al. 2014): the spread is multiplied
    by sqrt((M + 1) / M). For an ensemble whose M members and the truth are exchangeable draws,
    the expected squared error of the ensemble mean is (1 + 1/M) sigma^2 while the expected
    ddof=1 variance is sigma^2, so the corrected ratio is ~1 for a perfectly calibrated ensemble
    of any size (uncorrected: sqrt(M / (M + 1)), 0.95 for M = 10). ``correct=False`` gives the
    plain ratio of the WeatherBench code's ``SpreadSkillRatio`` (its ``UnbiasedSpreadSkillRatio``
    instead subtracts var / M from the squared error: the same correction in expectation).
    NaN for M < 2.
    """
    fc = _with_members(fc)
    truth = _aligned(fc, truth)
    skill = rmse_ensemble_mean(fc, truth, weights)
    m = fc.sizes["number"]
    if m < 2:
        return skill * np.nan
    var = fc.var("number", ddof=1)
    spread = np.sqrt(_spatial_mean(var, _weights(fc, weights)).mean("time"))
    return spread * (np.sqrt((m + 1) / m) if correct else 1.0) / skill


def _bincount_last(ranks: np.ndarray, n_core: int, nbins: int) -> np.ndarray:
    lead = ranks.shape[: ranks.ndim - n_core]
    flat = ranks.reshape(-1, int(np.prod(ranks.shape[ranks.ndim - n_core:])))
    index = np.arange(flat.shape[0])[:, None] * nbins + flat
    return np.bincount(index.ravel(), minlength=flat.shape[0] * nbins).reshape(*lead, nbins)


def rank_histogram(fc: xr.Dataset, truth: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """Counts of the truth's rank among the M members: M + 1 bins (``rank`` 0..M) per lead (and
    level), pooled over inits and space, unweighted. Ties (e.g. members equal to the truth) are
    broken uniformly at random with a seeded generator, so a flat histogram stays flat."""
    fc = _with_members(fc)
    truth = _aligned(fc, truth)
    m = fc.sizes["number"]
    rng = np.random.default_rng(seed)
    out = {}
    for name in fc.data_vars:
        x, y = fc[name], truth[name]
        below = (x < y).sum("number")
        ties = (x == y).sum("number")
        rank = below + np.floor(ties.copy(data=rng.random(ties.shape)) * (ties + 1)).astype(int)
        core = [d for d in rank.dims if d not in ("prediction_timedelta", "level")]
        counts = xr.apply_ufunc(_bincount_last, rank, input_core_dims=[core],
                                output_core_dims=[["rank"]],
                                kwargs={"n_core": len(core), "nbins": m + 1})
        out[name] = counts.assign_coords(rank=np.arange(m + 1))
    return xr.Dataset(out)


def score(forecast: xr.Dataset, truth: xr.Dataset, variables=None, weights=None,
          correct_spread: bool = True) -> xr.Dataset:
    """rmse, crps, spread_skill per variable (and level) and lead: a Dataset with a ``metric``
    dimension. Rank histograms are separate (``rank_histogram``): they add a dimension."""
    names = list(variables) if variables is not None else list(forecast.data_vars)
    absent = [v for v in names if v not in forecast.data_vars]
    if absent:
        raise ValueError(f"forecast lacks the variables {absent}")
    fc = _with_members(forecast[names])
    y = align_truth(fc, truth)
    parts = [rmse_ensemble_mean(fc, y, weights), crps_fair(fc, y, weights),
             spread_skill(fc, y, weights, correct=correct_spread)]
    out = xr.concat(parts, dim="metric", coords="minimal", compat="override")
    out = out.assign_coords(metric=np.array(METRICS))
    out.attrs = {"ensemble_size": int(fc.sizes["number"]),  # not the inputs' attributes
                 "spread_skill_correction": "sqrt((M+1)/M)" if correct_spread else "none"}
    return out


# ------------------------------------------------------------------------------ tables, output

def short_name(variable: str, level=None) -> str:
    """``geopotential`` at 500 -> ``z500``; unknown names are kept as they are."""
    name = SHORT_NAMES.get(variable, variable)
    return name if level is None else f"{name}{float(level):g}"


def _lead_label(lead) -> str:
    return f"{float(np.timedelta64(lead, 'ns') / _HOUR):g}h"


def scores_table(ds: xr.Dataset) -> pd.DataFrame:
    """Long table: metric, variable, level (NaN for surface variables), lead_hours, value."""
    frames = []
    for name, da in ds.data_vars.items():
        df = da.to_dataframe(name="value").reset_index()
        df["variable"] = name
        if "level" not in df:
            df["level"] = np.nan
        df["lead_hours"] = df["prediction_timedelta"] / pd.Timedelta(hours=1)
        frames.append(df[["metric", "variable", "level", "lead_hours", "value"]])
    return pd.concat(frames, ignore_index=True)


def flatten_scores(ds: xr.Dataset) -> dict:
    """``{"crps/z500/72h": value, ...}`` for metrics.json; non-finite values (e.g. the
    spread/skill of a one-member forecast) are left out so the JSON stays standard."""
    out = {}
    for row in scores_table(ds).itertuples(index=False):
        if not np.isfinite(row.value):
            continue
        level = None if pd.isna(row.level) else row.level
        lead = f"{row.lead_hours:g}h"
        out[f"{row.metric}/{short_name(row.variable, level)}/{lead}"] = float(row.value)
    return out


def save_scores(ds: xr.Dataset, folder) -> tuple[Path, Path]:
    """Write ``scores.nc`` (the Dataset) and ``scores.csv`` (``scores_table``), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nc, csv = folder / "scores.nc", folder / "scores.csv"
    with atomic_path(nc) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    with atomic_path(csv) as tmp:
        scores_table(ds).to_csv(tmp, index=False)
    return nc, csv


def _panels(datasets, metric=None):
    """(variable, level) pairs in first-seen order over all datasets."""
    seen = []
    for ds in datasets:
        for name, da in ds.data_vars.items():
            if metric is not None and ("metric" not in da.dims or metric not in da["metric"]):
                continue
            for level in (da["level"].values if "level" in da.dims else [None]):
                if (name, level) not in seen:
                    seen.append((name, level))
    return seen


def _figure(n_panels: int):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    ncol = min(4, n_panels)
    nrow = -(-n_panels // ncol)
    fig = Figure(figsize=(3.4 * ncol, 2.8 * nrow), layout="constrained")
    return fig, [fig.add_subplot(nrow, ncol, i + 1) for i in range(n_panels)]


def _select(da: xr.DataArray, level):
    if level is None:
        return da if "level" not in da.dims else None
    if "level" not in da.dims or level not in da["level"]:
        return None
    return da.sel(level=level)


def scorecard_png(scores_by_model: dict, path, metric: str = "crps") -> Path:
    """``metric`` against lead time, one panel per variable (and level), one line per model."""
    panels = _panels(scores_by_model.values(), metric)
    if not panels:
        raise ValueError(f"no scores hold the metric '{metric}'")
    fig, axes = _figure(len(panels))
    for ax, (name, level) in zip(axes, panels):
        for model, ds in scores_by_model.items():
            if name not in ds or metric not in ds["metric"]:
                continue
            da = _select(ds[name].sel(metric=metric), level)
            if da is None:
                continue
            hours = da["prediction_timedelta"].values / _HOUR
            ax.plot(hours, da.values, marker="o", ms=3, label=model)
        if metric == "spread_skill":
            ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        ax.set_title(short_name(name, level))
        ax.set_xlabel("lead time [h]")
        ax.set_ylabel(metric)
    axes[0].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def rank_histogram_png(hists_by_model, path, lead=None) -> Path:
    """Rank histograms as densities over the normalised rank (flat = 1 for any ensemble size),
    one panel per variable (and level), one line per model; summed over leads unless ``lead``
    (a timedelta or hours) picks one. ``hists_by_model``: ``rank_histogram`` output (one Dataset
    or a dict model -> Dataset).
    """
    if isinstance(hists_by_model, xr.Dataset):
        hists_by_model = {"model": hists_by_model}
    panels = _panels(hists_by_model.values())
    fig, axes = _figure(len(panels))
    for ax, (name, level) in zip(axes, panels):
        for model, ds in hists_by_model.items():
            da = _select(ds[name], level) if name in ds else None
            if da is None:
                continue
            if lead is not None:
                da = da.sel(prediction_timedelta=_as_leads(lead)[0])
            counts = da.sum([d for d in da.dims if d != "rank"]).values.astype(float)
            bins = counts.size
            ax.stairs(counts / counts.sum() * bins, np.linspace(0, 1, bins + 1), label=model)
        ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        ax.set_title(short_name(name, level))
        ax.set_xlabel("normalised rank")
        ax.set_ylabel("density")
    axes[0].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


# ------------------------------------------------------------------------------------ baselines

def persistence_forecast(truth: xr.Dataset, init_times, leads) -> xr.Dataset:
    """The state at initialisation, repeated for every lead: one member. Leads are timedeltas
    or numbers of hours."""
    init, leads = _as_times(init_times), _as_leads(leads)
    missing = np.setdiff1d(init, truth["time"].values.astype("datetime64[ns]"))
    if missing.size:
        raise ValueError(f"truth lacks the initial times {[str(t)[:19] for t in missing[:10]]}")
    x0 = truth.sel(time=init)
    fc = x0.expand_dims({"prediction_timedelta": leads, "number": [0]})
    return fc.transpose("time", "prediction_timedelta", "number", ...)


def climatology_forecast(train_truth: xr.Dataset, init_times, leads, window_days: float = 15,
                         members: int | None = None) -> xr.Dataset:
    """Climatology of the training period for each valid time = init + lead.

    ``members=None``: one member, the mean over training times with the valid time's hour of
    day whose day of year lies within ``±window_days`` (circular, a box window): WB2's
    day-of-year-and-hour climatology, smoothed over days. ``members=M``: a climatological
    ensemble of M training states, the same hour on the nearest calendar days (so the same day
    in the M most recent years when the training period is long enough, the M nearest days in a
    short one); its spread is the climatological spread, which makes its CRPS meaningful.

    Short training periods fall back gracefully: if no training time has the valid time's hour,
    all hours are used; if none lies within the window, the nearest day(s) are used. Training
    data is read lazily (``dot``/vectorised indexing), so a dask-backed store stays chunked.
    """
    init, leads = _as_times(init_times), _as_leads(leads)
    valid = init[:, None] + leads[None, :]
    uniq, inverse = np.unique(valid, return_inverse=True)
    inverse = inverse.reshape(valid.shape)
    train_t = pd.DatetimeIndex(train_truth["time"].values)
    if len(train_t) == 0:
        raise ValueError("climatology_forecast needs a non-empty training period")
    vt = pd.DatetimeIndex(uniq)
    doy_dist = np.abs(vt.day_of_year.values[:, None] - train_t.day_of_year.values[None, :]) \
        .astype(float)
    doy_dist = np.minimum(doy_dist, 365.25 - doy_dist)
    hour = lambda t: t.hour + t.minute / 60 + t.second / 3600  # noqa: E731
    same_hour = np.isclose(hour(vt).values[:, None], hour(train_t).values[None, :])
    same_hour[~same_hour.any(1)] = True  # no training time at this hour: use every hour
    train = train_truth.rename(time="train_time")

    if members is None:
        pool = same_hour & (doy_dist <= window_days + 0.5)
        for u in np.flatnonzero(~pool.any(1)):  # nothing in the window: nearest day(s)
            pool[u] = same_hour[u] & (doy_dist[u] == doy_dist[u][same_hour[u]].min())
        weights = xr.DataArray(pool / pool.sum(1, keepdims=True), dims=("valid", "train_time"))
        clim = xr.Dataset({v: train[v].dot(weights, dim="train_time") for v in train.data_vars})
        out = clim.isel(valid=xr.DataArray(inverse, dims=("time", "prediction_timedelta")))
        out = out.expand_dims(number=[0])
    else:
        if not 1 <= members <= len(train_t):
            raise ValueError(f"members must be in 1..{len(train_t)} (training times), "
                             f"got {members}")
        recent_first = -train_t.asi8
        idx = np.stack([np.lexsort((recent_first, doy_dist[u], ~same_hour[u]))[:members]
                        for u in range(len(vt))])
        pick = xr.DataArray(idx[inverse], dims=("time", "prediction_timedelta", "number"))
        out = train.isel(train_time=pick).drop_vars("train_time", errors="ignore")
        out = out.assign_coords(number=np.arange(members))
    out = out.assign_coords(time=init, prediction_timedelta=leads)
    out.attrs["baseline"] = (f"climatology mean, ±{window_days} days, same hour"
                             if members is None else f"climatological ensemble of {members}")
    return out.transpose("time", "prediction_timedelta", "number", ...)
