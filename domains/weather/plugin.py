"""Weather domain: ensemble forecasts on ERA5-layout stores with a sphere pyramid.

``python -m core.run domain=weather`` trains the one-step model (core trainer, examples from
``fields.py``), forecasts the held-out period (``task=forecast``, also the ``sample`` step of
``task=all``) and scores it WeatherBench2's way against the truth and against persistence and
climatology, and on the built-in stores against their limits (``oracle.py``: the exact forecast on
the linear store, the perfect-model ensemble on the QG store; ``task=evaluate``).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from core import distributed
from core.device import current as current_device
from core.hookspecs import hookimpl
from core.train import load_weights
from domains.weather import fields as F
from core.errors import MissingFileError

@hookimpl
def c2f_load_data(cfg, split):
    from domains.weather.calibrate import calibrating

    # a validation period that overlaps the others, or that the store lacks, fails before training
    if calibrating(cfg):
        F.open_period(cfg, "val")
    return F.load_split(cfg, "train" if split == "train" else "test")


@hookimpl
def c2f_scale_ops(cfg, data):
    return data.support.ops  # the sphere's scales, built on the store's grid


@hookimpl
def c2f_condition(cfg):
    """The condition is a field: the state, the last increment and the forcings (``fields.py``)."""
    channels = len(F.channel_list(cfg))
    return {"field_channels": F.cond_channels(channels), "stencil": bool(cfg.domain.stencil)}


def build_model(cfg, data):
    """The core's model for ``data`` (what train, forecast and the benchmarks use)."""
    from core.plugins import get_domain
    from core.build import build_model as core_build_model

    return core_build_model(cfg, get_domain("weather"), data)


@hookimpl
def c2f_collate(cfg, data, indices):
    indices = indices.numpy() if isinstance(indices, torch.Tensor) else indices
    return data.batch(indices, state_noise=float(cfg.domain.get("state_noise", 0.0)))


def _checkpoint(cfg, run_dir: Path) -> Path:
    return Path(cfg.checkpoint) if cfg.checkpoint else run_dir / "checkpoints" / "last.pt"


def _analyses(cfg, split: str) -> dict:
    """The period's truth on the store grid, physical units, as the forecaster consumes it."""
    ds = F.one_member(cfg, F.open_period(cfg, split))
    chans = F.channel_list(cfg)
    return {"time": ds["time"].values, "fields": F.load_fields(ds, chans), "channels": chans,
            "latitude": ds["latitude"].values, "longitude": ds["longitude"].values}


def _train_truth(cfg) -> xr.Dataset:
    """The training period's truth (the climatology's source), loaded."""
    return F.one_member(cfg, F.open_period(cfg, "train")).load()


def forecast(cfg, run_dir: Path) -> dict:
    """The test period's forecast (``forecast.zarr``). With ``domain.val_period`` set and
    ``domain.forecast.calibrate=spread`` (or ``mean_spread``), the validation period is forecast
    first, the calibration is fitted there (``calibrate.py``) and applied to the test forecast;
    the raw one is kept as ``forecast_raw.zarr``."""
    from domains.weather.calibrate import calibrate_forecast, calibrating, calibration_mode
    from domains.weather.forecast import run_forecast

    train = F.load_split(cfg, "train")
    F.save_normalizer(train, run_dir)
    model = load_weights(build_model(cfg, train), _checkpoint(cfg, run_dir)).to(current_device())
    progress = bool(cfg.progress)
    c = cfg.domain.forecast
    if not calibrating(cfg):
        if calibration_mode(cfg) != "none":
            logging.getLogger("c2f").info("domain.val_period is null: the forecast is not calibrated")
        if distributed.is_main():  # a calibrated run's raw store would be scored as this one's
            for stale in ("forecast_raw.zarr", "forecast_raw.nc", "spread_factors.json",
                          "validation.zarr"):
                path = run_dir / stale
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        distributed.barrier()
        return run_forecast(cfg, model, train, _analyses(cfg, "test"), run_dir, progress)
    val = run_forecast(cfg, model, train, _analyses(cfg, "val"), run_dir, progress, name="validation",
                       every_hours=float(c.val_every_hours), max_inits=c.val_max_inits, flops=False)
    out = run_forecast(cfg, model, train, _analyses(cfg, "test"), run_dir, progress, name="forecast_raw")
    if distributed.is_main():
        val_truth = F.one_member(cfg, F.open_period(cfg, "val")).load()
        test_truth = F.one_member(cfg, F.open_period(cfg, "test")).load()
        out.update(calibrate_forecast(run_dir, val_truth, test_truth, str(c.format) in ("netcdf", "both"),
                                      mode=calibration_mode(cfg), train_truth=_train_truth(cfg)))
    distributed.barrier()
    out["forecast/validation_inits"] = val["forecast/inits"]
    return out


