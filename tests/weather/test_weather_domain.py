"""Weather domain end to end on a tiny synthetic store: train, forecast (resumable), evaluate."""
import json

import numpy as np
import pytest
import torch
import xarray as xr

from core.run import compose_config, run
from core.sampler import TokenScheduler, generate
from domains.weather import fields as F
from domains.weather.forcing import forcings

TINY = ["domain=weather", "progress=false", "domain.synthetic.years=0.12",
        "domain.train_period=[2015-01-01,2015-01-31]", "domain.test_period=[2015-02-01,2015-02-14]", "domain.val_period=null",
        "domain.nsides=[1,2,4]", "refiner.d_model=32", "refiner.layers=1", "refiner.heads=2",
        "model.num_codes=16", "train.steps=4", "train.batch_size=4", "train.warmup=1",
        "domain.forecast.members=3", "domain.forecast.lead_steps=3",
        "domain.forecast.init_every_hours=72", "domain.forecast.max_inits=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("weather_run")
    metrics = run(compose_config(TINY + ["task=train"]), run_dir)
    return run_dir, metrics


def test_model_conditions_on_the_state_and_calls_once_per_scale(trained):
    cfg = compose_config(TINY)
    data = F.load_split(cfg, "train")
    torch.manual_seed(0)
    from domains.weather.plugin import build_model
    model = build_model(cfg, data).eval()
    from core.model import FieldScaleModel
    from domains.weather import plugin
    assert isinstance(model, FieldScaleModel) and not hasattr(plugin, "c2f_model")  # the core's builder
    target, cond = data.batch([0, 1])
    assert target.shape == (2, 3 * 2 - 1, 12 * 16) and cond.shape == (2, 2 * 5 + 3, 192)
    calls = []
    original = model.refiner.step
    model.refiner.step = lambda *a, **kw: calls.append(a[1]) or original(*a, **kw)
    sampler = TokenScheduler(temperature=0.0)
    out, nfe = generate(model, sampler, cond, [0, 1])
    assert nfe == 3 and calls == [0, 1, 2] and out.shape == target.shape
    # the condition matters, and only for its own example
    shifted = cond.clone()
    shifted[1] += 1.0
    a = model.predict(model.init_state(cond), 0, cond)["band"].value
    b = model.predict(model.init_state(shifted), 0, shifted)["band"].value
    assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1])


def test_quantiser_units_follow_each_scale(trained):
    cfg = compose_config(TINY)
    data = F.load_split(cfg, "train")
    from domains.weather.plugin import build_model
    model = build_model(cfg, data)
    unit = model.pyramid.quantizer.unit
    assert unit.shape == (3, 5) and (unit > 0).all()
    target, _ = data.batch(np.arange(len(data)))
    recon = model.pyramid.decode(model.encode(target).codes)
    # 16 levels per band, closed loop: the finest band's step bounds the error of most values
    err = (recon - target).abs()
    assert err.mean() < 0.1 * target.abs().mean() + 0.05


def test_state_noise_moves_the_state_and_aims_the_target_at_the_true_next_state(trained):
    """``domain.state_noise``: the condition's state is perturbed, the target is the increment
    from the perturbed state to the true next one, the draw is the same for the same batch, and
    0 gives the clean batch."""
    data = F.load_split(compose_config(TINY), "train")
    idx = [0, 3, 5]
    clean_target, clean_cond = data.batch(idx)
    target, cond = data.batch(idx, state_noise=0.1)
    again, cond_again = data.batch(idx, state_noise=0.1)
    other, _ = data.batch([0, 3, 6], state_noise=0.1)
    assert torch.equal(target, again) and torch.equal(cond, cond_again)
    assert not torch.equal(target[:2], other[:2])            # another batch, another draw
    channels = clean_target.shape[1]
    noise = cond[:, :channels] - clean_cond[:, :channels]   # the state channels
    assert 0.08 < float(noise.std()) < 0.12
    # state + increment (back in state units) is still the true next state
    ratio = data.ratio
    assert torch.allclose(cond[:, :channels] + target / ratio, clean_cond[:, :channels] + clean_target / ratio,
                          atol=1e-5)
    assert torch.equal(data.batch(idx, state_noise=0.0)[0], clean_target)


