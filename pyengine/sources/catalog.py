"""Catalog positions: rows of an input catalog, optionally cut on magnitude.

Thread safety: see :mod:`pyengine.sources`.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from pyengine.errors import CatalogError, ConfigError
from pyengine.hashing import file_sha256
from pyengine.sources.base import Source, TilePositions

__all__ = ["MAG_NAMES", "CatalogSource"]

# Magnitude columns tried (case-insensitively) when mag_limit is set without mag_col.
MAG_NAMES = ("mag", "mag_i", "imag", "i_mag", "magi", "mag_g", "gmag", "g_mag", "magg",
             "mag_auto", "mag_best")



class CatalogSource(Source):
    """Rows of a catalog file (FITS table or FITS_LDAC and SExtractor ASCII, recognised by
    content; ECSV, CSV, Parquet by suffix; ``path[ext]`` allowed).

    Positions come from RA/Dec (degrees) through the mosaic's WCS or from x/y
    pixel columns, found case-insensitively or named here (naming both forms,
    or finding neither, is refused).  A catalog with both (SExtractor's
    ``X_IMAGE, Y_IMAGE, ALPHA_J2000, DELTA_J2000``) is scanned from its RA/Dec
    columns, and :meth:`describe` names the columns not used; SExtractor's
    pixel columns are FITS 1-based and are converted when named
    (:mod:`pyengine.io.catalog` gives both rules).  Rows whose position is unusable (NaN,
    infinite, null, out of range; see :mod:`pyengine.io.catalog`) are kept and
    returned by ``off_image`` (so they are flagged, not scored), and counted in
    :attr:`n_bad_positions`; a catalog with no usable row is refused.
    ``mag_limit`` keeps the rows whose magnitude column (``mag_col``, or the one
    obvious column among :data:`MAG_NAMES`) is finite and <= the limit.
    """

    kind = "catalog"
    needs_pixels = False

    def __init__(self, path, *, ra_col=None, dec_col=None, x_col=None, y_col=None,
                 mag_col=None, mag_limit=None):
        self.spec = os.fspath(path)
        self.ra_col, self.dec_col, self.x_col, self.y_col = ra_col, dec_col, x_col, y_col
        self.mag_col = mag_col
        if mag_limit is not None:
            if (isinstance(mag_limit, bool) or not isinstance(mag_limit, numbers.Real)
                    or not math.isfinite(mag_limit)):
                raise ConfigError(f"{self.spec}: magnitude limit {mag_limit!r} is not a finite "
                                  "number; give the faintest magnitude to keep, e.g. 21")
            mag_limit = float(mag_limit)
        self.mag_limit = mag_limit
        self._plan = None

    def _mag_column(self, table) -> str | None:
        from pyengine.io.catalog import find_column

        if self.mag_col is not None:
            return find_column(table, (), given=self.mag_col, where=self.spec, what="magnitudes")
        if self.mag_limit is None:
            return None
        found = [name for name in table.colnames if name.lower() in MAG_NAMES]
        if not found:
            raise CatalogError(
                f"{self.spec}: a magnitude limit needs a magnitude column and none of "
                f"{', '.join(MAG_NAMES)} is present; name it with --mag-col; columns: "
                f"{', '.join(table.colnames)}")
        if len(found) > 1:
            raise CatalogError(f"{self.spec}: several magnitude columns ({', '.join(found)}); "
                               "choose the one to cut on with --mag-col")
        return found[0]

    def check_columns(self, table) -> None:
        """Refuse ``table`` (the catalog, or its first rows) lacking the magnitude column
        this source needs; the position columns are :func:`catalog_positions`' to check."""
        self._mag_column(table)

    def bind(self, mosaic, plan) -> None:
        from pyengine.io.catalog import (
            UNUSABLE,
            catalog_positions,
            numeric_column,
            read_catalog,
        )
        from pyengine.io.fitsfile import parse_spec

        self._check_shapes(mosaic, plan)
        path, ext = parse_spec(self.spec)
        if not path.exists():
            raise CatalogError(f"{path}: no such catalog file")
        # Hash before reading: a file rewritten in between makes the fingerprint stale,
        # never silently newer than the rows scanned.
        try:
            size, sha = path.stat().st_size, file_sha256(path)
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read the catalog file ({exc.strerror})") from None
        table = read_catalog(self.spec)
        n_input = len(table)
        # Positions of every input row first, so messages name the user's rows (1-based).
        pos = catalog_positions(table, mosaic.wcs, where=self.spec, ra_col=self.ra_col,
                                dec_col=self.dec_col, x_col=self.x_col, y_col=self.y_col)
        mag_col = self._mag_column(table)
        if mag_col is not None and self.mag_limit is not None:
            mag = numeric_column(table, mag_col, str(self.spec),
                                 "numbers are needed for the magnitude cut")
            with np.errstate(invalid="ignore"):
                keep = np.isfinite(mag) & (mag <= self.mag_limit)
            if not keep.any():
                finite = mag[np.isfinite(mag)]
                have = (f"its finite values span {finite.min():g} .. {finite.max():g}"
                        if finite.size else "it has no finite values")
                raise CatalogError(
                    f"{self.spec}: no row has {mag_col} <= {self.mag_limit:g} ({have}); "
                    "raise --mag-limit or choose another --mag-col")
            if not pos.usable[keep].any():
                n = int(keep.sum())
                rows = "the one row" if n == 1 else f"all {n:,} rows"
                raise CatalogError(
                    f"{self.spec}: no usable position in columns {', '.join(pos.columns)} "
                    f"among the rows with {mag_col} <= {self.mag_limit:g}: {rows} with "
                    f"{mag_col} <= {self.mag_limit:g} {'has' if n == 1 else 'have'} "
                    f"{UNUSABLE}")
            if not keep.all():
                table = table[keep]
                pos = pos.take(keep)
        _, order, starts = plan.group(pos.x, pos.y)
        order.flags.writeable = False
        self._x, self._y = pos.x, pos.y
        self._order, self._starts = order, starts
        self._table = table
        self._n_input = n_input
        self._n_unusable = pos.n_unusable
        self._form, self._columns, self._positions = pos.form, pos.columns, pos.describe()
        self._mag_used = mag_col if self.mag_limit is not None else None
        self._file = {"path": str(path.resolve()), "ext": ext, "size": size, "sha256": sha}
        self._plan = plan

    def count(self, tile) -> int:
        self._check_tile(tile)
        return int(self._starts[tile.index + 1] - self._starts[tile.index])

    def _take(self, rows: np.ndarray) -> TilePositions:
        return TilePositions(self._x[rows], self._y[rows], rows.copy(), {})

    def take(self, rows: np.ndarray) -> TilePositions:
        """The positions of catalog ``rows`` (indices into :meth:`passthrough`)."""
        self._check_bound()
        return self._take(np.asarray(rows, np.int64))

    @property
    def n_rows(self) -> int:
        """Rows scanned (after the magnitude cut)."""
        self._check_bound()
        return len(self._table)

    def positions(self, tile, pixels=None) -> TilePositions:
        self._check_tile(tile)
        return self._take(self._order[self._starts[tile.index]:self._starts[tile.index + 1]])

    def off_image(self) -> TilePositions:
        self._check_bound()
        n = len(self._plan)
        return self._take(self._order[self._starts[n]:self._starts[n + 1]])

    def fingerprint(self) -> dict:
        self._check_bound()
        return {"kind": self.kind, "file": dict(self._file), "form": self._form,
                "columns": list(self._columns), "mag_col": self._mag_used,
                "mag_limit": self.mag_limit}

    def passthrough(self):
        self._check_bound()
        return self._table

    def sky(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(ra, dec) in degrees of catalog ``rows`` as the catalog gives them (None for a
        catalog of pixel positions): what a survey's ownership rule reads, so that every
        field decides on the same numbers."""
        self._check_bound()
        if self._form != "sky":
            return None
        if getattr(self, "_sky", None) is None:
            from pyengine.io.catalog import numeric_column

            ra, dec = (numeric_column(self._table, c, str(self.spec), "numbers are needed")
                       for c in self._columns[:2])
            self._sky = (np.asarray(ra, np.float64), np.asarray(dec, np.float64))
        return self._sky[0][rows], self._sky[1][rows]

    @property
    def n_off_image(self) -> int:
        self._check_bound()
        n = len(self._plan)
        return int(self._starts[n + 1] - self._starts[n])

    @property
    def n_bad_positions(self) -> int:
        """Rows scanned whose catalog position is unusable (non-finite, null or out of range):
        kept in the catalog, flagged off the image, not scored."""
        self._check_bound()
        return self._n_unusable

    def describe(self) -> str:
        name = Path(self.spec).name
        if not self.bound:
            return f"catalog {name} (not read yet)"
        kept = len(self._table)
        text = f"catalog {name}: {kept:,} positions ({self._positions})"
        if self._mag_used is not None:
            text += (f"; {kept:,} of {self._n_input:,} rows with {self._mag_used} <= "
                     f"{self.mag_limit:g}")
        off = self.n_off_image
        if off:
            text += f"; {off:,} off the image"
        if self._n_unusable:
            text += f" ({self._n_unusable:,} of them with unusable positions)"
        return text