def evaluate(cfg, run_dir: Path) -> dict:
    from domains.weather import scores as S
    from domains.weather.plots import forecast_maps

    path = Path(cfg.domain.forecast.path) if cfg.domain.forecast.path else run_dir / "forecast.zarr"
    if not path.exists():
        raise MissingFileError(f"forecast store not found: {path} (run task=forecast first or "
                                "set domain.forecast.path=...)")
    fc = xr.open_zarr(path, consolidated=True) if path.suffix != ".nc" else xr.open_dataset(path)
    fc = fc.load()
    truth = F.one_member(cfg, F.open_period(cfg, "test")).load()
    train_truth = _train_truth(cfg)
    init, leads = fc["time"].values, fc["prediction_timedelta"].values
    raw_path = path.with_name("forecast_raw.zarr")
    models = {
        "model": fc,
        **({"model_raw": xr.open_zarr(raw_path, consolidated=True).load()}
           if not cfg.domain.forecast.path and raw_path.exists() else {}),
        "persistence": S.persistence_forecast(truth, init, leads),
        "climatology": S.climatology_forecast(train_truth, init, leads),
        # the probabilistic reference: as many training states of nearby calendar days
        "climatology_ensemble": S.climatology_forecast(train_truth, init, leads,
                                                       members=int(fc.sizes["number"])),
    }
    from domains.weather.oracle import (LinearStoreOracle, PerfectModel, gaussian_crps,
                                        mean_against_exact, store_settings)

    exact = None
    settings = store_settings(F.store_path(cfg))
    members, variables = int(fc.sizes["number"]), list(fc.data_vars)
    if settings is not None and settings.get("model", "linear") == "linear":
        # the built-in linear store: its exact limit scores too
        oracle = LinearStoreOracle(settings)
        models["oracle"] = _on_levels(oracle.ensemble(init, leads, members, seed=int(cfg.seed),
                                                      variables=variables), fc)
        mean, std = oracle.gaussian(init, leads, variables=variables)
        if mean.data_vars:
            exact = gaussian_crps(_on_levels(mean, fc), _on_levels(std, fc), truth)
    elif settings is not None:  # the nonlinear QG store: the true model's own ensemble
        models["perfect_model"] = _on_levels(PerfectModel(F.store_path(cfg)).ensemble(
            init, leads, members, seed=int(cfg.seed), variables=variables,
            progress=bool(cfg.progress)), fc)
    scores = {name: S.score(ds, truth) for name, ds in models.items()}
    metrics: dict = {}
    if not cfg.domain.forecast.path and (run_dir / "validation.zarr").exists():
        metrics.update(_validation_scores(cfg, run_dir / "validation.zarr", settings, train_truth))
    if exact is not None:
        table = exact.expand_dims(metric=["crps"])
        metrics.update({f"oracle_exact/{k}": v for k, v in S.flatten_scores(table).items()})
        # where the model's ensemble mean departs from the exact conditional mean (persistence:
        # how far that mean moves from the initial state)
        exact_mean = _on_levels(mean, fc)
        for name in ("model", "model_raw", "persistence"):
            if name in models:
                metrics.update(_named(name, S.flatten_scores(mean_against_exact(models[name], exact_mean, truth))))
    for name, table in scores.items():
        metrics.update(_named(name, S.flatten_scores(table)))
        S.save_scores(table, run_dir / "scores" / name)
    S.scorecard_png(scores, run_dir / "scorecard_crps.png", metric="crps")
    S.scorecard_png(scores, run_dir / "scorecard_rmse.png", metric="rmse")
    S.rank_histogram_png(S.rank_histogram(fc, truth, seed=int(cfg.seed)), run_dir / "rank_histograms.png")

    # one map: the headline channel at a chosen lead of the first initial time
    e = cfg.domain.evaluate
    var, level = _parse_channel(str(e.map_channel), F.channel_list(cfg))
    lead = leads[min(int(e.map_lead_steps), len(leads)) - 1]
    sel = {"time": init[0], "prediction_timedelta": lead}
    if level is not None:
        sel["level"] = level
    members = fc[var].sel(sel).transpose("number", "latitude", "longitude").values
    valid = init[0] + lead
    tsel = {"time": valid} if level is None else {"time": valid, "level": level}
    forecast_maps(truth[var].sel(tsel).transpose("latitude", "longitude").values, members,
                  fc["latitude"].values, fc["longitude"].values,
                  f"{e.map_channel}, init {pd.Timestamp(init[0]):%Y-%m-%d %H}UTC, "
                  f"lead {lead / np.timedelta64(1, 'h'):g} h", run_dir / "forecast_maps.png")
    return metrics


