"""From the config to tensors: which store, which channels, which support, which examples.

A *channel* is one variable at one level (``z500``) or a surface variable (``t2m``). Fields are
read from the store on its lat-lon grid, moved to the pyramid's support (HEALPix pixels through
``Regridder``, or the lat-lon grid itself) and normalised with statistics of the training period.
One training example is an initial time t: the target is the increment to t + Δt, the condition
the state at t, the last increment from t - Δt and the forcings at t + Δt.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from domains.weather.data import Normalizer, WeatherDataError, channel_name, channels, load_fields, open_era5
from domains.weather.forcing import FORCING_CHANNELS, forcings, lat_lon_of
from domains.weather.sphere import HealpixOps, LatLonOps, Regridder
from domains.weather.synthetic import ensure_synthetic


def store_path(cfg) -> str:
    """The configured store, or the built-in synthetic ERA5 (generated once, then cached)."""
    if cfg.domain.store:
        return str(cfg.domain.store)
    from omegaconf import DictConfig, OmegaConf

    settings = cfg.domain.synthetic
    settings = OmegaConf.to_container(settings) if isinstance(settings, DictConfig) else dict(settings)
    return str(ensure_synthetic(**settings))


def channel_list(cfg) -> list[tuple[str, int | None]]:
    return channels(list(cfg.domain.variables), list(cfg.domain.levels))


class Support:
    """The pyramid's support and the maps between it and the store's lat-lon grid."""

    def __init__(self, cfg, latitude: np.ndarray, longitude: np.ndarray):
        kind = cfg.domain.sphere
        self.kind = kind
        if kind == "healpix":
            nsides = [int(n) for n in cfg.domain.nsides]
            self.ops = HealpixOps(nsides, smooth_up=bool(cfg.domain.smooth_up))
            self.regridder = Regridder(latitude, longitude, nsides[-1])
        elif kind == "latlon":
            sizes = [tuple(s) for s in cfg.domain.latlon_sizes]
            if tuple(sizes[-1]) != (len(latitude), len(longitude)):
                raise WeatherDataError(
                    f"the finest lat-lon scale {tuple(sizes[-1])} must be the store's grid "
                    f"{(len(latitude), len(longitude))}")
            self.ops = LatLonOps(sizes, latitude)
            self.regridder = None
        else:
            raise ValueError(f"unknown sphere support '{kind}'; choose healpix or latlon")
        self.lat, self.lon = lat_lon_of(self.ops.positions(len(self.ops.sizes) - 1))

    def to_support(self, x: torch.Tensor) -> torch.Tensor:
        return self.regridder.to_healpix(x) if self.regridder is not None else x

    def to_latlon(self, x: torch.Tensor) -> torch.Tensor:
        return self.regridder.to_latlon(x) if self.regridder is not None else x

    def forcings(self, valid_times) -> torch.Tensor:
        """[B, 3, *support] forcings at the valid times."""
        f = forcings(valid_times, self.lat, self.lon)
        return f.reshape(f.shape[0], f.shape[1], *self.ops.sizes[-1])


@dataclass
class WeatherData:
    """Normalised fields of one period on the support, and the examples they hold.

    A store with ensemble members (``number``) gives ``members`` series one after the other:
    ``fields`` row ``j * T + t`` is member j at time t, and every member's series is a source of
    examples of its own (an ensemble of analyses is that many samples of the same weather)."""
    fields: torch.Tensor           # [M * T, C, *support], (x - mean) / std
    times: np.ndarray              # [T] datetime64
    stride: int                    # store time steps per forecast step
    normalizer: Normalizer
    support: Support
    names: list[str]
    ratio: torch.Tensor = field(default=None)   # std / increment std per channel
    members: int = 1

    def __post_init__(self):
        std = torch.as_tensor(self.normalizer.std, dtype=torch.float32)
        inc = torch.as_tensor(self.normalizer.increment_std, dtype=torch.float32)
        self.ratio = (std / inc).reshape(-1, *([1] * (self.fields.ndim - 2)))
        if len(self.times) <= 2 * self.stride:
            step = (self.times[1] - self.times[0]) / np.timedelta64(1, "h") if len(self.times) > 1 else 0
            raise WeatherDataError(
                f"the period holds {len(self.times)} times, too few for a forecast step of "
                f"{self.stride} time steps with history: set domain.step_hours to a smaller "
                f"multiple of the store's {step:g} h, or give a longer period")

    @property
    def starts(self) -> np.ndarray:
        """Rows t (of every member's series) that have t - Δt and t + Δt in the same series."""
        one = np.arange(self.stride, len(self.times) - self.stride)
        return (np.arange(self.members)[:, None] * len(self.times) + one[None]).ravel()

    def __len__(self) -> int:
        return len(self.starts)

    def condition(self, state: torch.Tensor, previous: torch.Tensor, valid_times) -> torch.Tensor:
        """[B, 2C + 3, *support] from normalised states at t and t - Δt."""
        last_increment = (state - previous) * self.ratio.to(state.device)
        forcing = self.support.forcings(valid_times).to(state.device)  # computed with numpy
        return torch.cat([state, last_increment, forcing], 1)

    def increment(self, state: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """Normalised increment (x(t+Δt) - x(t)) / σ_Δ from normalised states."""
        return (nxt - state) * self.ratio.to(state.device)

    def batch(self, indices, state_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(target increment, condition) of the examples ``indices``. ``state_noise`` > 0 adds
        Gaussian noise of that standard deviation (normalised units) to the state at t, and the
        target becomes the increment from the noisy state to the true next one: a rollout's
        state is never exact, and this teaches the model to pull it back. The noise is a fixed
        function of the batch's indices, so a resumed run draws the same."""
        indices = np.asarray(indices)
        t = torch.as_tensor(self.starts[indices])
        state, prev, nxt = self.fields[t], self.fields[t - self.stride], self.fields[t + self.stride]
        if state_noise > 0:
            digest = hashlib.blake2b(indices.astype(np.int64).tobytes(), digest_size=8).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))
            state = state + state_noise * torch.randn(state.shape, generator=gen, dtype=state.dtype)
        valid = self.times[(t + self.stride).numpy() % len(self.times)]
        return self.increment(state, nxt), self.condition(state, prev, valid)


def cond_channels(num_channels: int) -> int:
    return 2 * num_channels + FORCING_CHANNELS


def _period(cfg, split: str) -> tuple[str, str]:
    period = {"train": cfg.domain.train_period, "test": cfg.domain.test_period,
              "val": cfg.domain.get("val_period")}[split]
    if period is None:
        raise WeatherDataError(f"domain.{split}_period is not set")
    return str(period[0]), str(period[1])


def val_period(cfg) -> tuple[str, str] | None:
    """``domain.val_period``, checked to share no time with the training and test periods (it
    is where settings such as the spread calibration are fitted), or None when unset."""
    period = cfg.domain.get("val_period")
    if period is None:
        return None
    import pandas as pd

    def span(p):  # as the store is sliced: "2016-09-30" ends at the end of that day
        return pd.Period(str(p[0])).start_time, pd.Period(str(p[1])).end_time

    start, end = span(period)
    if end < start:
        raise WeatherDataError(f"domain.val_period ends before it starts: {list(period)}")
    for other in ("train", "test"):
        a, b = span(cfg.domain[f"{other}_period"])
        if start <= b and a <= end:
            raise WeatherDataError(
                f"domain.val_period {list(period)} overlaps domain.{other}_period "
                f"{list(cfg.domain[f'{other}_period'])}: choose a period outside both, or set "
                "domain.val_period=null (no calibration)")
    return str(period[0]), str(period[1])


def open_period(cfg, split: str):
    """The lazily opened store restricted to the configured channels and the split's period."""
    start, end = _period(cfg, split)
    try:
        return open_era5(store_path(cfg), list(cfg.domain.variables), list(cfg.domain.levels),
                         start=start, end=end)
    except WeatherDataError as e:  # the loader names the store's content; this, the setting
        setting = {"variables": "domain.variables", "levels": "domain.levels",
                   "times": f"domain.{split}_period"}.get(e.missing)
        if setting is None:
            raise
        raise WeatherDataError(f"{e}: set {setting} to match the store", e.missing) from None


def member_of(cfg) -> int | None:
    """``domain.member``: the ensemble member to use, or None for all of them (training)."""
    member = cfg.domain.get("member")
    return None if member is None else int(member)


def one_member(cfg, ds):
    """``ds`` as one analysis: the chosen member of an ensemble store (``domain.member``, member
    0 when all train), what forecasts start from and are scored against."""
    if "number" not in ds.dims:
        return ds
    member = member_of(cfg) or 0
    if not 0 <= member < ds.sizes["number"]:
        raise WeatherDataError(f"domain.member={member}, but the store has {ds.sizes['number']} "
                               f"members (0..{ds.sizes['number'] - 1})")
    return ds.isel(number=member, drop=True)


def stride_of(times: np.ndarray, step_hours: float) -> int:
    dt = np.diff(times).astype("timedelta64[s]").astype(np.int64)
    if len(dt) == 0:
        raise WeatherDataError("the store holds a single time; forecasting needs a series")
    base = int(dt[0])
    if np.any(dt != base):
        raise WeatherDataError("the store's times are not evenly spaced")
    stride = step_hours * 3600 / base
    if stride < 1 or abs(stride - round(stride)) > 1e-9:
        raise WeatherDataError(f"forecast step {step_hours} h is not a multiple of the store's "
                               f"time step {base / 3600:g} h")
    return int(round(stride))


def training_series(cfg, split: str):
    """The period as training reads it: every member of an ensemble store, or the one
    ``domain.member`` names."""
    ds = open_period(cfg, split)
    return ds if member_of(cfg) is None else one_member(cfg, ds)


def fit_normalizer(cfg) -> Normalizer:
    ds = training_series(cfg, "train")
    fields = load_fields(ds, channel_list(cfg))
    stride = stride_of(ds["time"].values, float(cfg.domain.step_hours))
    return Normalizer.fit(fields, ds["latitude"].values, stride)


def load_split(cfg, split: str, normalizer: Normalizer | None = None) -> WeatherData:
    """Fields of the split's period on the support; statistics from the training period."""
    ds = training_series(cfg, split)
    chans = channel_list(cfg)
    fields = load_fields(ds, chans)                  # [T, C, lat, lon] or [T, M, C, lat, lon]
    times = ds["time"].values
    stride = stride_of(times, float(cfg.domain.step_hours))
    if normalizer is None:
        normalizer = (Normalizer.fit(fields, ds["latitude"].values, stride) if split == "train"
                      else fit_normalizer(cfg))
    support = Support(cfg, ds["latitude"].values, ds["longitude"].values)
    x = torch.from_numpy(normalizer.norm(fields))
    members = 1
    if x.ndim == 5:                                  # members one after the other
        members = x.shape[1]
        x = x.transpose(0, 1).reshape(members * x.shape[0], *x.shape[2:])
    return WeatherData(support.to_support(x).float().contiguous(), times, stride, normalizer,
                       support, [channel_name(v, lev) for v, lev in chans], members=members)


def save_normalizer(data: WeatherData, run_dir) -> Path:
    path = Path(run_dir) / "normalization.json"
    data.normalizer.save(path)
    return path
