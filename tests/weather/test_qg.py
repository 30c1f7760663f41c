"""The nonlinear built-in store: the two-level QG model, its store and its perfect-model limit."""
import numpy as np
import pytest

from domains.weather import synthetic as S
from domains.weather.oracle import PerfectModel
from domains.weather.qg import OMEGA, TwoLevelQG

FREE = dict(tau_radiative_days=1e12, tau_ekman_days=1e12, tau_diffusion_hours=1e12,
            mountain_km=[0.0, 0.0], noise=0.0)
# a short spin-up keeps the store tests fast; the dynamics are the default ones
QUICK = {"spinup_days": 20.0}


def test_transforms_invert_each_other():
    s = TwoLevelQG(FREE).sphere
    rng = np.random.default_rng(0)
    c = (rng.standard_normal((3, 22, 22)) + 1j * rng.standard_normal((3, 22, 22))) * s.valid
    c[:, 0] = c[:, 0].real
    assert np.abs(s.analysis(s.synthesis(c)) - c).max() < 1e-12
    # orthonormal: the area mean of a field's square is the coefficients' sum of squares
    x = s.synthesis(c[0])
    mean_square = (x ** 2 * s.weights[:, None]).sum() / s.nlon / 2
    power = (np.abs(c[0, 0]) ** 2).sum() + 2 * (np.abs(c[0, 1:]) ** 2).sum()
    assert mean_square == pytest.approx(power / 2, rel=1e-10)


@pytest.mark.parametrize("mode,l,m", [("barotropic", 5, 3), ("baroclinic", 6, 2)])
def test_single_harmonics_are_exact_rossby_waves(mode, l, m):
    """A lone spherical harmonic has zero Jacobian with its own PV, so it turns westwards at the
    Rossby-Haurwitz speed -2 Omega / (l (l+1)) (barotropic) or -2 Omega / (l (l+1) + 2 F a^2)
    (baroclinic): this checks the transforms, the PV inversion and the beta term together."""
    model = TwoLevelQG(FREE)
    psi = np.zeros((2, 22, 22), complex)
    psi[0, m, l] = 1e7
    psi[1, m, l] = 1e7 if mode == "barotropic" else -1e7
    q = model.potential_vorticity(psi)
    out = q
    for _ in range(48):
        out = model.step(out, None)
    stretch = 0.0 if mode == "barotropic" else 2 * model.F * model.sphere.radius ** 2
    speed = -2 * OMEGA / (l * (l + 1) + stretch)
    expect = q * np.exp(-1j * m * speed * 48 * model.dt)
    assert np.abs(out - expect).max() < 1e-6 * np.abs(q).max()


def test_balanced_geopotential_of_solid_body_rotation():
    """u = U cos(lat) is balanced by Phi = -Omega a U sin^2(lat) (+ a constant)."""
    model = TwoLevelQG(FREE)
    s = model.sphere
    u, a = 20.0, s.radius
    psi = s.analysis(-u * a * s.mu[:, None] * np.ones((1, s.nlon)))
    phi = s.synthesis(model.geopotential(psi))
    expect = -OMEGA * a * u * s.mu[:, None] ** 2
    expect = expect - (expect[:, 0] * s.weights).sum() / 2
    assert np.abs(phi - expect).max() < 1e-6 * np.abs(expect).max()


def test_the_forced_model_is_chaotic():
    """Two noise-free runs whose eddies differ by one part in a million separate about
    exponentially (a doubling time of about 3 days): errors grow, as in the atmosphere."""
    model = TwoLevelQG({"noise": 0.0})
    s = model.sphere
    q = model.spin_up(0)
    rng = np.random.default_rng(1)
    kick = rng.standard_normal(q.shape) + 1j * rng.standard_normal(q.shape)
    pair = np.stack([q, q + 1e-6 * np.abs(q).mean() * kick * s.valid * (s.m > 0)])
    distance = [np.linalg.norm(pair[1] - pair[0])]
    for _ in range(2):
        for _ in range(10 * 24):
            pair = model.step(pair, None)
        distance.append(np.linalg.norm(pair[1] - pair[0]))
    assert distance[1] > 3 * distance[0] and distance[2] > 3 * distance[1]


@pytest.fixture(scope="module")
def qg_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("qg") / "qg.zarr"
    return S.make_synthetic_era5(path, years=0.1, model="qg", qg=QUICK,
                                 variables=["z", "t", "u", "t2m", "msl"])


