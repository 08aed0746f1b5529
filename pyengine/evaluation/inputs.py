"""What ``pyengine evaluate`` reads: a scan's catalog with its metadata, a truth catalog
with its labels, and the scanned area.

**The catalog** is any of the four formats a scan writes (:mod:`pyengine.output.catalog`),
read with :func:`pyengine.io.catalog.read_catalog`; its metadata come from the FITS header,
the ECSV header, the Parquet schema (``pyengine.meta``) or a CSV's ``PATH.meta.json``. It
needs ``ra``, ``dec`` and ``score``; ``flags`` and ``is_candidate`` are used when present.

**The truth** is a table (FITS, FITS_LDAC, ECSV, CSV, Parquet) with RA/Dec in degrees
(columns found as scan catalogs' are, or ``--truth-ra-col/--truth-dec-col``) and a label
column (``label``, ``class``, ``labels``, ``type``, or ``--label-col``). Labels become text
as training reads them (:func:`pyengine.training.data.label_strings`), and the positive
values are chosen as training chooses them (:func:`pyengine.training.data.plan_classes`:
``--positive`` values, by default the first of ``cluster``, ``1``, ``True`` present). A
truth of one class is accepted when that class is positive (a cluster catalog): then every
unmatched catalog row is a non-cluster. Rows without a label are left out.

**The area** (:func:`scan_area`) decides which truth objects a scan could have found:

- ``footprint``: the images the scan read: the survey manifest named by the ``SURVEY``
  key, else the band files ``BANDFIL1..n`` of a one-field scan (paths as written, else
  relative to the catalog's folder); a position is inside when some field's image holds it (:meth:`pyengine.survey.geometry.SurveyGeometry.owner`).
- ``hull``: the convex hull of the catalog's positions in the tangent plane at their
  centre, widened by the match radius (a truth object within the radius of a catalog row
  is always inside).
- ``auto`` (default): the footprint when the files are readable, else the hull (the
  result's ``area.note`` says why).

``within`` (a :class:`pyengine.survey.geometry.Cone`) narrows either: a survey scanned
``--within`` a circle records no circle, so evaluate it with the same ``--within``.

Thread safety: pure functions that read files.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.errors import CatalogError, ConfigError, PyEngineError

__all__ = ["AREA_MODES", "Area", "CatalogData", "TruthData", "read_scan_catalog",
           "read_truth", "scan_area"]

AREA_MODES = ("auto", "footprint", "hull")


@dataclass
class CatalogData:
    """The scan catalog's columns as arrays, and its metadata (upper-case keys)."""

    where: str
    ra: np.ndarray
    dec: np.ndarray
    score: np.ndarray  # as stored (float32 for a scan's FITS catalog); NaN: not scored
    flags: np.ndarray  # int64; 0 where the catalog has no flags column
    is_candidate: np.ndarray | None
    meta: dict
    path: Path | None = None  # the file read (None: a Table)

    def __len__(self) -> int:
        return int(self.ra.size)


@dataclass
class TruthData:
    """The truth catalog's positions, labels and optional magnitude and size."""

    where: str
    table: object  # the astropy Table
    ra: np.ndarray
    dec: np.ndarray
    positive: np.ndarray  # bool
    labelled: np.ndarray  # bool: rows with a label
    label_col: str
    positive_values: tuple[str, ...]
    values: tuple[str, ...]  # every label value present


def _meta_of(path: Path, fmt: str, table) -> dict:
    meta = dict(table.meta)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        raw = pq.read_schema(path).metadata or {}
        text = raw.get(b"pyengine.meta")
        if text:
            meta.update(json.loads(text))
    elif fmt == "ascii.csv":
        from pyengine.output.catalog import catalog_sidecar

        side = catalog_sidecar(path)  # PATH.meta.json
        # a missing or damaged sidecar: the columns still hold (a missing THRESH is said later)
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            meta.update(json.loads(side.read_text()).get("meta", {}))
    return {str(k).upper(): v for k, v in meta.items() if not isinstance(v, dict | list)}


