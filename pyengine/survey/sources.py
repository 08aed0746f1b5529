"""A field's share of a survey's positions: :class:`OwnedSource` keeps, of any source's
positions in one field, those the field owns (:mod:`pyengine.survey.geometry`'s rule)
and that lie in the area (``--within``, ``--region``); :class:`FieldCatalogs` makes each
field's source from its own catalog (the manifest's ``catalog`` column).

Ownership is decided on sky positions. For a catalog with RA/Dec columns these are the
catalog's own numbers (:meth:`pyengine.sources.catalog.CatalogSource.sky`), so every field
decides on the same values and a source on a boundary is scored exactly once. Otherwise
(a grid, pixel catalogs, detections) the position goes from the field's pixels to the sky
through its WCS. A grid has its own points in each field, and each field keeps those in
the part of the sky it owns.

**Per-field catalogs** (MegaPipe-style: SExtractor run on each pointing) hold an object
in an overlap once per field that saw it, each time at that field's measured position.
Like detections (kind :data:`MEASURED`), each field keeps its rows within a margin of
being owned, and :func:`pyengine.survey.reconcile.reconcile` keeps one row per object
after the join: the owner's, or the only field's that listed it. Positions are each
catalog's RA/Dec (their pixels are each on its own field's grid); every field reports
its own catalog's rows that no field holds.

Thread safety: like the source it wraps (bound once, then read by the scan's threads).
"""

from __future__ import annotations

import numpy as np

from pyengine.sources.base import Source, TilePositions

__all__ = ["FIELD_CATALOGS", "INPUT_ROW", "MEASURED", "FieldCatalogs", "OwnedSource",
           "field_source", "source_kind"]

#: The column carrying a catalog position's input row through a field's catalog, so the
#: survey's catalog can be put in input order (dropped from it).
INPUT_ROW = "survey_input_row"
#: The source kind of a survey scan whose fields bring their own catalogs (a shard's
#: ``SRCKIND``), and the kinds whose positions each field measures for itself.
FIELD_CATALOGS = "field-catalogs"
MEASURED = ("detect", FIELD_CATALOGS)


class FieldCatalogs:
    """The ``make_source`` of a survey scan in which each field's positions are the rows
    of its own catalog (:attr:`pyengine.survey.manifest.Field.catalog`): called with a
    field, a new unbound :class:`~pyengine.sources.catalog.CatalogSource` of its catalog.
    ``ra_col``, ``dec_col``, ``mag_col``, ``mag_limit`` apply to every field's catalog.
    Pixel columns are not taken: each catalog's pixels are on its own field's grid, and
    ownership is decided on the sky.  Picklable (Dask tasks)."""

    kind = FIELD_CATALOGS

    def __init__(self, *, manifest=None, ra_col=None, dec_col=None, x_col=None, y_col=None,
                 mag_col=None, mag_limit=None):
        from pyengine.errors import ConfigError

        if x_col is not None or y_col is not None:
            raise ConfigError("--x-col/--y-col do not apply to a survey's per-field catalogs: "
                              "their RA/Dec columns are used (--ra-col/--dec-col name them)")
        self.manifest = manifest
        self.options = {"ra_col": ra_col, "dec_col": dec_col, "mag_col": mag_col,
                        "mag_limit": mag_limit}

    def __call__(self, field):
        from pyengine.sources.catalog import CatalogSource

        return CatalogSource(self._spec(field), **self.options)

    def _where(self, field) -> str:
        return f"{self.manifest or 'survey'}: field {field.id!r}"

    def _spec(self, field) -> str:
        from pyengine.survey.manifest import SurveyError

        if not field.catalog:
            raise SurveyError(f"{self._where(field)} has no catalog (its catalog column is "
                              "empty); give every field scanned its own, or --catalog FILE "
                              "(one for the whole region), or --grid STRIDE")
        return field.catalog

    def check(self, field, wcs) -> None:
        """Refuse, in one line naming the field and the file, a catalog that is missing,
        unreadable, empty, without RA/Dec columns (or the magnitude column a limit needs),
        from its first row (``wcs``: the field's)."""
        from pyengine.errors import CatalogError
        from pyengine.io.catalog import catalog_positions, read_catalog_head
        from pyengine.survey.manifest import SurveyError

        source = self(field)
        try:
            head = read_catalog_head(source.spec)
            source.check_columns(head)
            pos = catalog_positions(head, wcs, where=source.spec, ra_col=source.ra_col,
                                    dec_col=source.dec_col, refuse_unusable=False)
            if pos.form != "sky":
                raise CatalogError(f"{source.spec}: a survey's catalogs need RA/Dec columns "
                                   f"(found only pixels {', '.join(pos.columns)}, which mean "
                                   "nothing across fields)")
        except CatalogError as exc:
            raise SurveyError(f"{self._where(field)}: {exc}") from None

    def identity(self, field) -> dict:
        """The catalog's spec and content identity (:func:`pyengine.hashing.file_identity`),
        for the survey scan's resume record."""
        from pyengine.hashing import file_identity
        from pyengine.io.fitsfile import parse_spec
        from pyengine.survey.manifest import SurveyError

        spec = self._spec(field)
        try:
            return {"spec": spec, **file_identity(parse_spec(spec)[0])}
        except OSError as exc:
            raise SurveyError(f"{self._where(field)}: {spec}: cannot read the catalog file "
                              f"({exc.strerror})") from None


