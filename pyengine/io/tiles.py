"""TilePlan: the mosaic cut into tiles, the unit of work of a scan.

A tile owns the positions whose centre pixel (floor(v + 0.5),
:func:`pyengine.coords.centre_pixel`) lies in its *core*: :meth:`Tile.owns`
for one tile, :meth:`TilePlan.assign` (the same rule in a Numba kernel,
:mod:`pyengine.kernels.tiling`) for a whole plan; every other module asks
these two, never compares with a core itself.  The cores
partition the image into ``core`` x ``core`` squares (smaller at the right and
bottom edges).  Reading a tile reads its core plus a *halo* of half a cutout
on every side, so the cutout of every owned position is whole (pixels beyond
the image read as NaN).  Tiles are numbered in file order: row of tiles by
row of tiles from y = 0, left to right within a row, so reading them in
order walks the file forwards.

Thread safety: a TilePlan is immutable; share it freely between threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.errors import ConfigError
from pyengine.kernels.tiling import assign_tiles, group_by_tile

__all__ = ["Tile", "TilePlan"]


@dataclass(frozen=True)
class Tile:
    """One tile: core rows [y0, y1), columns [x0, x1), read with ``halo`` around."""

    index: int
    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    halo: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) to pass to ``Mosaic.read``: the core plus the halo."""
        h = self.halo
        return self.y0 - h, self.y1 + h, self.x0 - h, self.x1 + h

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the core."""
        return self.y1 - self.y0, self.x1 - self.x0

    def owns(self, x, y) -> np.ndarray:
        """True where position (x, y) (0-based; scalars or arrays) is this tile's: its
        centre pixel lies in the core.  Not-finite positions belong to no tile.

        Agrees with :meth:`TilePlan.assign` position by position (tested on .5 borders).
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            # Not finite or beyond any image: no tile's, and keeps the int64 cast defined.
            ok = (np.abs(x) < 2.0**62) & (np.abs(y) < 2.0**62)
        cx, cy = centre_pixel(np.where(ok, x, 0.0)), centre_pixel(np.where(ok, y, 0.0))
        return ok & (self.x0 <= cx) & (cx < self.x1) & (self.y0 <= cy) & (cy < self.y1)


class TilePlan:
    """Tiles of ``core`` x ``core`` pixels covering an image of ``shape`` (ny, nx)."""

    def __init__(self, shape, core: int = 2048, halo: int = 32):
        ny, nx = (int(v) for v in shape)
        if ny < 1 or nx < 1:
            raise ConfigError(f"TilePlan: image shape {shape} is empty; need at least 1 x 1")
        if not 1 <= int(core) <= 1 << 20:
            raise ConfigError(f"TilePlan: core size {core} is out of range; accepted: 1..1048576")
        if not 0 <= int(halo) <= 1 << 16:
            raise ConfigError(f"TilePlan: halo {halo} is out of range; accepted: 0..65536")
        self.shape = (ny, nx)
        self.core = int(core)
        self.halo = int(halo)
        self.nrows = -(-ny // self.core)
        self.ncols = -(-nx // self.core)

    @classmethod
    def for_cutout(cls, shape, cutout: int = 64, core: int = 2048) -> TilePlan:
        """A plan whose halo (half a cutout) keeps every ``cutout`` x ``cutout`` window whole."""
        if cutout < 1:
            raise ConfigError(f"TilePlan: cutout size {cutout} must be >= 1")
        return cls(shape, core=core, halo=cutout // 2)

    def __len__(self) -> int:
        return self.nrows * self.ncols

    def __getitem__(self, index: int) -> Tile:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"tile {index} out of range for {n} tiles")
        index %= n
        row, col = divmod(index, self.ncols)
        ny, nx = self.shape
        return Tile(
            index=index, row=row, col=col,
            y0=row * self.core, y1=min((row + 1) * self.core, ny),
            x0=col * self.core, x1=min((col + 1) * self.core, nx),
            halo=self.halo,
        )

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        return (f"TilePlan(shape={self.shape}, core={self.core}, halo={self.halo}, "
                f"tiles={self.nrows} x {self.ncols})")

    def assign(self, x, y) -> np.ndarray:
        """Index of the tile owning each position (x, y); -1 for positions off the image."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        y = np.ascontiguousarray(y, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ConfigError(f"TilePlan.assign: {x.size} x values but {y.size} y values")
        ny, nx = self.shape
        return assign_tiles(x, y, ny, nx, self.core, self.core, self.ncols)

    def group(self, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions grouped by owning tile, in input order within a tile.

        Returns ``(tile, order, starts)``: the owner of each position, and a
        stable ordering such that tile t owns ``order[starts[t]:starts[t + 1]]``;
        off-image positions are ``order[starts[-2]:starts[-1]]``.
        """
        tile = self.assign(x, y)
        order, starts = group_by_tile(tile, len(self))
        return tile, order, starts
