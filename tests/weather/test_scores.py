"""WeatherBench2-style scores against independent hand computations, and on the ERA5 sample."""
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from domains.weather import scores as S
from domains.weather.sphere import area_weights

H = np.timedelta64(1, "h")
LAT = np.array([-60.0, -20.0, 20.0, 60.0])
LON = np.array([0.0, 120.0, 240.0])


def make_pair(rng, members=5, inits=3, leads=(0, 12), lat=LAT, lon=LON, levels=None,
              variable="temperature"):
    """A random forecast and a truth covering all its valid times (12-hourly)."""
    times = pd.date_range("2020-01-01", periods=inits + 8, freq="12h").values
    spatial = (len(lat), len(lon))
    lev = {} if levels is None else {"level": np.asarray(levels, float)}
    lev_shape = () if levels is None else (len(levels),)
    dims = (*lev, "latitude", "longitude")
    coords = {**lev, "latitude": lat, "longitude": lon}
    truth = xr.Dataset({variable: (("time", *dims), rng.normal(size=(len(times), *lev_shape,
                                                                     *spatial)))},
                       coords={"time": times, **coords})
    fc = xr.Dataset(
        {variable: (("time", "prediction_timedelta", "number", *dims),
                    rng.normal(size=(inits, len(leads), members, *lev_shape, *spatial)))},
        coords={"time": times[:inits], "prediction_timedelta": np.asarray(leads) * H,
                "number": np.arange(members), **coords})
    return fc, truth


def truth_at(fc, truth, name):
    """[init, lead, ...] truth values by explicit lookup."""
    out = np.empty((fc.sizes["time"], fc.sizes["prediction_timedelta"])
                   + truth[name].shape[1:])
    for i, t0 in enumerate(fc.time.values):
        for j, lead in enumerate(fc.prediction_timedelta.values):
            out[i, j] = truth[name].sel(time=t0 + lead).values
    return out


def test_crps_fair_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    fc, truth = make_pair(rng, members=5)
    x = fc.temperature.values.copy()
    x[0, 0, 1] = x[0, 0, 0]  # a tie between members
    fc["temperature"].values[:] = x
    y = truth_at(fc, truth, "temperature")
    m = x.shape[2]
    crps = np.zeros(y.shape)
    for idx in np.ndindex(*y.shape):
        xs = [x[idx[0], idx[1], i, idx[2], idx[3]] for i in range(m)]
        skill = sum(abs(v - y[idx]) for v in xs) / m
        spread = sum(abs(xs[i] - xs[j]) for i in range(m) for j in range(m) if i != j)
        crps[idx] = skill - spread / (2 * m * (m - 1))
    w = area_weights(LAT)[:, None]
    expected = (crps * w).mean((-2, -1)).mean(0)  # weights have mean 1
    got = S.crps_fair(fc, truth).temperature.values
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(S.crps_fair_pointwise(fc, truth).temperature.values, crps,
                               rtol=1e-12, atol=1e-14)


def test_crps_with_one_member_is_the_absolute_error():
    rng = np.random.default_rng(1)
    fc, truth = make_pair(rng, members=1)
    y = truth_at(fc, truth, "temperature")
    err = np.abs(fc.temperature.values[:, :, 0] - y)
    w = area_weights(LAT)[:, None]
    np.testing.assert_allclose(S.crps_fair(fc, truth).temperature.values,
                               (err * w).mean((-2, -1)).mean(0), rtol=1e-12)
    # a deterministic forecast without a member dimension scores the same
    det = fc.isel(number=0, drop=True)
    np.testing.assert_allclose(S.crps_fair(det, truth).temperature.values,
                               S.crps_fair(fc, truth).temperature.values)


def test_rmse_takes_the_root_after_the_time_mean():
    rng = np.random.default_rng(2)
    fc, truth = make_pair(rng, members=2, inits=2, leads=(0,))
    y = truth_at(fc, truth, "temperature")
    # errors 1 everywhere at the first init, 3 at the second (both members, so the mean too)
    fc["temperature"].values[:] = y[:, :, None] + np.array([1.0, 3.0])[:, None, None, None,
                                                                          None]
    rmse = float(S.rmse_ensemble_mean(fc, truth).temperature.squeeze())
    assert rmse == pytest.approx(np.sqrt((1 + 9) / 2))  # WB2: sqrt(mean over inits of MSE)
    assert rmse != pytest.approx(2.0)  # not the mean of per-init RMSEs


def test_area_weights_and_explicit_weights_agree():
    assert area_weights(np.linspace(-87.1875, 87.1875, 32)).mean() == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    fc, truth = make_pair(rng)
    a = S.rmse_ensemble_mean(fc, truth)
    b = S.rmse_ensemble_mean(fc, truth, weights=2 * area_weights(LAT))  # scale is irrelevant
    xr.testing.assert_allclose(a, b)
    c = S.rmse_ensemble_mean(fc, truth, weights=np.ones(len(LAT)))
    assert not np.allclose(a.temperature.values, c.temperature.values)


