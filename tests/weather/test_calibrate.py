"""Spread calibration: factors fitted on a validation period, applied to the test forecast."""
import json

import numpy as np
import pytest
import xarray as xr

from core.run import compose_config, run
from domains.weather.calibrate import (apply_calibration, apply_spread_factors, cross_fitted,
                                       fit_calibration, fit_spread_factors, load_mean_weights,
                                       load_spread_factors, save_spread_factors)
from domains.weather.scores import crps_fair, rmse_ensemble_mean, spread_skill


def _ensemble(spread: float, seed: int = 0):
    """A forecast whose members have ``spread`` times the spread of the truth's errors."""
    rng = np.random.default_rng(seed)
    shape = (6, 3, 8, 2, 5, 10)          # time, lead, member, level, lat, lon
    mean = rng.standard_normal(shape[:2] + shape[3:])
    truth_err = rng.standard_normal(mean.shape)
    members = mean[:, :, None] + spread * rng.standard_normal(shape)
    coords = {"time": np.arange(6).astype("datetime64[D]").astype("datetime64[ns]"),
              "prediction_timedelta": (np.arange(1, 4) * 24).astype("timedelta64[h]").astype("timedelta64[ns]"),
              "number": np.arange(8), "level": [500, 850],
              "latitude": np.linspace(-60, 60, 5), "longitude": np.arange(10) * 36.0}
    fc = xr.Dataset({"geopotential": (("time", "prediction_timedelta", "number", "level", "latitude", "longitude"), members)}, coords)
    valid = (coords["time"][:, None] + coords["prediction_timedelta"][None]).ravel()
    truth_values = (mean + truth_err).reshape((-1,) + mean.shape[2:])
    # the truth as an analysis series at the valid times (these do not overlap across inits
    # only if each valid time has one truth: keep the first)
    _, first = np.unique(valid, return_index=True)
    truth = xr.Dataset({"geopotential": (("time", "level", "latitude", "longitude"), truth_values[first])},
                       {"time": valid[first], "level": [500, 850], "latitude": coords["latitude"],
                        "longitude": coords["longitude"]})
    return fc, truth


def test_factors_make_the_fitted_forecast_calibrated_and_keep_its_mean(tmp_path):
    fc, truth = _ensemble(spread=0.5)
    before = spread_skill(fc, truth)["geopotential"]
    assert float(before.max()) < 0.8                                    # too narrow
    factors = fit_spread_factors(fc, truth)
    assert float(factors["geopotential"].min()) > 1.2
    fixed = apply_spread_factors(fc, factors)
    np.testing.assert_allclose(spread_skill(fixed, truth)["geopotential"].values, 1.0, rtol=1e-6)
    np.testing.assert_allclose(rmse_ensemble_mean(fixed, truth)["geopotential"].values,
                               rmse_ensemble_mean(fc, truth)["geopotential"].values, rtol=1e-6)
    again = load_spread_factors(save_spread_factors(factors, tmp_path / "f.json"))
    np.testing.assert_allclose(again["geopotential"].transpose(*factors["geopotential"].dims).values,
                               factors["geopotential"].values)
    # identical members have no spread to scale: the factor is 1, not inf
    same = fc.copy()
    same["geopotential"] = fc["geopotential"].isel(number=[0] * 8).assign_coords(number=np.arange(8))
    assert float(abs(fit_spread_factors(same, truth)["geopotential"] - 1).max()) == 0
    # fitted on one set of forecasts, the factors also fix another from the same model
    other, other_truth = _ensemble(spread=0.5, seed=1)
    ratio = spread_skill(apply_spread_factors(other, factors), other_truth)["geopotential"]
    assert float(abs(ratio - 1).max()) < 0.25


