"""Built-in ERA5-like data in the exact WeatherBench2 layout, for the default run and the tests.

Real ERA5 cannot be downloaded here, yet a forecaster needs years of it. This module writes a
store that looks like a WB2 one (names, units, dims ``(time, level, longitude, latitude)``,
latitude ascending, no poles on 64x32, float32) and behaves enough like the atmosphere that
persistence and climatology are meaningful baselines which a learned 1-10 day forecaster can beat.

The model
---------
Three latent fields on the sphere are sums of real spherical harmonics of degree 1 <= l <= 20
(4-pi normalised, evaluated by a Legendre sum per order m and an inverse FFT in longitude):
``A`` (the Z500 anomaly, a streamfunction-like field), ``B`` (the part of the T850 anomaly not
tied to A) and ``M`` (a moisture anomaly). Each coefficient pair of degree l and order m moves as

- deterministic propagation: the pattern turns eastwards at the Rossby-Haurwitz angular phase
  speed ``c_l = alpha - 2 (Omega + alpha) / (l (l + 1) + F)`` of a super-rotating mean flow
  ``alpha`` (12.7 m/s at the equator) with an equivalent-barotropic Lamb parameter ``F = 60``:
  planetary waves are quasi-stationary or drift west, synoptic ones move east about 10 deg/day;
- a stochastic Ornstein-Uhlenbeck evolution in that moving frame, with decorrelation time
  ``tau_l`` falling from 10 days at l = 1 to 1 day at l = 20 (``tau_l = 10 / (1 + 9 x^2)``,
  ``x = (l - 1) / 19``), started in its stationary state (no spin-up);
- a red spectrum: the power of degree l is ``1 / (1 + (l / 6)^s)`` with ``s = 4.9`` for A and
  ``s = 3.3`` for B and M, the slopes of the real Z500 and T850 spectra.

The anomalies are scaled by the envelope ``0.25 + 0.75 sin^2(lat)`` (weak in the tropics) to an
area-mean RMS of 1,000 m^2/s^2 (A) and 3.5 K (B). With these numbers (one year, seed 0) Z500 has
a 12-hour change RMS of 375 m^2/s^2 (ERA5: 390), an anomaly std of 970 and persistence errors of
0.54, 0.88 and 1.05 times it at 1, 3 and 5 days (ERA5: 0.87 and 0.96 at 3 and 5 days); T850 has a
12-hour change RMS of 1.8 K (ERA5: 2.3), an anomaly std of 4.4 K and persistence errors of 0.59,
0.93 and 1.1 times it (ERA5: 0.77 and 0.83: real temperature has more slow variability). Spatial
standard deviations match ERA5's (Z500 about 2,700, T850 about 12 K, from degrees 1-20).

Physical fields follow from ``Z500 = Zc + A`` and ``T850 = Tc + 0.003 A + B`` (ridges warm) with
the zonal climatologies (``mu = sin(lat)``, ``s(t) = cos(2 pi (day - Jul 15) / year)``, so the
hemispheres have opposite seasons)::

    Zc = 55,400 + 8,000 (1/3 - mu^2) + 2,500 mu^3 s(t)     [m^2/s^2]
    Tc = 280 + 37 (1/3 - mu^2) + 10 mu^3 s(t)              [K]

- temperature at level p: a 6.5 K/km lapse-rate atmosphere below 250 hPa,
  ``T_p = T850 (p/850)^(R Gamma / g)``, isothermal above;
- geopotential by hydrostatic integration of that profile from 500 hPa, so thickness and
  temperature agree exactly: ``Z_p = Z500 + C(p) T850`` (Z850 is about 14,000-15,000);
- winds geostrophic from the gradient of Z_p, ``u = -(1/f a) dZ/dlat``,
  ``v = (1/(f a cos lat)) dZ/dlon``, with ``1/f`` regularised to ``mu / (2 Omega (mu^2 + sin^2
  15deg))`` (continuous, zero at the equator); the thermal wind follows from the T gradient;
- specific humidity ``q = RH q_sat(T_p, p)`` (Magnus formula), ``RH = 0.55 + 0.3 tanh(M)``:
  positive, smaller aloft, larger where warm;
- mean sea-level pressure ``101,300 Pa + 1.2 kg/m^3 (Z1000 - its climatological global mean)``;
- 2 m temperature ``T1000`` plus a diurnal cycle of ``3 K cos(lat)`` peaking at 15 h local solar
  time (no land); 10 m wind is 0.7 times the 1000 hPa geostrophic wind turned 20 deg towards low
  pressure.

Everything is deterministic given the seed (same values and the same bytes twice). Zarr stores are
written as Zarr format 2 with consolidated metadata (readable by every zarr/xarray version and by
WB2 tooling), Blosc-lz4 compressed, chunked by ``time_chunk`` times; netCDF-4 files are chunked the
same way. Three years of 64x32 6-hourly data with all 9 variables at 2 levels (14 channels) take
about 0.5 GB (float32) and are written in well under a minute.
"""
from __future__ import annotations