def source_kind(make_source) -> str:
    """The kind of the sources ``make_source`` makes: "catalog", "grid", "detect", or
    :data:`FIELD_CATALOGS`."""
    return FIELD_CATALOGS if isinstance(make_source, FieldCatalogs) else make_source().kind


def field_source(make_source, field) -> Source:
    """A new, unbound source for ``field``: its own catalog's (:class:`FieldCatalogs`), or
    ``make_source()`` (the same source, one region catalog, a grid, detection)."""
    return make_source(field) if isinstance(make_source, FieldCatalogs) else make_source()


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
        self._empty: dict[int, bool] = {}

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
        if self.needs_pixels and self._surely_empty(tile):
            return 0  # a detection tile wholly in other fields' sky, or outside the cone
        return self._owned_count(tile)

    def _surely_empty(self, tile) -> bool:
        """Whether no position of ``tile``'s core can be kept, proved on a 9 x 9 grid of
        sample points: every point of the core lies within ``r`` arcsec of one, and the
        edge distances are 1-Lipschitz on the sky (1.1 allows for the projection), so a
        sample where another field is ahead by more than ``margin + 2 r``, or that lies
        more than ``r`` outside the field or the cone, rules out its whole neighbourhood.
        Sky regions are not used here (only their exact test, position by position)."""
        if tile.index in self._empty:
            return self._empty[tile.index]
        frame = self.geometry.frames[self.index]
        xs = np.linspace(tile.x0 - 0.5, tile.x1 - 0.5, 9)
        ys = np.linspace(tile.y0 - 0.5, tile.y1 - 0.5, 9)
        gx, gy = np.meshgrid(xs, ys)
        ra, dec = frame.wcs.pixel_to_world_values(gx.ravel(), gy.ravel())
        r = 0.5 * np.hypot(xs[1] - xs[0], ys[1] - ys[0]) * frame.scale * 1.1
        d = self.geometry.edge_distances(np.asarray(ra) % 360.0, dec)
        own = d[self.index]
        others = np.delete(d, self.index, axis=0)
        ahead = others.max(axis=0) - own if len(others) else np.full(own.shape, -np.inf)
        out = (ahead > self.margin + 2 * r) | (own < -r)
        if self.cone is not None:
            out |= (self.cone.separation(np.asarray(ra) % 360.0, dec) - self.cone.radius) \
                * 3600.0 > r
        self._empty[tile.index] = empty = bool(out.all())
        return empty

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
