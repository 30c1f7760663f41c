"""The limits on the built-in stores: the generator's own forecast.

On the linear store the limit is exact (below); on the nonlinear QG store (``qg.py``) it is the
perfect-model ensemble, :class:`PerfectModel`.

The linear store
----------------

The synthetic store (``synthetic.py``) is linear and Gaussian in its latent spectral
coefficients. In the frame that turns with each wave, every real coefficient of degree l is an
AR(1) process at the store's time step, ``b[n+1] = r b[n] + sigma sqrt(1 - r^2) xi``, so given
the state at the initial time (a fixed function of the coefficients, which the generator
recomputes from the store's settings) the coefficients k steps later are Gaussian with mean
``r^k b[n]`` and variance ``sigma^2 (1 - r^(2k))``, turned on to the valid time. No forecaster can
do better on this store; the model's scores are reported as ratios to this limit.

Two forms, both from :class:`LinearStoreOracle`:

* ``ensemble(init_times, leads, members)``: members are the generator itself run on from the
  initial coefficients with fresh noise (whole trajectories, every variable of the store),
  scored like any forecast (fair CRPS at the forecast's ensemble size);
* ``gaussian(init_times, leads)``: the exact mean and standard deviation of the channels that
  are affine in the latent fields (geopotential, temperature, 2 m temperature, mean sea-level
  pressure), whose CRPS :func:`gaussian_crps` computes in closed form (an infinite ensemble).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from domains.weather import synthetic as S
from domains.weather.data import UPPER_AIR, WeatherDataError

# channels affine in the latent anomalies A (Z500) and B (the part of T850 not tied to A)
AFFINE = ("geopotential", "temperature", "2m_temperature", "mean_sea_level_pressure")


def forecast_dataset(fields: dict, init, leads, members: int, lat, lon, levels) -> xr.Dataset:
    """Fields {var: [init, lead, member, (level), lon, lat]} in the forecast layout."""
    out = {}
    for var, x in fields.items():
        dims = ("time", "prediction_timedelta", "number") + (
            ("level",) if var in UPPER_AIR else ()) + ("longitude", "latitude")
        out[var] = (dims, x.astype(np.float32))
    coords = {"time": np.asarray(init).astype("datetime64[ns]"),
              "prediction_timedelta": np.asarray(leads).astype("timedelta64[ns]"),
              "number": np.arange(members), "longitude": lon, "latitude": lat}
    if any(v in UPPER_AIR for v in fields):
        coords["level"] = np.array(levels, dtype=np.int64)
    return xr.Dataset(out, coords)


def _lead_steps(leads, step_hours: float, what: str) -> np.ndarray:
    hours = np.asarray(leads).astype("timedelta64[s]").astype(np.int64) / 3600.0
    steps = hours / step_hours
    if np.any(np.abs(steps - np.round(steps)) > 1e-9) or np.any(steps < 0):
        raise ValueError(f"leads {hours} h are not multiples of the {what}'s {step_hours:g} h step")
    return np.round(steps).astype(int)


def _time_index(times, init_times) -> np.ndarray:
    init = np.asarray(init_times).astype("datetime64[s]")
    times = np.asarray(times).astype("datetime64[s]")
    idx = np.searchsorted(times, init)
    ok = (idx < len(times)) & (times[np.minimum(idx, len(times) - 1)] == init)
    if not ok.all():
        raise ValueError(f"initial times {init[~ok][:3]} are not times of the store")
    return idx


def store_settings(path) -> dict | None:
    """The generator settings of a built-in synthetic store, or None for any other store."""
    return S._stored_settings(Path(path))


class LinearStoreOracle:
    """The generator of a synthetic store, able to forecast from any of its times."""

    def __init__(self, settings: dict):
        if settings.get("version") != S.GENERATOR_VERSION:
            raise WeatherDataError(f"the store was made by generator version {settings.get('version')}, "
                                   f"this code has {S.GENERATOR_VERSION}: regenerate the store")
        step = self.step_hours = int(settings["step_hours"])
        self.gen = S.generator(settings)
        harm = self.gen.harm
        # per process: sigma (per real degree of freedom), r (per step), angular speed
        self.params = [S.process_parameters(harm, step, slope)
                       for slope in (S.SLOPE_Z, S.SLOPE_T, S.SLOPE_T)]
        self.coefs = [self.gen.z_a, self.gen.z_b, self.gen.z_m]

    @classmethod
    def for_store(cls, path) -> "LinearStoreOracle":
        settings = store_settings(path)
        if settings is None or settings.get("model", "linear") != "linear":
            raise WeatherDataError(f"{path} is not a built-in synthetic store: the exact oracle "
                                   "exists only for the linear synthetic store")
        return cls(settings)

    # ---------------------------------------------------------------- indices and coefficients
    def _index(self, init_times) -> np.ndarray:
        return _time_index(self.gen.times, init_times)

    def _steps(self, leads) -> np.ndarray:
        return _lead_steps(leads, self.step_hours, "store")

    def _seconds(self, n) -> np.ndarray:
        return np.asarray(n) * self.step_hours * 3600.0

    def _moving(self, p: int, n: int) -> np.ndarray:
        """Coefficients of process ``p`` at time index ``n`` in the frame turning with the waves."""
        _, _, speed = self.params[p]
        return self.coefs[p][n] * np.exp(1j * self.gen.harm.m * speed * self._seconds(n))

    def _turned(self, p: int, w: np.ndarray, n) -> np.ndarray:
        _, _, speed = self.params[p]
        return w * np.exp(-1j * self.gen.harm.m * speed * self._seconds(n))

    def transition(self, p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(factor, variance)`` per coefficient of process ``p`` (0: A, 1: B, 2: moisture) over
        ``k`` steps in the moving frame: mean = factor x start, variance per real part."""
        sigma, r, _ = self.params[p]
        return r ** k, sigma ** 2 * (1.0 - r ** (2 * k))

    # ---------------------------------------------------------------- the two forecasts
    def _dataset(self, fields: dict, init, leads, members: int) -> xr.Dataset:
        return forecast_dataset(fields, init, leads, members, self.gen.lat, self.gen.lon,
                                self.gen.levels)

    def _fields(self, z: list[np.ndarray], valid: np.ndarray, variables) -> dict:
        season, utc = S.calendar(self.gen.times[valid])
        return self.gen.fields(z[0], z[1], z[2], season, utc, variables)

    def ensemble(self, init_times, leads, members: int, seed: int = 0, variables=None) -> xr.Dataset:
        """``members`` trajectories of the generator from each initial time, in the forecast
        layout (``time``, ``prediction_timedelta``, ``number``, [``level``], lon, lat)."""
        variables = list(variables or self.gen.variables)
        n0s, steps = self._index(init_times), self._steps(leads)
        harm = self.gen.harm
        has_sine = harm.m > 0
        per_var = {v: [] for v in variables}
        for n0 in n0s:
            if n0 + steps.max() >= len(self.gen.times):
                raise ValueError("a lead runs past the end of the store")
            rng = np.random.default_rng([int(seed), int(n0)])
            paths = []
            for p in range(3):
                sigma, r, _ = self.params[p]
                w = np.broadcast_to(self._moving(p, n0), (members, harm.l.size))
                by_step = {0: w}
                for s in range(1, steps.max() + 1):
                    noise = rng.standard_normal((2, members, harm.l.size))
                    w = r * w + sigma * np.sqrt(1 - r ** 2) * (noise[0] - 1j * noise[1] * has_sine)
                    by_step[s] = w
                paths.append(np.stack([self._turned(p, by_step[k], n0 + k) for k in steps]))  # [L, M, K]
            valid = np.repeat(n0 + steps, members)
            flat = [x.reshape(-1, harm.l.size) for x in paths]          # lead-major, as valid
            fields = self._fields(flat, valid, variables)
            for v in variables:
                x = fields[v]
                per_var[v].append(x.reshape((len(steps), members) + x.shape[1:]))
        return self._dataset({v: np.stack(per_var[v]) for v in variables}, init_times, leads, members)

    def gaussian(self, init_times, leads, variables=None) -> tuple[xr.Dataset, xr.Dataset]:
        """Exact conditional ``(mean, std)`` of the affine channels, one member each."""
        variables = [v for v in (variables or self.gen.variables) if v in AFFINE]
        n0s, steps = self._index(init_times), self._steps(leads)
        harm, env = self.gen.harm, self.gen.env[:, 0]
        means = {v: [] for v in variables}
        stds = {v: [] for v in variables}
        # latent variance per latitude at each lead: sum over modes of P^2 x var (both parts of
        # an m > 0 pair: cos^2 + sin^2 = 1; an m = 0 mode has only its cosine part)
        lat_var = []
        for p in (0, 1):
            lat_var.append(np.stack([(harm.p ** 2 * self.transition(p, k)[1][:, None]).sum(0)
                                     for k in steps]))                   # [lead, lat]
        std_by_var = {}
        for v in variables:
            coeffs = _affine_coefficients(v, self.gen.levels)           # [(a, b)] per level
            sd = [np.sqrt((a * S.Z_ANOMALY_RMS) ** 2 * lat_var[0] + (b * S.T_ANOMALY_RMS) ** 2 * lat_var[1])
                  * env for a, b in coeffs]                              # [lead, lat] per level
            sd = np.stack(sd, 1) if v in UPPER_AIR else sd[0]
            std_by_var[v] = np.broadcast_to(sd[..., None, :], sd.shape[:-1] + (self.gen.lon.size, sd.shape[-1]))
        for n0 in n0s:
            z = []
            for p in range(3):
                factor = np.stack([self.transition(p, k)[0] for k in steps])
                z.append(self._turned(p, factor * self._moving(p, n0)[None], n0 + steps[:, None]))
            fields = self._fields(z, n0 + steps, variables)
            for v in variables:
                means[v].append(fields[v][:, None])
                stds[v].append(std_by_var[v][:, None])
        return (self._dataset({v: np.stack(means[v]) for v in variables}, init_times, leads, 1),
                self._dataset({v: np.stack(stds[v]) for v in variables}, init_times, leads, 1))


