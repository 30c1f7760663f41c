"""Weather data layer: the ERA5 loader on real and synthetic stores, its errors, the Normalizer."""
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from domains.weather.data import (Normalizer, WeatherDataError, channel_name, channels,
                                  check_grid, load_fields, normalize_dataset, open_era5,
                                  wb2_grid)
from domains.weather.synthetic import (default_synthetic_path, ensure_synthetic,
                                       make_synthetic_era5, power_spectrum, synthetic_dataset)

DAYS20 = 20 / 365.25


def _weighted_mean(x, lat):
    w = np.cos(np.deg2rad(lat))[:, None]
    return float((x * w).sum() / np.broadcast_to(w, x.shape).sum())


def _rms(x, lat):
    return _weighted_mean(np.asarray(x, dtype=np.float64) ** 2, lat) ** 0.5


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """20 days of every variable at 500 and 850 hPa, WB2 64x32 layout, zarr."""
    return make_synthetic_era5(tmp_path_factory.mktemp("wx") / "tiny.zarr", years=DAYS20)


@pytest.fixture(scope="module")
def year() -> xr.Dataset:
    """One in-memory year of z and t (6-hourly), for the statistics the docstring promises."""
    return synthetic_dataset(years=1.0, variables=["geopotential", "temperature",
                                                   "2m_temperature"]).load()


def _small_nc(tmp_path, name="s.nc", **changes) -> tuple[Path, xr.Dataset]:
    """A little WB2-layout netCDF (6 times of z, t at 500/850) to break in a test."""
    ds = synthetic_dataset(years=1.5 / 365.25, variables=["geopotential", "temperature"]).load()
    ds = ds.assign(**changes) if changes else ds
    path = tmp_path / name
    ds.to_netcdf(path)
    return path, ds


# --------------------------------------------------------------------------- the real sample


def test_real_era5_sample_is_normalised(shared_data):
    path = shared_data / "weather" / "era5-levels-members.nc"
    if not path.exists():
        pytest.skip(f"{path} not found")
    raw = xr.open_dataset(path)
    ds = open_era5(path, ["z", "temperature"], levels=[500, 850])
    assert list(ds.data_vars) == ["geopotential", "temperature"]
    assert ds["geopotential"].dims == ("time", "number", "level", "latitude", "longitude")
    assert ds["level"].values.tolist() == [500, 850]
    assert ds.sizes["number"] == 10 and ds.sizes["time"] == 4
    lat = ds["latitude"].values
    assert lat[0] == -90 and lat[-1] == 90 and np.all(np.diff(lat) > 0)
    assert ds["geopotential"].chunks is not None  # still lazy

    chans = channels(["geopotential", "temperature"], [500, 850])
    fields = load_fields(ds, chans)
    assert fields.shape == (4, 10, 4, 61, 120) and fields.dtype == np.float32
    assert [channel_name(*c) for c in chans] == ["z500", "z850", "t500", "t850"]
    # the same numbers as the raw file after the latitude flip and transposes
    want = raw["z"].sel(isobaricInhPa=500).transpose("time", "number", "latitude", "longitude")
    np.testing.assert_allclose(fields[:, :, 0], want.values[:, :, ::-1], rtol=1e-6)
    assert fields[0, 0, 0, 0, 0] == pytest.approx(float(raw["z"].sel(isobaricInhPa=500)
                                                       .isel(time=0, number=0, latitude=-1,
                                                             longitude=0)), rel=1e-6)
    assert 54_500 < _weighted_mean(fields[:, :, 0], lat) < 56_300   # Z500 ~55,400
    assert 276 < _weighted_mean(fields[:, :, 3], lat) < 284         # T850 ~280 K
    one = load_fields(ds, chans[:1], time_slice=slice(1, 3), member=2)
    assert one.shape == (2, 1, 61, 120)
    np.testing.assert_array_equal(one[:, 0], fields[1:3, 2, 0])


# --------------------------------------------------------------------------- normalisation


