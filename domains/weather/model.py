"""One forecast step as conditional next-scale generation on the sphere.

The quantity generated is the normalised increment d = (x(t+Δt) - x(t)) / σ_Δ of every channel
(variable at a level) on the sphere support (HEALPix pixels, or a lat-lon grid). Its pyramid is the
core's ``ResidualPyramid`` over the sphere operators: the coarsest band is the increment's mean
over 12 base pixels, each finer band the detail the next level adds. The refiner predicts the
bands coarse to fine, conditioned on what is known at t: the normalised state x(t), the last
increment x(t) - x(t-Δt) (where the weather is moving), and forcings at the valid time (solar
insolation per pixel, time of year). Each token sees these conditions restricted to its own scale
(``down``) at its own pixel and as differences to its 8 neighbours (``stencil``), next to the
usual context of the coarser bands.

Drawing the codes of each band from the predicted distributions gives one ensemble member;
different seeds give different members; feeding a member's state back in rolls it out.
"""
from __future__ import annotations

import numpy as np
import torch

from core.model import ScaleModel
from core.pyramid import ResidualPyramid, flat
from core.quantizers import IdentityQuantizer, make_quantizer
from core.refiner import ScaleTransformer
from core.targets import make_head

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


class WeatherScaleModel(ScaleModel):
    """The core scale model with a field-valued condition ``cond`` [B, C_cond, *support] instead
    of a class label: its restriction to scale k rides along with every token of scale k."""

    def __init__(self, pyramid, refiner, head, channels: int, cond_channels: int,
                 stencil: bool = True):
        super().__init__(pyramid, refiner, head, channels, num_classes=0, label_drop=0.0)
        self.cond_channels, self.stencil = cond_channels, stencil
        ops = pyramid.ops
        for k in range(len(ops.sizes)):
            self.register_buffer(f"neighbours{k}", ops.neighbours(k) if stencil else None,
                                 persistent=False)

    @staticmethod
    def input_channels(channels: int, cond_channels: int, stencil: bool) -> int:
        return channels + cond_channels * (9 if stencil else 1)

    def _inputs(self, context: torch.Tensor, cond: torch.Tensor, k: int) -> torch.Tensor:
        c = flat(self.pyramid.ops.down(cond, k))
        if not self.stencil:
            return torch.cat([context, c], -1)
        # the condition's differences to the 8 neighbours: gradients and curvature, which say
        # where patterns move, without the attention having to find the neighbours first
        nb = getattr(self, f"neighbours{k}")
        around = (c[:, nb] - c[:, :, None]).flatten(2)
        return torch.cat([context, c, around], -1)

    @staticmethod
    def _no_label(cond: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(cond), dtype=torch.long, device=cond.device)

    def loss(self, batch, generator: torch.Generator | None = None):
        target, cond = batch
        enc = self.encode(target)
        inputs = torch.cat([self._inputs(c, cond, k) for k, c in enumerate(enc.contexts)], 1)
        pred = self.head(self.refiner(inputs, self._no_label(cond)))
        return self.head.loss(pred, torch.cat(enc.codes, 1), torch.cat(enc.values, 1))

    def predict(self, state: dict, k: int, cond: torch.Tensor, own=None, visible=None) -> dict:
        cond = cond.to(state["z"].device)
        context = self._inputs(flat(self.pyramid.context(state["z"], k)), cond, k)
        h = self._step(context, k, self._no_label(cond), state["cache"], own, visible)
        return {"band": self.head(h)}


def build_weather_model(cfg, ops, channels: int, cond_channels: int,
                        calibration: torch.Tensor | None = None,
                        stencil: bool = True) -> WeatherScaleModel:
    """The model for ``cfg.model`` / ``cfg.refiner`` on ``ops``. ``calibration`` (a few training
    increments [N, C, *support]) sets the scalar quantiser's per-scale units, so that fine bands,
    which are much smaller than coarse ones, are coded as finely."""
    m = cfg.model
    quantizer = make_quantizer(m.quantizer, channels, m.num_codes, len(ops.sizes),
                               lo=m.quant_lo, hi=m.quant_hi)
    pyramid = ResidualPyramid(ops, quantizer, m.variant, m.target_state)
    if calibration is not None and hasattr(quantizer, "calibrate"):
        lossless = ResidualPyramid(ops, IdentityQuantizer(channels), m.variant, m.target_state)
        quantizer.calibrate(lossless.encode(calibration).values)
    positions = [ops.positions(k) for k in range(len(ops.sizes))]
    inputs = WeatherScaleModel.input_channels(channels, cond_channels, stencil)
    refiner = ScaleTransformer(inputs, positions, 0, **cfg.refiner)
    head = make_head(m.target, cfg.refiner.d_model, quantizer)
    return WeatherScaleModel(pyramid, refiner, head, channels, cond_channels, stencil)