import hashlib
import json
import logging
import operator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from domains.weather.data import (SHORT_NAMES, UPPER_AIR, WeatherDataError, resolve_variable,
                                  wb2_grid)

__all__ = ["ALL_VARIABLES", "make_synthetic_era5", "synthetic_dataset", "default_synthetic_path",
           "ensure_synthetic", "power_spectrum", "GENERATOR_VERSION", "MODELS", "QG_STATE"]

GENERATOR_VERSION = 1  # bump when the model changes: cached stores are keyed by it
MODELS = ("linear", "qg")  # the linear Gaussian store below; the nonlinear one in qg.py
QG_STATE = "qg_potential_vorticity"
ALL_VARIABLES = tuple(SHORT_NAMES)

# physical constants
R_DRY = 287.05             # J/(kg K)
GRAVITY = 9.80665          # m/s^2
OMEGA = 7.292e-5           # 1/s
EARTH_RADIUS = 6.371e6     # m
LAPSE_EXPONENT = R_DRY * 0.0065 / GRAVITY   # T ~ p^k for a 6.5 K/km lapse rate
P_TROPOPAUSE = 250.0       # hPa; isothermal above

# model parameters (see the module docstring)
LMAX = 20
TAU_MAX_DAYS, TAU_MIN_DAYS = 10.0, 1.0
MEAN_FLOW = 2.0e-6         # 1/s, angular velocity of the mean zonal flow
LAMB_F = 60.0
SPECTRUM_L0 = 6.0
SLOPE_Z, SLOPE_T = 4.9, 3.3
Z_ANOMALY_RMS, T_ANOMALY_RMS = 1000.0, 3.5
T_PER_Z = 0.003            # K per m^2/s^2 of Z500 anomaly
F_CLIP = np.sin(np.deg2rad(15.0))

_ATTRS = {
    "geopotential": ("m**2 s**-2", "Geopotential", "geopotential"),
    "temperature": ("K", "Temperature", "air_temperature"),
    "u_component_of_wind": ("m s**-1", "U component of wind", "eastward_wind"),
    "v_component_of_wind": ("m s**-1", "V component of wind", "northward_wind"),
    "specific_humidity": ("kg kg**-1", "Specific humidity", "specific_humidity"),
    "2m_temperature": ("K", "2 metre temperature", "air_temperature"),
    "10m_u_component_of_wind": ("m s**-1", "10 metre U wind component", "eastward_wind"),
    "10m_v_component_of_wind": ("m s**-1", "10 metre V wind component", "northward_wind"),
    "mean_sea_level_pressure": ("Pa", "Mean sea level pressure",
                                "air_pressure_at_mean_sea_level"),
}


# --------------------------------------------------------------------------- spectral machinery