def _validation_scores(cfg, path: Path, settings: dict | None, train_truth: xr.Dataset) -> dict:
    """The validation period's forecasts scored (``val/...`` keys): what settings are chosen on,
    so that the test period is scored once. The model's calibration is cross-fitted
    (``calibrate.cross_fitted``, the run's ``domain.forecast.calibrate``); beside it the raw
    forecast, persistence and, on the linear store, the oracle ensemble of the same size (the
    ratio's denominator)."""
    from domains.weather import scores as S
    from domains.weather.calibrate import calibration_mode, cross_fitted
    from domains.weather.oracle import LinearStoreOracle

    raw = xr.open_zarr(path, consolidated=True).load()
    truth = F.one_member(cfg, F.open_period(cfg, "val")).load()
    init, leads = raw["time"].values, raw["prediction_timedelta"].values
    mode = calibration_mode(cfg)
    models = {"model": cross_fitted(raw, truth, mode, train_truth) if mode != "none" else raw,
              "model_raw": raw,
              "persistence": S.persistence_forecast(truth, init, leads)}
    if settings is not None and settings.get("model", "linear") == "linear":
        models["oracle"] = _on_levels(LinearStoreOracle(settings).ensemble(
            init, leads, int(raw.sizes["number"]), seed=int(cfg.seed), variables=list(raw.data_vars)), raw)
    out = {}
    for name, ds in models.items():
        out.update({f"val/{k}": v for k, v in _named(name, S.flatten_scores(S.score(ds, truth))).items()})
    return out


def _named(name: str, flat: dict) -> dict:
    """Metric keys of forecast ``name``: the model's bare, every other one under its name."""
    return flat if name == "model" else {f"{name}/{k}": v for k, v in flat.items()}


def _on_levels(ds: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """``ds`` on the levels and coordinates of the forecast ``like``."""
    if "level" in ds.dims and "level" in like.dims:
        ds = ds.sel(level=like["level"].values)
    return ds.assign_coords(latitude=like["latitude"].values, longitude=like["longitude"].values)


def _parse_channel(name: str, chans) -> tuple[str, int | None]:
    from domains.weather.data import channel_name

    for var, level in chans:
        if channel_name(var, level) == name:
            return var, level
    raise ValueError(f"unknown channel '{name}'; the run has "
                     f"{', '.join(channel_name(v, lev) for v, lev in chans)}")


@hookimpl
def c2f_free_settings(cfg):
    return ["forecast", "evaluate", "val_period"]  # the validation period only calibrates


@hookimpl
def c2f_run_task(cfg, task, run_dir):
    run_dir = Path(run_dir)
    if task in ("sample", "forecast"):
        return forecast(cfg, run_dir)
    if task == "evaluate":
        return evaluate(cfg, run_dir) if distributed.is_main() else {}
    return None
