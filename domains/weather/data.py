"""ERA5 in WeatherBench2 (WB2) layout: open, normalise, check and load fields; normalisation stats.

Stores come in two dialects. WB2 names variables ``geopotential``, ``temperature``, ... on a
``level`` dimension in hPa and writes the 64x32 and 240x121 grids as ``(time, level, longitude,
latitude)`` with latitude ascending, but the 0.25-degree grid with latitude descending. Files made
from the ECMWF/Copernicus services use CF/GRIB names (``z``, ``t``, ``isobaricInhPa``, ``number``
for ensemble members, latitude descending from 90). :func:`normalize_dataset` maps both to one
form, so nothing downstream ever has to ask which store it came from:

- WB2 variable names (``z`` -> ``geopotential``, ``2t``/``t2m`` -> ``2m_temperature``, ...);
- dimensions ``time``, ``level`` (integer hPa, ascending), ``latitude`` (ascending),
  ``longitude`` (in [0, 360), ascending), ``number`` kept for ensembles;
- every variable ordered ``(time, [other], [number], [level], latitude, longitude)``, the last two
  being the image axes the models see.

Everything stays lazy (dask) until :func:`load_fields`, which reads only the requested channels and
times and refuses NaN/inf values with the variable, level and first bad time in the message.

Errors about the data a user points at are :class:`WeatherDataError` (a ``ValueError``) and name
the store; a store that does not exist at all stays a ``FileNotFoundError``.

Channel order is canonical (see :func:`channels`): a model's channel ``i`` means the same field
whichever order a config lists its variables in.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from domains.weather.sphere import area_weights
from core.errors import UserError

__all__ = ["WeatherDataError", "SHORT_NAMES", "UPPER_AIR", "SURFACE", "normalize_dataset",
           "open_era5", "channels", "channel_name", "load_fields", "check_grid", "Normalizer",
           "wb2_grid", "resolve_variable"]


class WeatherDataError(UserError):
    """A store that cannot serve what was asked: wrong names, levels, times, grid or values.

    ``missing`` says what the store lacks when that is one of the things a config chooses
    (``"variables"``, ``"levels"`` or ``"times"``), so a caller can name the setting to change."""

    def __init__(self, message: str, missing: str | None = None):
        super().__init__(message)
        self.missing = missing


# WB2 name -> short name; the order here is the canonical channel order.
SHORT_NAMES = {
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "specific_humidity": "q",
    "2m_temperature": "t2m",
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "mean_sea_level_pressure": "msl",
}
UPPER_AIR = ("geopotential", "temperature", "u_component_of_wind", "v_component_of_wind",
             "specific_humidity")
SURFACE = ("2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind",
           "mean_sea_level_pressure")

# CF/GRIB variable names -> WB2 names (applied only when the WB2 name is not already taken).
_CF_VARIABLES = {
    "z": "geopotential", "t": "temperature", "u": "u_component_of_wind",
    "v": "v_component_of_wind", "q": "specific_humidity", "2t": "2m_temperature",
    "t2m": "2m_temperature", "10u": "10m_u_component_of_wind", "u10": "10m_u_component_of_wind",
    "10v": "10m_v_component_of_wind", "v10": "10m_v_component_of_wind",
    "msl": "mean_sea_level_pressure",
}
_CF_DIMS = {"isobaricInhPa": "level", "pressure_level": "level", "plev": "level",
            "lat": "latitude", "lon": "longitude"}


def _source(ds, source="") -> str:
    return str(source or ds.encoding.get("source") or "<in-memory dataset>")


def resolve_variable(name: str) -> str:
    """WB2 name for a WB2, short (``z``, ``t2m``) or CF/GRIB (``2t``, ``10u``) variable name."""
    if name in SHORT_NAMES:
        return name
    return _CF_VARIABLES.get(name, name)


# --------------------------------------------------------------------------- normalisation


def _levels_in_hpa(level: xr.DataArray) -> np.ndarray:
    """Integer hPa; a ``plev`` axis in Pa (CMIP style, values up to 100,000) is divided by 100."""
    values = np.asarray(level.values, dtype=np.float64)
    units = str(level.attrs.get("units", "")).lower()
    if units == "pa" or (units == "" and values.size and np.nanmax(values) > 2000):
        values = values / 100.0
    return np.round(values).astype(np.int64)


def normalize_dataset(ds: xr.Dataset, source: str = "") -> xr.Dataset:
    """Map a CF/GRIB- or WB2-named dataset onto the normalised WB2 form (see module docstring).

    Lazy: renames, index flips and transposes only; no values are read.
    """
    source = _source(ds, source)
    names = {}
    for old, new in _CF_VARIABLES.items():
        if old in ds.data_vars and new not in ds.variables and new not in names.values():
            names[old] = new
    for old, new in _CF_DIMS.items():
        if old in ds.variables or old in ds.dims:
            if new in ds.variables or new in ds.dims:
                raise WeatherDataError(f"store '{source}' has both '{old}' and '{new}'")
            names[old] = new
    ds = ds.rename(names)
    if "time" not in ds.variables and "valid_time" in ds.variables:
        vt = ds["valid_time"]
        if vt.ndim != 1:
            raise WeatherDataError(f"store '{source}': 'valid_time' must be one-dimensional to "
                                   f"serve as time, it has dims {vt.dims}")
        ds = ds.rename({"valid_time": "time"})
        if vt.dims[0] != "valid_time":
            ds = ds.swap_dims({vt.dims[0]: "time"})
    for dim in ("latitude", "longitude"):
        if dim not in ds.dims:
            raise WeatherDataError(f"store '{source}' has no '{dim}' dimension; its dimensions "
                                   f"are {', '.join(map(str, ds.dims))}")

    if "level" in ds.dims:
        attrs = {**ds["level"].attrs, "units": "hPa"}
        ds = ds.assign_coords(level=("level", _levels_in_hpa(ds["level"]), attrs))
        if not np.all(np.diff(ds["level"].values) > 0):
            ds = ds.sortby("level")
    lat = ds["latitude"].values
    if lat.size > 1 and np.all(np.diff(lat) < 0):
        ds = ds.isel(latitude=slice(None, None, -1))  # the common case: a cheap view
    elif not np.all(np.diff(lat) > 0):
        ds = ds.sortby("latitude")
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    wrapped = np.mod(lon, 360.0)
    if not np.array_equal(wrapped, lon):
        ds = ds.assign_coords(longitude=("longitude", wrapped, ds["longitude"].attrs))
    if not np.all(np.diff(wrapped) > 0):
        ds = ds.sortby("longitude")

    order = ("time", ..., "number", "level", "latitude", "longitude")
    ds = ds.transpose(*order, missing_dims="ignore")
    ds.encoding["source"] = source
    return ds


# --------------------------------------------------------------------------- opening


def _check_times(times: np.ndarray, source: str) -> None:
    """Strictly increasing times, else the first offending one is named."""
    if times.size < 2:
        return
    diffs = np.diff(times.astype("datetime64[ns]").astype(np.int64))
    bad = np.flatnonzero(diffs <= 0)
    if bad.size:
        i = bad[0] + 1
        what = "duplicated" if diffs[bad[0]] == 0 else "earlier than the time before it"
        raise WeatherDataError(
            f"times in store '{source}' are not strictly increasing: time "
            f"{np.datetime_as_string(times[i], unit='s')} (index {i}) is {what} "
            f"({np.datetime_as_string(times[i - 1], unit='s')})")


def open_era5(path, variables, levels=None, start=None, end=None) -> xr.Dataset:
    """Open a zarr/netCDF store lazily, normalised, restricted to variables, levels and times.

    ``variables`` may be WB2, short or CF names (returned under WB2 names); ``levels`` in hPa
    (``None``: all the store has); ``start``/``end`` are inclusive (anything ``xarray.sel``
    takes, e.g. ``"2017-01-01"``). Raises :class:`WeatherDataError` for missing variables or
    levels, times that are not strictly increasing and an empty time selection.
    """
    from domains.weather.store import StoreError, open_store

    source = os.fspath(path)
    try:
        ds = open_store(path)
    except StoreError as e:
        raise WeatherDataError(str(e)) from e
    ds = normalize_dataset(ds, source)

    if isinstance(variables, str):
        variables = [variables]
    wanted = list(dict.fromkeys(resolve_variable(v) for v in variables))
    missing = [v for v in wanted if v not in ds.data_vars]
    if missing:
        raise WeatherDataError(f"store '{source}' lacks variable(s) {', '.join(missing)}; it "
                               f"has {', '.join(sorted(map(str, ds.data_vars))) or 'none'}",
                               missing="variables")
    ds = ds[wanted]

    if levels is not None:
        levels = [int(l) for l in levels]
        with_level = [v for v in wanted if "level" in ds[v].dims]
        if with_level:
            have = [int(l) for l in ds["level"].values]
            absent = [l for l in levels if l not in have]
            if absent:
                raise WeatherDataError(
                    f"store '{source}' lacks level(s) {', '.join(map(str, absent))} hPa for "
                    f"{', '.join(with_level)}; available levels: {', '.join(map(str, have))}",
                    missing="levels")
            ds = ds.sel(level=levels)

    if "time" not in ds.dims:
        raise WeatherDataError(f"store '{source}' has no 'time' dimension")
    _check_times(ds["time"].values, source)
    if start is not None or end is not None:
        span = (f"{np.datetime_as_string(ds['time'].values[0], unit='h')} .. "
                f"{np.datetime_as_string(ds['time'].values[-1], unit='h')}")
        ds = ds.sel(time=slice(start, end))
        if ds.sizes["time"] == 0:
            raise WeatherDataError(f"no times between {start} and {end} in store '{source}' "
                                   f"(it covers {span})", missing="times")
    ds.encoding["source"] = source
    return ds


# --------------------------------------------------------------------------- channels


def channels(variables, levels, ds: xr.Dataset | None = None) -> list[tuple[str, int | None]]:
    """``(WB2 variable, level in hPa or None)`` pairs in canonical order.

    Known variables follow :data:`SHORT_NAMES` order (upper-air ones once per level, levels
    ascending), then unknown ones in the order given. An unknown variable counts as upper-air if
    ``ds`` shows a ``level`` dimension for it; without ``ds`` it is an error.
    """
    if isinstance(variables, str):
        variables = [variables]
    names = list(dict.fromkeys(resolve_variable(v) for v in variables))
    levels = sorted({int(l) for l in (levels or ())})
    known = [v for v in SHORT_NAMES if v in names]
    unknown = [v for v in names if v not in SHORT_NAMES]
    out = []
    for var in known + unknown:
        if var in SHORT_NAMES:
            upper = var in UPPER_AIR
        elif ds is not None and var in ds.data_vars:
            upper = "level" in ds[var].dims
        else:
            raise WeatherDataError(f"unknown variable '{var}': known are "
                                   f"{', '.join(SHORT_NAMES)} (or pass the dataset)")
        if upper:
            if not levels:
                raise WeatherDataError(f"upper-air variable '{var}' needs at least one level")
            out.extend((var, l) for l in levels)
        else:
            out.append((var, None))
    return out


def channel_name(var: str, level: int | None) -> str:
    """``z500``, ``t850``, ``t2m``, ``msl``: the short name, with the level for upper air."""
    short = SHORT_NAMES.get(resolve_variable(var), var)
    return short if level is None else f"{short}{int(level)}"


# --------------------------------------------------------------------------- loading


def load_fields(ds: xr.Dataset, chans, time_slice=None, member: int | None = None) -> np.ndarray:
    """Read channels into float32 ``[T, C, lat, lon]``, or ``[T, M, C, lat, lon]`` for ensembles.

    ``ds`` is a normalised dataset (:func:`open_era5`). If it has a ``number`` dimension all
    members are returned on axis 1 unless ``member`` picks one (then ``[T, C, lat, lon]``).
    ``time_slice`` is a slice of positions (ints) or of times (strings / datetimes), or an array
    of positions. All channels are computed in one dask pass, so a stored chunk holding several
    levels is read once. NaN or infinite values raise :class:`WeatherDataError` naming the
    channel and the first bad time.
    """
    import dask

    source = _source(ds)
    if time_slice is not None:
        if isinstance(time_slice, slice) and not all(
                isinstance(x, (int, np.integer)) or x is None
                for x in (time_slice.start, time_slice.stop)):
            ds = ds.sel(time=time_slice)
        else:
            ds = ds.isel(time=time_slice)
    if member is not None and "number" in ds.dims:
        ds = ds.isel(number=member)
    arrays = []
    for var, level in chans:
        if var not in ds.data_vars:
            raise WeatherDataError(f"store '{source}' lacks variable {var}", missing="variables")
        da = ds[var]
        if level is not None:
            if "level" not in da.dims or int(level) not in ds["level"].values:
                raise WeatherDataError(f"store '{source}' lacks level {level} hPa for {var}",
                                       missing="levels")
            da = da.sel(level=int(level))
        elif "level" in da.dims:
            raise WeatherDataError(f"{var} in store '{source}' has levels; name one")
        arrays.append(da.transpose("time", ..., "latitude", "longitude").data)
    values = dask.compute(*arrays) if arrays else ()
    times = ds["time"].values
    out = []
    for (var, level), arr in zip(chans, values):
        arr = np.asarray(arr, dtype=np.float32)
        bad = ~np.isfinite(arr)
        if bad.any():
            per_time = bad.reshape(arr.shape[0], -1).any(axis=1)
            i = int(np.argmax(per_time))
            where = f" at level {level} hPa" if level is not None else ""
            raise WeatherDataError(
                f"non-finite values (NaN or inf) in {var}{where} in store '{source}': first at "
                f"time {np.datetime_as_string(times[i], unit='s')} (index {i}, "
                f"{int(bad.sum())} values in all)")
        out.append(arr)
    if not out:
        raise WeatherDataError("no channels requested")
    return np.stack(out, axis=-3)


def check_grid(ds: xr.Dataset, latitude, longitude, source: str = "") -> None:
    """Refuse a store whose (normalised) grid is not ``latitude`` x ``longitude``.

    For example a truth store next to a forecast on another resolution: metrics between the two
    would silently compare different points. The message names both shapes (lat x lon).
    """
    source = _source(ds, source)
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    want_lat = np.sort(np.asarray(latitude, dtype=np.float64))
    want_lon = np.sort(np.mod(np.asarray(longitude, dtype=np.float64), 360.0))
    if lat.shape != want_lat.shape or lon.shape != want_lon.shape:
        raise WeatherDataError(
            f"store '{source}' is on a {lat.size}x{lon.size} (lat x lon) grid, expected "
            f"{want_lat.size}x{want_lon.size}")
    for name, have, want in (("latitude", lat, want_lat), ("longitude", lon, want_lon)):
        if not np.allclose(have, want, atol=1e-4):
            i = int(np.argmax(np.abs(have - want) > 1e-4))
            raise WeatherDataError(
                f"store '{source}' is on a different {lat.size}x{lon.size} grid than expected: "
                f"{name} {have[i]:g} where {want[i]:g} was expected (index {i})")


# --------------------------------------------------------------------------- grids


def wb2_grid(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(latitude ascending, longitude) of a WB2 grid, in degrees.

    ``"64x32"`` / ``"5.625deg"``: 32 latitudes -87.1875..87.1875 (no poles), 64 longitudes from 0;
    ``"1.5deg"`` / ``"240x121"``: 121 latitudes -90..90 with poles, 240 longitudes;
    ``"0.25deg"`` / ``"1440x721"``: 721 x 1440 with poles.
    """
    key = str(name).lower()
    if key in ("64x32", "5.625deg", "5.625"):
        return -87.1875 + 5.625 * np.arange(32), 5.625 * np.arange(64)
    if key in ("1.5deg", "240x121", "1.5"):
        return np.linspace(-90.0, 90.0, 121), 1.5 * np.arange(240)
    if key in ("0.25deg", "1440x721", "0.25"):
        return np.linspace(-90.0, 90.0, 721), 0.25 * np.arange(1440)
    raise WeatherDataError(f"unknown WB2 grid '{name}': use 64x32, 1.5deg or 0.25deg")