def test_cross_fitting_scales_each_half_by_the_factors_of_the_other():
    """A validation score of a calibrated model must not use factors fitted to itself: here the
    even initial times are twice as narrow as the odd ones, so each half keeps its own error."""
    fc, truth = _ensemble(spread=1.0)
    x = fc["geopotential"]
    mean = x.mean("number")
    narrow = (fc["time"].values[::2])
    fc["geopotential"] = xr.where(x["time"].isin(narrow), mean + 0.5 * (x - mean), x).transpose(*x.dims)
    out = cross_fitted(fc, truth)
    assert list(out["time"].values) == list(fc["time"].values)
    np.testing.assert_allclose(out["geopotential"].mean("number"), mean, rtol=1e-6, atol=1e-9)
    even = fit_spread_factors(fc.isel(time=slice(0, None, 2)), truth)["geopotential"]
    odd = fit_spread_factors(fc.isel(time=slice(1, None, 2)), truth)["geopotential"]
    assert float(even.mean()) > 1.5 * float(odd.mean())
    # the narrow half is widened by the wide half's factors (about 1), and the reverse
    np.testing.assert_allclose(out.isel(time=slice(0, None, 2))["geopotential"].values,
                               apply_spread_factors(fc.isel(time=slice(0, None, 2)), odd.to_dataset())["geopotential"].values)
    np.testing.assert_allclose(out.isel(time=slice(1, None, 2))["geopotential"].values,
                               apply_spread_factors(fc.isel(time=slice(1, None, 2)), even.to_dataset())["geopotential"].values)
    ratio = spread_skill(out.isel(time=slice(0, None, 2)), truth)["geopotential"]
    assert float(ratio.max()) < 0.8                      # still too narrow: not fitted to itself
    with pytest.raises(ValueError, match="at least 2 initial times"):
        cross_fitted(fc.isel(time=[0]), truth)


def _drifting(seed: int = 0, a: float = 0.5, b: float = 0.3):
    """Forecasts whose mean change from the initial state is too large and ignores the pull
    towards climatology: the truth's change is ``a (m - x0) + b (c - x0)`` plus noise, with
    ``c`` the (constant) climatology of a year of training states."""
    rng = np.random.default_rng(seed)
    n_init, n_lead, members, lat, lon = 8, 3, 6, 6, 12
    grid = {"latitude": np.linspace(-75, 75, lat), "longitude": np.arange(lon) * 30.0}
    clim = rng.standard_normal((lat, lon))
    train_times = np.arange("2001-01-01", "2002-01-01", dtype="datetime64[D]").astype("datetime64[ns]")
    train = xr.Dataset({"temperature": (("time", "latitude", "longitude"),
                                        np.broadcast_to(clim, (len(train_times), lat, lon)).copy())},
                       {"time": train_times, **grid})
    # initial times ten days apart, leads of one to three days: no valid time is another's init
    init = (np.datetime64("2002-03-01") + np.arange(n_init) * np.timedelta64(10, "D")).astype("datetime64[ns]")
    leads = (np.arange(1, n_lead + 1) * 24).astype("timedelta64[h]").astype("timedelta64[ns]")
    x0 = clim + 2 * rng.standard_normal((n_init, lat, lon))
    change = 1.5 * rng.standard_normal((n_init, n_lead, lat, lon))
    mean = x0[:, None] + change
    y = x0[:, None] + a * change + b * (clim - x0[:, None]) + 0.3 * rng.standard_normal(mean.shape)
    members_ = mean[:, :, None] + 0.3 * rng.standard_normal((n_init, n_lead, members, lat, lon))
    fc = xr.Dataset({"temperature": (("time", "prediction_timedelta", "number", "latitude", "longitude"), members_)},
                    {"time": init, "prediction_timedelta": leads, "number": np.arange(members), **grid})
    times = np.concatenate([init, (init[:, None] + leads[None]).ravel()])
    values = np.concatenate([x0, y.reshape((-1, lat, lon))])
    order = np.argsort(times)
    truth = xr.Dataset({"temperature": (("time", "latitude", "longitude"), values[order])},
                       {"time": times[order], **grid})
    return fc, truth, train