def test_spread_skill_is_one_for_an_exchangeable_ensemble():
    rng = np.random.default_rng(4)
    fc, truth = make_pair(rng, members=10, inits=24, leads=(0,),
                          lat=np.linspace(-80, 80, 16), lon=np.arange(32) * 11.25)
    ratio = float(S.spread_skill(fc, truth).temperature.squeeze())
    assert ratio == pytest.approx(1.0, abs=0.03)
    raw = float(S.spread_skill(fc, truth, correct=False).temperature.squeeze())
    assert raw == pytest.approx(np.sqrt(10 / 11), abs=0.03)
    # under-dispersive (members shrunk towards their mean) -> well below 1
    mean = fc.mean("number")
    tight = mean + 0.3 * (fc - mean)
    assert float(S.spread_skill(tight, truth).temperature.squeeze()) < 0.6
    one = fc.isel(number=[0])
    assert np.isnan(S.spread_skill(one, truth).temperature.values).all()


def test_rank_histogram_bins_counts_and_ties():
    rng = np.random.default_rng(5)
    m = 6
    fc, truth = make_pair(rng, members=m, inits=20, leads=(0, 12), levels=[500, 850],
                          lat=np.linspace(-80, 80, 8), lon=np.arange(16) * 22.5)
    hist = S.rank_histogram(fc, truth)
    counts = hist.temperature
    assert counts.dims == ("prediction_timedelta", "level", "rank")
    assert counts.sizes["rank"] == m + 1
    n = 20 * 8 * 16
    assert (counts.sum("rank") == n).all()
    assert (abs(counts / n * (m + 1) - 1) < 0.25).all()  # flat for an exchangeable ensemble
    xr.testing.assert_equal(hist, S.rank_histogram(fc, truth))  # seeded
    # every member equal to the truth: ties are spread over all bins, not piled into one
    y = S.align_truth(fc, truth).temperature
    tied = fc.copy(data={"temperature": np.broadcast_to(
        y.values[:, :, None], fc.temperature.shape).copy()})
    tc = S.rank_histogram(tied, truth).temperature
    assert (tc.sum("rank") == n).all()
    assert (abs(tc / n * (m + 1) - 1) < 0.25).all()


def test_score_and_flatten_keys(tmp_path):
    rng = np.random.default_rng(6)
    fc, truth = make_pair(rng, members=4, leads=(24, 72), levels=[500, 850],
                          variable="geopotential")
    fc2, truth2 = make_pair(rng, members=4, leads=(24, 72), variable="2m_temperature")
    fc, truth = xr.merge([fc, fc2]), xr.merge([truth, truth2])
    ds = S.score(fc, truth)
    assert list(ds.metric.values) == ["rmse", "crps", "spread_skill"]
    assert ds.geopotential.dims == ("metric", "prediction_timedelta", "level")
    flat = S.flatten_scores(ds)
    expected = {f"{m}/{v}/{h}h" for m in ("rmse", "crps", "spread_skill")
                for v in ("z500", "z850", "t2m") for h in (24, 72)}
    assert set(flat) == expected
    assert flat["crps/z500/72h"] == pytest.approx(
        float(ds.geopotential.sel(metric="crps", level=500, prediction_timedelta=72 * H)))
    assert S.short_name("u_component_of_wind", 850) == "u850"
    assert S.short_name("10m_v_component_of_wind") == "v10"
    assert S.short_name("mean_sea_level_pressure") == "msl"

    nc, csv = S.save_scores(ds, tmp_path / "out")
    back = xr.open_dataset(nc)
    xr.testing.assert_allclose(back.load(), ds)
    back.close()
    table = pd.read_csv(csv)
    assert len(table) == 3 * 2 * 3 and set(table.columns) == {
        "metric", "variable", "level", "lead_hours", "value"}
    assert not list((tmp_path / "out").glob(".*"))  # no temporaries left behind

    card = S.scorecard_png({"model": ds, "other": ds * 1.1}, tmp_path / "card.png", "crps")
    hist = S.rank_histogram_png(S.rank_histogram(fc, truth), tmp_path / "ranks.png")
    for path in (card, hist):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_align_truth_names_missing_valid_times():
    rng = np.random.default_rng(7)
    fc, truth = make_pair(rng, inits=3, leads=(0, 120))
    with pytest.raises(ValueError, match="valid times: 2020-01-0"):
        S.align_truth(fc, truth)
    fc, truth = make_pair(rng)
    with pytest.raises(ValueError, match="latitude"):
        S.align_truth(fc, truth.assign_coords(latitude=LAT + 1))
    with pytest.raises(ValueError, match="variables"):
        S.align_truth(fc, truth.rename(temperature="geopotential"))
    aligned = S.align_truth(fc, truth)
    np.testing.assert_array_equal(aligned.temperature.values, truth_at(fc, truth, "temperature"))
    assert (aligned.valid_time == aligned.time + aligned.prediction_timedelta).all()


