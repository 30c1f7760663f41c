"""The weather domain on the shipped real ERA5 file: 10 analysis members, CF/GRIB names, a 3-degree
grid with poles, 12-hourly. Members train as samples of their own; forecasts start from one."""
import numpy as np
import pytest
import xarray as xr

from core.run import compose_config, run
from domains.weather import fields as F
from domains.weather.data import WeatherDataError

PERIOD = ["domain.train_period=[2017-01-01,2017-01-02T12]", "domain.test_period=[2017-01-01,2017-01-02T12]",
          "domain.val_period=null"]
SMALL = ["progress=false", "domain.nsides=[1,2,4]", "refiner.d_model=32", "refiner.layers=1",
         "refiner.heads=2", "model.num_codes=16", "train.steps=3", "train.batch_size=4",
         "train.warmup=1", "domain.forecast.members=2"]


@pytest.fixture(scope="module")
def store(shared_data):
    path = shared_data / "weather" / "era5-levels-members.nc"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def real(store, *extra):
    return ["domain=weather", f"domain.store={store}", *PERIOD,
            "domain.variables=[geopotential,temperature]", *extra]


def test_every_setting_the_file_forbids_is_named(store, tmp_path):
    """What a new user meets, one setting at a time: each error names the setting to change."""
    base = ["domain=weather", f"domain.store={store}", *PERIOD, *SMALL, "task=train"]
    with pytest.raises(WeatherDataError, match="lacks variable.*2m_temperature.*set domain.variables"):
        run(compose_config(base), tmp_path / "a")
    with pytest.raises(WeatherDataError, match="set domain.step_hours"):
        run(compose_config(base + ["domain.variables=[geopotential,temperature]"]), tmp_path / "b")
    with pytest.raises(WeatherDataError, match="no times between.*set domain.train_period"):
        run(compose_config(base + ["domain.variables=[geopotential,temperature]",
                                   "domain.train_period=[2018-01-01,2018-02-01]"]), tmp_path / "c")
    with pytest.raises(WeatherDataError, match="lacks level.*250.*set domain.levels"):
        run(compose_config(base + ["domain.variables=[geopotential,temperature]",
                                   "domain.levels=[250,500]"]), tmp_path / "d")
    # the default validation period (October-December 2016) is outside this file
    with pytest.raises(WeatherDataError, match="no times between.*set domain.val_period"):
        F.open_period(compose_config(real(store, "domain.val_period=[2016-10-01,2016-12-31]")), "val")


def test_members_are_samples_and_one_member_is_the_analysis(store):
    cfg = compose_config(real(store, *SMALL, "domain.step_hours=12"))
    data = F.load_split(cfg, "train")
    assert data.members == 10 and len(data.times) == 4
    assert len(data) == 10 * 2                   # t = 1, 2 of every member (t - 12 h, t + 12 h inside)
    target, cond = data.batch([0, 2])            # member 0 at t = 1, member 1 at t = 1
    assert target.shape[0] == 2 and not np.allclose(target[0].numpy(), target[1].numpy())
    one = compose_config(real(store, *SMALL, "domain.step_hours=12", "domain.member=3"))
    assert F.load_split(one, "train").members == 1
    ds = F.one_member(one, F.open_period(one, "test"))
    assert "number" not in ds.dims
    raw = xr.open_dataset(store)
    np.testing.assert_allclose(ds["geopotential"].sel(level=500).isel(time=0).values.mean(),
                               raw["z"].isel(number=3, time=0).sel(isobaricInhPa=500).values.mean(), rtol=1e-6)
    with pytest.raises(WeatherDataError, match="domain.member=12"):
        F.one_member(compose_config(real(store, "domain.member=12")), F.open_period(cfg, "test"))


def test_trains_forecasts_and_scores_on_the_real_file(store, tmp_path):
    over = real(store, *SMALL, "domain.step_hours=12", "domain.forecast.lead_steps=2",
                "domain.forecast.init_every_hours=12", "task=all")
    m = run(compose_config(over), tmp_path)
    assert m["train_steps"] == 3 and m["forecast/inits"] == 1 and m["forecast/members"] == 2
    for key in ("crps/z500/12h", "rmse/t850/24h", "persistence/crps/z500/24h"):
        assert key in m and np.isfinite(m[key]), key
    assert not any(k.startswith("oracle") for k in m)   # a real store has no exact oracle
    fc = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=True)
    assert fc["geopotential"].sizes["latitude"] == 61 and fc.sizes["number"] == 2
    with pytest.raises(WeatherDataError, match="set domain.forecast.lead_steps to at most 2"):
        run(compose_config(real(store, *SMALL, "domain.step_hours=12", "domain.forecast.lead_steps=5",
                                "task=forecast", f"checkpoint={tmp_path / 'checkpoints' / 'last.pt'}")),
            tmp_path / "long")