def test_mean_correction_recovers_the_weights_and_lowers_crps(tmp_path):
    fc, truth, train = _drifting()
    weights, factors = fit_calibration(fc, truth, "mean_spread", train)
    t = weights["temperature"]
    np.testing.assert_allclose(t.sel(predictor="forecast"), 0.5, atol=0.05)
    np.testing.assert_allclose(t.sel(predictor="climatology"), 0.3, atol=0.05)
    fixed = apply_calibration(fc, truth, weights, factors, train)
    # the deviations from the mean are only scaled, the mean moves, and it scores better
    # than the spread-only calibration of the same forecasts
    spread_only = apply_spread_factors(fc, fit_spread_factors(fc, truth))
    assert float(rmse_ensemble_mean(fixed, truth)["temperature"].max()) < \
        0.6 * float(rmse_ensemble_mean(spread_only, truth)["temperature"].min())
    assert float(crps_fair(fixed, truth)["temperature"].max()) < \
        0.6 * float(crps_fair(spread_only, truth)["temperature"].min())
    np.testing.assert_allclose(spread_skill(fixed, truth)["temperature"].values, 1.0, rtol=1e-6)
    # out of sample: weights fitted on one set fix another from the same model
    other, other_truth, _ = _drifting(seed=1)
    out = apply_calibration(other, other_truth, weights, factors, train)
    assert float(crps_fair(out, other_truth)["temperature"].max()) < \
        0.7 * float(crps_fair(other, other_truth)["temperature"].min())
    crossed = cross_fitted(fc, truth, "mean_spread", train)
    assert float(crps_fair(crossed, truth)["temperature"].max()) < \
        0.7 * float(crps_fair(fc, truth)["temperature"].min())
    # saved beside the factors and read back
    again = load_mean_weights(save_spread_factors(factors, tmp_path / "f.json", weights))
    np.testing.assert_allclose(again["temperature"].transpose(*t.dims).values, t.values)
    assert load_mean_weights(save_spread_factors(factors, tmp_path / "g.json")) is None
    # a forecast that is its own persistence has no change to weigh: it stays as it is
    still = fc.copy()
    still["temperature"] = xr.zeros_like(fc["temperature"]) + truth["temperature"].sel(time=fc["time"])
    w, _ = fit_calibration(still, truth, "mean_spread", train)
    assert float(w["temperature"].sel(predictor="forecast").min()) == 1.0
    assert float(abs(w["temperature"].sel(predictor="climatology")).max()) == 0.0
    with pytest.raises(ValueError, match="needs the training period"):
        fit_calibration(fc, truth, "mean_spread")
    with pytest.raises(ValueError, match="lacks 8 initial times"):
        fit_calibration(fc, truth.sel(time=truth["time"].values[~np.isin(truth["time"].values, fc["time"].values)]),
                        "mean_spread", train)


TINY = ["domain=weather", "progress=false", "domain.synthetic.years=0.2",
        "domain.train_period=[2015-01-01,2015-01-31]", "domain.val_period=[2015-02-01,2015-02-14]",
        "domain.test_period=[2015-02-15,2015-03-10]",
        "domain.nsides=[1,2,4]", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
        "model.num_codes=16", "train.steps=4", "train.batch_size=4", "train.warmup=1",
        "domain.forecast.members=3", "domain.forecast.lead_steps=2",
        "domain.forecast.init_every_hours=96", "domain.forecast.max_inits=2",
        "domain.forecast.val_every_hours=48", "domain.forecast.val_max_inits=3",
        "domain.forecast.flops_members=0"]


