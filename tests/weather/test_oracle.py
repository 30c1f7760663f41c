"""The exact oracle of the linear synthetic store: its transition is the generator's, its
ensemble has the closed form's mean and variance, and its CRPS is the limit persistence misses."""
import numpy as np
import pytest

from domains.weather import synthetic as S
from domains.weather.oracle import LinearStoreOracle, gaussian_crps, mean_against_exact, store_settings
from domains.weather.scores import crps_fair, persistence_forecast

H = np.timedelta64(1, "h")
SETTINGS = S._settings(years=0.5, variables=["geopotential", "temperature", "2m_temperature"])


@pytest.fixture(scope="module")
def oracle():
    return LinearStoreOracle(SETTINGS)


@pytest.fixture(scope="module")
def truth():
    return S.synthetic_dataset(**{k: v for k, v in SETTINGS.items() if k != "version"})


def test_transition_is_the_generators(oracle):
    """Regressing the generator's own series k steps ahead on its present gives the oracle's
    factor and innovation variance (every mode, pooled): the oracle forecasts the process the
    store was drawn from."""
    n = len(oracle.gen.times)
    for p in (0, 1):
        w = np.stack([oracle._moving(p, i) for i in range(n)])           # [T, K] moving frame
        for k in (1, 4, 20):
            x, y = w[:-k:k], w[k::k]                                      # independent innovations
            factor, var = oracle.transition(p, k)
            slope = (np.conj(x) * y).real.sum(0) / (np.abs(x) ** 2).sum(0)
            resid = y - slope * x
            real_parts = np.where(oracle.gen.harm.m > 0, 2, 1)
            ratio = (np.abs(resid) ** 2).sum(0) / (len(x) * real_parts * var)
            assert np.median(np.abs(slope - factor)) < 0.12, (p, k)
            assert abs(np.mean(ratio) - 1) < 0.05, (p, k, np.mean(ratio))


def test_lead_zero_is_the_store_and_the_ensemble_matches_the_closed_form(oracle, truth):
    init = oracle.gen.times[[40, 300]]
    leads = np.array([0, 6, 24, 120]) * H
    ens = oracle.ensemble(init, leads, members=300, seed=1, variables=["geopotential", "temperature"])
    mean, std = oracle.gaussian(init, leads, variables=["geopotential", "temperature"])
    stored = truth["geopotential"].sel(time=init.astype("datetime64[ns]")).values
    assert np.allclose(ens["geopotential"].isel(prediction_timedelta=0).values,
                       stored[:, None], rtol=0, atol=0.05)              # lead 0: the state itself
    assert np.allclose(mean["geopotential"].isel(prediction_timedelta=0, number=0).values, stored, atol=0.05)
    assert float(std["geopotential"].isel(prediction_timedelta=0).max()) < 1e-6
    for var in ("geopotential", "temperature"):
        e, mu, sd = ens[var].isel(prediction_timedelta=slice(1, None)), mean[var], std[var]
        mu, sd = mu.isel(prediction_timedelta=slice(1, None), number=0), sd.isel(prediction_timedelta=slice(1, None), number=0)
        # Monte Carlo: the members' variance is the transition's, their mean its mean
        ratio = float((e.var("number", ddof=1).mean() / (sd ** 2).mean()).values)
        assert abs(ratio - 1) < 0.05, (var, ratio)
        z = (e.mean("number") - mu) / (sd / np.sqrt(e.sizes["number"]))
        assert 0.8 < float(np.sqrt((z ** 2).mean())) < 1.2, var
    # spread grows with lead, towards the stationary spread
    z500 = std["geopotential"].sel(level=500).isel(number=0).mean(["time", "longitude", "latitude"]).values
    assert np.all(np.diff(z500) > 0) and 500 < z500[-1] < 1100


def test_closed_form_crps_is_the_large_ensemble_limit_and_beats_persistence(oracle, truth):
    init = oracle.gen.times[100:500:40]
    leads = np.array([24, 72]) * H
    valid = (init[:, None] + leads[None]).ravel()
    need = np.unique(np.concatenate([init, valid])).astype("datetime64[ns]")
    y = truth[["geopotential", "temperature"]].sel(time=need).load()
    mean, std = oracle.gaussian(init, leads, variables=["geopotential", "temperature"])
    exact = gaussian_crps(mean, std, y)
    ens = oracle.ensemble(init, leads, members=200, seed=0, variables=["geopotential", "temperature"])
    sampled = crps_fair(ens, y)
    rel = abs(sampled - exact) / exact
    assert float(rel.to_array().max()) < 0.04
    persist = crps_fair(persistence_forecast(y, init, leads), y)
    assert bool((exact < 0.8 * persist).to_array().all())


def test_mean_against_exact_tells_a_forecast_that_moves_too_little(oracle, truth):
    """The exact mean itself has slope 1 and no distance; persistence slope 0; an ensemble moved
    half-way from persistence to the exact mean slope 0.5, whatever its members' noise, which
    ``mean_noise`` measures."""
    init = oracle.gen.times[100:500:40]
    leads = np.array([24, 72]) * H
    need = np.unique(np.concatenate([init, (init[:, None] + leads[None]).ravel()])).astype("datetime64[ns]")
    y = truth[["geopotential", "temperature"]].sel(time=need).load()
    mean, _ = oracle.gaussian(init, leads, variables=["geopotential", "temperature"])
    ens = oracle.ensemble(init, leads, members=8, seed=0, variables=["geopotential", "temperature"])
    persist = persistence_forecast(y, init, leads)

    exact = mean_against_exact(mean, mean, y)
    assert np.allclose(exact.sel(metric="mean_slope").to_array(), 1)
    assert np.allclose(exact.sel(metric=["mean_distance", "mean_noise"]).to_array(), 0)
    still = mean_against_exact(persist, mean, y)
    assert np.allclose(still.sel(metric="mean_slope").to_array(), 0, atol=1e-6)
    half_mean = 0.5 * (persist.isel(number=0) + mean.isel(number=0))
    half = ens - ens.mean("number") + half_mean       # the oracle's members around a shrunk mean
    halved = mean_against_exact(half, mean, y)
    assert np.allclose(halved.sel(metric="mean_slope").to_array(), 0.5, atol=1e-4)
    drawn = mean_against_exact(ens, mean, y)          # the oracle's own 8 members
    slope = drawn.sel(metric="mean_slope").to_array()
    assert float(abs(slope - 1).max()) < 0.25
    ratio = drawn.sel(metric="mean_distance") / drawn.sel(metric="mean_noise")
    assert 0.7 < float(ratio.to_array().mean()) < 1.3  # its distance is its sampling noise


def test_only_synthetic_stores_have_an_oracle(oracle, tmp_path):
    (tmp_path / "other.zarr").mkdir()
    assert store_settings(tmp_path / "other.zarr") is None
    with pytest.raises(Exception, match="not a built-in synthetic store"):
        LinearStoreOracle.for_store(tmp_path / "other.zarr")
    with pytest.raises(ValueError, match="not multiples"):
        oracle.gaussian(oracle.gen.times[:1], [np.timedelta64(5, "h")])