def test_qg_store_is_a_plausible_wb2_atmosphere(qg_store):
    import xarray as xr

    ds = xr.open_zarr(qg_store, consolidated=True)
    assert ds["geopotential"].dims == ("time", "level", "longitude", "latitude")
    assert S.QG_STATE in ds.data_vars
    settings = S._stored_settings(qg_store)
    assert settings["model"] == "qg" and settings["qg"]["spinup_days"] == 20.0
    z500 = ds["geopotential"].sel(level=500).values
    t850 = ds["temperature"].sel(level=850).values
    assert 35_000 < z500.min() and z500.max() < 62_000
    assert 200 < t850.min() and t850.max() < 310
    # westerlies in both hemispheres' mid-latitudes, weak winds at the equator
    u = ds["u_component_of_wind"].sel(level=500).mean(("time", "longitude"))
    lat = ds["latitude"].values
    assert u.values[(lat > 35) & (lat < 55)].mean() > 5
    assert u.values[(lat < -35) & (lat > -55)].mean() > 5
    # the weather moves: 12-hour changes are a sizeable share of the day-to-day variability
    change = np.abs(z500[2:] - z500[:-2]).mean()
    assert change > 0.1 * z500.std(0).mean()


def test_qg_fields_are_finite_on_a_grid_with_poles():
    ds = S.synthetic_dataset(grid="1.5deg", years=0.01, model="qg", qg=QUICK,
                             variables=["u", "v10", "z"]).load()
    for var in ds.data_vars:
        assert np.isfinite(ds[var].values).all(), var


def test_qg_settings_are_checked():
    assert "model" not in S._settings()            # the linear store keeps its cache key
    assert S._settings(model="qg", qg={"deformation_km": 500}) == S._settings(model="qg")
    with pytest.raises(ValueError, match="mountain_km needs 2 heights"):
        TwoLevelQG({"mountain_km": [1.0]})
    with pytest.raises(ValueError, match="domain.synthetic.qg has no setting"):
        S._settings(model="qg", qg={"nosie": 1.0})
    with pytest.raises(ValueError, match="need domain.synthetic.model=qg"):
        S._settings(qg={"noise": 1.0})
    with pytest.raises(ValueError, match="domain.synthetic.model must be one of"):
        S._settings(model="gcm")


def test_perfect_model_starts_from_the_truth_and_spreads(qg_store):
    import xarray as xr

    ds = xr.open_zarr(qg_store, consolidated=True)
    init = ds["time"].values[[4, 20]]
    leads = np.array([0, 24, 72], dtype="timedelta64[h]")
    ens = PerfectModel(qg_store).ensemble(init, leads, members=4, seed=0, variables=["geopotential"])
    z = ens["geopotential"].sel(level=500)
    truth = ds["geopotential"].sel(level=500, time=init).values
    assert np.abs(z.isel(prediction_timedelta=0).values - truth[:, None]).max() < 1e-2
    spread = z.std("number").mean(("time", "longitude", "latitude")).values
    assert spread[0] == 0 and 0 < spread[1] < spread[2]
    # the truth is one draw of the same process: it lies inside the ensemble's range of errors
    truth_later = ds["geopotential"].sel(level=500, time=init + leads[2]).transpose("time", "longitude", "latitude").values
    err = np.sqrt(((z.isel(prediction_timedelta=2).mean("number").values - truth_later) ** 2).mean())
    assert 0.2 < err / spread[2] < 5


def test_noise_free_perfect_model_reproduces_a_deterministic_run(qg_store, monkeypatch):
    import xarray as xr

    pm = PerfectModel(qg_store)
    monkeypatch.setattr(pm.model, "noise", 0.0)
    ds = xr.open_zarr(qg_store, consolidated=True)
    init = ds["time"].values[[10]]
    ens = pm.ensemble(init, np.array([12], dtype="timedelta64[h]"), members=3, variables=["z"])
    z = ens["geopotential"].values
    assert np.abs(z - z[:, :, :1]).max() == 0                     # members agree
    q = pm._states(init)[0]
    for _ in range(12):
        q = pm.model.step(q, None)
    direct = pm.gen.fields(q[None], *S.calendar(init + np.timedelta64(12, "h")), ["geopotential"])
    assert np.abs(z[0, 0, 0] - direct["geopotential"][0]).max() < 1e-2


def test_perfect_model_refuses_other_stores(tmp_path):
    from domains.weather.data import WeatherDataError

    linear = S.make_synthetic_era5(tmp_path / "linear.zarr", years=0.02, variables=["z"])
    with pytest.raises(WeatherDataError, match="not a built-in QG store"):
        PerfectModel(linear)
