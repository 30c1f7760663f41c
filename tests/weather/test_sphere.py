"""Sphere pyramids (HEALPix, lat-lon) and lat-lon <-> HEALPix regridding."""
import numpy as np
import pytest
import torch

hp = pytest.importorskip("healpy")

from core.pyramid import ResidualPyramid  # noqa: E402
from core.quantizers import IdentityQuantizer  # noqa: E402
from domains.weather.sphere import HealpixOps, LatLonOps, Regridder, area_weights  # noqa: E402

WB2_LAT = np.linspace(-87.1875, 87.1875, 32)
WB2_LON = np.arange(64) * 5.625


def smooth_field(lat, lon):
    """A sum of low-order spherical harmonics (l <= 3) on a lat-lon grid."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    s, c = np.sin(la), np.cos(la)
    return (s + 0.5 * c ** 2 * np.cos(2 * lo) + 0.3 * c * s * np.sin(lo)
            + 0.2 * c ** 3 * np.cos(3 * lo + 0.4) + 0.1 * (5 * s ** 3 - 3 * s))


@pytest.fixture(scope="module")
def era5(shared_data):
    xr = pytest.importorskip("xarray")
    path = shared_data / "weather" / "era5-levels-members.nc"
    if not path.exists():
        pytest.skip(f"ERA5 sample not found at {path}")
    with xr.open_dataset(path) as ds:
        ds = ds.sortby("latitude").load()  # the file is north to south; Regridder wants ascending
    return ds


# ------------------------------------------------------------------------------ HEALPix pyramid

@pytest.mark.parametrize("smooth", [False, True])
def test_healpix_down_preserves_mean_and_inverts_up(smooth):
    ops = HealpixOps([1, 2, 8], smooth_up=smooth)
    x = torch.randn(2, 3, 12 * 64, dtype=torch.float64)
    for k in range(3):
        coarse = ops.down(x, k)
        assert coarse.shape == (2, 3, *ops.sizes[k])
        torch.testing.assert_close(coarse.mean(-1), x.mean(-1), rtol=0, atol=1e-13)
    # chained restriction equals direct restriction
    torch.testing.assert_close(ops.down(ops.down(x, 1), 0), ops.down(x, 0), rtol=0, atol=1e-13)
    for j in range(3):
        for k in range(j, 3):
            z = ops.down(x, j)
            back = ops.down(ops.up(z, k), j)
            if smooth:
                torch.testing.assert_close(back, z, rtol=0, atol=1e-12)
            else:
                assert torch.equal(back, z)


def test_healpix_nested_children_are_contiguous():
    for n in (1, 2, 4):
        parents = np.arange(12 * n * n)
        children = 4 * parents[:, None] + np.arange(4)
        theta, phi = hp.pix2ang(2 * n, children.ravel(), nest=True)
        # every child centre falls inside its parent pixel, and close to the parent's centre
        assert np.array_equal(hp.ang2pix(n, theta, phi, nest=True), np.repeat(parents, 4))
        child = np.stack(hp.pix2vec(2 * n, children.ravel(), nest=True), -1)
        parent = np.stack(hp.pix2vec(n, np.repeat(parents, 4), nest=True), -1)
        angle = np.arccos(np.clip((child * parent).sum(-1), -1, 1))
        assert angle.max() < 1.5 * np.sqrt(4 * np.pi / (12 * n * n))


def test_healpix_smooth_up_is_closer_to_a_smooth_field():
    ops_copy, ops_smooth = HealpixOps([4, 16]), HealpixOps([4, 16], smooth_up=True)
    vec = ops_copy.positions(1).double()
    fine = (vec[:, 2] + vec[:, 0] * vec[:, 1] + 0.5 * vec[:, 0] ** 2)[None, None]
    coarse = ops_copy.down(fine, 0)
    err_copy = (ops_copy.up(coarse, 1) - fine).pow(2).mean().sqrt()
    err_smooth = (ops_smooth.up(coarse, 1) - fine).pow(2).mean().sqrt()
    assert err_smooth < 0.5 * err_copy


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("variant", ["laplacian", "var"])
def test_healpix_residual_pyramid_is_exact(smooth, variant):
    ops = HealpixOps([1, 2, 4, 8], smooth_up=smooth)
    pyramid = ResidualPyramid(ops, IdentityQuantizer(2), variant=variant)
    x = torch.randn(3, 2, 12 * 64, dtype=torch.float64)
    codes = pyramid.encode(x)
    assert [c.shape[1] for c in codes.codes] == [12, 48, 192, 768]
    torch.testing.assert_close(pyramid.decode(codes.codes), x, rtol=0, atol=1e-10)
    again = pyramid.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes.codes, again.codes))


def test_healpix_positions_are_unit_pixel_centres():
    ops = HealpixOps([2, 4])
    pos = ops.positions(1)
    assert pos.shape == (192, 3) and pos.dtype == torch.float32
    torch.testing.assert_close(pos.norm(dim=1), torch.ones(192))
    theta, phi = hp.vec2ang(pos[5].double().numpy())
    assert hp.ang2pix(4, theta, phi, nest=True)[0] == 5


def test_healpix_validation():
    with pytest.raises(ValueError, match="power of two"):
        HealpixOps([2, 3])
    with pytest.raises(ValueError, match="increase"):
        HealpixOps([4, 2])
    with pytest.raises(ValueError, match="increase"):
        HealpixOps([2, 2])
    ops = HealpixOps([2, 4])
    with pytest.raises(ValueError, match="12 \\* nside"):
        ops.down(torch.zeros(1, 1, 100), 0)
    with pytest.raises(ValueError, match="12 \\* nside"):
        ops.up(torch.zeros(1, 1, 12 * 9), 1)  # nside 3
    with pytest.raises(ValueError, match="coarser"):
        ops.down(torch.zeros(1, 1, 48), 1)
    with pytest.raises(ValueError, match="finer"):
        ops.up(torch.zeros(1, 1, 192), 0)


# ------------------------------------------------------------------------------ lat-lon pyramid

def test_area_weights():
    w = area_weights(WB2_LAT)
    assert w.mean() == pytest.approx(1.0)
    cos = np.cos(np.deg2rad(WB2_LAT))
    np.testing.assert_allclose(w, cos / cos.mean(), rtol=1e-3)
    poles = np.linspace(90, -90, 61)  # descending, with pole rows
    wp = area_weights(poles)
    assert wp.mean() == pytest.approx(1.0) and wp[0] > 0 and wp[0] == pytest.approx(wp[-1])
    np.testing.assert_allclose(wp, area_weights(poles[::-1])[::-1])
    assert wp[30] == wp.max()


@pytest.mark.parametrize("up_mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("lat", [WB2_LAT, np.linspace(-90, 90, 33)[:32] + 0.0],
                         ids=["no-poles", "south-pole"])
def test_latlon_down_preserves_area_mean(up_mode, lat):
    ops = LatLonOps([(4, 8), (8, 16), (32, 64)], lat, up_mode=up_mode)
    w = torch.as_tensor(area_weights(lat))[:, None]
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    mean = (x * w).mean((-2, -1))
    for k in range(3):
        z = ops.down(x, k)
        wk = torch.as_tensor(area_weights(lat).reshape(ops.sizes[k][0], -1).sum(1))[:, None]
        torch.testing.assert_close((z * wk).sum((-2, -1)) / wk.sum() / z.shape[-1], mean,
                                   rtol=0, atol=1e-13)
    torch.testing.assert_close(ops.down(ops.down(x, 1), 0), ops.down(x, 0), rtol=0, atol=1e-13)
    z = ops.down(x, 0)
    for k in (1, 2):
        torch.testing.assert_close(ops.down(ops.up(z, k), 0), z, rtol=0, atol=1e-12)
    pyramid = ResidualPyramid(ops, IdentityQuantizer(3))
    torch.testing.assert_close(pyramid.decode(pyramid.encode(x).codes), x, rtol=0, atol=1e-10)
    pos = ops.positions(0)
    assert pos.shape == (32, 3)
    torch.testing.assert_close(pos.norm(dim=1), torch.ones(32))


def test_latlon_bilinear_up_is_periodic_and_smooth():
    ops = LatLonOps([(8, 16), (32, 64)], WB2_LAT, up_mode="bilinear", conserve=False)
    field = torch.as_tensor(smooth_field(WB2_LAT, WB2_LON))[None, None]
    coarse = ops.down(field, 0)
    err_bilinear = (ops.up(coarse, 1) - field).abs()
    err_nearest = (coarse.repeat_interleave(4, -2).repeat_interleave(4, -1) - field).abs()
    assert err_bilinear.mean() < 0.6 * err_nearest.mean()
    # the seam at 0/360 is no worse than the interior: longitude is periodic
    assert err_bilinear[..., [0, -1]].max() < 2 * err_bilinear[..., 28:36].max() + 1e-3


def test_latlon_validation():
    with pytest.raises(ValueError, match="divide"):
        LatLonOps([(5, 8), (32, 64)], WB2_LAT)
    with pytest.raises(ValueError, match="rows"):
        LatLonOps([(4, 8), (32, 64)], WB2_LAT[:-1])
    with pytest.raises(ValueError, match="up_mode"):
        LatLonOps([(4, 8), (32, 64)], WB2_LAT, up_mode="cubic")
    ops = LatLonOps([(4, 8), (32, 64)], WB2_LAT)
    with pytest.raises(ValueError, match="sizes"):
        ops.down(torch.zeros(1, 1, 30, 64), 0)
    with pytest.raises(ValueError, match="coarser"):
        ops.down(torch.zeros(1, 1, 4, 8), 1)


# ------------------------------------------------------------------------------ regridding

@pytest.mark.parametrize("nside, tol", [(8, 0.016), (16, 0.008)])
def test_regrid_round_trip_smooth_wb2_grid(nside, tol):
    r = Regridder(WB2_LAT, WB2_LON, nside)
    x = smooth_field(WB2_LAT, WB2_LON)
    h = r.to_healpix(x)
    assert isinstance(h, np.ndarray) and h.shape == (12 * nside ** 2,)
    assert r.round_trip_error(x) < tol
    # constants survive both ways exactly (weights sum to one), incl. near the poles
    ones = torch.ones(2, 32, 64, dtype=torch.float64)
    torch.testing.assert_close(r.to_healpix(ones), torch.ones(2, 12 * nside ** 2,
                                                               dtype=torch.float64))
    torch.testing.assert_close(r.to_latlon(r.to_healpix(ones)), ones)
    # float32 batches keep their dtype and leading dims
    out = r.to_latlon(r.to_healpix(torch.as_tensor(x, dtype=torch.float32).expand(4, 2, 32, 64)))
    assert out.shape == (4, 2, 32, 64) and out.dtype == torch.float32


def test_regrid_bilinear_is_accurate_on_smooth_fields():
    r = Regridder(WB2_LAT, WB2_LON, 16, method="bilinear")
    x = smooth_field(WB2_LAT, WB2_LON)
    assert r.round_trip_error(x) < 0.005
    theta, phi = hp.pix2ang(16, np.arange(12 * 256), nest=True)
    lat, lon = 90 - np.rad2deg(theta), np.rad2deg(phi)
    exact = np.array([smooth_field([a], [o])[0, 0] for a, o in zip(lat, lon)])
    assert np.abs(r.to_healpix(x) - exact).max() < 0.015


def test_regrid_area_matches_the_healpix_pyramid(era5):
    """Pixel values are pixel means: restricting nside 32 by the pyramid ~ regridding to 16."""
    t850 = era5.t.sel(isobaricInhPa=850).values[0, :2]
    lat, lon = era5.latitude.values, era5.longitude.values
    fine = torch.as_tensor(Regridder(lat, lon, 32).to_healpix(t850))
    direct = torch.as_tensor(Regridder(lat, lon, 16).to_healpix(t850))
    # both average the same nside-64 sub-pixels, so they agree to rounding
    torch.testing.assert_close(HealpixOps([16, 32]).down(fine, 0), direct, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("nside, tol_z, tol_t", [(16, 0.04, 0.09), (32, 0.022, 0.06)])
def test_regrid_round_trip_era5(era5, nside, tol_z, tol_t):
    lat, lon = era5.latitude.values, era5.longitude.values
    assert lat[0] == -90 and lat[-1] == 90  # the flip to ascending, pole rows included
    r = Regridder(lat, lon, nside)
    z500 = era5.z.sel(isobaricInhPa=500).values  # [member, time, lat, lon]
    t850 = era5.t.sel(isobaricInhPa=850).values
    assert r.round_trip_error(z500) < tol_z
    assert r.round_trip_error(t850) < tol_t
    h = r.to_healpix(torch.as_tensor(z500))
    assert h.shape == (10, 4, 12 * nside ** 2)
    # the regridded global mean matches the area-weighted one (both are area means)
    w = area_weights(lat)[:, None]
    np.testing.assert_allclose(h.mean(-1).numpy(), (z500 * w).mean((-2, -1)), rtol=2e-4)


def test_regrid_validation():
    with pytest.raises(ValueError, match="ascending"):
        Regridder(WB2_LAT[::-1], WB2_LON, 8)
    with pytest.raises(ValueError, match="equiangular"):
        Regridder(np.r_[WB2_LAT[:-1], 89.9], WB2_LON, 8)
    with pytest.raises(ValueError, match="longitude"):
        Regridder(WB2_LAT, WB2_LON[:-1], 8)
    with pytest.raises(ValueError, match="power of two"):
        Regridder(WB2_LAT, WB2_LON, 12)
    with pytest.raises(ValueError, match="method"):
        Regridder(WB2_LAT, WB2_LON, 8, method="nearest")
    r = Regridder(WB2_LAT, WB2_LON, 8)
    with pytest.raises(ValueError, match="to_healpix expects"):
        r.to_healpix(np.zeros((64, 32)))
    with pytest.raises(ValueError, match="to_latlon expects"):
        r.to_latlon(np.zeros((2, 767)))