class _Harmonics:
    """Legendre tables for degrees 1..lmax on the grid's latitudes, evaluated in float64.

    ``p[k]``, ``dp[k]`` (d/dlat) and ``p_cos[k]`` (divided by cos(lat), for the zonal gradient)
    for each (l, m) pair k, normalised so a unit coefficient has unit mean square on the sphere.
    """

    def __init__(self, latitude: np.ndarray, nlon: int, lmax: int = LMAX):
        from scipy.special import gammaln, lpmv

        self.nlon, self.lmax = nlon, lmax
        pairs = [(l, m) for m in range(lmax + 1) for l in range(max(m, 1), lmax + 1)]
        self.l = np.array([p[0] for p in pairs])
        self.m = np.array([p[1] for p in pairs])
        starts = np.searchsorted(self.m, np.arange(lmax + 2))
        self.by_m = [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]
        norm = np.sqrt((2 * self.l + 1) * np.where(self.m == 0, 1.0, 2.0)
                       * np.exp(gammaln(self.l - self.m + 1) - gammaln(self.l + self.m + 1)))
        phi = np.deg2rad(np.asarray(latitude, dtype=np.float64))

        def table(phi):
            return norm[:, None] * lpmv(self.m[:, None], self.l[:, None], np.sin(phi)[None, :])

        self.p = table(phi)
        # derivatives at a pole row (1.5deg grid) are taken a hair away from it: lpmv sees only
        # sin(lat), so a difference across the pole would cancel; P/cos(lat) is regular there
        safe = np.clip(phi, -np.pi / 2 + 1e-4, np.pi / 2 - 1e-4)
        h = 1e-6
        self.dp = (table(safe + h) - table(safe - h)) / (2 * h)
        self.p_cos = table(safe) / np.cos(safe)

    def synthesize(self, z: np.ndarray, table: np.ndarray, d_lon: bool = False) -> np.ndarray:
        """Fields ``Re sum_k z_k P_k(lat) e^{i m_k lon}`` [T, lat, lon] from complex coefficients
        ``z`` [T, K]; ``d_lon`` applies d/dlon (a factor i m). A Legendre sum per order m (pairs
        are stored m-major, so each is a contiguous real matrix product), then an inverse real
        FFT in longitude does the Fourier sum (longitudes must be 2 pi j / nlon)."""
        if d_lon:
            z = z * (1j * self.m)
        zr, zi = np.ascontiguousarray(z.real), np.ascontiguousarray(z.imag)
        spec = np.empty((z.shape[0], table.shape[1], self.lmax + 1), dtype=np.complex128)
        for m, part in enumerate(self.by_m):
            spec[:, :, m] = zr[:, part] @ table[part] + 1j * (zi[:, part] @ table[part])
        spec[:, :, 1:] *= self.nlon / 2.0
        spec[:, :, 0] = spec[:, :, 0].real * self.nlon
        return np.fft.irfft(spec, n=self.nlon, axis=-1)


def power_spectrum(fields, latitude, lmax: int = LMAX) -> np.ndarray:
    """Power per spherical-harmonic degree 0..lmax of fields [..., lat, lon] on a regular
    lat-lon grid (area-weighted least squares; unit-mean-square harmonics, so the powers sum to
    the area-mean square). For checking spectra of synthetic and real fields alike."""
    fields = np.asarray(fields, dtype=np.float64)
    nlat, nlon = fields.shape[-2:]
    harm = _Harmonics(latitude, nlon, lmax)
    lon = 2 * np.pi * np.arange(nlon) / nlon
    cols = [np.ones((nlat, nlon))]
    degree = [0]
    for k, (l, m) in enumerate(zip(harm.l, harm.m)):
        cols.append(harm.p[k][:, None] * np.cos(m * lon)[None, :])
        degree.append(l)
        if m:
            cols.append(harm.p[k][:, None] * np.sin(m * lon)[None, :])
            degree.append(l)
    basis = np.stack([c.ravel() for c in cols], axis=1)
    w = np.sqrt(np.repeat(np.clip(np.cos(np.deg2rad(latitude)), 1e-3, None), nlon))
    flat = fields.reshape(-1, nlat * nlon).T
    bw = basis * w[:, None]  # the weighted harmonics are near-orthogonal: normal equations
    coef = np.linalg.solve(bw.T @ bw, bw.T @ (flat * w[:, None]))
    power = np.zeros((lmax + 1, flat.shape[1]))
    np.add.at(power, np.array(degree), coef ** 2)
    return power.T.reshape(fields.shape[:-2] + (lmax + 1,))