def _affine_coefficients(var: str, levels) -> list[tuple[float, float]]:
    """(a, b) per level with channel anomaly = a A + b B (A, B the latent anomalies)."""
    g1000, c1000 = S._level_factors(1000.0)
    if var == "geopotential":
        return [(1.0 + c * S.T_PER_Z, c) for c in (S._level_factors(float(p))[1] for p in levels)]
    if var == "temperature":
        return [(g * S.T_PER_Z, g) for g in (S._level_factors(float(p))[0] for p in levels)]
    if var == "2m_temperature":
        return [(g1000 * S.T_PER_Z, g1000)]
    if var == "mean_sea_level_pressure":
        return [(1.2 * (1.0 + c1000 * S.T_PER_Z), 1.2 * c1000)]
    raise ValueError(f"{var} is not affine in the latent fields")


def gaussian_crps(mean: xr.Dataset, std: xr.Dataset, truth: xr.Dataset, weights=None) -> xr.Dataset:
    """CRPS of the Gaussian forecast N(mean, std^2) (Gneiting and Raftery 2007), spatially
    weighted and averaged over inits like ``scores.crps_fair``."""
    from scipy.special import erf

    from domains.weather.scores import _spatial_mean, _weights, align_truth

    y = align_truth(mean, truth)
    out = {}
    for v in mean.data_vars:
        mu, sd = mean[v].isel(number=0), std[v].isel(number=0)
        obs = y[v].isel(number=0) if "number" in y[v].dims else y[v]
        sd_safe = xr.where(sd > 0, sd, 1.0)
        z = (obs - mu) / sd_safe
        pdf = np.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi)
        cdf = 0.5 * (1 + xr.apply_ufunc(erf, z / np.sqrt(2)))
        crps = sd * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))
        out[v] = xr.where(sd > 0, crps, abs(obs - mu))
    ds = xr.Dataset(out)
    return _spatial_mean(ds, _weights(mean, weights)).mean("time")


