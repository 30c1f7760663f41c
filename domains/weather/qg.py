"""A two-level quasi-geostrophic atmosphere on the sphere: the nonlinear built-in store's model.

Why this model
--------------
The store must be nonlinear and chaotic, so that an ensemble has to represent error growth, yet
cheap enough to generate years of 6-hourly data on 2 cores in about a minute, and free of data
files. The two-level QG model (Phillips 1956; on the sphere with Newtonian forcing as in Held and
Suarez 1994) is the smallest model with baroclinic instability, the mechanism of mid-latitude
weather: eddies of 3,000-5,000 km grow on a forced jet, break, and make the errors of any
forecast double in a few days. Marshall-Molteni's three-level model needs its observed forcing
files; forced shallow water has no baroclinic instability.

The model
---------
Streamfunctions psi1 (upper layer, about 250 hPa) and psi2 (lower, about 750 hPa) on a sphere of
radius a rotating at Omega. Their potential vorticities (without the planetary part f = 2 Omega
sin(lat) and the orography term) are::

    q1 = lap psi1 - F (psi1 - psi2),   q2 = lap psi2 + F (psi1 - psi2),   F = 1 / L_d^2

and each is carried by its layer's wind (u, v) = (-d psi / a d lat, d psi / a cos(lat) d lon)::

    dq1/dt = -J(psi1, q1 + f)      + F (psi1 - psi2 - psi_R) / tau_R              - D q1 + noise
    dq2/dt = -J(psi2, q2 + f + f h / H) - F (psi1 - psi2 - psi_R) / tau_R - lap psi2 / tau_E - D q2 + noise

- Newtonian relaxation of the thickness (the layer temperature) towards a radiative equilibrium
  psi_R over tau_R = 20 days; psi_R is the polynomial with thermal wind
  ``U_R * 5.38 * sin(lat)^2 cos(lat)^3`` (westerly in both hemispheres, strongest, U_R = 24 m/s,
  at 39 deg); L_d = 500 km;
- Ekman drag on the lower layer over tau_E = 4 days; hyperdiffusion D = (l (l+1) / (T (T+1)))^4
  / tau_D, tau_D = 6 hours at the truncation T;
- two mountain ranges (Gaussian, 2 km and 1.5 km, at 35N 90E and 45N 250E) in the lower layer,
  which anchor stationary waves;
- a stochastic forcing: white noise in time added to both layers' PV at degrees 6-15 (unresolved
  convection): each real part of a coefficient gets variance ``noise^2 dt`` per step, so an m > 0
  mode, whose basis functions carry twice the mean square of an m = 0 one, is forced twice as
  strongly per real degree of freedom. It makes the weather random given the present state, as real weather is given the
  analysed state, so that the exact limit for a forecaster handed the state is an ensemble of the
  true model with fresh noise (``PerfectModel``), not a single deterministic run.

Numerics: spectral transform method at triangular truncation T21 (``truncation``) on the 64 x 32 Gaussian grid
(alias-free for the quadratic Jacobian), orthonormal associated Legendre functions, the
advective Jacobian on the grid, classical Runge-Kutta 4 with a 1-hour step (the noise is added
after each step, Euler-Maruyama). The solver carries any batch of states at once, which is what
makes the perfect-model ensemble cheap.
"""
from __future__ import annotations

import numpy as np

from domains.weather.synthetic import (EARTH_RADIUS, F_CLIP, OMEGA, R_DRY, Balanced, StoreGrid,
                                       diagnose)

HOUR = 3600.0
DAY = 86400.0

QG_VERSION = 1  # bump when the model's equations or numerics change: stores are keyed by it
# default parameters (see the module docstring); a store's settings record them all
PARAMETERS = {
    "truncation": 21,
    "deformation_km": 500.0,       # L_d
    "radiative_wind": 24.0,        # U_R, m/s
    "tau_radiative_days": 20.0,
    "tau_ekman_days": 4.0,
    "tau_diffusion_hours": 6.0,
    "mountain_km": [2.0, 1.5],
    "layer_depth_km": 5.0,         # H of the lower layer, for the orography term
    "noise": 5.0e-10,              # PV noise per coefficient, 1/s per sqrt(s)
    "noise_degrees": [6, 15],
    "dt_hours": 1.0,
    "spinup_days": 200.0,
}


