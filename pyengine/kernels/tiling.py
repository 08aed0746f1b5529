"""Tile ownership: which tile owns each position, and positions grouped by tile.

A position (x, y) (0-based, astropy convention) is owned by the tile whose
core contains its centre pixel (floor(x + 0.5), floor(y + 0.5)), the rule in
pyengine.coords.  Cores partition the image, so every on-image position is
owned exactly once, also on tile and image borders.  Positions whose centre
pixel is off the image, or that are not finite, get tile -1.

Thread safety: the kernels are ``nogil`` and only read their inputs and
write the arrays they return; they may run concurrently from any threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["assign_tiles", "group_by_tile"]


@njit(nogil=True, cache=True, parallel=True)
def assign_tiles(x, y, ny, nx, core_y, core_x, ncols):
    """Owning tile index of each position (int64; -1 when off the image)."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in prange(n):
        xi = x[i]
        yi = y[i]
        # Compare in floating point first: casting a huge or NaN value to int is undefined.
        if not (-0.5 <= xi < nx - 0.5 and -0.5 <= yi < ny - 0.5):
            out[i] = -1
            continue
        cx = np.int64(np.floor(xi + 0.5))
        cy = np.int64(np.floor(yi + 0.5))
        if cx < 0 or cx >= nx or cy < 0 or cy >= ny:
            out[i] = -1  # x + 0.5 rounded up to nx in floating point
        else:
            out[i] = (cy // core_y) * ncols + cx // core_x
    return out


@njit(nogil=True, cache=True)
def group_by_tile(tile, ntiles):
    """Stable counting sort of positions by tile.

    Returns ``order`` (positions of tile 0 first, then tile 1, ...; off-image
    positions, tile -1, last) and ``starts`` (ntiles + 2): tile t's positions
    are ``order[starts[t]:starts[t + 1]]`` and the off-image ones
    ``order[starts[ntiles]:starts[ntiles + 1]]``.
    """
    counts = np.zeros(ntiles + 1, dtype=np.int64)
    for t in tile:
        counts[t if t >= 0 else ntiles] += 1
    starts = np.zeros(ntiles + 2, dtype=np.int64)
    for t in range(ntiles + 1):
        starts[t + 1] = starts[t] + counts[t]
    fill = starts[:-1].copy()
    order = np.empty(tile.shape[0], dtype=np.int64)
    for i in range(tile.shape[0]):
        t = tile[i] if tile[i] >= 0 else ntiles
        order[fill[t]] = i
        fill[t] += 1
    return order, starts