def mean_against_exact(forecast: xr.Dataset, mean: xr.Dataset, truth: xr.Dataset,
                       weights=None) -> xr.Dataset:
    """Where an ensemble's mean departs from the exact conditional mean ``mean`` (``gaussian``).

    Per variable and lead (area-weighted, over the initial times), with ``x0`` the state at the
    initial time:

    * ``mean_slope``: the regression of the forecast's mean change ``m - x0`` on the exact one
      ``mean - x0``. 1: the forecast moves as far as the truth's expectation does; below 1 it
      stays too close to persistence. The sampling noise of ``m`` does not bias it.
    * ``mean_distance``: the RMSE of ``m`` against ``mean`` (square root after the time mean).
    * ``mean_noise``: the part of that distance a correct mean would still show: the ensemble's
      own spread over the square root of its size.
    """
    from domains.weather.scores import _spatial_mean, _weights

    init = truth.sel(time=forecast["time"].values)
    w = _weights(mean, weights)
    out = {}
    for v in mean.data_vars:
        members = forecast[v]
        m, exact = members.mean("number"), mean[v].isel(number=0, drop=True)
        x0 = init[v].drop_vars("time").assign_coords(time=forecast["time"].values)
        if "level" in m.dims:
            x0 = x0.sel(level=m["level"].values)
        change, exact_change = m - x0, exact - x0
        slope = (_spatial_mean(change * exact_change, w).sum("time")
                 / _spatial_mean(exact_change ** 2, w).sum("time"))
        distance = np.sqrt(_spatial_mean((m - exact) ** 2, w).mean("time"))
        size = members.sizes["number"]
        spread2 = members.var("number", ddof=1) if size > 1 else xr.zeros_like(m)
        noise = np.sqrt(_spatial_mean(spread2 / size, w).mean("time"))
        out[v] = xr.concat([slope, distance, noise], dim="metric").assign_coords(
            metric=["mean_slope", "mean_distance", "mean_noise"])
    return xr.Dataset(out)



