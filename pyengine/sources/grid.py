"""Grid positions: a dense regular grid covering the image, for score maps.

Thread safety: see :mod:`pyengine.sources`.
"""

from __future__ import annotations

import numpy as np

from pyengine.errors import ConfigError
from pyengine.sources.base import Source, TilePositions
from pyengine.validate import integer

__all__ = ["GridSource"]



class GridSource(Source):
    """Positions x = offset + stride*i, y = offset + stride*j covering the image.

    ``offset`` defaults to ``stride // 2`` (the grid is centred in its cells);
    positions are whole pixels, so a grid point's centre pixel is itself.
    """

    kind = "grid"
    needs_pixels = False

    def __init__(self, stride, *, offset=None):
        self.stride = integer(stride, "grid: grid stride", 1, 1 << 30, whole_floats=True)
        if offset is None:
            offset = self.stride // 2
        self.offset = integer(offset, "grid: grid offset", 0, self.stride - 1, whole_floats=True)
        self._plan = None

    def _axis(self, n: int) -> int:
        """Grid points along an image axis of n pixels."""
        return max(0, -(-(n - self.offset) // self.stride))

    def bind(self, mosaic, plan) -> None:
        self._check_shapes(mosaic, plan)
        ny, nx = plan.shape
        shape = (self._axis(ny), self._axis(nx))
        if 0 in shape:
            raise ConfigError(f"grid: stride {self.stride} with offset {self.offset} puts no "
                              f"point on the {ny} x {nx} image; a stride (or offset) below "
                              f"{min(ny, nx)} is needed")
        self._shape = shape
        self._plan = plan

    def grid_shape(self) -> tuple[int, int]:
        """(ny_grid, nx_grid): grid points along y and x."""
        self._check_bound()
        return self._shape

    def grid_index(self, x, y):
        """(j, i) int64 grid indices of positions (x, y): exact for grid points, else nearest."""
        j = np.rint((np.asarray(y, dtype=np.float64) - self.offset) / self.stride)
        i = np.rint((np.asarray(x, dtype=np.float64) - self.offset) / self.stride)
        return j.astype(np.int64), i.astype(np.int64)

    def _span(self, lo: int, hi: int, n: int) -> tuple[int, int]:
        """Grid indices [a, b) whose coordinates lie in [lo, hi), within [0, n)."""
        a = max(0, -(-(lo - self.offset) // self.stride))
        b = min(n, -(-(hi - self.offset) // self.stride))
        return a, max(a, b)

    def count(self, tile) -> int:
        self._check_tile(tile)
        j0, j1 = self._span(tile.y0, tile.y1, self._shape[0])
        i0, i1 = self._span(tile.x0, tile.x1, self._shape[1])
        return (j1 - j0) * (i1 - i0)

    def positions(self, tile, pixels=None) -> TilePositions:
        self._check_tile(tile)
        j0, j1 = self._span(tile.y0, tile.y1, self._shape[0])
        i0, i1 = self._span(tile.x0, tile.x1, self._shape[1])
        gx = self.offset + self.stride * np.arange(i0, i1, dtype=np.float64)
        gy = self.offset + self.stride * np.arange(j0, j1, dtype=np.float64)
        y, x = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
        return TilePositions(x, y, np.full(x.size, -1, np.int64), {})

    def fingerprint(self) -> dict:
        self._check_bound()
        return {"kind": self.kind, "stride": self.stride, "offset": self.offset,
                "grid_shape": list(self._shape)}

    def describe(self) -> str:
        text = f"grid: stride {self.stride} px, offset {self.offset} px"
        if self.bound:
            ny, nx = self._shape
            text += f", {ny:,} x {nx:,} = {ny * nx:,} positions"
        return text