def test_forcings_follow_the_sun():
    lat = np.array([0.0, 0.0, 80.0, -80.0])
    lon = np.array([0.0, 180.0, 0.0, 0.0])
    f = forcings(np.array(["2015-03-21T12:00"], dtype="datetime64[s]"), lat, lon)[0]
    assert f[0, 0] > 0.95 and f[0, 1] == 0           # noon on the equator vs midnight
    f = forcings(np.array(["2015-06-21T12:00"], dtype="datetime64[s]"), lat, lon)[0]
    assert f[0, 2] > f[0, 3]                            # northern summer


def test_forecast_writes_wb2_layout_and_resumes(trained, tmp_path):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.pt"
    over = TINY + [f"checkpoint={ckpt}", "domain.forecast.format=both",
                   "domain.forecast.init_times=[2015-02-02T00,2015-02-05T12]"]
    m = run(compose_config(over + ["task=forecast"]), tmp_path)
    assert m["forecast/inits"] == 2 and m["forecast/member_steps_per_second"] > 0
    assert m["forecast/nfe_per_member_step"] == 3
    ds = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=True)
    assert ds["geopotential"].dims == ("time", "prediction_timedelta", "number", "level",
                                       "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("time", "prediction_timedelta", "number", "latitude",
                                         "longitude")
    assert ds.sizes["number"] == 3 and ds.sizes["prediction_timedelta"] == 3
    assert [str(t)[:13] for t in ds["time"].values] == ["2015-02-02T00", "2015-02-05T12"]
    assert list(ds["level"].values) == [500, 850]
    assert (ds["prediction_timedelta"].values / np.timedelta64(1, "h")).tolist() == [24, 48, 72]
    assert ds["time"].attrs["standard_name"] == "forecast_reference_time"
    assert np.isfinite(ds["geopotential"].values).all()
    z = ds["geopotential"].sel(level=500).values
    assert 45_000 < z.mean() < 65_000 and z.std(axis=2).mean() > 0   # members differ
    nc = xr.open_dataset(tmp_path / "forecast.nc")
    np.testing.assert_allclose(nc["geopotential"].values, ds["geopotential"].values)
    nc.close()

    # kill one initial time: only that one is recomputed, and it comes back the same
    parts = sorted((tmp_path / "forecast_parts").glob("init_*.zarr"))
    assert len(parts) == 2
    import shutil
    shutil.rmtree(parts[1])
    before = ds["geopotential"].values.copy()
    m = run(compose_config(over + ["task=forecast"]), tmp_path)
    assert m["forecast/resumed_inits"] == 1
    again = xr.open_zarr(tmp_path / "forecast.zarr", consolidated=True)["geopotential"].values
    np.testing.assert_array_equal(again, before)


def test_evaluate_scores_against_baselines(trained, tmp_path):
    run_dir, _ = trained
    over = TINY + [f"checkpoint={run_dir / 'checkpoints' / 'last.pt'}"]
    run(compose_config(over + ["task=forecast"]), tmp_path)
    m = run(compose_config(over + ["task=evaluate"]), tmp_path)
    for key in ("crps/z500/24h", "rmse/t850/72h", "spread_skill/t2m/48h",
                "persistence/crps/z500/24h", "climatology/rmse/z500/72h",
                "climatology_ensemble/crps/t2m/48h", "oracle/crps/z500/24h",
                "oracle/spread_skill/t850/72h", "oracle_exact/crps/t2m/48h"):
        assert key in m and np.isfinite(m[key]), key
    # the built-in store's exact limit: no forecast beats it, persistence is far behind
    for lead in ("24h", "72h"):
        exact = m[f"oracle_exact/crps/z500/{lead}"]
        assert exact < m[f"persistence/crps/z500/{lead}"] and exact < m[f"crps/z500/{lead}"]
        assert abs(m[f"oracle/crps/z500/{lead}"] / exact - 1) < 0.25   # 3 members: near the limit
        # the mean against the exact mean: persistence does not move; a 4-step model is off by
        # more than its sampling noise
        assert abs(m[f"persistence/mean_slope/z500/{lead}"]) < 1e-6
        assert m[f"mean_distance/z500/{lead}"] > m[f"mean_noise/z500/{lead}"] > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["crps/z500/24h"] == m["crps/z500/24h"]
    for name in ("scorecard_crps.png", "scorecard_rmse.png", "rank_histograms.png",
                 "forecast_maps.png"):
        assert (tmp_path / name).stat().st_size > 2000, name


