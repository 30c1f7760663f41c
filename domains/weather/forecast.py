"""Ensemble forecasts: roll the one-step model out from initial times, write WB2-layout stores.

Each member is rolled out on its own: step n draws the increment from the model conditioned on
the member's own state, so members diverge as the draws compound. The state is kept twice: on
the support (the model's input) and on the store's lat-lon grid, where the analysis at t0 is
exact and only the generated increments are regridded (the regridding error does not enter the
initial state).

Output layout (what WeatherBench2's evaluation reads): ``time`` = initialisation time,
``prediction_timedelta`` = lead time, ``number`` = member, ``level``, ``latitude``, ``longitude``.
Every initial time is written to its own store under ``forecast_parts/`` atomically; a killed run
keeps the finished ones and resumes with the next. The parts are only reused for the settings that
made them (``forecast_parts/settings.json``, see ``parts_key``); a rerun with other settings clears
them and the joined store first. The parts are then joined into ``forecast.zarr`` (and
``forecast.nc`` on request).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from core import distributed
from core.compute import count_flops
from core.io import atomic_path
from core.model import module_device
from core.parts import keyed_folder
from core.sampler import from_config, generate, member_seed
from domains.weather.data import WeatherDataError

DIMS_LEVEL = ("time", "prediction_timedelta", "number", "level", "latitude", "longitude")
DIMS_SURFACE = ("time", "prediction_timedelta", "number", "latitude", "longitude")
# domain.forecast keys that do not change the values of a part: where and how the joined store is
# written, what is counted apart from it, and which initial times are chosen (each part is one
# initial time, named by it, and its draws are seeded by the run seed and that time alone)
NOT_IN_PARTS = ("format", "path", "flops_members", "init_times", "init_every_hours", "max_inits",
                "calibrate", "val_every_hours", "val_max_inits")
# sample keys of task=sample alone (the forecast draws members x initial times, not num_samples)
NOT_IN_FORECAST = ("num_samples", "batch_size", "flops_samples")


def init_times(test_times: np.ndarray, stride: int, lead_steps: int, every_hours: float,
               max_inits: int | None, chosen=None, period: str = "test") -> np.ndarray:
    """Initial times in the test period that have the previous step and every lead's truth:
    ``chosen`` ones (checked), or every ``every_hours`` from the first possible one."""
    dt_hours = (test_times[1] - test_times[0]) / np.timedelta64(1, "h")
    first, last = stride, len(test_times) - 1 - lead_steps * stride
    if last < first:
        raise WeatherDataError(
            f"the {period} period ({len(test_times)} times) is too short for {lead_steps} steps "
            f"of {stride} time steps with history: set domain.forecast.lead_steps to at most "
            f"{max(0, (len(test_times) - 1 - stride) // stride)}, or give a longer "
            f"domain.{period}_period")
    if chosen:
        out = np.array([np.datetime64(str(t), "ns") for t in chosen])
        allowed = set(test_times[first: last + 1].astype("datetime64[ns]").tolist())
        for t in out:
            if t.item() not in allowed:
                raise WeatherDataError(
                    f"initial time {t} is not a store time with {stride} time steps of history "
                    f"and {lead_steps} forecast steps inside the test period "
                    f"({test_times[first]} to {test_times[last]})")
        return out
    every = max(1, int(round(every_hours / dt_hours)))
    chosen = test_times[first: last + 1: every]
    return chosen[:max_inits] if max_inits else chosen


def to_dataset(values: np.ndarray, t0, leads: np.ndarray, chans, latitude, longitude,
               attrs: dict) -> xr.Dataset:
    """values [L, M, C, lat, lon] of one initial time -> a dataset in the forecast layout."""
    data_vars: dict = {}
    levels = sorted({lev for _, lev in chans if lev is not None})
    for var in dict.fromkeys(v for v, _ in chans):
        idx = [i for i, (v, _) in enumerate(chans) if v == var]
        if chans[idx[0]][1] is None:
            data_vars[var] = (DIMS_SURFACE, values[None, :, :, idx[0]])
        else:
            by_level = {chans[i][1]: i for i in idx}
            if sorted(by_level) != levels:
                raise WeatherDataError(f"variable {var} must be forecast at every level {levels}")
            stack = np.stack([values[:, :, by_level[lev]] for lev in levels], 2)
            data_vars[var] = (DIMS_LEVEL, stack[None])
    coords = {"time": [np.datetime64(t0, "ns")], "prediction_timedelta": leads.astype("timedelta64[ns]"),
              "number": np.arange(values.shape[1]), "latitude": latitude, "longitude": longitude}
    if levels:
        coords["level"] = np.asarray(levels, dtype=np.int64)
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    for var in ds.data_vars:
        ds[var] = ds[var].astype(np.float32)
    ds["time"].encoding = {"units": "hours since 1970-01-01", "dtype": "int64"}
    ds["time"].attrs = {"long_name": "initialisation time", "standard_name": "forecast_reference_time"}
    ds["prediction_timedelta"].attrs = {"long_name": "lead time", "standard_name": "forecast_period"}
    ds["number"].attrs = {"long_name": "ensemble member", "standard_name": "realization"}
    ds["latitude"].attrs = {"units": "degrees_north", "standard_name": "latitude"}
    ds["longitude"].attrs = {"units": "degrees_east", "standard_name": "longitude"}
    if levels:
        ds["level"].attrs = {"units": "hPa", "long_name": "pressure level"}
    return ds


def parts_key(cfg, checkpoint: Path | None) -> dict:
    """Everything that determines the values of a forecast part: the model (its settings and its
    checkpoint, by path, mtime and size), the data and support (the rest of ``cfg.domain``), the
    sampling settings and seed, and the forecast settings less ``NOT_IN_PARTS``."""
    domain = OmegaConf.to_container(cfg.domain, resolve=True)
    forecast = domain.pop("forecast")
    domain.pop("evaluate", None)  # scoring settings
    sample = OmegaConf.to_container(cfg.sample, resolve=True)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    stat = checkpoint.stat() if checkpoint is not None and checkpoint.is_file() else None
    return {"forecast": {k: v for k, v in forecast.items() if k not in NOT_IN_PARTS},
            "sample": {k: v for k, v in sample.items() if k not in NOT_IN_FORECAST},
            "seed": int(cfg.seed), "domain": domain,
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "refiner": OmegaConf.to_container(cfg.refiner, resolve=True),
            "checkpoint": None if checkpoint is None else str(checkpoint.resolve()),
            "checkpoint_mtime_ns": stat.st_mtime_ns if stat else None,
            "checkpoint_size": stat.st_size if stat else None}


def part_path(folder: Path, t0) -> Path:
    stamp = pd.Timestamp(t0).strftime("%Y%m%dT%H%M")
    return folder / f"init_{stamp}.zarr"


def write_zarr_atomic(ds: xr.Dataset, path: Path) -> Path:
    with atomic_path(path, suffix=".zarr") as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=2, consolidated=True)
    return path


@torch.no_grad()
def rollout(model, data, state_ll: torch.Tensor, previous_ll: torch.Tensor, t0, members: int,
            lead_steps: int, sampling: tuple, seed: int) -> tuple[np.ndarray, int]:
    """Members of one initial time: [L, M, C, lat, lon] in physical units, and refiner calls.

    ``state_ll`` / ``previous_ll`` are the analyses at t0 and t0 - Δt [C, lat, lon] (physical).
    Member m's draws at step n are seeded by (run seed, t0, n, m) alone. ``sampling`` is the
    (scheduler, extensions) pair of ``core.sampler.from_config``.
    """
    scheduler, extensions = sampling
    norm, support = data.normalizer, data.support
    support_dims = data.fields.ndim - 2
    # the members' states live on the model's device; the lat-lon states (and the output) on the CPU
    device = module_device(model)
    inc_std = torch.as_tensor(np.asarray(norm.increment_std), dtype=torch.float32)
    inc_std = inc_std.reshape(-1, *[1] * support_dims).to(device)
    ratio = data.ratio.to(device)

    def on_support(x_ll):
        x = support.to_support(torch.from_numpy(np.asarray(norm.norm(x_ll.cpu().numpy()))).float())
        return x[None].repeat(members, *[1] * x.ndim).to(device)

    cur, prev = on_support(state_ll), on_support(previous_ll)
    ll = state_ll.cpu()[None].float().repeat(members, *[1] * state_ll.ndim)
    step = (data.times[data.stride] - data.times[0]).astype("timedelta64[s]")
    start = np.datetime64(t0, "s")
    out, calls = [], 0
    for n in range(lead_steps):
        valid = np.full(members, start + (n + 1) * step)
        d, nfe = generate(model, scheduler, data.condition(cur, prev, valid),
                          [member_seed(seed, f"{start}/{n}", m) for m in range(members)], extensions)
        calls += nfe
        prev, cur = cur, cur + d / ratio
        ll = ll + support.to_latlon(d * inc_std).float().cpu()
        out.append(ll.numpy().copy())
    return np.stack(out), calls


def join_parts(paths: list[Path], out: Path, netcdf: bool) -> xr.Dataset:
    """The per-initial-time stores as one forecast store (and netCDF on request), atomically."""
    ds = xr.concat([xr.open_zarr(p, consolidated=True) for p in paths], dim="time").load()
    ds["time"].encoding = {"units": "hours since 1970-01-01", "dtype": "int64"}
    return write_forecast_store(ds, out, netcdf)


def write_forecast_store(ds: xr.Dataset, out: Path, netcdf: bool) -> xr.Dataset:
    """``ds`` as the zarr store ``out`` and, on request, ``out`` as netCDF, atomically; a netCDF
    twin of an earlier forecast that is not rewritten is removed (it would no longer match)."""
    write_zarr_atomic(ds, out)
    nc = out.with_suffix(".nc")
    if netcdf:
        with atomic_path(nc, suffix=".nc") as tmp:
            ds.to_netcdf(tmp)
    elif nc.exists():
        nc.unlink()
    return ds


def run_forecast(cfg, model, data, test_ds: dict, run_dir: Path, progress: bool = True,
                 checkpoint: Path | None = None, name: str = "forecast",
                 every_hours: float | None = None, max_inits: int | None = None,
                 flops: bool = True) -> dict:
    """Forecast every initial time of the test period that ``cfg.domain.forecast`` selects.

    ``test_ds`` holds the test period's analyses: ``time`` [T], ``fields`` [T, C, lat, lon]
    (physical units), ``channels``, ``latitude``, ``longitude``. ``checkpoint`` is the file the
    model's weights came from (default: the run's, as ``task=forecast`` loads it); finished parts
    are reused only for the same checkpoint and settings. The store is ``<run_dir>/<name>.zarr``
    and its parts ``<name>_parts/``; ``every_hours`` and ``max_inits`` replace the forecast
    settings' choice of initial times (the validation forecasts use their own; ``name`` is then
    the period named in errors) and ``flops=False`` skips counting FLOPs.
    """
    if checkpoint is None:
        from domains.weather.plugin import _checkpoint
        checkpoint = _checkpoint(cfg, run_dir)
    f = cfg.domain.forecast
    times = test_ds["time"]
    stride = data.stride
    lead_steps = int(f.lead_steps)
    if every_hours is None:
        inits = init_times(times, stride, lead_steps, float(f.init_every_hours), f.max_inits,
                           f.get("init_times"))
    else:
        inits = init_times(times, stride, lead_steps, float(every_hours), max_inits,
                           period={"validation": "val"}.get(name, "test"))
    out_zarr = run_dir / f"{name}.zarr"
    # collective: rank 0 clears parts (and the store joined from them) of other settings
    parts_dir, _ = keyed_folder(run_dir / f"{name}_parts", parts_key(cfg, Path(checkpoint)),
                                also=(out_zarr, out_zarr.with_suffix(".nc")))
    s = cfg.sample
    sampling = from_config(OmegaConf.merge(s, {"guidance": 0.0}), model)  # no classes to guide
    model.eval()
    step = (times[stride] - times[0]).astype("timedelta64[ns]")
    leads = np.arange(1, lead_steps + 1) * step
    attrs = {"title": "coarse-to-fine ensemble forecast", "Conventions": "CF-1.8",
             "source": f"coarse2fine weather model, {cfg.domain.sphere} support",
             "members": int(f.members), "seed": int(cfg.seed)}
    index = {np.datetime64(t, "ns"): i for i, t in enumerate(times)}
    fields = test_ds["fields"]
    done, seconds, calls = 0, 0.0, 0
    paths = [part_path(parts_dir, t0) for t0 in inits]
    # ranks share the initial times; each part is its own file, so no two ranks write one file
    mine = inits[distributed.rank()::distributed.world_size()]
    bar = tqdm(mine, desc="forecast", disable=not progress or not distributed.is_main())
    for t0 in bar:
        path = part_path(parts_dir, t0)
        if path.exists():
            continue
        i = index[np.datetime64(t0, "ns")]
        tick = time.perf_counter()
        values, nfe = rollout(model, data, torch.from_numpy(fields[i]), torch.from_numpy(fields[i - stride]),
                              t0, int(f.members), lead_steps, sampling, int(cfg.seed))
        seconds += time.perf_counter() - tick
        calls += nfe
        done += 1
        ds = to_dataset(values, t0, leads, test_ds["channels"], test_ds["latitude"],
                        test_ds["longitude"], attrs)
        write_zarr_atomic(ds, path)
        bar.set_postfix(member_steps_per_s=f"{done * int(f.members) * lead_steps / max(seconds, 1e-9):.1f}")
    done, seconds, calls = (sum(x) for x in zip(*distributed.gather_objects((done, seconds, calls))))
    if distributed.is_main():
        join_parts(paths, out_zarr, str(f.format) in ("netcdf", "both"))
    distributed.barrier()
    member_steps = done * int(f.members) * lead_steps
    out = {"forecast/inits": len(inits), "forecast/members": int(f.members),
           "forecast/lead_steps": lead_steps, "forecast/resumed_inits": len(inits) - done}
    if done:
        out.update({"forecast/member_steps_per_second": member_steps / seconds,
                    "forecast/nfe_per_member_step": calls / (done * lead_steps),
                    "forecast/seconds_per_member_step": seconds / member_steps})
    if flops and len(inits) and int(f.get("flops_members", 1)) > 0:
        # FLOPs of one lead step, counted apart from the timed loop (the counter slows it down)
        t0 = inits[0]
        i = index[np.datetime64(t0, "ns")]
        members = min(int(f.members), int(f.get("flops_members", 1)))
        _, flops = count_flops(rollout, model, data, torch.from_numpy(fields[i]),
                               torch.from_numpy(fields[i - stride]), t0, members, 1, sampling, int(cfg.seed))
        out["forecast/flops_per_member_step"] = flops / members
    return out