def _column(table, name: str, where: str, what: str, need: bool = True):
    from pyengine.io.catalog import numeric_column

    lower = {c.lower(): c for c in table.colnames}
    if name not in lower:
        if need:
            raise CatalogError(f"{where}: no {name!r} column ({what}); a pyengine scan catalog "
                               f"(columns ra, dec, score, ...) is needed; columns: "
                               f"{', '.join(table.colnames)}")
        return None
    return numeric_column(table, lower[name], where, need="numbers are needed")


def _booleans(col) -> np.ndarray:
    """A boolean column as bool: True/False text (a CSV's) or numbers 0/1; masked False."""
    data = np.asarray(col)
    missing = np.ma.getmaskarray(col)
    if data.dtype.kind in "US":
        text = np.char.lower(np.char.strip(data.astype(str)))
        out = np.isin(text, ("true", "t", "1", "yes"))
    else:
        out = data.astype(bool)
    return out & ~missing


def read_scan_catalog(catalog) -> CatalogData:
    """A scan catalog (a path, or an astropy Table with its ``meta``) as arrays."""
    from astropy.table import Table

    path = None
    if isinstance(catalog, Table):
        table, where, meta = catalog, "catalog", {str(k).upper(): v for k, v in
                                                 catalog.meta.items()}
    else:
        from pyengine.io.catalog import catalog_format, read_catalog
        from pyengine.io.fitsfile import parse_spec

        where = str(catalog)
        table = read_catalog(catalog)
        path = parse_spec(catalog)[0]
        meta = _meta_of(path, catalog_format(path), table)
    ra = _column(table, "ra", where, "positions")
    dec = _column(table, "dec", where, "positions")
    score = _column(table, "score", where, "the model's scores")
    stored = table[next(c for c in table.colnames if c.lower() == "score")]
    if stored.dtype.kind == "f":  # keep float32: the scan compared float32 scores
        score = np.where(np.ma.getmaskarray(stored), np.nan, np.asarray(stored))
    flags = _column(table, "flags", where, "flags", need=False)
    flags = (np.zeros(len(table), np.int64) if flags is None
             else np.nan_to_num(flags, nan=0).astype(np.int64))
    cand = None
    names = {c.lower(): c for c in table.colnames}
    if "is_candidate" in names:
        cand = _booleans(table[names["is_candidate"]])
    if not np.any(np.isfinite(ra) & np.isfinite(dec)):
        raise CatalogError(f"{where}: no row has a finite ra and dec; sky positions are needed")
    return CatalogData(where, ra, dec, score, flags, cand, meta, path)


def _positives(values, where: str, label_col: str, positive) -> tuple[str, ...]:
    """The positive label values among ``values`` (training's rule; one class allowed)."""
    from pyengine.training.data import DEFAULT_POSITIVE, plan_classes

    present = sorted(set(values))
    if len(present) >= 2:
        try:
            return plan_classes(present, label_col=label_col, positive=positive).positive_values
        except PyEngineError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    only = present[0]
    wanted = [str(p) for p in (positive or ())]
    if wanted and all(w.lower() == only.lower() for w in wanted):
        return (only,)
    if not wanted and only.lower() in DEFAULT_POSITIVE:
        return (only,)
    if wanted:
        bad = next(w for w in wanted if w.lower() != only.lower())
        raise ConfigError(f"{where}: --positive value {bad!r} is not a value of label column "
                          f"{label_col!r}; accepted: {only}")
    raise ConfigError(f"{where}: label column {label_col!r} holds only {only!r}, which is not "
                      "cluster, 1 or True; name the cluster values with --positive")


