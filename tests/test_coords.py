"""Pixel conventions agree with astropy's WCS and FITS's 1-based pixels."""

from __future__ import annotations

import numpy as np

from pyengine.coords import array_index, centre_pixel, fits_to_pixel, pixel_to_fits
from tests.makedata import make_wcs


def test_centre_pixel_rounds_half_up():
    v = np.array([-0.5, -0.49, 0.0, 0.49, 0.5, 1.5, 2.5, 10.4999, -1.5])
    np.testing.assert_array_equal(centre_pixel(v), [0, 0, 0, 0, 1, 2, 3, 10, -1])
    assert centre_pixel(2.5).dtype == np.int64


def test_fits_round_trip_and_astropy_origin():
    wcs = make_wcs((200, 300))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-10, 310, 50), rng.uniform(-10, 210, 50)
    fx, fy = pixel_to_fits(x, y)
    bx, by = fits_to_pixel(fx, fy)
    np.testing.assert_array_equal(bx, x)
    np.testing.assert_array_equal(by, y)
    # astropy's high-level API is 0-based; wcs_pix2world with origin=1 is FITS.
    ra0, dec0 = wcs.pixel_to_world_values(x, y)
    ra1, dec1 = wcs.wcs_pix2world(fx, fy, 1)
    np.testing.assert_allclose(ra0, ra1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dec0, dec1, rtol=0, atol=1e-12)


def test_array_index_is_row_column():
    row, col = array_index(np.array([3.4]), np.array([7.6]))
    assert (row[0], col[0]) == (8, 3)
