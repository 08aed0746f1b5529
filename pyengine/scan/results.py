"""What a scan produces before its catalog: per-tile results, the run's summary, and
the interruption that leaves a journal for ``--resume``.

Thread safety: plain data; a TileResult is built by the collector and read after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ScanInterrupted", "ScanSummary", "TileResult"]


@dataclass
class TileResult:
    """Everything a scan learned about one tile's positions (all arrays length n)."""

    tile: int
    x: np.ndarray  # float64, 0-based mosaic pixels
    y: np.ndarray
    row: np.ndarray  # int64 input catalog row, -1 otherwise
    score: np.ndarray  # float32 (NaN: not scored)
    nan_fraction: np.ndarray  # float32 share of NaN cutout pixels
    flags: np.ndarray  # int32 bitmask (pyengine.output.catalog)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict for the resume journal (numeric arrays only)."""
        out = {"x": self.x, "y": self.y, "row": self.row, "score": self.score,
               "nan_fraction": self.nan_fraction, "flags": self.flags}
        out.update({f"col_{k}": v for k, v in self.columns.items()})
        return out

    @classmethod
    def from_arrays(cls, tile: int, arrays: dict[str, np.ndarray]) -> TileResult:
        columns = {k[4:]: v for k, v in arrays.items() if k.startswith("col_")}
        return cls(tile, arrays["x"], arrays["y"], arrays["row"], arrays["score"],
                   arrays["nan_fraction"], arrays["flags"], columns)


class ScanInterrupted(Exception):
    """The scan stopped on request; completed tiles are journalled for --resume."""

    def __init__(self, done: int, total: int, journal: Path):
        super().__init__(f"scan interrupted after {done} of {total} tiles; completed tiles are "
                         f"kept in {journal}")
        self.done, self.total, self.journal = done, total, journal


@dataclass
class ScanSummary:
    """A scan's counts.  ``flagged``: rows with any flag; ``off_image``, ``blank`` and
    ``edge``: rows with that flag (a row may have several, so they can add up to more)."""

    positions: int
    scored: int
    candidates: int
    flagged: int
    off_image: int
    tiles: int
    tiles_resumed: int
    wall_s: float
    rate: float  # cutouts scored per second in this run
    outputs: dict
    bad_positions: int = 0  # of off_image: catalog rows with unusable positions (NaN, null, ...)
    blank: int = 0
    edge: int = 0
    journal_rejected: list = field(default_factory=list)  # entries a resume set aside

    def line(self) -> str:
        bad = (f", {self.bad_positions:,} of them with unusable positions"
               if self.bad_positions else "")
        return (f"{self.positions:,} positions, {self.scored:,} scored, {self.candidates:,} "
                f"candidates, {self.flagged:,} flagged (off-image {self.off_image:,}{bad}, "
                f"blank {self.blank:,}, edge {self.edge:,}); "
                f"{self.tiles} tiles ({self.tiles_resumed} resumed) in {self.wall_s:.1f} s, "
                f"{self.rate:,.0f} cutouts/s")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
