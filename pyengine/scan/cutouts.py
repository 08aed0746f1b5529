"""Cutouts of positions on a mosaic, through the scan's own path.

Positions are grouped by the tile that owns them (TilePlan), each tile's
window (core + halo) is read once (Mosaic.read), and the windows are gathered
by the C++ core (pyengine.scan.batching.gather).  Training, calibration and export
checks use this module, so they see exactly the pixels a scan sees; the scan
engine runs the same steps concurrently.

Cutout contract (DESIGN.md): S x S, centred on the position's centre pixel
(floor(v + 0.5)), window [c - S//2, c - S//2 + S); pixels off the image or
blank are NaN.  Positions whose centre pixel is off the image give all-NaN
cutouts and are counted, never dropped.

Thread safety: functions read the mosaic (thread-safe) and write only new
arrays; they may run concurrently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.io.tiles import Tile, TilePlan
from pyengine.scan.batching import gather

__all__ = ["MAX_CHECK_NAN", "Cutouts", "extract_cutouts", "iter_tile_cutouts", "usable_cutouts"]

#: Cutouts blank over this share of their pixels (or off the image) are left out of the
#: cutouts that export checks and int8 calibrations use (:func:`usable_cutouts`).
MAX_CHECK_NAN = 0.5


def iter_tile_cutouts(mosaic, x, y, size: int, *, core: int = 2048
                      ) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
    """Per owning tile, in file order: (tile, indices into x/y, cutouts (k, nband, S, S))."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    plan = TilePlan.for_cutout(mosaic.shape, cutout=size, core=core)
    _, order, starts = plan.group(x, y)
    for t in range(len(plan)):
        members = order[starts[t] : starts[t + 1]]
        if members.size == 0:
            continue
        tile = plan[t]
        y0, y1, x0, x1 = tile.window
        pixels = mosaic.read(y0, y1, x0, x1)
        cx = centre_pixel(x[members]) - x0
        cy = centre_pixel(y[members]) - y0
        yield tile, members, gather(pixels, cx, cy, size)


@dataclass(frozen=True)
class Cutouts:
    """Cutouts in input order, with what a catalog reports about each."""

    pixels: np.ndarray  # (n, nband, S, S) float32, NaN off-image/blank
    on_image: np.ndarray  # (n,) bool: the centre pixel lies on the image
    nan_fraction: np.ndarray  # (n,) float32: share of NaN pixels over all bands
    tile: np.ndarray  # (n,) int64: owning tile, -1 off the image


def extract_cutouts(mosaic, x, y, size: int, *, core: int = 2048) -> Cutouts:
    """All cutouts of positions (x, y) in memory, in input order (for modest counts)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = x.size
    pixels = np.full((n, mosaic.nband, size, size), np.nan, dtype=np.float32)
    tile_of = np.full(n, -1, dtype=np.int64)
    for tile, members, cutouts in iter_tile_cutouts(mosaic, x, y, size, core=core):
        pixels[members] = cutouts
        tile_of[members] = tile.index
    nan_fraction = np.isnan(pixels).mean(axis=(1, 2, 3), dtype=np.float64).astype(np.float32)
    return Cutouts(pixels, tile_of >= 0, nan_fraction, tile_of)


def usable_cutouts(mosaic, x, y, size: int, order=None) -> np.ndarray:
    """The cutouts of positions (x, y) fit to check or calibrate a graph on: centred on
    the image and blank over less than :data:`MAX_CHECK_NAN` of their pixels, in input
    order, their bands taken in ``order`` (indices into the mosaic's bands: the model's
    order; None keeps the mosaic's); (k, nband, S, S) float32, contiguous."""
    cut = extract_cutouts(mosaic, x, y, size)
    pixels = cut.pixels[cut.on_image & (cut.nan_fraction < MAX_CHECK_NAN)]
    return np.ascontiguousarray(pixels if order is None else pixels[:, order])