def test_latlon_support_runs(tmp_path):
    over = [o for o in TINY if not o.startswith("domain.nsides")]
    over += ["domain.sphere=latlon", "domain.latlon_sizes=[[8,16],[16,32],[32,64]]",
             "train.steps=2", "task=all", "domain.forecast.max_inits=1",
             "domain.forecast.lead_steps=2", "domain.forecast.members=2"]
    m = run(compose_config(over), tmp_path)
    assert "crps/z500/24h" in m and m["forecast/nfe_per_member_step"] == 3


def test_bad_settings_are_named(trained, tmp_path):
    with pytest.raises(ValueError, match="unknown sphere support 'cube'"):
        run(compose_config(TINY + ["domain.sphere=cube", "task=train"]), tmp_path)
    with pytest.raises(ValueError, match="not a multiple"):
        run(compose_config(TINY + ["domain.step_hours=5", "task=train"]), tmp_path)
    with pytest.raises(ValueError, match="finest lat-lon scale"):
        run(compose_config(TINY + ["domain.sphere=latlon", "domain.latlon_sizes=[[4,8]]",
                                   "task=train"]), tmp_path)
    with pytest.raises(ValueError, match="initial time 2015-03-01"):
        run(compose_config(TINY + ["task=forecast", "domain.forecast.init_times=[2015-03-01T00]",
                                   f"checkpoint={trained[0] / 'checkpoints' / 'last.pt'}"]),
            tmp_path / "bad_init")
    with pytest.raises(FileNotFoundError, match="forecast store not found"):
        run(compose_config(TINY + ["task=evaluate"]), tmp_path / "empty")


@pytest.mark.slow
def test_small_model_beats_persistence_and_climatology(tmp_path):
    """A few minutes of training on one synthetic year: the ensemble must already be more
    skilful (CRPS) than persistence and climatology at 1 and 3 days, with a sane spread. The
    forecast is raw (no validation period), so the training state is clean: noise on it
    (``domain.state_noise``) narrows the raw ensemble, which the calibration then widens."""
    over = ["domain=weather", "progress=false", "domain.synthetic.years=1.0", "domain.state_noise=0.0",
            "domain.train_period=[2015-01-01,2015-10-31]", "domain.test_period=[2015-11-01,2015-12-31]", "domain.val_period=null",
            "domain.nsides=[1,2,4]", "train.steps=200", "domain.forecast.max_inits=8",
            "domain.forecast.lead_steps=3", "domain.forecast.init_every_hours=168",
            "domain.forecast.members=8", "task=all"]
    m = run(compose_config(over), tmp_path)
    for ch in ("z500", "t850", "t2m"):
        for lead in ("24h", "72h"):
            crps = m[f"crps/{ch}/{lead}"]
            assert crps < m[f"persistence/crps/{ch}/{lead}"], (ch, lead)
            assert crps < m[f"climatology/crps/{ch}/{lead}"], (ch, lead)
        assert 0.5 < m[f"spread_skill/{ch}/72h"] < 1.5, ch


def test_windowed_refiner_trains_on_a_share_of_the_fine_windows_and_forecasts_every_pixel(trained):
    """``refiner.window``: nside 4 (192 pixels) is cut into 4 windows of 48 nested pixels; a
    training step scores every coarser pixel and 2 of the 4 windows, and sampling fills them all."""
    cfg = compose_config(TINY + ["refiner.window=48", "refiner.train_windows=0.5"])
    data = F.load_split(cfg, "train")
    from domains.weather.plugin import build_model
    model = build_model(cfg, data).train()
    seen = []
    original = model.head.loss
    model.head.loss = lambda pred, codes, values: seen.append(codes.shape[1]) or original(pred, codes, values)
    loss, _ = model.loss(data.batch([0, 1, 2]), torch.Generator().manual_seed(0))
    assert seen == [12 + 48 + 96] and torch.isfinite(loss)
    loss.backward()
    target, cond = data.batch([0, 1])
    out, nfe = generate(model.eval(), TokenScheduler(), cond, [0, 1])
    assert nfe == 3 and out.shape == target.shape and torch.isfinite(out).all()