def process_parameters(harm: _Harmonics, step_hours: float, slope: float):
    """``(sigma, r, speed)`` per (l, m) pair of one latent field: the stationary standard
    deviation per real degree of freedom, the AR(1) factor per time step and the angular speed
    (rad/s) at which the pattern turns (the exact oracle, ``oracle.py``, reads them too)."""
    l = harm.l
    power = 1.0 / (1.0 + (np.arange(1, harm.lmax + 1) / SPECTRUM_L0) ** slope)
    power /= power.sum()
    sigma = np.sqrt(power[l - 1] / (2 * l + 1))           # per real degree of freedom
    x = (l - 1) / (harm.lmax - 1)
    tau = TAU_MAX_DAYS / (1.0 + (TAU_MAX_DAYS / TAU_MIN_DAYS - 1.0) * x ** 2)
    r = np.exp(-(step_hours / 24.0) / tau)
    speed = MEAN_FLOW - 2.0 * (OMEGA + MEAN_FLOW) / (l * (l + 1) + LAMB_F)
    return sigma, r, speed


def _process(rng: np.random.Generator, harm: _Harmonics, n_times: int, step_hours: float,
             slope: float) -> np.ndarray:
    """Complex coefficients [T, K] of one latent field with unit mean square on the sphere."""
    l, m = harm.l, harm.m
    sigma, r, speed = process_parameters(harm, step_hours, slope)
    noise = rng.standard_normal((n_times, 2, l.size))
    b = np.empty_like(noise)
    b[0] = sigma * noise[0]                               # the stationary distribution
    kick = sigma * np.sqrt(1.0 - r ** 2)
    for n in range(1, n_times):
        b[n] = r * b[n - 1] + kick * noise[n]
    b[:, 1, m == 0] = 0.0                                  # zonal modes have no sine part
    z = b[:, 0] - 1j * b[:, 1]                             # field part: Re(z e^{i m lon})
    seconds = np.arange(n_times)[:, None] * step_hours * 3600.0
    return z * np.exp(-1j * m * speed * seconds)            # turn eastwards at speed c_l


def _level_factors(p: float) -> tuple[float, float]:
    """``(g, C)`` with ``T_p = g T850`` and ``Z_p = Z500 + C T850`` for the lapse-rate profile."""
    k = LAPSE_EXPONENT

    def poly(p):
        return (R_DRY / k) * ((500.0 / 850.0) ** k - (p / 850.0) ** k)

    if p >= P_TROPOPAUSE:
        return (p / 850.0) ** k, poly(p)
    g_top = (P_TROPOPAUSE / 850.0) ** k
    return g_top, poly(P_TROPOPAUSE) + R_DRY * g_top * np.log(P_TROPOPAUSE / p)


def _q_sat(t: np.ndarray, p_pa: float) -> np.ndarray:
    e = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    e = np.minimum(e, 0.5 * p_pa)
    return 0.622 * e / (p_pa - 0.378 * e)


def calendar(times) -> tuple[np.ndarray, np.ndarray]:
    """``(season, UTC hour)`` of each time: ``cos(2 pi (day - Jul 15) / year)`` (+1 mid-July)."""
    days = (np.asarray(times).astype("datetime64[s]") - np.datetime64("2000-01-01", "s")) / np.timedelta64(1, "D")
    return np.cos(2 * np.pi * (days - 196.5) / 365.2422), (days % 1.0) * 24.0


class StoreGrid:
    """A built-in store's grid and times as its generator and ``diagnose`` read them: latitudes,
    longitudes 0, 360/n, ... (the Fourier sums need them), levels, variables, ``mu = sin(lat)``,
    ``cos(lat)``, the regularised ``1/f`` [lat, 1], and each time's season and UTC hour."""

    def __init__(self, latitude, longitude, times, levels, variables):
        lon = np.asarray(longitude, dtype=np.float64)
        if not np.allclose(lon, 360.0 * np.arange(lon.size) / lon.size):
            raise ValueError("the synthetic generators need longitudes 0, 360/n, ...")
        self.lat, self.lon = np.asarray(latitude, dtype=np.float64), lon
        self.times, self.levels, self.variables = times, list(levels), list(variables)
        phi = np.deg2rad(self.lat)[:, None]
        self.mu, self.cos = np.sin(phi), np.cos(phi)
        self.inv_f = self.mu / (2.0 * OMEGA * (self.mu ** 2 + F_CLIP ** 2))
        self.season, self.utc_hours = calendar(times)