def legendre_tables(trunc: int, mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(P, dP)`` [M, L, J]: orthonormal associated Legendre functions (integral of P^2 over
    mu in [-1, 1] is 1) for 0 <= m <= l <= trunc at ``mu = sin(lat)``, and their derivatives in
    latitude, from the recurrence ``cos(lat) dP_l^m/dlat = -l mu P_l^m + c_lm P_(l-1)^m``."""
    from scipy.special import gammaln, lpmv

    n = trunc + 1
    m = np.arange(n)[:, None]
    l = np.arange(n)[None, :]
    ok = l >= m
    lm, ll = np.where(ok, m, 0), np.where(ok, l, 0)
    norm = np.sqrt((2 * ll + 1) / 2.0 * np.exp(gammaln(ll - lm + 1) - gammaln(ll + lm + 1)))
    p = np.where(ok[..., None], norm[..., None] * lpmv(lm[..., None], ll[..., None], mu[None, None, :]), 0.0)
    c = np.sqrt(np.where(ok & (l > 0), (2 * l + 1) / np.maximum(2 * l - 1, 1) * (l ** 2 - m ** 2), 0.0))
    prev = np.zeros_like(p)
    prev[:, 1:] = p[:, :-1]                                   # P_(l-1)^m (zero where l-1 < m)
    cos = np.sqrt(1.0 - mu ** 2)
    dp = (-l[..., None] * mu * p + c[..., None] * prev) / cos
    return p, np.where(ok[..., None], dp, 0.0)


class Sphere:
    """Spectral transforms at triangular truncation ``trunc`` on a Gaussian grid.

    Coefficients are complex arrays [..., M, L] (order m, degree l; zero where l < m); a field
    is ``sum_l c_0l P_0l + 2 Re sum_(m>0) sum_l c_ml P_ml e^(i m lon)``."""

    def __init__(self, trunc: int = 21, nlat: int = 32, nlon: int = 64, radius: float = EARTH_RADIUS):
        if nlon < 3 * trunc + 1 or nlat < (3 * trunc + 1) / 2:
            raise ValueError(f"a {nlon}x{nlat} grid aliases the products of T{trunc} fields")
        self.trunc, self.nlat, self.nlon, self.radius = trunc, nlat, nlon, radius
        mu, w = np.polynomial.legendre.leggauss(nlat)
        self.mu, self.weights = mu, w
        self.lat = np.degrees(np.arcsin(mu))
        self.lon = 360.0 * np.arange(nlon) / nlon
        self.cos = np.sqrt(1.0 - mu ** 2)
        n = trunc + 1
        self.m = np.arange(n)[:, None].astype(float)
        l = np.arange(n)[None, :]
        self.valid = l >= self.m
        self.degree = np.broadcast_to(l, (n, n))
        self.lap = np.where(self.valid, -l * (l + 1.0) / radius ** 2, 0.0)
        p, dp = legendre_tables(trunc, mu)
        self.p, self.dp = p.astype(complex), dp.astype(complex)
        self.analysis_table = np.ascontiguousarray((p * w).transpose(0, 2, 1)).astype(complex)

    def synthesis(self, c: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        """Grid values [..., J, I] of coefficients [..., M, L] (``table``: ``p`` or ``dp``)."""
        g = (c[..., :, None, :] @ (self.p if table is None else table))[..., 0, :]   # [..., M, J]
        return np.fft.irfft(np.swapaxes(g, -1, -2), n=self.nlon, axis=-1) * self.nlon

    def analysis(self, x: np.ndarray) -> np.ndarray:
        """Coefficients [..., M, L] of grid values [..., J, I] (exact for truncated fields)."""
        g = np.fft.rfft(x, axis=-1)[..., : self.trunc + 1] / self.nlon                 # [..., J, M]
        return (np.swapaxes(g, -1, -2)[..., :, None, :] @ self.analysis_table)[..., 0, :]

    def tables_at(self, latitude) -> tuple[np.ndarray, np.ndarray]:
        """``(P, dP)`` on other latitudes (degrees), to evaluate the fields on a store's grid.
        ``dP`` divides by cos(lat): on a grid with pole rows it is taken a hair inside the pole
        (1e-4 rad), where it is finite and continuous."""
        phi = np.radians(np.asarray(latitude, dtype=float))
        with np.errstate(divide="ignore", invalid="ignore"):  # its dP is not used
            p, _ = legendre_tables(self.trunc, np.sin(phi))
        _, dp = legendre_tables(self.trunc, np.sin(np.clip(phi, -np.pi / 2 + 1e-4, np.pi / 2 - 1e-4)))
        return p, dp


class TwoLevelQG:
    """The model's tendencies and integrator for a batch of PV states q [..., 2, M, L]."""

    def __init__(self, params: dict | None = None):
        p = {**PARAMETERS, **(params or {})}
        self.params = p
        self.sphere = s = Sphere(int(p["truncation"]))
        a = s.radius
        self.F = 1.0 / (p["deformation_km"] * 1e3) ** 2
        self.tau_r = p["tau_radiative_days"] * DAY
        self.tau_e = p["tau_ekman_days"] * DAY
        t = s.trunc
        self.damp = np.where(s.valid, (s.degree * (s.degree + 1.0) / (t * (t + 1.0))) ** 4, 0.0) / (
            p["tau_diffusion_hours"] * HOUR)
        self.dt = p["dt_hours"] * HOUR
        mu, cos = s.mu[:, None], s.cos[:, None]
        # radiative-equilibrium thickness psi_R(mu): u_R = -(1/a) d psi_R / d lat
        # = c U mu^2 cos^3, so d psi_R / d mu = -a c U mu^2 (1 - mu^2)
        c = 1.0 / (0.4 * 0.6 ** 1.5)                          # peak of mu^2 cos^3 is 0.4 * 0.6^1.5
        u = p["radiative_wind"]
        psi_r = -a * c * u * (mu ** 3 / 3 - mu ** 5 / 5) * np.ones((1, s.nlon))
        self.psi_r = s.analysis(psi_r)
        # planetary vorticity gradient and the orography term f h / H of the lower layer
        self.beta_y = 2.0 * OMEGA * cos / a                  # (1/a) d f / d lat
        lat, lon = np.radians(s.lat)[:, None], np.radians(s.lon)[None, :]
        h = np.zeros((s.nlat, s.nlon))
        ranges = ((35, 90, 15), (45, 250, 12))      # (lat, lon, half-width) in degrees
        if len(p["mountain_km"]) != len(ranges):
            raise ValueError(f"domain.synthetic.qg.mountain_km needs {len(ranges)} heights (km), "
                             f"one per range at {ranges}, got {list(p['mountain_km'])}")
        for height, (la, lo, width) in zip(p["mountain_km"], ranges):
            d2 = ((lat - np.radians(la)) / np.radians(width)) ** 2 + (
                (np.angle(np.exp(1j * (lon - np.radians(lo)))) * np.cos(np.radians(la)))
                / np.radians(width)) ** 2
            h += height * 1e3 * np.exp(-d2)
        topo = s.analysis(2.0 * OMEGA * mu * h / (p["layer_depth_km"] * 1e3))
        self.topo_x = s.synthesis(1j * s.m * topo) / (a * cos)
        self.topo_y = s.synthesis(topo, s.dp) / a
        lo_deg, hi_deg = p["noise_degrees"]
        band = s.valid & (s.degree >= lo_deg) & (s.degree <= hi_deg)
        self.noise_mask = band.astype(float)
        self.noise = float(p["noise"])

    # ------------------------------------------------------------------ state conversions
    def streamfunction(self, q: np.ndarray) -> np.ndarray:
        """psi [..., 2, M, L] of PV q: barotropic and baroclinic parts invert separately."""
        lap = self.sphere.lap
        safe = np.where(lap == 0, 1.0, lap)
        psi_b = np.where(lap == 0, 0.0, (q[..., 0, :, :] + q[..., 1, :, :]) / (2 * safe))
        psi_t = (q[..., 0, :, :] - q[..., 1, :, :]) / (2 * (lap - 2 * self.F))
        return np.stack([psi_b + psi_t, psi_b - psi_t], axis=-3)

    def potential_vorticity(self, psi: np.ndarray) -> np.ndarray:
        lap = self.sphere.lap
        thick = psi[..., 0, :, :] - psi[..., 1, :, :]
        return np.stack([lap * psi[..., 0, :, :] - self.F * thick,
                         lap * psi[..., 1, :, :] + self.F * thick], axis=-3)

    def geopotential(self, psi: np.ndarray) -> np.ndarray:
        """The geopotential [..., M, L] in linear balance with streamfunction psi [..., M, L]:
        ``lap Phi = div(f grad psi)`` (global mean zero). Unlike ``f psi`` it does not grow with
        f towards the poles where psi is large, and it is smooth across the equator."""
        s = self.sphere
        rhs = (2.0 * OMEGA * s.mu[:, None] * s.synthesis(s.lap * psi)
               + 2.0 * OMEGA * s.cos[:, None] / s.radius ** 2 * s.synthesis(psi, s.dp))
        lap = np.where(s.lap == 0, 1.0, s.lap)
        return np.where(s.lap == 0, 0.0, s.analysis(rhs) / lap)

    # ------------------------------------------------------------------ dynamics
    def tendency(self, q: np.ndarray) -> np.ndarray:
        s, a = self.sphere, self.sphere.radius
        psi = self.streamfunction(q)
        im = 1j * s.m
        d_lat = s.synthesis(np.stack([psi, q]), s.dp) / a              # [2, ..., 2, J, I]
        d_lon = s.synthesis(np.stack([im * psi, im * q])) / (a * s.cos[:, None])
        u, v = -d_lat[0], d_lon[0]
        qx, qy = d_lon[1], d_lat[1] + self.beta_y
        qx[..., 1, :, :] += self.topo_x
        qy[..., 1, :, :] += self.topo_y
        dq = -s.analysis(u * qx + v * qy)
        relax = self.F * (psi[..., 0, :, :] - psi[..., 1, :, :] - self.psi_r) / self.tau_r
        dq[..., 0, :, :] += relax
        dq[..., 1, :, :] -= relax + s.lap * psi[..., 1, :, :] / self.tau_e
        return (dq - self.damp * q) * s.valid

    def step(self, q: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """One RK4 step of ``dt``, then the noise (none if ``rng`` is None)."""
        dt = self.dt
        k1 = self.tendency(q)
        k2 = self.tendency(q + 0.5 * dt * k1)
        k3 = self.tendency(q + 0.5 * dt * k2)
        k4 = self.tendency(q + dt * k3)
        q = q + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        if rng is not None and self.noise > 0:
            xi = rng.standard_normal((2,) + q.shape)
            kick = self.noise * np.sqrt(dt) * self.noise_mask
            q = q + kick * (xi[0] + 1j * xi[1] * (self.sphere.m > 0))
        return q

    def rest_state(self, rng: np.random.Generator) -> np.ndarray:
        """Radiative equilibrium at rest in the lower layer, plus a small random perturbation."""
        s = self.sphere
        psi = np.zeros((2,) + s.valid.shape, dtype=complex)
        psi[0] = self.psi_r
        psi += 1e5 * (rng.standard_normal(psi.shape) + 1j * rng.standard_normal(psi.shape)) * (
            s.valid & (s.degree > 0)) * (s.m > 0)
        return self.potential_vorticity(psi)

    def run(self, q: np.ndarray, n_out: int, every: int, rng, progress=None) -> np.ndarray:
        """States [n_out, ...] every ``every`` steps, the first being ``q`` itself."""
        out = np.empty((n_out,) + q.shape, dtype=complex)
        out[0] = q
        for n in range(1, n_out):
            for _ in range(every):
                q = self.step(q, rng)
            out[n] = q
            if progress is not None:
                progress(n)
        return out

    def spin_up(self, seed: int) -> np.ndarray:
        """A state on the model's attractor: from rest after ``spinup_days`` days."""
        rng = np.random.default_rng([int(seed), 7])
        q = self.rest_state(rng)
        for _ in range(int(round(self.params["spinup_days"] * DAY / self.dt))):
            q = self.step(q, rng)
        return q


# ------------------------------------------------------------------ the store's generator

Z500_MEAN = 54_800.0       # m^2/s^2, global means (those of the balanced parts are zero)
T850_MEAN = 276.0          # K
VORTICITY_SCALE = 2.0e-5   # 1/s: lower-layer vorticity at which the moisture anomaly is 1


class QGGenerator(StoreGrid):
    """The nonlinear store's states at its times, and its fields on the store's grid.

    The model runs on its own Gaussian grid; the store's variables are evaluated from the
    spectral state on the store's latitudes (any WB2 grid with longitudes 0, 360/n, ...):

    - ``Z500 = 54,800 + Phi(psi_m) + 2500 mu^3 s(t)``, with psi_m = (psi1 + psi2) / 2 the
      mid-level (500 hPa) streamfunction and Phi its geopotential in linear balance
      (``TwoLevelQG.geopotential``);
    - ``T850 = 276 + Phi(psi1 - psi2) / (R ln 3) + 10 mu^3 s(t)``: the hydrostatic temperature
      of the 250-750 hPa layer, whose thickness is Phi(psi1 - psi2);
    - a moisture anomaly from the lower layer's cyclonic vorticity (humid in cyclones);
    - the rest as in the linear store (``synthetic.diagnose``). The season ``s(t)`` only shifts
      the fields: the dynamics has no seasonal cycle.
    """

    def __init__(self, latitude, longitude, times, step_hours, levels, variables, seed,
                 params=None, run=True):
        super().__init__(latitude, longitude, times, levels, variables)
        self.model = model = TwoLevelQG(params)
        trunc = model.sphere.trunc
        if self.lon.size < 2 * trunc + 1:
            raise ValueError(f"a grid of {self.lon.size} longitudes cannot hold the T{trunc} waves; "
                             "use 64x32 or finer")
        every = step_hours / model.params["dt_hours"]
        if abs(every - round(every)) > 1e-9:
            raise ValueError(f"step_hours {step_hours} is not a multiple of the model's "
                             f"{model.params['dt_hours']} h time step")
        self.every = int(round(every))
        p, dp = model.sphere.tables_at(self.lat)
        self._p, self._dp = p.astype(complex), dp.astype(complex)
        self._cos_safe = np.maximum(self.cos, 1e-6)
        self.states = None  # run=False: fields of given states only (the perfect model's use)
        if run:
            from tqdm.auto import tqdm

            q0 = model.spin_up(seed)
            with tqdm(total=len(times) - 1, desc="QG store", unit="state", mininterval=2.0,
                      leave=False) as bar:
                self.states = model.run(q0, len(times), self.every,
                                        np.random.default_rng([int(seed), 8]),
                                        lambda n: bar.update(1))

    def _grid(self, c: np.ndarray, table: np.ndarray) -> np.ndarray:
        g = (c[..., :, None, :] @ table)[..., 0, :]
        return np.fft.irfft(np.swapaxes(g, -1, -2), n=self.lon.size, axis=-1) * self.lon.size

    def _balanced(self, psi: np.ndarray):
        """(Phi, d/dlat, d/dlon / cos lat) on the store grid: the balanced geopotential of a
        streamfunction psi [T, M, L]."""
        phi = self.model.geopotential(psi)
        return (self._grid(phi, self._p), self._grid(phi, self._dp),
                self._grid(1j * self.model.sphere.m * phi, self._p) / self._cos_safe)

    def fields(self, q, season, utc_hours, variables=None) -> dict[str, np.ndarray]:
        """``variables`` from PV states q [T, 2, M, L] at times with ``season`` and UTC hour."""
        psi = self.model.streamfunction(np.asarray(q))
        mid, thick = 0.5 * (psi[:, 0] + psi[:, 1]), psi[:, 0] - psi[:, 1]
        z, z_lat, z_lon = self._balanced(mid)
        t, t_lat, t_lon = (x / (R_DRY * np.log(3.0)) for x in self._balanced(thick))
        mu, cos, s = self.mu, self.cos, season[:, None, None]
        vort = self._grid(self.model.sphere.lap * psi[:, 1], self._p)
        state = Balanced(
            z500=Z500_MEAN + z + 2500.0 * mu ** 3 * s,
            z500_lat=z_lat + 7500.0 * mu ** 2 * cos * s, z500_lon=z_lon,
            t850=T850_MEAN + t + 10.0 * mu ** 3 * s,
            t850_lat=t_lat + 30.0 * mu ** 2 * cos * s, t850_lon=t_lon,
            moisture=vort / VORTICITY_SCALE * mu / np.sqrt(mu ** 2 + F_CLIP ** 2))
        return diagnose(state, self, utc_hours, self.variables if variables is None else variables)

    def block(self, n0: int, n1: int) -> dict[str, np.ndarray]:
        sl = slice(n0, n1)
        return self.fields(self.states[sl], self.season[sl], self.utc_hours[sl])

    def state_array(self) -> np.ndarray:
        """The states as real numbers [T, layer, m, l, (real, imag)], as the store keeps them."""
        return np.stack([self.states.real, self.states.imag], axis=-1)
