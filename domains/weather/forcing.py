"""What the weather model is conditioned on besides the state: the forcings at the valid time
(top-of-atmosphere insolation per pixel and the time of year), and the coordinates they need.

One forecast step is conditional next-scale generation on the sphere with the core's
``FieldScaleModel``: the quantity generated is the normalised increment of every channel, and the
condition is the field ``fields.WeatherData.condition`` builds (state, last increment, forcings),
restricted to each token's scale.
"""
from __future__ import annotations

import numpy as np
import torch

FORCING_CHANNELS = 3  # insolation, sin and cos of the time of year


def lat_lon_of(positions: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude (degrees) of unit vectors [n, 3]."""
    p = positions.cpu().double().numpy()
    lat = np.degrees(np.arcsin(np.clip(p[:, 2], -1, 1)))
    lon = np.degrees(np.arctan2(p[:, 1], p[:, 0])) % 360
    return lat, lon


def forcings(times, lat: np.ndarray, lon: np.ndarray) -> torch.Tensor:
    """[B, 3, n]: top-of-atmosphere insolation (cosine of the solar zenith angle, clipped at 0)
    and the time of year as a point on the circle, for valid times ``times`` (datetime64)."""
    times = np.asarray(times, dtype="datetime64[s]")
    year_start = times.astype("datetime64[Y]").astype("datetime64[s]")
    day = (times - year_start).astype(np.float64) / 86400.0          # fractional day of year
    hour = (times - times.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64) / 3600
    declination = np.radians(23.44) * np.sin(2 * np.pi * (day - 80.0) / 365.25)
    hour_angle = np.radians(15.0 * (hour[:, None] - 12.0) + lon[None, :])
    phi = np.radians(lat)[None, :]
    cos_zenith = (np.sin(phi) * np.sin(declination[:, None])
                  + np.cos(phi) * np.cos(declination[:, None]) * np.cos(hour_angle))
    season = 2 * np.pi * day / 365.25
    n = len(lat)
    out = np.stack([np.clip(cos_zenith, 0, None),
                    np.repeat(np.sin(season)[:, None], n, 1),
                    np.repeat(np.cos(season)[:, None], n, 1)], 1)
    return torch.from_numpy(out.astype(np.float32))
