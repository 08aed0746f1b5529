"""The position-source interface (:class:`Source`) and one tile's positions
(:class:`TilePositions`); the contract is in :mod:`pyengine.sources`.

Thread safety: see :mod:`pyengine.sources`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SOURCE_KINDS", "Source", "TilePositions", "tiles_to_do"]

SOURCE_KINDS = ("catalog", "detect", "grid")


# -- positions of one tile ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TilePositions:
    """Positions owned by one tile: 0-based pixel (x, y), catalog row, extra columns."""

    x: np.ndarray
    y: np.ndarray
    row: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.x)
        lengths = [len(self.y), len(self.row), *(len(v) for v in self.columns.values())]
        if any(m != n for m in lengths):
            raise ValueError(f"TilePositions: arrays of unequal length {[n, *lengths]}")

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def empty(cls, columns=None) -> TilePositions:
        """No positions; ``columns`` maps (or lists pairs of) extra column name -> dtype."""
        items = columns.items() if isinstance(columns, dict) else (columns or ())
        return cls(np.empty(0, np.float64), np.empty(0, np.float64), np.empty(0, np.int64),
                   {name: np.empty(0, dtype) for name, dtype in items})


# -- the interface -----------------------------------------------------------------------


class Source(ABC):
    """Where the positions to classify come from.  See the module docstring."""

    kind: str = ""
    needs_pixels: bool = False

    @property
    def column_dtypes(self) -> dict[str, np.dtype]:
        """Extra per-position columns every ``positions`` result carries: name -> dtype."""
        return {}

    @property
    def bound(self) -> bool:
        return getattr(self, "_plan", None) is not None

    @abstractmethod
    def bind(self, mosaic, plan) -> None:
        """Read, convert and check the inputs for ``mosaic`` cut by ``plan``; once, before scanning."""

    def count(self, tile) -> int | None:
        """Positions ``tile`` owns when known without its pixels, else None."""
        return None

    @abstractmethod
    def positions(self, tile, pixels: np.ndarray | None) -> TilePositions:
        """Positions whose centre pixel lies in ``tile``'s core, in a deterministic order.

        ``pixels`` is ``mosaic.read(*tile.window)`` when ``needs_pixels``, else None.
        """

    def off_image(self) -> TilePositions:
        """Positions off the image or not finite (catalogs); empty for other kinds."""
        self._check_bound()
        return TilePositions.empty(self.column_dtypes)

    @property
    def n_bad_positions(self) -> int:
        """Positions whose input values are unusable (catalogs: non-finite, null or out of
        range; flagged off the image); 0 for other kinds."""
        return 0

    @abstractmethod
    def fingerprint(self) -> dict:
        """JSON-serialisable description of everything this source adds to the positions."""

    def passthrough(self):
        """Catalog rows that are scanned (``TilePositions.row`` indexes them); None otherwise."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """One line for logs."""

    # helpers for subclasses
    def _check_bound(self) -> None:
        if not self.bound:
            raise RuntimeError(f"{type(self).__name__}: call bind(mosaic, plan) first")

    def _check_tile(self, tile) -> None:
        self._check_bound()
        plan = self._plan
        if not 0 <= tile.index < len(plan) or plan[tile.index] != tile:
            raise ValueError(f"{type(self).__name__}: {tile} is not a tile of the bound {plan}")

    @staticmethod
    def _check_shapes(mosaic, plan) -> None:
        if tuple(mosaic.shape) != tuple(plan.shape):
            raise ValueError(f"tile plan shape {plan.shape} differs from the mosaic's "
                             f"{mosaic.shape}")


def tiles_to_do(plan, source: Source, skip=()) -> list:
    """The tiles of ``plan`` a scan still has to do: not in ``skip`` (tile indices already
    done) and not known to own no position (``source.count`` 0; None, unknown until the
    pixels are read, is to do).  The one rule the engine's reader and run_scan's
    progress totals and completeness check share."""
    skip = frozenset(int(t) for t in skip)
    return [tile for tile in plan if tile.index not in skip and source.count(tile) != 0]
