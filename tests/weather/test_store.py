"""Lazy, chunk-aligned reads of zarr and netCDF stores, by path or URL."""
import numpy as np
import pytest

xr = pytest.importorskip("xarray")

from domains.weather.store import StoreError, chunk_bounds, open_store, store_format, time_blocks  # noqa: E402


def make_dataset(times=20):
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"temperature": (("time", "latitude", "longitude"), rng.normal(size=(times, 4, 8)).astype("f4")),
         "geopotential": (("time", "latitude", "longitude"), rng.normal(size=(times, 4, 8)).astype("f4"))},
        coords={"time": np.arange(times), "latitude": np.linspace(-60, 60, 4), "longitude": np.arange(8) * 45.0})


@pytest.fixture
def zarr_store(tmp_path):
    path = tmp_path / "era.zarr"
    make_dataset().chunk({"time": 6}).to_zarr(path, zarr_format=2, consolidated=False)
    return path


def test_zarr_opens_lazily_with_its_own_chunks(zarr_store):
    ds = open_store(zarr_store)
    assert ds["temperature"].chunks[0] == (6, 6, 6, 2)  # dask, not loaded
    assert chunk_bounds(ds, "time") == [0, 6, 12, 18, 20]
    blocks = list(time_blocks(ds, "time", min_length=10))
    assert blocks == [slice(0, 12), slice(12, 20)]
    whole = make_dataset()
    got = np.concatenate([ds["temperature"].isel(time=b).values for b in blocks])
    assert np.array_equal(got, whole["temperature"].values)


def test_same_argument_takes_a_url(zarr_store):
    ds = open_store(f"file://{zarr_store}", variables=["geopotential"])
    assert list(ds.data_vars) == ["geopotential"]
    assert ds["geopotential"].chunks[0][0] == 6


def test_netcdf_opens_lazily(tmp_path):
    path = tmp_path / "era.nc"
    make_dataset().to_netcdf(path)
    ds = open_store(path)
    assert store_format(path) == "netcdf"
    assert ds["temperature"].chunks is not None
    assert float(ds["temperature"].isel(time=3).mean()) == pytest.approx(
        float(make_dataset()["temperature"].isel(time=3).mean()))


def test_store_errors_name_the_problem(zarr_store, tmp_path):
    with pytest.raises(StoreError, match="lacks variable.*humidity"):
        open_store(zarr_store, variables=["humidity"])
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        open_store(tmp_path / "nowhere.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="cannot tell the format"):
        open_store(tmp_path / "plain")
