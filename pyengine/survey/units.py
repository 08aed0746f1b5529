"""A survey's units of work: (field, tile), and the parts that scan runs of them.

**Units.** Every field touched by the area is cut into the tiles of its own tile plan
(:class:`pyengine.io.tiles.TilePlan`: ``core`` px squares in row order; the count depends
only on the field's shape and the core). The survey's unit list is the touched fields in
manifest order, each field's tiles in tile order. Scanning a unit is a function of the
inputs, the unit and the configuration alone: the field's positions that the field owns
(the ownership rule), that lie in the area, and whose tile is the unit's.

**Parts.** Units are scanned in *parts*: runs of consecutive tiles of one field, each
one :func:`pyengine.scan.run.run_scan` with its own tile journal, written atomically as
``<field>@<first>-<last>.fits`` (tiles first..last, inclusive) in the survey's parts
folder. Which units are done is read from the part files there, whatever grouping
made them, so a run grouped one way (a Dask cluster: several parts per field) resumes
another way (one process: the longest runs left). A part's journal is found again when
the same run is formed again (an interrupted one-process scan resumed by one process).

**Shares** (``--shard I/N``): the contiguous slice ``[I*U//N, (I+1)*U//N)`` of the U units,
so a share is whole tiles of one or two fields and most of its tiles run in one part.

Thread safety: pure functions and frozen values.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Part", "done_units", "field_tiles", "runs", "safe_name", "share", "split_runs",
           "unit_list"]


def safe_name(field_id: str) -> str:
    """A field id as a file name part."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", field_id)


@dataclass(frozen=True, order=True)
class Part:
    """Tiles ``first..last`` (inclusive) of field ``field`` (its index in the manifest)."""

    field: int
    first: int
    last: int

    def __contains__(self, unit) -> bool:
        return unit is not None and unit[0] == self.field and self.first <= unit[1] <= self.last

    @property
    def tiles(self) -> range:
        return range(self.first, self.last + 1)

    def name(self, field_id: str) -> str:
        return f"{safe_name(field_id)}@{self.first:06d}-{self.last:06d}.fits"

    def path(self, folder: Path, field_id: str) -> Path:
        return Path(folder) / self.name(field_id)

    def scoremap(self, folder: Path, field_id: str) -> Path:
        return Path(folder) / (self.name(field_id)[: -len(".fits")] + "_scoremap.fits")


def field_tiles(shape, core: int) -> int:
    """How many tiles a field of ``shape`` (ny, nx) has at tile core ``core``."""
    ny, nx = (int(v) for v in shape)
    return math.ceil(ny / core) * math.ceil(nx / core)


def unit_list(geo, touched, core: int) -> list[tuple[int, int]]:
    """The survey's units (field index, tile index), in order (module docstring)."""
    return [(k, t) for k in touched for t in range(field_tiles(geo.frames[k].shape, core))]


def share(units: list, shard: tuple[int, int] | None) -> list:
    """Shard I of N's contiguous slice of ``units`` (all of them when ``shard`` is None)."""
    if shard is None:
        return list(units)
    i, n = shard
    return units[i * len(units) // n : (i + 1) * len(units) // n]


def done_units(folder: Path, geo, touched) -> dict[tuple[int, int], Part]:
    """The units covered by the part files in ``folder``: unit -> the part whose file
    holds it. Part files of fields not touched, and files that are not parts, are
    ignored."""
    by_name = {safe_name(geo.frames[k].id): k for k in touched}
    done = {}
    for path in sorted(Path(folder).glob("*@*-*.fits")):
        m = re.fullmatch(r"(.+)@(\d{6})-(\d{6})\.fits", path.name)
        if not m or m.group(1) not in by_name:
            continue
        part = Part(by_name[m.group(1)], int(m.group(2)), int(m.group(3)))
        for t in part.tiles:
            done[(part.field, t)] = part
    return done


def runs(units) -> list[Part]:
    """``units`` (in unit order) as the fewest parts: maximal runs of consecutive tiles
    of one field."""
    parts: list[Part] = []
    for k, t in units:
        if parts and parts[-1].field == k and parts[-1].last == t - 1:
            parts[-1] = Part(k, parts[-1].first, t)
        else:
            parts.append(Part(k, t, t))
    return parts


def split_runs(parts: list[Part], size: int) -> list[Part]:
    """Each part cut into parts of at most ``size`` tiles (tasks for a cluster)."""
    size = max(1, int(size))
    return [Part(p.field, s, min(s + size - 1, p.last))
            for p in parts for s in range(p.first, p.last + 1, size)]
