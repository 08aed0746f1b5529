"""Tile ownership: which tile owns each position, and positions grouped by tile.

A position (x, y) (0-based, astropy convention) is owned by the tile whose
core contains its centre pixel (floor(x + 0.5), floor(y + 0.5)), the rule in
pyengine.coords.  Cores partition the image, so every on-image position is
owned exactly once, also on tile and image borders.  Positions whose centre
pixel is off the image, or that are not finite, get tile -1.

Thread safety: the kernels are ``nogil`` and only read their inputs and
write the arrays they return.  ``assign_tiles`` may be called from any
threads at once: one call at a time spreads positions over Numba's thread
pool, holding :data:`pyengine.kernels.pool.POOL` (Numba's workqueue layer
must never run two parallel regions at once); a call that finds the pool busy,
or has few positions, runs the serial kernel on its own thread.  The result
does not depend on which kernel ran.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from pyengine.kernels.pool import POOL

__all__ = ["assign_tiles", "group_by_tile"]

# Fewer positions than this are assigned on the calling thread: the pool's
# start-up costs more than it saves.
_PARALLEL_MIN = 1 << 16


@njit(nogil=True, cache=True)
def _owner(xi, yi, ny, nx, core_y, core_x, ncols):
    """Owning tile of one position (-1 off the image): floor(v + 0.5) in a core."""
    # Compare in floating point first: casting a huge or NaN value to int is undefined.
    if not (-0.5 <= xi < nx - 0.5 and -0.5 <= yi < ny - 0.5):
        return -1
    cx = np.int64(np.floor(xi + 0.5))
    cy = np.int64(np.floor(yi + 0.5))
    if cx < 0 or cx >= nx or cy < 0 or cy >= ny:
        return -1  # x + 0.5 rounded up to nx in floating point
    return (cy // core_y) * ncols + cx // core_x


@njit(nogil=True, cache=True, parallel=True)
def _assign_parallel(x, y, ny, nx, core_y, core_x, ncols):
    n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in prange(n):
        out[i] = _owner(x[i], y[i], ny, nx, core_y, core_x, ncols)
    return out


@njit(nogil=True, cache=True)
def _assign_serial(x, y, ny, nx, core_y, core_x, ncols):
    n = x.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = _owner(x[i], y[i], ny, nx, core_y, core_x, ncols)
    return out


def assign_tiles(x, y, ny, nx, core_y, core_x, ncols):
    """Owning tile index of each position (int64; -1 when off the image).

    ``x``, ``y``: contiguous float64 arrays of one length.
    """
    args = (x, y, int(ny), int(nx), int(core_y), int(core_x), int(ncols))
    if x.shape[0] >= _PARALLEL_MIN and POOL.acquire(blocking=False):
        try:
            return _assign_parallel(*args)
        finally:
            POOL.release()
    return _assign_serial(*args)


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