class PerfectModel:
    """The limit on the nonlinear (QG) store: its own model run on from the store's state.

    The store keeps the model's full spectral state at every time (``synthetic.QG_STATE``). A
    forecaster is handed the state at the initial time; what it cannot know is the stochastic
    forcing to come. Members are therefore the true model started from the exact state with
    fresh noise: a sample of the true conditional distribution, so the ensemble is calibrated by
    construction (no perturbation size to tune) and its fair CRPS is the floor for an ensemble
    of that size, up to sampling error."""

    def __init__(self, path):
        from domains.weather.qg import QG_VERSION

        settings = store_settings(path)
        if settings is None or settings.get("model") != "qg":
            raise WeatherDataError(f"{path} is not a built-in QG store: the perfect-model "
                                   "ensemble exists only for domain.synthetic.model=qg")
        if settings["qg"].get("version") != QG_VERSION:
            raise WeatherDataError(f"the store was made by QG version {settings['qg'].get('version')}, "
                                   f"this code has {QG_VERSION}: regenerate the store")
        self.path = Path(path)
        self.gen = S.generator(settings, run=False)
        self.model = self.gen.model
        self.step_hours = float(self.model.params["dt_hours"])

    def _states(self, init_times) -> np.ndarray:
        from domains.weather.store import open_store

        with open_store(self.path) as ds:
            idx = _time_index(ds["time"].values, init_times)
            x = ds[S.QG_STATE].isel(time=xr.DataArray(idx, dims="init")).values
        return x[..., 0] + 1j * x[..., 1]                        # [init, layer, m, l]

    def ensemble(self, init_times, leads, members: int, seed: int = 0, variables=None,
                 progress: bool = False) -> xr.Dataset:
        """``members`` runs of the true model from each initial state (fresh noise each), in the
        forecast layout (``time``, ``prediction_timedelta``, ``number``, [``level``], lon, lat)."""
        from tqdm.auto import tqdm

        from domains.weather.data import resolve_variable

        variables = [resolve_variable(v) for v in (variables or self.gen.variables)]
        steps = _lead_steps(leads, self.step_hours, "QG model")
        init = np.asarray(init_times).astype("datetime64[s]")
        q = np.repeat(self._states(init)[:, None], members, axis=1)   # [init, member, 2, M, L]
        rng = np.random.default_rng([int(seed), 9])
        at = {}
        for n in tqdm(range(steps.max() + 1), desc="perfect model", disable=not progress,
                      mininterval=2.0, leave=False):
            if n:
                q = self.model.step(q, rng)
            if n in steps:
                at[n] = q
        per_var = {v: [] for v in variables}
        for k, lead in zip(steps, np.asarray(leads).astype("timedelta64[s]")):
            valid = np.repeat(init + lead, members)
            season, utc = S.calendar(valid)
            flat = at[k].reshape((-1,) + q.shape[2:])
            fields = self.gen.fields(flat, season, utc, variables)   # init-major, as valid
            for v in variables:
                x = fields[v]
                per_var[v].append(x.reshape((len(init), members) + x.shape[1:]))
        stacked = {v: np.stack(per_var[v], axis=1) for v in variables}   # [init, lead, member, ...]
        return forecast_dataset(stacked, init, leads, members, self.gen.lat, self.gen.lon,
                                self.gen.levels)
