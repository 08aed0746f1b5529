"""Batch gathering: cut S x S windows around positions out of a tile.

``gather`` is the Python face of the C++ core (``pyengine._core.gather``);
``gather_reference`` is a plain NumPy implementation of the same contract,
kept for tests.  Both follow the DESIGN.md cutout contract: the window of
centre pixel c is [c - S//2, c - S//2 + S) in each axis, pixels outside the
tile are NaN, and each band is mapped as (value - offset) * scale.

Thread safety: ``gather`` releases the GIL during the copy and touches only
its arguments, so threads may call it concurrently on distinct outputs.
"""

from __future__ import annotations

import numpy as np

from pyengine import _core

__all__ = ["gather", "gather_reference"]


def _prepare(tile, cx, cy, size, offset, scale):
    tile = np.ascontiguousarray(tile, dtype=np.float32)
    if tile.ndim != 3:
        raise ValueError(f"tile must be (nband, height, width), got shape {tile.shape}")
    nband = tile.shape[0]
    cx = np.ascontiguousarray(cx, dtype=np.int64).reshape(-1)
    cy = np.ascontiguousarray(cy, dtype=np.int64).reshape(-1)
    if cx.shape != cy.shape:
        raise ValueError(f"cx and cy differ in length: {cx.size} and {cy.size}")
    offset = np.zeros(nband, np.float32) if offset is None else offset
    scale = np.ones(nband, np.float32) if scale is None else scale
    offset = np.ascontiguousarray(np.broadcast_to(offset, (nband,)), dtype=np.float32)
    scale = np.ascontiguousarray(np.broadcast_to(scale, (nband,)), dtype=np.float32)
    return tile, cx, cy, int(size), offset, scale


def gather(tile, cx, cy, size, *, offset=None, scale=None, out=None):
    """Gather windows centred on integer pixels (cx, cy) of ``tile`` (nband, h, w).

    Returns ``out`` (n, nband, size, size) float32, allocated when not given.
    """
    tile, cx, cy, size, offset, scale = _prepare(tile, cx, cy, size, offset, scale)
    if out is None:
        out = np.empty((cx.size, tile.shape[0], size, size), dtype=np.float32)
    _core.gather(tile, cx, cy, size, offset, scale, out)
    return out


def gather_reference(tile, cx, cy, size, *, offset=None, scale=None):
    """NumPy reference for :func:`gather` (slow; for tests)."""
    tile, cx, cy, size, offset, scale = _prepare(tile, cx, cy, size, offset, scale)
    nband, h, w = tile.shape
    pad = np.full((nband, h + 2 * size, w + 2 * size), np.nan, dtype=np.float32)
    pad[:, size : size + h, size : size + w] = tile
    out = np.full((cx.size, nband, size, size), np.nan, dtype=np.float32)
    half = size // 2
    for i, (x, y) in enumerate(zip(cx.tolist(), cy.tolist(), strict=True)):
        y0, x0 = y - half + size, x - half + size
        if 0 <= y0 and y0 + size <= pad.shape[1] and 0 <= x0 and x0 + size <= pad.shape[2]:
            window = pad[:, y0 : y0 + size, x0 : x0 + size]
            out[i] = (window - offset[:, None, None]) * scale[:, None, None]
    return out