class _Generator(StoreGrid):
    """Latent coefficient series for the whole period (cheap) and physical fields per block."""

    def __init__(self, latitude, longitude, times, step_hours, levels, variables, seed):
        super().__init__(latitude, longitude, times, levels, variables)
        harm = _Harmonics(self.lat, self.lon.size)
        self.harm = harm
        n = len(times)
        rngs = [np.random.default_rng([int(seed), k]) for k in range(3)]
        self.z_a = _process(rngs[0], harm, n, step_hours, SLOPE_Z)
        self.z_b = _process(rngs[1], harm, n, step_hours, SLOPE_T)
        self.z_m = _process(rngs[2], harm, n, step_hours, SLOPE_T)

        env = 0.25 + 0.75 * self.mu ** 2
        w = np.cos(np.deg2rad(self.lat))
        rms = np.sqrt((env[:, 0] ** 2 * w).sum() / w.sum())
        self.env = env / rms                                # area-mean square of env * field: ~1
        self.denv = 1.5 * self.mu * self.cos / rms          # d env / d lat

    def _anomaly(self, z, scale):
        """(field, d/dlat, d/dlon / cos lat) of ``scale * env * latent``."""
        h = self.harm
        f = h.synthesize(z, h.p)
        df = h.synthesize(z, h.dp)
        dl = h.synthesize(z, h.p_cos, d_lon=True)
        return (scale * self.env * f, scale * (self.env * df + self.denv * f),
                scale * self.env * dl)

    def block(self, n0: int, n1: int) -> dict[str, np.ndarray]:
        """Every requested variable for times n0..n1-1 in WB2 dim order (lon before lat)."""
        sl = slice(n0, n1)
        return self.fields(self.z_a[sl], self.z_b[sl], self.z_m[sl], self.season[sl],
                           self.utc_hours[sl])

    def fields(self, z_a, z_b, z_m, season, utc_hours, variables=None) -> dict[str, np.ndarray]:
        """``variables`` (default: the store's) from latent coefficients [T, K] (and each time's
        season and UTC hour), in WB2 dim order: the store's times (``block``) or the oracle's."""
        mu, cos = self.mu, self.cos
        s = season[:, None, None]
        a, a_lat, a_lon = self._anomaly(z_a, Z_ANOMALY_RMS)
        b, b_lat, b_lon = self._anomaly(z_b, T_ANOMALY_RMS)
        state = Balanced(
            z500=55400.0 + 8000.0 * (1 / 3 - mu ** 2) + 2500.0 * mu ** 3 * s + a,
            z500_lat=cos * (-16000.0 * mu + 7500.0 * mu ** 2 * s) + a_lat,
            z500_lon=a_lon,
            t850=280.0 + 37.0 * (1 / 3 - mu ** 2) + 10.0 * mu ** 3 * s + T_PER_Z * a + b,
            t850_lat=cos * (-74.0 * mu + 30.0 * mu ** 2 * s) + T_PER_Z * a_lat + b_lat,
            t850_lon=T_PER_Z * a_lon + b_lon,
            moisture=self.harm.synthesize(z_m, self.harm.p))
        return diagnose(state, self, utc_hours, self.variables if variables is None else variables)


@dataclass
class Balanced:
    """Z500 and T850 [T, lat, lon] with their gradients (d/dlat, d/dlon / cos lat), and a
    moisture anomaly: everything the store's variables are diagnosed from."""
    z500: np.ndarray
    z500_lat: np.ndarray
    z500_lon: np.ndarray
    t850: np.ndarray
    t850_lat: np.ndarray
    t850_lon: np.ndarray
    moisture: np.ndarray


