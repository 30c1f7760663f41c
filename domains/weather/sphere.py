"""Scale operators and regridding on the sphere: HEALPix and latitude-longitude pyramids.

Two supports for the weather pyramid, both following the contract of ``core.grid.GridOps``
(``sizes``, ``down(z, k)``, ``up(z, k)``, ``positions(k)``; tensors [B, C, *support]):

* ``HealpixOps``: HEALPix in nested ordering. Pixels are equal-area and the 4 children of pixel
  p at the next nside are 4p..4p+3, so restriction is a reshape-and-mean that preserves the
  global mean exactly and the pyramid is exact (``down(up(x)) == x``).
* ``LatLonOps``: a plain latitude-longitude grid pooled by integer factors, area-weighted so the
  area-weighted global mean is preserved exactly.

``Regridder`` moves fields between an equiangular lat-lon grid (the WeatherBench2 layout, used
for scoring) and HEALPix (used for modelling) with precomputed sparse matrices.

healpy is used only while building index/weight tables; applying the operators is torch only.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_SPHERE_DEG2 = 4 * math.pi * (180 / math.pi) ** 2  # the sphere's area in square degrees


def _healpy():
    # Imported lazily: healpy (and astropy behind it) costs about a second to import, and is
    # only needed while building tables.
    import healpy

    return healpy


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_nside(nside, what: str = "nside") -> int:
    if isinstance(nside, bool) or int(nside) != nside or not _is_pow2(int(nside)):
        raise ValueError(f"{what} must be a power of two (nested HEALPix), got {nside}")
    return int(nside)


def _pixel_spacing_deg(nside: int) -> float:
    """Square root of the pixel area, in degrees: the pixel's effective width."""
    return math.sqrt(_SPHERE_DEG2 / (12 * nside * nside))


def unit_vectors(lat_deg, lon_deg) -> np.ndarray:
    """Unit vectors (x, y, z) of points given in degrees: [..., 3]."""
    lat, lon = np.deg2rad(np.asarray(lat_deg, float)), np.deg2rad(np.asarray(lon_deg, float))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


def _latitude_bounds(lat_asc: np.ndarray) -> np.ndarray:
    """Cell edges of an ascending latitude axis (WB2): poles, then midpoints between rows."""
    return np.concatenate([[-90.0], (lat_asc[:-1] + lat_asc[1:]) / 2, [90.0]])


def area_weights(latitude) -> np.ndarray:
    """Relative cell areas of an equiangular grid, normalised to mean 1 (WeatherBench2).

    A row's area is proportional to sin(upper edge) - sin(lower edge), the edges being the
    midpoints between rows and the poles. On grids with pole rows this gives the pole rows their
    small polar-cap cells (cos(90°) would give them zero); on grids without pole rows it equals
    cos(latitude) normalised. Ascending or descending latitude; weights come in input order.
    """
    lat = np.asarray(latitude, dtype=float)
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError(f"area_weights needs a 1-D latitude axis of >= 2 rows, got {lat.shape}")
    if np.any(np.abs(lat) > 90):
        raise ValueError("latitudes must lie in [-90, 90] degrees")
    order = np.argsort(lat)
    lat_asc = lat[order]
    if np.any(np.diff(lat_asc) <= 0):
        raise ValueError("latitudes must be strictly monotonic")
    edges = np.deg2rad(_latitude_bounds(lat_asc))
    area = np.diff(np.sin(edges))
    weights = np.empty_like(area)
    weights[order] = area
    return weights / weights.mean()


# --------------------------------------------------------------------------------------------
# HEALPix pyramid


