"""Lazy, chunk-aligned access to array stores (zarr, netCDF), local or remote.

``open_store(path)`` accepts a local folder or file, a ``file://`` URL or any fsspec URL
(``gs://``, ``s3://``, ``https://`` — with the matching fsspec backend installed, e.g. ``gcsfs``
for the public WeatherBench2 buckets). Nothing is read until values are asked for: variables are
dask arrays whose chunks are the store's own, so every read touches whole stored chunks.
``time_blocks`` walks a dimension in windows aligned to those chunks, which is how a loader reads
a long record without loading it whole and without reading any chunk twice.
"""
from __future__ import annotations

import os
from pathlib import Path
from core.errors import MissingFileError, UserError


class StoreError(UserError):
    pass


def _is_url(path: str) -> bool:
    return "://" in path


def store_format(path) -> str:
    """``zarr`` or ``netcdf`` from the path (a folder holding zarr metadata counts as zarr)."""
    path = os.fspath(path)
    lower = path.rstrip("/").lower()
    if lower.endswith((".nc", ".nc4", ".netcdf", ".h5")):
        return "netcdf"
    if lower.endswith(".zarr"):
        return "zarr"
    if not _is_url(path) and Path(path).is_dir() and any(
            (Path(path) / name).exists() for name in ("zarr.json", ".zgroup", ".zmetadata")):
        return "zarr"
    raise StoreError(f"cannot tell the format of '{path}': expected a .zarr store or a netCDF "
                     "file (.nc)")


def open_store(path, variables=None):
    """Open a zarr store or netCDF file lazily with its own chunking (an ``xarray.Dataset``)."""
    import xarray as xr

    path = os.fspath(path)
    if not _is_url(path) and not Path(path).exists():
        raise MissingFileError(f"data store not found: {path}")
    fmt = store_format(path)
    try:
        if fmt == "zarr":
            try:  # consolidated metadata is one read instead of one per array (remote stores)
                ds = xr.open_zarr(path, chunks={}, consolidated=True)
            except (KeyError, FileNotFoundError, ValueError):
                ds = xr.open_zarr(path, chunks={}, consolidated=False)
        else:
            if _is_url(path) and not path.startswith("file://"):
                import fsspec

                ds = xr.open_dataset(fsspec.open(path).open(), chunks={})
            else:
                ds = xr.open_dataset(path.removeprefix("file://"), chunks={})
    except (OSError, ValueError, KeyError) as e:
        raise StoreError(f"cannot open {fmt} store '{path}': {e}") from e
    if variables is not None:
        missing = [v for v in variables if v not in ds.variables]
        if missing:
            raise StoreError(f"store '{path}' lacks variable(s) {', '.join(missing)}; it has "
                             f"{', '.join(sorted(ds.data_vars))}")
        ds = ds[list(variables)]
    return ds


def chunk_bounds(ds, dim: str) -> list[int]:
    """Offsets where the stored chunks of ``dim`` begin (the same for every variable with it)."""
    sizes = None
    for var in ds.data_vars.values():
        if dim in var.dims and var.chunks is not None:
            these = var.chunks[var.dims.index(dim)]
            if sizes is not None and tuple(these) != tuple(sizes):
                raise StoreError(f"variables disagree on the chunking of '{dim}'")
            sizes = these
    if sizes is None:
        return [0, ds.sizes[dim]]
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return bounds


def time_blocks(ds, dim: str = "time", min_length: int = 1):
    """Yield ``slice`` objects over ``dim`` that start and end on stored chunk boundaries, each at
    least ``min_length`` long (whole chunks are merged until it is reached)."""
    bounds = chunk_bounds(ds, dim)
    start = 0
    for end in bounds[1:]:
        if end - start >= min_length or end == bounds[-1]:
            yield slice(start, end)
            start = end