def diagnose(state: Balanced, grid, utc_hours, variables) -> dict[str, np.ndarray]:
    """Every store variable from a balanced state, in WB2 dim order (lon before lat): levels by
    the lapse-rate profile, winds by geostrophy, humidity from the moisture anomaly, the surface
    variables from 1000 hPa (``grid`` gives ``mu``, ``cos``, ``inv_f`` [lat, 1] and ``lon``)."""
    mu, cos = grid.mu, grid.cos
    rh = 0.55 + 0.3 * np.tanh(state.moisture)

    def geostrophic(c):
        zl = state.z500_lat + c * state.t850_lat
        zx = state.z500_lon + c * state.t850_lon
        return (-grid.inv_f / EARTH_RADIUS) * zl, (grid.inv_f / EARTH_RADIUS) * zx

    out = {}
    wanted = set(variables)
    if wanted & set(UPPER_AIR):
        per_level = {v: [] for v in UPPER_AIR}
        for p in grid.levels:
            g, c = _level_factors(float(p))
            t_p = g * state.t850
            u, v = geostrophic(c)
            per_level["geopotential"].append(state.z500 + c * state.t850)
            per_level["temperature"].append(t_p)
            per_level["u_component_of_wind"].append(u)
            per_level["v_component_of_wind"].append(v)
            per_level["specific_humidity"].append(rh * _q_sat(t_p, 100.0 * p))
        for var in UPPER_AIR:
            if var in wanted:
                out[var] = np.stack(per_level[var], axis=1)
    g1000, c1000 = _level_factors(1000.0)
    if "2m_temperature" in wanted:
        lst = (utc_hours[:, None, None] + grid.lon[None, None, :] / 15.0) % 24.0
        out["2m_temperature"] = g1000 * state.t850 + 3.0 * cos * np.cos(2 * np.pi * (lst - 15) / 24)
    if wanted & {"10m_u_component_of_wind", "10m_v_component_of_wind"}:
        u, v = geostrophic(c1000)
        turn = np.deg2rad(20.0) * mu / np.sqrt(mu ** 2 + F_CLIP ** 2)  # left in NH, right SH
        out["10m_u_component_of_wind"] = 0.7 * (u * np.cos(turn) - v * np.sin(turn))
        out["10m_v_component_of_wind"] = 0.7 * (u * np.sin(turn) + v * np.cos(turn))
    if "mean_sea_level_pressure" in wanted:
        z1000 = state.z500 + c1000 * state.t850
        out["mean_sea_level_pressure"] = 101300.0 + 1.2 * (z1000 - (55400.0 + c1000 * 280.0))
    return {var: np.ascontiguousarray(np.swapaxes(out[var], -1, -2), dtype=np.float32)
            for var in variables}


# --------------------------------------------------------------------------- settings and stores


def _settings(grid="64x32", start="2015-01-01", years=3.0, step_hours=6, levels=(500, 850),
              variables=ALL_VARIABLES, seed=0, fmt="zarr", time_chunk=4, model="linear",
              qg=None) -> dict:
    """Canonical, JSON-able settings: the cache key and the attribute stored with the data."""
    if model not in MODELS:
        raise ValueError(f"domain.synthetic.model must be one of {', '.join(MODELS)}, got '{model}'")
    if fmt not in ("zarr", "netcdf"):
        raise ValueError(f"fmt must be 'zarr' or 'netcdf', got '{fmt}'")
    if isinstance(variables, str):
        variables = [variables]
    names = {resolve_variable(v) for v in variables}
    unknown = sorted(names - set(ALL_VARIABLES))
    if unknown:
        raise ValueError(f"the synthetic generator has no variable(s) {', '.join(unknown)}; "
                         f"it makes {', '.join(ALL_VARIABLES)}")
    wb2_grid(grid)  # validates the name
    if float(years) <= 0 or int(step_hours) <= 0 or 24 % int(step_hours):
        raise ValueError(f"years must be positive and step_hours divide 24, got {years} and "
                         f"{step_hours}")
    out = {
        "grid": str(grid), "start": str(np.datetime64(str(start), "s")), "years": float(years),
        "step_hours": int(step_hours), "levels": sorted({int(p) for p in levels}),
        "variables": [v for v in ALL_VARIABLES if v in names], "seed": int(seed), "fmt": fmt,
        "time_chunk": int(time_chunk), "version": GENERATOR_VERSION,
    }
    # the linear store's settings carry no "model" key, so its stores keep their cache key
    if model == "qg":  # every parameter of the model is part of the store's identity
        out["model"] = model
        from domains.weather.qg import PARAMETERS, QG_VERSION

        given = {k: v for k, v in dict(qg or {}).items() if k != "version"}
        unknown = sorted(set(given) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"domain.synthetic.qg has no setting(s) {', '.join(unknown)}; "
                             f"it has {', '.join(PARAMETERS)}")

        def like_default(k, v):  # 500 and 500.0 are one setting: one cache key
            default = PARAMETERS[k]
            if isinstance(default, (list, tuple)):
                return [type(d)(x) for d, x in zip(default, v)] if len(v) == len(default) else list(v)
            return type(default)(v)

        merged = {k: like_default(k, v) for k, v in {**PARAMETERS, **given}.items()}
        out["qg"] = {**merged, "version": QG_VERSION}
    elif qg:
        raise ValueError("domain.synthetic.qg settings need domain.synthetic.model=qg")
    return out