@pytest.fixture(scope="module")
def era5(shared_data):
    path = shared_data / "weather" / "era5-levels-members.nc"
    if not path.exists():
        pytest.skip(f"ERA5 sample not found at {path}")
    with xr.open_dataset(path) as ds:
        ds = ds.sortby("latitude").load()
    return ds.rename(z="geopotential", t="temperature", isobaricInhPa="level") \
        .drop_vars(["valid_time", "step"])


def test_score_on_the_era5_sample(era5):
    """Members 1-9 forecast member 0 (an exchangeable-ish EDA ensemble): finite, plausible."""
    times, leads = era5.time.values, np.array([0, 12]) * H
    members = era5.sel(number=slice(1, 9))
    fc = xr.concat([members.sel(time=times[:2] + lead) .assign_coords(time=times[:2])
                    for lead in leads], dim=pd.Index(leads, name="prediction_timedelta"))
    fc = fc.transpose("time", "prediction_timedelta", "number", ...)
    truth = era5.sel(number=0, drop=True)
    ds = S.score(fc, truth)
    flat = S.flatten_scores(ds)
    assert len(flat) == 3 * 2 * 2 * 2 and all(np.isfinite(v) for v in flat.values())
    # analysis-ensemble spread: Z500 within tens of m^2/s^2, T850 within a kelvin
    assert 1 < flat["rmse/z500/0h"] < 100 and 0.05 < flat["rmse/t850/12h"] < 1.5
    for key, value in flat.items():
        if key.startswith("crps/"):
            assert 0 < value < flat[key.replace("crps/", "rmse/")]
        if key.startswith("spread_skill/"):  # ~1.4-1.6: member 0 is the EDA control, central
            assert 0.7 < value < 2.5

    # baselines in the forecast layout, scored by the same code
    persistence = S.persistence_forecast(truth, times[:2], [0, 12])
    assert persistence.geopotential.dims == ("time", "prediction_timedelta", "number", "level",
                                             "latitude", "longitude")
    p = S.score(persistence, truth)
    assert float(p.geopotential.sel(metric="rmse", prediction_timedelta=0 * H).max()) == 0
    assert np.isnan(p.geopotential.sel(metric="spread_skill")).all()
    assert float(p.temperature.sel(metric="rmse", prediction_timedelta=12 * H, level=850)) > 0.5
    with pytest.raises(ValueError, match="initial times"):
        S.persistence_forecast(truth, ["2018-01-01"], [0])


def _daily_truth(start, days, hours=(0, 12)):
    times = pd.DatetimeIndex([pd.Timestamp(start) + pd.Timedelta(days=d, hours=h)
                              for d in range(days) for h in hours])
    value = times.day_of_year.values + 1000 * (times.year.values - 2000) + times.hour.values / 100
    return xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"),
                                          np.broadcast_to(value[:, None, None],
                                                          (len(times), 2, 3)).copy())},
                      coords={"time": times, "latitude": [-45.0, 45.0],
                              "longitude": [0.0, 120.0, 240.0]})


def test_climatology_forecasts():
    train = _daily_truth("2001-01-01", 3 * 365)  # 2001-2003, 00 and 12 UTC
    init = np.array(["2010-03-01T00"], dtype="datetime64[ns]")
    clim = S.climatology_forecast(train, init, [0, 12], window_days=2)
    assert clim["2m_temperature"].dims == ("time", "prediction_timedelta", "number",
                                           "latitude", "longitude")
    assert clim.sizes["number"] == 1
    # mean over years 2001-2003 of days 58..62 (1 March = day 60) at the valid hour
    for lead, hour in ((0, 0), (12, 12)):
        expected = np.mean([d + 1000 * y + hour / 100 for y in (1, 2, 3)
                            for d in range(58, 63)])
        got = clim["2m_temperature"].sel(prediction_timedelta=lead * H).values
        np.testing.assert_allclose(got, expected)

    ens = S.climatology_forecast(train, init, [12], members=3)
    assert ens.sizes["number"] == 3
    values = np.sort(ens["2m_temperature"].values[0, 0, :, 0, 0])
    np.testing.assert_allclose(values, [60 + 1000 * y + 0.12 for y in (1, 2, 3)])  # same day
    more = S.climatology_forecast(train, init, [12], members=5)  # then the nearest days
    np.testing.assert_allclose(np.sort(more["2m_temperature"].values[0, 0, :, 0, 0] % 1000),
                               [59.12, 60.12, 60.12, 60.12, 61.12])

    # a short training period far from the valid date still gives a forecast (nearest day)
    short = _daily_truth("2001-07-01", 2, hours=(0,))
    fallback = S.climatology_forecast(short, init, [12])
    assert np.isfinite(fallback["2m_temperature"]).all()
    truth = _daily_truth("2010-03-01", 2)
    s = S.score(S.climatology_forecast(train, init, [0, 12], members=3), truth)
    assert np.isfinite(s["2m_temperature"]).all()