def test_normalize_dataset_maps_cf_names_lazily():
    lon = np.arange(-180.0, 180.0, 90.0)
    ds = xr.Dataset(
        {"2t": (("valid_time", "lon", "lat"), np.arange(24.0).reshape(2, 4, 3)),
         "u": (("plev", "valid_time", "lat", "lon"), np.zeros((2, 2, 3, 4)))},
        coords={"valid_time": np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[ns]"),
                "lat": [60.0, 0.0, -60.0], "lon": lon,
                "plev": ("plev", [85000.0, 50000.0], {"units": "Pa"})}).chunk()
    out = normalize_dataset(ds, "mem")
    assert set(out.data_vars) == {"2m_temperature", "u_component_of_wind"}
    assert out["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert out["u_component_of_wind"].dims == ("time", "level", "latitude", "longitude")
    assert out["level"].values.tolist() == [500, 850]
    assert out["latitude"].values.tolist() == [-60.0, 0.0, 60.0]
    assert out["longitude"].values.tolist() == [0.0, 90.0, 180.0, 270.0]
    assert out["2m_temperature"].chunks is not None
    # lon -180 -> 180 and lat 60 -> row 2: value of raw (time 0, lon index 0, lat index 0)
    assert float(out["2m_temperature"][0, 2, 2]) == 0.0


def test_channels_are_canonical():
    a = channels(["t2m", "temperature", "z"], [850, 500])
    b = channels(["geopotential", "2m_temperature", "t"], [500, 850])
    assert a == b == [("geopotential", 500), ("geopotential", 850), ("temperature", 500),
                      ("temperature", 850), ("2m_temperature", None)]
    assert channel_name("mean_sea_level_pressure", None) == "msl"
    with pytest.raises(WeatherDataError, match="unknown variable 'foo'"):
        channels(["foo"], [500])


def test_wb2_grids():
    lat, lon = wb2_grid("64x32")
    assert lat.size == 32 and lon.size == 64 and lat[0] == -87.1875 and lat[-1] == 87.1875
    assert np.all(np.diff(lat) > 0) and lon[1] == 5.625
    lat, lon = wb2_grid("1.5deg")
    assert (lat.size, lon.size) == (121, 240) and lat[0] == -90 and lat[-1] == 90


# --------------------------------------------------------------------------- synthetic stores


def test_synthetic_store_has_wb2_layout_and_reopens(tiny_store):
    raw = xr.open_zarr(tiny_store, consolidated=True)
    assert (tiny_store / ".zmetadata").exists()                       # zarr v2, consolidated
    assert raw["geopotential"].dims == ("time", "level", "longitude", "latitude")
    assert raw["2m_temperature"].dims == ("time", "longitude", "latitude")
    assert raw["temperature"].dtype == np.float32
    assert raw.sizes == {"time": 80, "level": 2, "longitude": 64, "latitude": 32}
    np.testing.assert_array_equal(raw["latitude"].values, wb2_grid("64x32")[0])
    assert raw["geopotential"].attrs["units"] == "m**2 s**-2"
    assert raw["mean_sea_level_pressure"].attrs["long_name"] == "Mean sea level pressure"
    assert np.issubdtype(raw["time"].dtype, np.datetime64)
    assert (np.diff(raw["time"].values) == np.timedelta64(6, "h")).all()

    ds = open_era5(tiny_store, ["z", "q", "msl"], levels=[850], start="2015-01-03",
                   end="2015-01-05T18")
    assert ds["geopotential"].dims == ("time", "level", "latitude", "longitude")
    assert ds.sizes["time"] == 12 and ds["level"].values.tolist() == [850]
    f = load_fields(ds, channels(["z", "q", "msl"], [850]))
    assert f.shape == (12, 3, 32, 64)
    np.testing.assert_array_equal(
        f[:, 0], raw["geopotential"].sel(level=850).isel(time=slice(8, 20)).values
        .transpose(0, 2, 1))
    lat = ds["latitude"].values
    assert 12_000 < _weighted_mean(f[:, 0], lat) < 16_500         # Z850
    assert f[:, 1].min() > 0 and f[:, 1].max() < 0.03              # q
    assert 100_300 < _weighted_mean(f[:, 2], lat) < 102_300        # msl


def test_synthetic_is_deterministic_and_netcdf_matches(tmp_path, tiny_store):
    again = make_synthetic_era5(tmp_path / "again.zarr", years=DAYS20)
    files = sorted(p.relative_to(tiny_store) for p in tiny_store.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_store / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = make_synthetic_era5(tmp_path / "seed1.zarr", years=DAYS20, seed=1)
    assert not np.array_equal(xr.open_zarr(other)["temperature"].values,
                              xr.open_zarr(tiny_store)["temperature"].values)

    nc = make_synthetic_era5(tmp_path / "tiny.nc", years=DAYS20, fmt="netcdf",
                             variables=["u_component_of_wind", "10m_v_component_of_wind"])
    chans = channels(["u", "v10"], [500, 850])
    a = load_fields(open_era5(nc, ["u", "v10"]), chans)
    b = load_fields(open_era5(tiny_store, ["u", "v10"]), chans)
    np.testing.assert_array_equal(a, b)
    assert 2 < np.abs(a[:, :2]).mean() < 30                          # m/s


def test_synthetic_statistics_are_era5_like(year):
    lat = year["latitude"].values
    z = year["geopotential"].sel(level=500).transpose("time", "latitude", "longitude").values
    t = year["temperature"].sel(level=850).transpose("time", "latitude", "longitude").values
    assert 54_800 < _weighted_mean(z, lat) < 56_000
    assert 277 < _weighted_mean(t, lat) < 283
    zs = _rms(z - z.mean(axis=(1, 2), keepdims=True), lat)            # spatial std (~2,700)
    assert 2_000 < zs < 3_600
    assert 7 < _rms(t - t.mean(axis=(1, 2), keepdims=True), lat) < 17
    assert 250 < _rms(z[2:] - z[:-2], lat) < 600                      # 12-h change (~390)
    assert 1.0 < _rms(t[2:] - t[:-2], lat) < 4.0                      # (~2.3 K)

    # climatology: per-point mean and annual harmonic; anomalies against it
    days = np.arange(z.shape[0]) / 4.0
    basis = np.stack([np.ones_like(days), np.cos(2 * np.pi * days / 365.25),
                      np.sin(2 * np.pi * days / 365.25)], 1)
    flat = z.reshape(len(days), -1)
    anom = (flat - basis @ np.linalg.lstsq(basis, flat, rcond=None)[0]).reshape(z.shape)
    clim_std = _rms(anom, lat)
    pers1 = _rms(z[4:] - z[:-4], lat)
    pers5 = _rms(z[20:] - z[:-20], lat)
    assert 600 < clim_std < 1_500
    assert pers1 < 0.8 * clim_std < pers5                             # beatable, predictable

    # red spectra with the documented slopes (l = 6..20), Z500 steeper than T850
    def slope(x):
        p = power_spectrum(x[::40], lat).mean(0)
        ls = np.arange(6, 21)
        return np.polyfit(np.log(ls), np.log(p[6:21]), 1)[0]

    sz, st = slope(z), slope(t)
    assert -6.0 < sz < -3.8 and -4.3 < st < -2.3 and sz < st - 0.5

    # seasons: northern high latitudes warm in July, southern ones cool
    month = year["time"].dt.month.values
    north, south = lat > 45, lat < -45
    jul, jan = month == 7, month == 1
    assert t[jul][:, north].mean() - t[jan][:, north].mean() > 4
    assert t[jul][:, south].mean() - t[jan][:, south].mean() < -4
    # diurnal cycle of 2 m temperature follows local solar time (warm afternoon)
    t2 = year["2m_temperature"].transpose("time", "latitude", "longitude").values
    hours = year["time"].dt.hour.values
    lst = (hours[:, None] + year["longitude"].values[None, :] / 15.0) % 24
    tropics = t2[:, np.abs(lat) < 30].mean(axis=1)                    # [time, lon]
    assert tropics[(lst > 12) & (lst < 18)].mean() - tropics[(lst < 6)].mean() > 2.5


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("C2F_CACHE", str(tmp_path / "cache"))
    settings = dict(years=2 / 365.25, variables=["temperature"], levels=[850])
    path = ensure_synthetic(**settings)
    assert path == default_synthetic_path(settings) and path.parent.name == "weather"
    stamp = (path / ".zmetadata").stat().st_mtime_ns
    assert ensure_synthetic(**settings) == path
    assert (path / ".zmetadata").stat().st_mtime_ns == stamp
    assert default_synthetic_path(settings, seed=1) != path
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", [1.0])}).to_zarr(foreign, zarr_format=2, consolidated=True)
    with pytest.raises(WeatherDataError, match="not written by the synthetic generator"):
        ensure_synthetic(foreign, **settings)


# --------------------------------------------------------------------------- bad stores


def test_missing_variable_and_level(tiny_store):
    with pytest.raises(WeatherDataError, match="lacks variable.*relative_humidity") as e:
        open_era5(tiny_store, ["geopotential", "relative_humidity"])
    assert "geopotential" in str(e.value) and str(tiny_store) in str(e.value)  # what it has
    with pytest.raises(WeatherDataError, match=r"lacks level\(s\) 700 hPa.*500, 850"):
        open_era5(tiny_store, ["temperature"], levels=[500, 700])
    with pytest.raises(WeatherDataError, match="no times between 2030-01-01"):
        open_era5(tiny_store, ["temperature"], start="2030-01-01")


def test_nan_is_named_with_variable_level_and_time(tmp_path):
    path, ds = _small_nc(tmp_path)
    t = ds["temperature"].values.copy()
    t[3, 1, 5, 7] = np.nan
    ds.assign(temperature=(ds["temperature"].dims, t)).to_netcdf(tmp_path / "nan.nc")
    opened = open_era5(tmp_path / "nan.nc", ["t", "z"])
    load_fields(opened, [("temperature", 500), ("geopotential", 850)])  # the clean channels
    with pytest.raises(WeatherDataError, match=r"NaN.*temperature at level 850 hPa.*nan\.nc"
                                               r".*2015-01-01T18:00:00"):
        load_fields(opened, channels(["t"], [500, 850]))


def test_unsorted_and_duplicated_times(tmp_path):
    path, ds = _small_nc(tmp_path)
    times = ds["time"].values.copy()
    swapped = times.copy()
    swapped[[2, 3]] = times[[3, 2]]
    ds.assign_coords(time=swapped).to_netcdf(tmp_path / "unsorted.nc")
    with pytest.raises(WeatherDataError, match=r"not strictly increasing.*2015-01-01T12:00:00"
                                               r".*earlier"):
        open_era5(tmp_path / "unsorted.nc", ["z"])
    dup = times.copy()
    dup[4] = dup[3]
    ds.assign_coords(time=dup).to_netcdf(tmp_path / "dup.nc")
    with pytest.raises(WeatherDataError, match=r"2015-01-01T18:00:00 \(index 4\) is duplicated"):
        open_era5(tmp_path / "dup.nc", ["z"])


def test_different_grid_and_unknown_format(tmp_path, tiny_store):
    ds = open_era5(tiny_store, ["z"])
    check_grid(ds, *wb2_grid("64x32"))
    with pytest.raises(WeatherDataError, match=r"32x64 \(lat x lon\) grid, expected 121x240"):
        check_grid(ds, *wb2_grid("1.5deg"), source="truth.zarr")
    lat, lon = wb2_grid("64x32")
    with pytest.raises(WeatherDataError, match="latitude"):
        check_grid(ds, lat + 1.0, lon)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(WeatherDataError, match="cannot tell the format"):
        open_era5(tmp_path / "data.txt", ["z"])


# --------------------------------------------------------------------------- Normalizer


def test_normalizer_round_trip_and_save_load(tmp_path):
    rng = np.random.default_rng(0)
    lat, _ = wb2_grid("64x32")
    x = (rng.standard_normal((30, 3, 32, 64)).cumsum(0) * [[[[2.0]], [[50.0]], [[0.1]]]]
         + [[[[280.0]], [[55_000.0]], [[0.0]]]]).astype(np.float32)
    nz = Normalizer.fit(x, lat, step=2, names=["t850", "z500", "u"])
    w = np.cos(np.deg2rad(lat))[:, None]
    ref_mean = (x[:, 1] * w).sum() / np.broadcast_to(w, x[:, 1].shape).sum()
    assert nz.mean[1] == pytest.approx(ref_mean, rel=1e-9)
    dx = x[2:] - x[:-2]
    ref_inc = ((dx[:, 0].astype(np.float64) ** 2 * w).sum()
               / np.broadcast_to(w, dx[:, 0].shape).sum()) ** 0.5
    assert nz.increment_std[0] == pytest.approx(ref_inc, rel=1e-9)

    y = nz.norm(x)
    assert y.dtype == np.float32
    for c in range(3):
        assert abs(_weighted_mean(y[:, c], lat)) < 1e-4
        assert _rms(y[:, c], lat) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(nz.denorm(y), x, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(nz.denorm_increment(nz.norm_increment(dx)), dx, atol=1e-3)
    assert _rms(nz.norm_increment(dx)[:, 2], lat) == pytest.approx(1.0, abs=1e-4)

    # torch, channel axis elsewhere
    xt = torch.from_numpy(np.moveaxis(x, 1, -1).copy()).double()
    yt = nz.norm(xt, axis=-1)
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float64
    np.testing.assert_allclose(np.moveaxis(yt.numpy(), -1, 1), y, atol=1e-4)
    with pytest.raises(ValueError, match="expected 3 channels"):
        nz.norm(x[:, :2])

    path = nz.save(tmp_path / "norm" / "stats.json")
    back = Normalizer.load(path)
    assert back.to_dict() == nz.to_dict() and back.names == ["t850", "z500", "u"]
    np.testing.assert_array_equal(back.norm(x), y)