def generator(cfg: dict, run: bool = True):
    """The generator of a store with canonical settings ``cfg`` (``_settings``; a store's own
    are in its ``c2f_synthetic`` attribute): its times, latent series or states, and fields.
    ``run=False`` skips the QG store's integration (its states are in the store)."""
    latitude, longitude = wb2_grid(cfg["grid"])
    n_times = int(round(cfg["years"] * 365.25 * 24 / cfg["step_hours"]))
    times = (np.datetime64(cfg["start"], "s")
             + np.arange(n_times) * np.timedelta64(cfg["step_hours"] * 3600, "s"))
    if cfg.get("model", "linear") == "qg":
        from domains.weather.qg import QGGenerator

        params = {k: v for k, v in cfg["qg"].items() if k != "version"}
        return QGGenerator(latitude, longitude, times, cfg["step_hours"], cfg["levels"],
                           cfg["variables"], cfg["seed"], params, run=run)
    return _Generator(latitude, longitude, times, cfg["step_hours"], cfg["levels"],
                      cfg["variables"], cfg["seed"])


def synthetic_dataset(**settings) -> xr.Dataset:
    """The synthetic data as a lazy (dask) dataset in WB2 layout; values are made per time block
    as they are written or loaded (the QG store integrates its model first, in memory: about a
    minute for the default three years). Takes the keyword arguments of :func:`make_synthetic_era5`."""
    import dask
    import dask.array as dsa

    cfg = _settings(**settings)
    latitude, longitude = wb2_grid(cfg["grid"])
    gen = generator(cfg)
    times, n_times = gen.times, len(gen.times)
    chunk = max(1, cfg["time_chunk"])
    block = chunk * max(1, 256 // chunk)               # whole store chunks per generated block
    nlev, nlat, nlon = len(cfg["levels"]), latitude.size, longitude.size
    pieces = {v: [] for v in cfg["variables"]}
    # task names from the settings: two datasets in one graph never share a task by accident
    token = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    for n0 in range(0, n_times, block):
        n1 = min(n0 + block, n_times)
        made = dask.delayed(gen.block, pure=False)(n0, n1,
                                                    dask_key_name=f"synthetic-{token}-{n0}")
        for var in cfg["variables"]:
            shape = (n1 - n0, nlev, nlon, nlat) if var in UPPER_AIR else (n1 - n0, nlon, nlat)
            item = dask.delayed(operator.getitem)(made, var,
                                                  dask_key_name=f"{var}-{token}-{n0}")
            pieces[var].append(dsa.from_delayed(item, shape, dtype=np.float32))
    data_vars = {}
    for var in cfg["variables"]:
        dims = ("time", "level", "longitude", "latitude") if var in UPPER_AIR else (
            "time", "longitude", "latitude")
        units, long_name, standard_name = _ATTRS[var]
        data_vars[var] = xr.Variable(dims, dsa.concatenate(pieces[var], axis=0),
                                     {"units": units, "long_name": long_name,
                                      "standard_name": standard_name})
    coords = {
        "time": ("time", times.astype("datetime64[ns]")),
        "level": ("level", np.array(cfg["levels"], dtype=np.int64),
                  {"units": "hPa", "long_name": "pressure level"}),
        "latitude": ("latitude", latitude, {"units": "degrees_north", "long_name": "latitude"}),
        "longitude": ("longitude", longitude, {"units": "degrees_east", "long_name": "longitude"}),
    }
    if cfg.get("model") == "qg":  # the model's full state, from which the perfect model starts
        state = gen.state_array()
        data_vars[QG_STATE] = xr.Variable(
            ("time", "qg_layer", "qg_order", "qg_degree", "qg_part"),
            dsa.from_array(state, chunks=(block,) + state.shape[1:]),
            {"long_name": "potential vorticity of the two-level QG model (spectral, "
                          f"T{gen.model.sphere.trunc})",
             "units": "s**-1"})
    attrs = {"title": "synthetic ERA5-like data in WeatherBench2 layout (coarse2fine)",
             "c2f_synthetic": json.dumps(cfg, sort_keys=True)}
    return xr.Dataset(data_vars, coords, attrs)


def make_synthetic_era5(path, *, grid="64x32", start="2015-01-01", years=3.0, step_hours=6,
                        levels=(500, 850), variables=ALL_VARIABLES, seed=0, fmt="zarr",
                        time_chunk=4, model="linear", qg=None) -> Path:
    """Write the synthetic store to ``path`` atomically (temporary name, then rename).

    ``fmt="zarr"`` writes Zarr format 2 with consolidated metadata; ``"netcdf"`` a netCDF-4
    file (give it a ``.nc`` name so :func:`domains.weather.store.open_store` recognises it).
    """
    import numcodecs

    from core.io import atomic_path

    ds = synthetic_dataset(grid=grid, start=start, years=years, step_hours=step_hours,
                           levels=levels, variables=variables, seed=seed, fmt=fmt,
                           time_chunk=time_chunk, model=model, qg=qg)
    chunk = max(1, int(time_chunk))
    enc = {"time": {"units": "hours since 1900-01-01", "calendar": "proleptic_gregorian",
                    "dtype": "int64"}}
    path = Path(path)
    with atomic_path(path) as tmp:
        if fmt == "zarr":
            blosc = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
            for var in ds.data_vars:
                enc[var] = {"chunks": (chunk,) + ds[var].shape[1:], "compressors": [blosc]}
            ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True, encoding=enc)
        else:
            for var in ds.data_vars:
                enc[var] = {"chunksizes": (chunk,) + ds[var].shape[1:]}
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=enc)
    return path