# --------------------------------------------------------------------------- normalisation stats


class Normalizer:
    """Per-channel state mean/std and increment std, area-weighted over the training period.

    ``norm(x) = (x - mean) / std`` for states; ``norm_increment(dx) = dx / increment_std`` for
    differences over ``step`` time steps, without a shift, so a zero increment (persistence)
    stays zero. ``increment_std`` is the root-mean-square increment (the mean increment over
    years is ~0, and an RMS keeps the normalised target's second moment at one).

    Methods take numpy arrays or torch tensors (returned in kind, same dtype and device) with the
    channel axis at ``axis`` (default -3: ``[..., C, lat, lon]``).
    """

    _EPS = 1e-12

    def __init__(self, mean, std, increment_std, step: int = 1, names=None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.increment_std = np.asarray(increment_std, dtype=np.float64)
        if self.mean.ndim != 1 or not (
                self.mean.shape == self.std.shape == self.increment_std.shape):
            raise ValueError("mean, std and increment_std must be 1-D of one length (channels)")
        self.step = int(step)
        self.names = list(names) if names is not None else None

    @classmethod
    def fit(cls, fields, latitude, step: int = 1, names=None) -> "Normalizer":
        """Statistics of ``fields`` ``[T, C, lat, lon]`` (or ``[T, M, C, lat, lon]``; time on
        axis 0, increments ``x[t + step] - x[t]``). Works channel by channel in float64, so a
        multi-year float32 array needs no float64 copy of itself."""
        if hasattr(fields, "detach"):
            fields = fields.detach().cpu().numpy()
        fields = np.asarray(fields)
        if fields.ndim not in (4, 5):
            raise ValueError(f"fields must be [T, C, lat, lon] or [T, M, C, lat, lon], got "
                             f"shape {fields.shape}")
        step = int(step)
        if not 1 <= step < fields.shape[0]:
            raise ValueError(f"step {step} needs more than {step} times, got {fields.shape[0]}")
        w = area_weights(latitude)
        if w.size != fields.shape[-2]:
            raise ValueError(f"{w.size} latitudes for fields with {fields.shape[-2]} rows")
        w = w[:, None]
        means, stds, incs = [], [], []
        for c in range(fields.shape[-3]):
            x = fields[..., c, :, :].astype(np.float64)
            wx = np.broadcast_to(w, x.shape)
            mean = float((x * w).sum() / wx.sum())
            var = float((((x - mean) ** 2) * w).sum() / wx.sum())
            dx = x[step:] - x[:-step]
            inc = float(((dx ** 2) * w).sum() / np.broadcast_to(w, dx.shape).sum())
            means.append(mean)
            stds.append(max(var, 0.0) ** 0.5)
            incs.append(max(inc, 0.0) ** 0.5)
        return cls(means, stds, incs, step=step, names=names)

    def __len__(self) -> int:
        return self.mean.size

    # -- (de)serialisation -------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(),
                "increment_std": self.increment_std.tolist(), "step": self.step,
                "names": self.names}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(d["mean"], d["std"], d["increment_std"], step=d.get("step", 1),
                   names=d.get("names"))

    def save(self, path) -> Path:
        from core.io import write_json_atomic

        return write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "Normalizer":
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- transforms ----------------------------------------------------------------------

    def _stat(self, values: np.ndarray, x, axis: int, scale: bool = True):
        """``values`` shaped to broadcast along ``axis`` of ``x``, in x's kind, dtype and device;
        scales are floored so a constant channel does not divide by zero."""
        ndim = x.ndim
        ax = axis % ndim
        if x.shape[ax] != values.size:
            raise ValueError(f"expected {values.size} channels on axis {axis}, got shape "
                             f"{tuple(x.shape)}")
        shape = [1] * ndim
        shape[ax] = values.size
        values = (np.maximum(values, self._EPS) if scale else values).reshape(shape)
        if hasattr(x, "detach"):  # torch, without importing it for numpy users
            import torch

            dtype = x.dtype if x.is_floating_point() else torch.float32
            return torch.as_tensor(values, dtype=dtype, device=x.device)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return values.astype(dtype)

    def norm(self, x, axis: int = -3):
        return (x - self._stat(self.mean, x, axis, scale=False)) / self._stat(self.std, x, axis)

    def denorm(self, x, axis: int = -3):
        return x * self._stat(self.std, x, axis) + self._stat(self.mean, x, axis, scale=False)

    def norm_increment(self, dx, axis: int = -3):
        return dx / self._stat(self.increment_std, dx, axis)

    def denorm_increment(self, dx, axis: int = -3):
        return dx * self._stat(self.increment_std, dx, axis)
