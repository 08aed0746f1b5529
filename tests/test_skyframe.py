"""Catalog RA/Dec are ICRS whatever the WCS's frame (pyengine.io.skyframe), both ways."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pyengine.io.catalog import catalog_positions
from pyengine.io.mosaic import Mosaic
from pyengine.io.skyframe import icrs_to_pixel, pixel_to_icrs, wcs_frame
from pyengine.scan.engine import Engine
from pyengine.sources import CatalogSource, GridSource
from tests.makedata import make_wcs

SHAPE = (400, 500)
FRAMES = {"FK4 B1950": {"RADESYS": "FK4", "EQUINOX": 1950.0},
          "FK5 J2000": {"RADESYS": "FK5", "EQUINOX": 2000.0},
          "EQUINOX 1950 only (FK4 by the FITS default)": {"EQUINOX": 1950.0}}


def _wcs(keys, shape=SHAPE) -> WCS:
    header = make_wcs(shape).to_header()
    for key in ("RADESYS", "EQUINOX"):
        header.remove(key, ignore_missing=True)
    header.update(keys)
    return WCS(header)


def _pixels(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-20, SHAPE[1] + 20, n), rng.uniform(-20, SHAPE[0] + 20, n)


def _separation_deg(ra1, dec1, ra2, dec2):
    a = SkyCoord(ra1 * u.deg, dec1 * u.deg, frame="icrs")
    return a.separation(SkyCoord(ra2 * u.deg, dec2 * u.deg, frame="icrs")).deg


@pytest.mark.parametrize("keys", FRAMES.values(), ids=FRAMES.keys())
def test_pixels_to_icrs_agree_with_skycoord(keys):
    wcs = _wcs(keys)
    assert wcs_frame(wcs) is not None
    x, y = _pixels()
    ra, dec = pixel_to_icrs(wcs, x, y)
    want = wcs.pixel_to_world(x, y).icrs  # astropy's high-level API: its frame, then ICRS
    assert np.max(_separation_deg(ra, dec, want.ra.deg, want.dec.deg)) < 1e-9
    # The header's own values differ (B1950 by ~0.6 deg, J2000 FK5 by ~20 mas): the
    # conversion is not a no-op, so the test above can fail.
    raw_ra, raw_dec = wcs.pixel_to_world_values(x, y)
    assert np.min(_separation_deg(ra, dec, raw_ra, raw_dec)) > 1e-6


@pytest.mark.parametrize("keys", FRAMES.values(), ids=FRAMES.keys())
def test_icrs_to_pixels_agree_with_skycoord(keys):
    wcs = _wcs(keys)
    x, y = _pixels(seed=1)
    sky = wcs.pixel_to_world(x, y).icrs
    px, py = icrs_to_pixel(wcs, sky.ra.deg, sky.dec.deg)
    wx, wy = wcs.world_to_pixel(SkyCoord(sky.ra.deg * u.deg, sky.dec.deg * u.deg, frame="icrs"))
    # 1e-6 px = 5e-11 deg at 0.187"/px
    assert np.max(np.hypot(px - wx, py - wy)) < 1e-6
    assert np.max(np.hypot(px - x, py - y)) < 1e-6  # the round trip
    # Catalog rows (ICRS by the contract) land on those pixels.
    table = Table({"ra": sky.ra.deg, "dec": sky.dec.deg})
    pos = catalog_positions(table, wcs, where="cat.fits")
    np.testing.assert_allclose(pos.x, wx, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pos.y, wy, rtol=0, atol=1e-6)


def test_icrs_header_skips_the_conversion():
    for keys in ({}, {"RADESYS": "ICRS"}):
        wcs = _wcs(keys)
        assert wcs_frame(wcs) is None
        x, y = _pixels()
        ra, dec = pixel_to_icrs(wcs, x, y)
        raw_ra, raw_dec = wcs.pixel_to_world_values(x, y)
        np.testing.assert_array_equal(ra, np.asarray(raw_ra) % 360.0)
        np.testing.assert_array_equal(dec, raw_dec)
        px, py = icrs_to_pixel(wcs, ra, dec)
        np.testing.assert_array_equal((px, py), wcs.world_to_pixel_values(ra, dec))


def test_not_finite_and_empty_inputs():
    wcs = _wcs(FRAMES["FK4 B1950"])
    ra, dec = pixel_to_icrs(wcs, np.array([np.nan, 10.0]), np.array([5.0, 10.0]))
    assert np.isnan(ra[0]) and np.isnan(dec[0]) and np.isfinite(ra[1])
    px, py = icrs_to_pixel(wcs, np.array([np.nan, 10.68]), np.array([41.27, np.nan]))
    assert np.all(np.isnan(px)) and np.all(np.isnan(py))
    assert [a.size for a in pixel_to_icrs(wcs, np.zeros(0), np.zeros(0))] == [0, 0]
    assert [a.size for a in icrs_to_pixel(wcs, np.zeros(0), np.zeros(0))] == [0, 0]


def test_scan_of_a_b1950_field_writes_icrs(model, field, tmp_path):
    """The catalog of a mosaic whose header is FK4 B1950: RA/Dec in ICRS (RADESYS says so),
    and an ICRS input catalog lands on the same pixels as astropy puts it."""
    paths = []
    for src in field["paths"]:
        with fits.open(src) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data.copy()
        header.update(FRAMES["FK4 B1950"])
        paths.append(tmp_path / src.name)
        fits.PrimaryHDU(data, header).writeto(paths[-1])
    with Mosaic.open(paths) as mosaic:
        wcs = mosaic.wcs
        sky = wcs.pixel_to_world(field["x"], field["y"]).icrs
        Table({"ra": sky.ra.deg, "dec": sky.dec.deg}).write(tmp_path / "cat.fits")
        with Engine(model, runner="onnxruntime", batch_size=16, threads=1, core=64,
                    cache_dir=tmp_path / "onnx") as engine:
            grid = engine.scan(mosaic, GridSource(50))
            table = engine.scan(mosaic, CatalogSource(tmp_path / "cat.fits"))
    want = wcs.pixel_to_world(np.asarray(grid["x"]), np.asarray(grid["y"])).icrs
    assert np.max(_separation_deg(grid["ra"], grid["dec"], want.ra.deg, want.dec.deg)) < 1e-9
    assert grid.meta["RADESYS"] == "ICRS"
    np.testing.assert_allclose(table["x"], field["x"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(table["y"], field["y"], rtol=0, atol=1e-6)
    assert np.max(_separation_deg(table["ra"], table["dec"], sky.ra.deg, sky.dec.deg)) < 1e-9