def _stored_settings(path: Path) -> dict | None:
    """The settings a store was generated with, or None if it is not ours (or unreadable)."""
    try:
        if path.is_dir():
            ds = xr.open_zarr(path, consolidated=True, chunks=None)
        else:
            ds = xr.open_dataset(path)
        with ds:
            return json.loads(ds.attrs["c2f_synthetic"])
    except (OSError, ValueError, KeyError):
        return None


def default_synthetic_path(settings: dict | None = None, **kwargs) -> Path:
    """``<cache>/weather/era5-synthetic-<grid>-<hash>.zarr`` (or ``.nc``) for these settings;
    the hash covers every setting and the generator version."""
    from core.io import default_cache_dir

    merged = {k: v for k, v in {**(settings or {}), **kwargs}.items() if k != "version"}
    cfg = _settings(**merged)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    suffix = ".zarr" if cfg["fmt"] == "zarr" else ".nc"
    return default_cache_dir() / "weather" / f"era5-synthetic-{cfg['grid']}-{digest}{suffix}"


def ensure_synthetic(path=None, **settings) -> Path:
    """The synthetic store for these settings: generated once, then reused.

    An existing ``path`` is reused only if it was written with the same settings; anything else
    there is refused rather than overwritten.
    """
    cfg = _settings(**settings)
    path = Path(path) if path is not None else default_synthetic_path(settings)
    if path.exists():
        have = _stored_settings(path)
        if have == cfg:
            return path
        what = "was not written by the synthetic generator" if have is None else (
            f"holds synthetic data made with other settings ({have})")
        raise WeatherDataError(f"'{path}' {what}; remove it or choose another path")
    logging.getLogger("c2f").info(
        "generating the synthetic ERA5-like store (%s model, %s grid, %s years; about a minute at "
        "the default settings, once); it is cached in %s", cfg.get("model", "linear"), cfg["grid"],
        cfg.get("years"), path)
    return make_synthetic_era5(path, **settings)