def read_truth(truth, *, label_col=None, positive=None, ra_col=None, dec_col=None) -> TruthData:
    """The truth catalog (a path or an astropy Table): positions and positive labels."""
    from astropy.table import Table

    from pyengine.io.catalog import (
        DEC_NAMES,
        RA_NAMES,
        find_column,
        numeric_column,
        read_catalog,
    )
    from pyengine.training.data import LABEL_NAMES, label_strings

    if isinstance(truth, Table):
        table, where = truth, "truth"
        if len(table) == 0:
            raise CatalogError("truth: the table is empty; it needs at least one row")
    else:
        table, where = read_catalog(truth), str(truth)
    ra_name = find_column(table, RA_NAMES, given=ra_col, where=where, what="RA (--truth-ra-col)")
    dec_name = find_column(table, DEC_NAMES, given=dec_col, where=where,
                           what="Dec (--truth-dec-col)")
    if ra_name is None or dec_name is None:
        raise CatalogError(f"{where}: no RA/Dec columns ({', '.join(RA_NAMES[:4])}, ... / "
                           f"{', '.join(DEC_NAMES[:4])}, ...); name them with --truth-ra-col "
                           f"and --truth-dec-col; columns: {', '.join(table.colnames)}")
    ra = numeric_column(table, ra_name, where)
    dec = numeric_column(table, dec_name, where)
    lab = find_column(table, LABEL_NAMES, given=label_col, where=where,
                      what="labels (--label-col)")
    if lab is None:
        raise CatalogError(f"{where}: no label column ({', '.join(LABEL_NAMES)}); name it with "
                           f"--label-col; columns: {', '.join(table.colnames)}")
    text, missing = label_strings(table[lab], f"{where}: column {lab!r}")
    labelled = ~missing
    if not labelled.any():
        raise CatalogError(f"{where}: label column {lab!r} is empty in every row")
    pos_values = _positives(text[labelled], where, lab, positive)
    positive_rows = labelled & np.isin(text, pos_values)
    return TruthData(where, table, ra, dec, positive_rows, labelled, lab, tuple(pos_values),
                     tuple(sorted(set(text[labelled].tolist()))))


# -- the area -------------------------------------------------------------------------------

@dataclass
class Area:
    """Which sky positions the scan covered (see the module docstring)."""

    method: str  # footprint | hull
    description: str
    geometry: object = None  # SurveyGeometry (footprint)
    hull: tuple | None = None  # (ra0, dec0, xs, ys) of the hull polygon (hull)
    rows: tuple | None = None  # (ra, dec) of the catalog rows (hull: within the radius)
    radius: float = 0.0  # arcsec
    within: object = None  # Cone or None
    note: str = ""

    @property
    def pixel_scale(self) -> float | None:
        """Median pixel scale of the footprint's fields (arcsec/px), or None (hull)."""
        if self.geometry is None:
            return None
        return float(np.median([f.scale for f in self.geometry.frames]))

    def inside(self, ra, dec) -> np.ndarray:
        ra = np.asarray(ra, np.float64)
        dec = np.asarray(dec, np.float64)
        ok = np.isfinite(ra) & np.isfinite(dec)
        out = np.zeros(ra.shape, bool)
        if ok.any():
            if self.method == "footprint":
                out[ok] = self.geometry.owner(ra[ok], dec[ok]) >= 0
            else:
                out[ok] = self._in_hull(ra[ok], dec[ok])
        if self.within is not None:
            out &= self.within.contains(ra, dec)
        return out

    def _in_hull(self, ra, dec) -> np.ndarray:
        from pyengine.evaluation.match import pairs_within
        from pyengine.survey.geometry import gnomonic

        ra0, dec0, hx, hy = self.hull
        x, y = gnomonic(ra0, dec0, ra, dec)
        inside = np.isfinite(x) & np.isfinite(y)
        if hx.size >= 3:
            for k in range(hx.size):  # counter-clockwise polygon: left of every edge
                ax, ay, bx, by = hx[k], hy[k], hx[(k + 1) % hx.size], hy[(k + 1) % hx.size]
                with np.errstate(invalid="ignore"):
                    inside &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0.0
        else:
            inside[:] = False
        near = pairs_within(ra, dec, *self.rows, max(self.radius, 1e-3))[0]
        inside[near] = True
        return inside