class HealpixOps:
    """HEALPix pyramid in nested ordering; scale k has 12 * nsides[k]^2 pixels.

    ``down``: mean of the 4^j nested children (contiguous, so a reshape and a mean). Pixels are
    equal-area, so the global mean is preserved exactly.

    ``up``: copy each parent to its children. With ``smooth_up=True`` the copy is replaced by the
    bilinear interpolant of the coarse field at the fine pixel centres (healpy's
    ``get_interp_weights``, precomputed), then corrected by a per-parent constant so that each
    parent's children again average to the parent: ``down(up(x)) == x`` still holds (to floating
    point rounding), the coarse band stays exactly explained, and the finer bands only carry
    detail. The smooth variant spares the refiner from first undoing the blocky copy.

    Tensors are [..., npix] (the core passes [B, C, npix]); any nside in the pyramid's chain
    (a power of two) is accepted, as ``GridOps`` accepts any finer/coarser grid.
    """

    def __init__(self, nsides, smooth_up: bool = False):
        nsides = [_check_nside(n, "every nside") for n in nsides]
        if not nsides:
            raise ValueError("HealpixOps needs at least one nside")
        if any(b <= a for a, b in zip(nsides, nsides[1:])):
            raise ValueError(f"nsides must increase strictly coarse to fine, got {nsides}")
        self.nsides = nsides
        self.sizes = [(12 * n * n,) for n in nsides]
        self.smooth_up = bool(smooth_up)
        self._interp: dict = {}  # (nside_from, nside_to) -> (index [n, 4], weight [n, 4])

    def _nside_of(self, z: torch.Tensor, op: str) -> int:
        if z.dim() < 1:
            raise ValueError(f"HealpixOps.{op}: expected a tensor [..., npix], got a scalar")
        npix = z.shape[-1]
        nside = math.isqrt(npix // 12) if npix % 12 == 0 else 0
        if nside == 0 or 12 * nside * nside != npix or not _is_pow2(nside):
            raise ValueError(f"HealpixOps.{op}: last dimension {npix} is not 12 * nside^2 for a "
                             f"power-of-two nside (tensor shape {tuple(z.shape)})")
        return nside

    def _scale(self, k: int) -> int:
        if not -len(self.nsides) <= k < len(self.nsides):
            raise ValueError(f"scale {k} out of range for {len(self.nsides)} scales")
        return self.nsides[k]

    def down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        nk, n = self._scale(k), self._nside_of(z, "down")
        if n < nk:
            raise ValueError(f"HealpixOps.down: tensor at nside {n} is coarser than scale {k} "
                             f"(nside {nk}); down restricts finer tensors only")
        r = (n // nk) ** 2
        return z if r == 1 else z.reshape(*z.shape[:-1], 12 * nk * nk, r).mean(-1)

    def up(self, z: torch.Tensor, k: int) -> torch.Tensor:
        nk, n = self._scale(k), self._nside_of(z, "up")
        if n > nk:
            raise ValueError(f"HealpixOps.up: tensor at nside {n} is finer than scale {k} "
                             f"(nside {nk}); up prolongs coarser tensors only")
        r = (nk // n) ** 2
        if r == 1:
            return z
        copy = z.repeat_interleave(r, dim=-1)
        if not self.smooth_up:
            return copy
        index, weight = self._interp_table(n, nk, z.device, z.dtype)
        smooth = (z[..., index] * weight).sum(-1)
        parent_mean = smooth.reshape(*z.shape[:-1], -1, r).mean(-1)
        return smooth + (z - parent_mean).repeat_interleave(r, dim=-1)

    def _interp_table(self, n: int, nk: int, device, dtype):
        key = (n, nk)
        if key not in self._interp:
            hp = _healpy()
            theta, phi = hp.pix2ang(nk, np.arange(12 * nk * nk), nest=True)
            pix, w = hp.get_interp_weights(n, theta, phi, nest=True)
            self._interp[key] = (torch.from_numpy(pix.T.astype(np.int64)),
                                 torch.from_numpy(w.T.astype(np.float64)))
        index, weight = self._interp[key]
        return index.to(device), weight.to(device=device, dtype=dtype)

    def positions(self, k: int) -> torch.Tensor:
        """Unit vectors (x, y, z) of the pixel centres of scale k: [n_k, 3]."""
        n = self._scale(k)
        vec = _healpy().pix2vec(n, np.arange(12 * n * n), nest=True)
        return torch.from_numpy(np.stack(vec, -1)).float()

    def neighbours(self, k: int) -> torch.Tensor:
        """[n_k, 8] indices of each pixel's neighbours at scale k (SW, W, NW, N, NE, E, SE, S as
        healpy orders them); the 8 pixels where only 7 exist repeat the pixel itself."""
        n = self._scale(k)
        pix = np.arange(12 * n * n)
        nb = _healpy().get_all_neighbours(n, pix, nest=True).T
        nb = np.where(nb < 0, pix[:, None], nb)
        return torch.from_numpy(nb.astype(np.int64))


# --------------------------------------------------------------------------------------------
# Latitude-longitude pyramid


def _linear_weights(src: np.ndarray, tgt: np.ndarray):
    """Linear interpolation on a monotonic axis, constant beyond its ends: (i0, i1, w)."""
    order = np.argsort(src)
    pos = np.interp(tgt, src[order], np.arange(src.size, dtype=float))
    lo = np.clip(np.floor(pos).astype(int), 0, max(src.size - 2, 0))
    hi = np.minimum(lo + 1, src.size - 1)
    return order[lo], order[hi], pos - lo


class LatLonOps:
    """Latitude-longitude pyramid: scale k is an (nlat_k, nlon_k) grid, the finest (the last
    size) is the data grid with rows ``latitude_fine``; every size divides every finer one.

    ``down``: area-weighted pooling of f_lat x f_lon blocks (rows weighted by ``area_weights``,
    columns equal), so the area-weighted global mean is preserved exactly; each scale keeps the
    summed row areas, so restricting any finer scale is exact too.

    ``up``: ``"nearest"`` repeats each cell; ``"bilinear"`` interpolates between cell centres
    (periodic in longitude, constant beyond the outermost rows). With ``conserve=True`` (default)
    the bilinear result is corrected by a per-parent constant so ``down(up(x)) == x``, as in
    ``HealpixOps(smooth_up=True)``.
    """

    def __init__(self, sizes, latitude_fine, longitude_fine=None, up_mode: str = "nearest",
                 conserve: bool = True):
        sizes = [tuple(int(v) for v in s) for s in sizes]
        if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError(f"sizes must be a list of (nlat, nlon) pairs, got {sizes}")
        for a, b in zip(sizes, sizes[1:]):
            if b[0] % a[0] or b[1] % a[1] or b == a:
                raise ValueError(f"each size must divide the next finer one by integer factors "
                                 f"and grow coarse to fine, got {a} then {b}")
        lat = np.asarray(latitude_fine, float)
        nlat, nlon = sizes[-1]
        if lat.shape != (nlat,):
            raise ValueError(f"latitude_fine has {lat.size} rows, the finest size is {sizes[-1]}")
        lon = (np.arange(nlon) * 360.0 / nlon if longitude_fine is None
               else np.asarray(longitude_fine, float))
        if lon.shape != (nlon,):
            raise ValueError(f"longitude_fine has {lon.size} columns, finest size {sizes[-1]}")
        if up_mode not in ("nearest", "bilinear"):
            raise ValueError(f"unknown up_mode '{up_mode}'; choose nearest or bilinear")
        self.sizes, self.up_mode, self.conserve = sizes, up_mode, bool(conserve)
        fine_area = area_weights(lat)
        self._area, self._lat, self._lon = [], [], []
        for h, w in sizes:
            self._area.append(fine_area.reshape(h, -1).sum(1))
            self._lat.append(lat.reshape(h, -1).mean(1))
            rad = np.deg2rad(lon).reshape(w, -1)  # circular mean: blocks may straddle 0/360
            self._lon.append(np.rad2deg(np.arctan2(np.sin(rad).mean(1), np.cos(rad).mean(1)))
                             % 360)
        self._tables: dict = {}

    def _scale_of(self, z: torch.Tensor, op: str) -> int:
        size = tuple(z.shape[-2:]) if z.dim() >= 2 else None
        if size not in self.sizes:
            raise ValueError(f"LatLonOps.{op}: trailing dims {size} of tensor {tuple(z.shape)} "
                             f"are none of the pyramid's sizes {self.sizes}")
        return self.sizes.index(size)

    def down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        j, (hk, wk) = self._scale_of(z, "down"), self.sizes[k]
        if j < k % len(self.sizes):
            raise ValueError(f"LatLonOps.down: tensor at scale {j} is coarser than scale {k}")
        if j == k % len(self.sizes):
            return z
        h, w = self.sizes[j]
        rows = torch.as_tensor(self._area[j], dtype=z.dtype, device=z.device).reshape(hk, h // hk)
        blocks = z.reshape(*z.shape[:-2], hk, h // hk, wk, w // wk)
        total = (blocks * rows[:, :, None, None]).sum((-3, -1))
        return total / (rows.sum(1)[:, None] * (w // wk))

    def up(self, z: torch.Tensor, k: int) -> torch.Tensor:
        j, (h, w) = self._scale_of(z, "up"), self.sizes[k]
        k = k % len(self.sizes)
        if j > k:
            raise ValueError(f"LatLonOps.up: tensor at scale {j} is finer than scale {k}")
        if j == k:
            return z
        hj, wj = self.sizes[j]
        nearest = z.repeat_interleave(h // hj, -2).repeat_interleave(w // wj, -1)
        if self.up_mode == "nearest":
            return nearest
        (a0, a1, aw), (o0, o1, ow) = self._bilinear_table(j, k, z.device, z.dtype)
        out = z.index_select(-2, a0) * (1 - aw)[:, None] + z.index_select(-2, a1) * aw[:, None]
        out = out.index_select(-1, o0) * (1 - ow) + out.index_select(-1, o1) * ow
        if self.conserve:
            out = out + (z - self.down(out, j)).repeat_interleave(h // hj, -2) \
                .repeat_interleave(w // wj, -1)
        return out

    def _bilinear_table(self, j: int, k: int, device, dtype):
        if (j, k) not in self._tables:
            lat = _linear_weights(self._lat[j], self._lat[k])
            (_, wj), (_, wk) = self.sizes[j], self.sizes[k]
            # longitude in units of coarse cells, measured from the first cell's left edge
            pos = ((np.arange(wk) + 0.5) / wk * wj - 0.5) % wj
            lo = np.floor(pos).astype(int)
            lon = (lo % wj, (lo + 1) % wj, pos - lo)
            self._tables[(j, k)] = [(torch.from_numpy(i0), torch.from_numpy(i1),
                                     torch.from_numpy(np.asarray(w, float)))
                                    for i0, i1, w in (lat, lon)]
        return [(i0.to(device), i1.to(device), w.to(device=device, dtype=dtype))
                for i0, i1, w in self._tables[(j, k)]]

    def positions(self, k: int) -> torch.Tensor:
        """Unit vectors of the cell centres of scale k, row-major: [nlat_k * nlon_k, 3]."""
        lat, lon = np.meshgrid(self._lat[k], self._lon[k], indexing="ij")
        return torch.from_numpy(unit_vectors(lat, lon).reshape(-1, 3)).float()

    def neighbours(self, k: int) -> torch.Tensor:
        """[n_k, 8] row-major indices of the 8 surrounding cells at scale k (longitude periodic;
        beyond the outermost rows the row itself is repeated)."""
        h, w = self.sizes[k]
        i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        out = [np.clip(i + di, 0, h - 1) * w + (j + dj) % w
               for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
        return torch.from_numpy(np.stack(out, -1).reshape(-1, 8).astype(np.int64))


# --------------------------------------------------------------------------------------------
# Regridding lat-lon <-> HEALPix


class Regridder:
    """Equiangular latitude-longitude grid <-> HEALPix (nested) at ``nside``.

    Both directions are precomputed sparse matrices, so a batch [..., lat, lon] / [..., npix]
    costs one sparse matmul; inputs may be torch tensors or numpy arrays (returned as numpy).

    Interpolation (``method="area"``, the default):

    * lat-lon -> HEALPix: each pixel gets the area mean, over the pixel, of the bilinear
      interpolant of the grid, estimated as the plain mean over its 4^m nested sub-pixels (equal
      area), m the smallest with sub-pixels at most half a grid spacing wide. When pixels are
      much larger than cells this is a conservative-like area average (nothing aliases); when
      they are smaller, m = 0 and it is plain bilinear at the pixel centre. Bilinear is in (lat,
      lon), periodic in longitude. On grids without pole rows, points poleward of the outermost
      row are interpolated linearly between that row and its zonal mean placed at the pole (so
      the field is single-valued at the pole); grids with pole rows are used as they are.
    * HEALPix -> lat-lon: each cell gets the area mean (cos-latitude weighted) over the cell of
      the HEALPix bilinear interpolant (healpy ``get_interp_weights``, nest=True), sampled on
      s x s sub-points per cell with s the smallest giving sub-points at most half a pixel
      apart; s = 1 is plain bilinear at the grid point.

    ``method="bilinear"`` forces m = 0 and s = 1 (point interpolation both ways).

    Why area means by default: pixel values are then pixel means, the quantity the HEALPix
    pyramid's ``down`` produces, so ``HealpixOps.down(to_healpix at 2n)`` agrees with regridding
    straight to n (exactly when both use the same sub-pixel nside); and lat-lon cells are cell
    means, as in WB2's conservatively regridded grids.
    Point interpolation aliases: regridding the 3° ERA5 T850 sample to nside 8 misses the pixel
    means by 7% of the field's standard deviation with ``"bilinear"``, 0.05% with ``"area"``.
    The price is a slightly larger round trip, since each direction averages once.

    Round trip ``to_latlon(to_healpix(x))``, error = area-weighted RMSE divided by the
    area-weighted standard deviation of x (``round_trip_error``), measured (area / bilinear;
    the tests pin the area numbers with a small margin):

    * smooth field (spherical harmonics l <= 3), 64x32 WB2 grid (5.625°):
      nside 8: 1.3% / 0.8%, nside 16: 0.6% / 0.4%;
    * ERA5 sample, 3° grid with poles (61 x 120), 4 times x 10 members:
      Z500 nside 16: 3.5% / 2.2%, nside 32: 1.9% / 1.2%;
      T850 nside 16: 8.1% / 6.7%, nside 32: 5.4% / 3.9%. What is lost is the grid-scale detail
      (the 3° sample holds point values of the 0.25° analysis, T850 with sharp orography).
    """

    def __init__(self, latitude, longitude, nside: int, method: str = "area"):
        lat = np.asarray(latitude, float)
        lon = np.asarray(longitude, float)
        if lat.ndim != 1 or lat.size < 2 or np.any(np.diff(lat) <= 0):
            raise ValueError("latitude must be a strictly ascending 1-D axis (flip descending data "
                             "first, e.g. ds.sortby('latitude'))")
        if lat[0] < -90 or lat[-1] > 90:
            raise ValueError("latitudes must lie in [-90, 90] degrees")
        dlat = np.diff(lat)
        if not np.allclose(dlat, dlat[0], rtol=1e-4):
            raise ValueError("latitude must be equiangular (constant spacing)")
        dlon = 360.0 / lon.size
        if lon.ndim != 1 or not np.allclose(np.diff(lon), dlon, rtol=1e-4):
            raise ValueError(f"longitude must be {lon.size} ascending points spaced 360/{lon.size} "
                             "degrees, covering the globe")
        if method not in ("area", "bilinear"):
            raise ValueError(f"unknown method '{method}'; choose area or bilinear")
        self.latitude, self.longitude, self.method = lat, lon, method
        self.nside = _check_nside(nside)
        self.npix = 12 * self.nside ** 2
        self.shape = (lat.size, lon.size)
        self._weights = area_weights(lat)
        self._mats = {"to_hp": self._build_to_healpix(), "to_ll": self._build_to_latlon()}
        self._cache: dict = {}

    # -- table construction (numpy/scipy/healpy, once) --
    def _grid_bilinear(self, plat: np.ndarray, plon: np.ndarray):
        """Sparse entries (point, cell, weight) of bilinear interpolation of the grid at points."""
        lat, (nlat, nlon) = self.latitude, self.shape
        # extend with virtual pole rows (index -1 south, nlat north) valued at the zonal mean
        ext, rows = lat, np.arange(nlat)
        if lat[0] > -90 + 1e-9:
            ext, rows = np.concatenate([[-90.0], ext]), np.concatenate([[-1], rows])
        if lat[-1] < 90 - 1e-9:
            ext, rows = np.concatenate([ext, [90.0]]), np.concatenate([rows, [nlat]])
        pos = np.interp(plat, ext, np.arange(ext.size, dtype=float))
        r0 = np.clip(np.floor(pos).astype(int), 0, ext.size - 2)
        wr = pos - r0
        cpos = ((plon - self.longitude[0]) / (360.0 / nlon)) % nlon
        c0 = np.floor(cpos).astype(int) % nlon
        wc = cpos - np.floor(cpos)
        pts, cells, vals = [], [], []
        point = np.arange(plat.size)
        for r, w_r in ((rows[r0], 1 - wr), (rows[r0 + 1], wr)):
            real = (r >= 0) & (r < nlat)
            for c, w_c in ((c0, 1 - wc), ((c0 + 1) % nlon, wc)):
                pts.append(point[real])
                cells.append(r[real] * nlon + c[real])
                vals.append((w_r * w_c)[real])
            pole = ~real  # the zonal mean of the adjacent real row
            prow = np.where(r[pole] < 0, 0, nlat - 1)
            pts.append(np.repeat(point[pole], nlon))
            cells.append((prow[:, None] * nlon + np.arange(nlon)).ravel())
            vals.append(np.repeat(w_r[pole] / nlon, nlon))
        return np.concatenate(pts), np.concatenate(cells), np.concatenate(vals)

    def _build_to_healpix(self):
        import scipy.sparse as sp

        hp = _healpy()
        m = 0
        if self.method == "area":
            half_cell = 0.5 * float(np.diff(self.latitude)[0])
            while _pixel_spacing_deg(self.nside * 2 ** m) > half_cell:
                m += 1
        sub = self.nside * 2 ** m
        theta, phi = hp.pix2ang(sub, np.arange(12 * sub * sub), nest=True)
        pts, cells, vals = self._grid_bilinear(90 - np.rad2deg(theta), np.rad2deg(phi))
        nsub = 4 ** m  # nested: the sub-pixels of pixel p are p * 4^m ... (p + 1) * 4^m - 1
        return sp.coo_matrix((vals / nsub, (pts // nsub, cells)),
                             shape=(self.npix, self.shape[0] * self.shape[1])).tocsr()

    def _build_to_latlon(self):
        import scipy.sparse as sp

        hp = _healpy()
        nlat, nlon = self.shape
        s = 1
        if self.method == "area":
            pixel = _pixel_spacing_deg(self.nside)
            s = max(1, math.ceil(2 * float(np.diff(self.latitude)[0]) / pixel))
        if s == 1:
            plat, plon = np.meshgrid(self.latitude, self.longitude, indexing="ij")
            sub_w = np.ones(plat.shape)[..., None, None]
            plat, plon = plat[..., None, None], plon[..., None, None]
        else:  # s x s sub-points per cell, weighted by cos(lat) within the cell
            edges = _latitude_bounds(self.latitude)
            f = (np.arange(s) + 0.5) / s
            sub_lat = edges[:-1, None] + np.diff(edges)[:, None] * f  # [nlat, s]
            sub_lon = self.longitude[:, None] + (f - 0.5) * (360.0 / nlon)  # [nlon, s]
            plat = np.broadcast_to(sub_lat[:, None, :, None], (nlat, nlon, s, s))
            plon = np.broadcast_to(sub_lon[None, :, None, :], (nlat, nlon, s, s))
            sub_w = np.cos(np.deg2rad(plat))
        sub_w = sub_w / sub_w.sum((-2, -1), keepdims=True)
        theta = np.deg2rad(90 - plat).ravel()
        phi = np.deg2rad(plon).ravel() % (2 * np.pi)
        pix, w = hp.get_interp_weights(self.nside, theta, phi, nest=True)
        cell = np.repeat(np.arange(nlat * nlon), sub_w[0, 0].size)
        vals = (w * np.broadcast_to(sub_w, plat.shape).ravel()).ravel()
        return sp.coo_matrix((vals, (np.tile(cell, 4), pix.ravel())),
                             shape=(nlat * nlon, self.npix)).tocsr()

    # -- application (torch) --
    def _matrix(self, name: str, device, dtype) -> torch.Tensor:
        key = (name, str(device), dtype)
        if key not in self._cache:
            coo = self._mats[name].tocoo()
            index = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
            mat = torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), coo.shape,
                                          check_invariants=True)
            self._cache[key] = mat.coalesce().to(device=device, dtype=dtype)
        return self._cache[key]

    def _apply(self, name: str, x, n_in_dims: int, shape_out: tuple):
        is_numpy = not isinstance(x, torch.Tensor)
        t = torch.as_tensor(np.asarray(x) if is_numpy else x)
        if not t.is_floating_point():
            t = t.double() if is_numpy else t.float()
        lead = t.shape[: t.dim() - n_in_dims]
        flat = t.reshape(-1, math.prod(t.shape[t.dim() - n_in_dims:]))
        mat = self._matrix(name, t.device, t.dtype)
        out = torch.sparse.mm(mat, flat.T).T.reshape(*lead, *shape_out)
        return out.numpy() if is_numpy else out

    def to_healpix(self, x):
        """[..., lat, lon] -> [..., npix] (nested)."""
        if x.ndim < 2 or tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"to_healpix expects [..., {self.shape[0]}, {self.shape[1]}] "
                             f"(latitude ascending), got {tuple(x.shape)}")
        return self._apply("to_hp", x, 2, (self.npix,))

    def to_latlon(self, h):
        """[..., npix] (nested) -> [..., lat, lon]."""
        if h.ndim < 1 or h.shape[-1] != self.npix:
            raise ValueError(f"to_latlon expects [..., {self.npix}] (nside {self.nside}), got "
                             f"{tuple(h.shape)}")
        return self._apply("to_ll", h, 1, self.shape)

    def round_trip_error(self, x) -> float:
        """Area-weighted RMSE of ``to_latlon(to_healpix(x))`` relative to the area-weighted
        standard deviation of x (each field about its own mean), pooled over leading dims."""
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float)
        back = self.to_latlon(self.to_healpix(x))
        w = self._weights[:, None] / self._weights.sum() / self.shape[1]
        mean = (x * w).sum((-2, -1), keepdims=True)
        err = ((back - x) ** 2 * w).sum((-2, -1)).mean()
        var = ((x - mean) ** 2 * w).sum((-2, -1)).mean()
        return float(np.sqrt(err / var))