def test_calibrated_run_fits_on_validation_and_scores_both(tmp_path):
    m = run(compose_config(TINY + ["domain.forecast.calibrate=spread", "task=all"]), tmp_path)
    assert m["forecast/validation_inits"] == 3
    saved = json.loads((tmp_path / "spread_factors.json").read_text())
    assert saved["lead_hours"] == [24.0, 48.0]
    raw = xr.open_zarr(tmp_path / "forecast_raw.zarr", consolidated=True).load()
    fixed = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=True).load()
    factor = saved["factors"]["geopotential"]["500"][0]
    assert m["spread_factor/z500/24h"] == pytest.approx(factor)
    z_raw = raw["geopotential"].sel(level=500).isel(prediction_timedelta=0)
    z_fix = fixed["geopotential"].sel(level=500).isel(prediction_timedelta=0)
    np.testing.assert_allclose(z_fix.std("number"), factor * z_raw.std("number"), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(z_fix.mean("number"), z_raw.mean("number"), rtol=1e-5, atol=1e-2)
    assert "model_raw/crps/z500/24h" in m and "crps/z500/24h" in m
    # the validation forecasts are scored too (what a sweep chooses on), beside the oracle's
    for key in ("val/crps/z500/24h", "val/model_raw/crps/z500/24h", "val/oracle/crps/z500/48h",
                "val/persistence/crps/t850/24h", "val/spread_skill/z500/48h"):
        assert np.isfinite(m[key]), key
    assert m["val/model_raw/crps/z500/24h"] != m["val/crps/z500/24h"]
    # the validation inits lie in the validation period, none in the test period
    val = xr.open_zarr(tmp_path / "validation.zarr", consolidated=True)
    assert (val["time"].values < np.datetime64("2015-02-15")).all()
    # with the mean correction: the weights are saved and reported, the mean moves, and the
    # validation score is cross-fitted the same way
    mean_spread = TINY + ["domain.forecast.calibrate=mean_spread"]
    m = run(compose_config(mean_spread + ["task=forecast"]), tmp_path)
    m.update(run(compose_config(mean_spread + ["task=evaluate"]), tmp_path))
    saved = json.loads((tmp_path / "spread_factors.json").read_text())
    weight = saved["mean_weights"]["climatology"]["geopotential"]["500"][0]
    assert m["mean_weight_climatology/z500/24h"] == pytest.approx(weight)
    assert m["mean_weight_forecast/t850/48h"] == pytest.approx(
        saved["mean_weights"]["forecast"]["temperature"]["850"][1])
    fixed = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=True).load()
    z_fix = fixed["geopotential"].sel(level=500).isel(prediction_timedelta=0)
    assert float(abs(z_fix.mean("number") - z_raw.mean("number")).max()) > 1.0
    assert np.isfinite(m["val/crps/z500/24h"]) and m["val/crps/z500/24h"] != m["val/model_raw/crps/z500/24h"]
    # the same run forecast again without calibration: no raw store of the earlier one is scored
    m = run(compose_config(TINY + ["domain.val_period=null", "task=forecast"]), tmp_path)
    assert not (tmp_path / "forecast_raw.zarr").exists()
    assert not (tmp_path / "spread_factors.json").exists()
    m = run(compose_config(TINY + ["domain.val_period=null", "task=evaluate"]), tmp_path)
    assert "crps/z500/24h" in m and not any(k.startswith(("model_raw/", "val/")) for k in m)


@pytest.mark.parametrize("period", ["[2015-01-20,2015-02-10]", "[2015-01-31T12,2015-02-10]"])
def test_a_validation_period_overlapping_training_is_refused(tmp_path, period):
    """Also when it starts within the last day of training: periods end at the end of the
    unit they are written in, as the store is sliced."""
    from domains.weather.data import WeatherDataError

    over = [o for o in TINY if "val_period" not in o] + [f"domain.val_period={period}"]
    with pytest.raises(WeatherDataError, match="domain.val_period .* overlaps domain.train_period"):
        run(compose_config(over + ["task=all"]), tmp_path)


def test_a_validation_period_the_store_lacks_fails_before_training(tmp_path):
    from domains.weather.data import WeatherDataError

    over = [o for o in TINY if "val_period" not in o] + ["domain.val_period=[2016-10-01,2016-12-31]"]
    with pytest.raises(WeatherDataError, match="no times between.*set domain.val_period"):
        run(compose_config(over + ["task=all"]), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