def _convex_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counter-clockwise hull vertices (Andrew's monotone chain, 1979)."""
    pts = sorted(set(zip(x.tolist(), y.tolist(), strict=True)))
    if len(pts) < 3:
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return np.array([p[0] for p in hull]), np.array([p[1] for p in hull])


def _hull_area(cat: CatalogData, radius: float, within, note: str) -> Area:
    from pyengine.evaluation.match import unit_vectors
    from pyengine.survey.geometry import gnomonic

    ok = np.isfinite(cat.ra) & np.isfinite(cat.dec)
    ra, dec = cat.ra[ok], cat.dec[ok]
    mean = unit_vectors(ra, dec).mean(axis=0)
    ra0 = float(np.degrees(np.arctan2(mean[1], mean[0])) % 360.0)
    dec0 = float(np.degrees(np.arctan2(mean[2], np.hypot(mean[0], mean[1]))))
    x, y = gnomonic(ra0, dec0, ra, dec)
    hx, hy = _convex_hull(x[np.isfinite(x)], y[np.isfinite(y)])
    text = (f"the convex hull of the {ra.size:,} catalog positions (RA {ra.min():.5f} .. "
            f"{ra.max():.5f}, Dec {dec.min():.5f} .. {dec.max():.5f}) widened by the match "
            "radius")
    return Area("hull", text, hull=(ra0, dec0, hx, hy), rows=(ra, dec), radius=radius,
                within=within, note=note)


def _found(spec: str, base: Path | None) -> str | None:
    """``spec`` (``path[ext]``) as found: as written (relative to the working folder), else
    relative to the catalog's folder; None when neither exists."""
    from pyengine.io.fitsfile import parse_spec

    path, ext = parse_spec(spec)
    for p in (path, None if base is None or path.is_absolute() else base / path):
        if p is not None and p.exists():
            return str(p) if ext is None else f"{p}[{ext}]"
    return None


def _footprint(meta: dict, base: Path | None):
    """(SurveyGeometry, description) of the scan's images from the catalog's metadata, or
    (None, why not)."""
    from pyengine.survey.geometry import SurveyGeometry
    from pyengine.survey.manifest import Survey, read_manifest

    manifest = str(meta.get("SURVEY", "") or "")
    named = [str(meta[k]) for k in sorted((k for k in meta if k.startswith("BANDFIL")
                                           and k[7:].isdigit()), key=lambda k: int(k[7:]))]
    try:
        if manifest:
            found = _found(manifest, base)
            if found is None:
                return None, f"its survey manifest {manifest} (key SURVEY) is not found"
            geo = SurveyGeometry(read_manifest(found))
            return geo, f"the {len(geo)} fields of {found}"
        if not named:
            return None, "the catalog names no images (no SURVEY or BANDFIL1.. keys)"
        files = [_found(f, base) for f in named]
        missing = [f for f, got in zip(named, files, strict=True) if got is None]
        if missing:
            return None, f"its band files ({', '.join(missing)}) are not found"
        bands = [b for b in str(meta.get("BANDS", "")).split(",") if b] or None
        if bands is not None and len(bands) != len(files):
            bands = None
        geo = SurveyGeometry(Survey.single(files, bands))
        return geo, f"the image {', '.join(files)}"
    except PyEngineError as exc:
        return None, f"its images cannot be read ({exc})"


def scan_area(cat: CatalogData, *, mode: str = "auto", radius: float, within=None) -> Area:
    """The area the scan covered (module docstring); ``radius``: the match radius, arcsec."""
    if mode not in AREA_MODES:
        raise ConfigError(f"--area {mode!r} is not accepted; accepted: {', '.join(AREA_MODES)}")
    if mode != "hull":
        base = None if cat.path is None else cat.path.parent
        geo, text = _footprint(cat.meta, base)
        if geo is not None:
            return Area("footprint", text, geometry=geo, within=within)
        if mode == "footprint":
            raise ConfigError(f"{cat.where}: --area footprint: {text}; use --area hull (the "
                              "catalog positions' convex hull)")
        return _hull_area(cat, radius, within, f"footprint not used: {text}")
    return _hull_area(cat, radius, within, "")
