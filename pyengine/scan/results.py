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
    """Everything a scan learned about one tile's positions (all arrays length n).

    ``band_nan`` holds each band's share of NaN cutout pixels, (n, nband) in the model's
    band order; ``nan_fraction`` is its maximum over bands, the share the flags judge
    (:func:`pyengine.flags.cutout_flags`).  ``band_zero`` (n, nband) is whether the
    position's centre pixel is exactly 0 in each band (a broken stack's symptom, for the
    whole-field warnings of :func:`pyengine.scan.assembly.scan_warnings`).
    ``outputs``: the runner's other per-row outputs the scan kept, name -> (n, ...):
    ``probabilities`` (n, K), and an ensemble's ``class_index``, ``class_agreement``
    and ``score_std`` (NaN, or -1 for integers, where not scored); the class columns
    of the catalog are made from them (:mod:`pyengine.scan.classes`).
    """

    tile: int
    x: np.ndarray  # float64, 0-based mosaic pixels
    y: np.ndarray
    row: np.ndarray  # int64 input catalog row, -1 otherwise
    score: np.ndarray  # float32 (NaN: not scored)
    nan_fraction: np.ndarray  # float32 share of NaN cutout pixels, the maximum over bands
    flags: np.ndarray  # int32 bitmask (pyengine.flags)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    band_nan: np.ndarray | None = None  # float32 (n, nband) NaN share per band
    band_zero: np.ndarray | None = None  # bool (n, nband) centre pixel exactly 0 per band
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.size)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat dict for the resume journal (numeric arrays only)."""
        out = {"x": self.x, "y": self.y, "row": self.row, "score": self.score,
               "nan_fraction": self.nan_fraction, "flags": self.flags}
        if self.band_nan is not None:
            out["band_nan"] = self.band_nan
        if self.band_zero is not None:
            out["band_zero"] = self.band_zero
        out.update({f"col_{k}": v for k, v in self.columns.items()})
        out.update({f"out_{k}": v for k, v in self.outputs.items()})
        return out

    @classmethod
    def from_arrays(cls, tile: int, arrays: dict[str, np.ndarray]) -> TileResult:
        """The inverse of :meth:`to_arrays`."""
        columns = {k[4:]: v for k, v in arrays.items() if k.startswith("col_")}
        outputs = {k[4:]: v for k, v in arrays.items() if k.startswith("out_")}
        return cls(tile, arrays["x"], arrays["y"], arrays["row"], arrays["score"],
                   arrays["nan_fraction"], arrays["flags"], columns,
                   arrays.get("band_nan"), arrays.get("band_zero"), outputs)


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
    #: Whole-field problems, one line each (a blank or all-zero band, every position off
    #: the image): :func:`pyengine.scan.assembly.scan_warnings`.  The CLI prints them.
    warnings: list[str] = field(default_factory=list)

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
