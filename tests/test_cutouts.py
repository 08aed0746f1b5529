"""Cutouts through the scan path equal direct slices of the image."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from pyengine import Mosaic
from pyengine.scan.cutouts import extract_cutouts
from tests.makedata import make_wcs


def test_cutouts_equal_slices_across_tiles_edges_and_off_image(tmp_path):
    shape = (300, 410)
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape).astype(np.float32)
    i = (g * 3 + 1).astype(">f4")
    g[50:60, 70:80] = np.nan
    header = make_wcs(shape).to_header()
    fits.PrimaryHDU(g, header=header).writeto(tmp_path / "g.fits")
    fits.PrimaryHDU(i, header=header).writeto(tmp_path / "i.fits")
    x = np.concatenate([rng.uniform(-5, 415, 300), [63.5, 64.49, -0.5, -0.51, 409.49, 1e9]])
    y = np.concatenate([rng.uniform(-5, 305, 300), [10.0, 10.0, 0.0, 0.0, 299.0, 5.0]])
    size = 16
    with Mosaic.open([tmp_path / "g.fits", tmp_path / "i.fits"], bands=["g", "i"]) as m:
        got = extract_cutouts(m, x, y, size, core=64)  # many tiles: ownership borders
    stack = np.stack([g, i.astype(np.float32)])
    pad = np.full((2, shape[0] + 2 * size, shape[1] + 2 * size), np.nan, np.float32)
    pad[:, size:-size, size:-size] = stack
    for k in range(len(x)):
        cx, cy = int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5))
        on = 0 <= cx < shape[1] and 0 <= cy < shape[0]
        assert got.on_image[k] == on
        if on:
            want = pad[:, cy - size // 2 + size : cy + size // 2 + size,
                       cx - size // 2 + size : cx + size // 2 + size]
            np.testing.assert_array_equal(got.pixels[k], want)
            assert got.nan_fraction[k] == np.isnan(want).mean()
        else:
            assert np.isnan(got.pixels[k]).all()
            assert got.tile[k] == -1
