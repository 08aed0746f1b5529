"""Pixel conventions: the one place where 0-based, array and FITS indices meet.

pyengine uses astropy's high-level WCS convention everywhere: a position is
(x, y), 0-based, with the centre of the first pixel at (0, 0).  Pixel i covers
[i - 0.5, i + 0.5).  Arrays are indexed (band, y, x), so pixel (x, y) is
``array[:, y, x]``.  FITS (and DS9, SExtractor) number pixels from 1:
x_fits = x + 1.

The centre pixel of a position is floor(v + 0.5), so a half-integer rounds up
(10.5 -> 11) consistently; ``numpy.round`` would round half to even and split
the boundary between tiles unevenly.  Tile ownership uses the same rule, in
one place: ``Tile.owns`` and ``TilePlan.assign`` (pyengine.io.tiles, the
latter through the Numba kernel of pyengine.kernels.tiling).
"""

from __future__ import annotations

import numpy as np

__all__ = ["array_index", "centre_pixel", "fits_to_pixel", "pixel_to_fits"]


def centre_pixel(v):
    """Integer pixel containing 0-based coordinate ``v`` (scalar or array) as int64.

    Non-finite input gives an undefined integer: callers check finiteness first.
    """
    with np.errstate(invalid="ignore"):
        return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def pixel_to_fits(x, y):
    """0-based pixel (x, y) -> 1-based FITS pixel (x, y)."""
    return np.asarray(x, dtype=np.float64) + 1.0, np.asarray(y, dtype=np.float64) + 1.0


def fits_to_pixel(x, y):
    """1-based FITS pixel (x, y) -> 0-based pixel (x, y)."""
    return np.asarray(x, dtype=np.float64) - 1.0, np.asarray(y, dtype=np.float64) - 1.0


def array_index(x, y):
    """0-based pixel (x, y) -> the (row, column) array index of its centre pixel."""
    return centre_pixel(y), centre_pixel(x)
