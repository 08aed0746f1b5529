"""A field's share of a survey's positions: :class:`OwnedSource` keeps, of any source's
positions in one field, those the field owns (:mod:`pyengine.survey.geometry`'s rule)
and that lie in the area (``--within``, ``--region``).

Ownership is decided on sky positions. For a catalog with RA/Dec columns these are the
catalog's own numbers (:meth:`pyengine.sources.catalog.CatalogSource.sky`), so every field
decides on the same values and a source on a boundary is scored exactly once. Otherwise
(a grid, pixel catalogs, detections) the position goes from the field's pixels to the sky
through its WCS. A grid has its own points in each field, and each field keeps those in
the part of the sky it owns.

Thread safety: like the source it wraps (bound once, then read by the scan's threads).
"""

from __future__ import annotations

import numpy as np

from pyengine.sources.base import Source, TilePositions

__all__ = ["INPUT_ROW", "OwnedSource"]

#: The column carrying a catalog position's input row through a field's catalog, so the
#: survey's catalog can be put in input order (dropped from it).
INPUT_ROW = "survey_input_row"


class OwnedSource(Source):
    """The positions of ``inner`` that field ``index`` of ``geometry`` owns, in the area."""

    def __init__(self, inner: Source, geometry, index: int, cone=None, regions=None, *,
                 report_unowned: bool = False, margin: float = 0.0, tiles: range | None = None):
        """``tiles`` (a range of tile indices of the field's plan): only the positions of
        those tiles (a part of the survey's units, :mod:`pyengine.survey.units`); the
        other tiles own none and are not read.  ``report_unowned`` (one part of a
        survey): this part's ``off_image`` holds
        the catalog rows in the area that no field covers, or whose positions are
        unusable, so that they appear once in the survey's catalog.  ``margin`` (arcsec,
        for measured positions: detections): also keep the positions within ``margin``
        of being owned, for :func:`pyengine.survey.reconcile.reconcile` to match."""
        self.inner, self.geometry, self.index = inner, geometry, int(index)
        self.cone, self.regions = cone, list(regions or ())
        self.report_unowned = bool(report_unowned)
        self.margin = float(margin)
        self.tiles = None if tiles is None else range(int(tiles.start), int(tiles.stop))
        self.outside_area = 0
        self.kind, self.needs_pixels = inner.kind, inner.needs_pixels
        self._plan = self._mosaic = None
        self._counts: dict[int, int] = {}

    def __getattr__(self, name):
        # what only this kind of source has (a grid's stride and offset for its score map)
        if name.startswith("_") or name in ("inner",):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def column_dtypes(self):
        extra = {INPUT_ROW: np.dtype(np.int64)} if self.kind == "catalog" else {}
        return {**self.inner.column_dtypes, **extra}

    @property
    def spec(self):
        return getattr(self.inner, "spec", None)

    def bind(self, mosaic, plan) -> None:
        from pyengine.errors import ConfigError

        self.inner.bind(mosaic, plan)
        self._mosaic, self._plan = mosaic, plan
        if self.kind == "catalog" and self.inner.sky(np.zeros(0, np.int64)) is None:
            raise ConfigError(f"{self.inner.spec}: a survey's catalog needs RA/Dec columns "
                              "(pixel positions mean nothing across fields)")

    def _with_row(self, p: TilePositions) -> TilePositions:
        if self.kind != "catalog":
            return p
        return TilePositions(p.x, p.y, p.row, {**p.columns, INPUT_ROW: p.row.astype(np.int64)})

    def _sky(self, positions: TilePositions) -> tuple[np.ndarray, np.ndarray]:
        sky = getattr(self.inner, "sky", None)
        got = sky(positions.row) if sky is not None and len(positions) else None
        if got is not None:
            return got
        ra, dec = self._mosaic.wcs.pixel_to_world_values(positions.x, positions.y)
        return np.asarray(ra, np.float64) % 360.0, np.asarray(dec, np.float64)

    def keep(self, positions: TilePositions) -> np.ndarray:
        """Which of ``positions`` this field owns and the area holds."""
        if not len(positions):
            return np.zeros(0, bool)
        ra, dec = self._sky(positions)
        if self.margin > 0:
            d = self.geometry.edge_distances(ra, dec)
            owned = (d[self.index] > 0) & (d[self.index] >= d.max(axis=0) - self.margin)
        else:
            owned = self.geometry.owner(ra, dec) == self.index
        if self.cone is not None or self.regions:
            owned &= self.geometry.inside(ra, dec, self.cone, self.regions,
                                          frame=self.geometry.frames[self.index])
        return owned

    def count(self, tile) -> int | None:
        if self.tiles is not None and tile.index not in self.tiles:
            return 0
        return self._owned_count(tile)

    def _owned_count(self, tile) -> int | None:
        """The field's positions in ``tile`` (whatever ``tiles`` says); None for sources
        that need the pixels to know."""
        if self.needs_pixels:
            return None
        if tile.index not in self._counts:
            p = self.inner.positions(tile, None)
            self._counts[tile.index] = int(np.count_nonzero(self.keep(p)))
        return self._counts[tile.index]

    def run_positions(self) -> int | None:
        """The field's position count over all its tiles (None: not known before the
        pixels are read), whichever tiles this part holds: the scan's batch size is cut to
        it (:class:`pyengine.scan.pipeline.Pipeline`), so every part of a field runs
        batches of one size, and scores do not depend on how the field was cut."""
        counts = [self._owned_count(tile) for tile in self._plan]
        return None if any(c is None for c in counts) else int(sum(counts))

    def positions(self, tile, pixels) -> TilePositions:
        if self.tiles is not None and tile.index not in self.tiles:
            return TilePositions.empty(self.column_dtypes)
        p = self.inner.positions(tile, pixels)
        keep = self.keep(p)
        if not keep.all():
            p = TilePositions(p.x[keep], p.y[keep], p.row[keep],
                              {k: v[keep] for k, v in p.columns.items()})
        return self._with_row(p)

    def off_image(self) -> TilePositions:
        """Catalog rows in the area that no field covers (or with unusable positions), for
        the one field that reports them; nothing otherwise."""
        self._check_bound()
        if not (self.report_unowned and self.kind == "catalog"):
            return TilePositions.empty(self.column_dtypes)
        rows = np.arange(self.inner.n_rows)
        ra, dec = self.inner.sky(rows)
        finite = np.isfinite(ra) & np.isfinite(dec)
        inside = np.ones(rows.size, bool)
        owner = np.full(rows.size, -1)
        if finite.any():
            if self.cone is not None or self.regions:
                inside[finite] = self.geometry.inside(ra[finite], dec[finite], self.cone,
                                                      self.regions,
                                                      frame=self.geometry.frames[self.index])
            owner[finite] = self.geometry.owner(ra[finite], dec[finite])
        self.outside_area = int(np.sum(finite & ~inside))
        return self._with_row(self.inner.take(rows[inside & ((owner < 0) | ~finite)]))

    @property
    def n_bad_positions(self) -> int:
        return 0

    def fingerprint(self) -> dict:
        frames = self.geometry.frames
        return {**self.inner.fingerprint(),
                "survey": {"field": frames[self.index].id, "fields": [f.id for f in frames],
                           "cone": None if self.cone is None else
                           [self.cone.ra, self.cone.dec, self.cone.radius],
                           "regions": [str(r) for r in self.regions],
                           "tiles": None if self.tiles is None else
                           [self.tiles.start, self.tiles.stop - 1]}}

    def passthrough(self):
        return self.inner.passthrough()

    def describe(self) -> str:
        tiles = "" if self.tiles is None else \
            f", tiles {self.tiles.start}-{self.tiles.stop - 1}"
        return (f"{self.inner.describe()}; owned by field "
                f"{self.geometry.frames[self.index].id}{tiles}")
