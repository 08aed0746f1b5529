"""Input catalogs: positions (RA/Dec or x/y) and optional labels and magnitudes.

``read_catalog`` recognises a file by its content first, whatever its name: a file
whose first card starts with the FITS signature (``SIMPLE  =``) is FITS (a binary
table, or SExtractor/SCAMP ``FITS_LDAC``, read from its ``LDAC_OBJECTS`` HDU, found by
EXTNAME, without ``[2]``), so SExtractor's ``test.cat``, ``G002.003.844+33.133.cat`` or
``field.ldac`` need no renaming; a file that opens with SExtractor's ASCII header
(``#   1 NUMBER  Running object number``) is a SExtractor ASCII catalog (astropy's
``ascii.sextractor``). Other files go by their suffix: ECSV, CSV, Parquet, ``.fits.gz``
(:data:`ACCEPTED` says it in messages).

``catalog_positions`` finds the position columns case-insensitively (or takes the
names given) and returns 0-based pixel positions on a mosaic's grid: RA/Dec in degrees
(ICRS) through the mosaic's WCS, converted to its frame when that is not ICRS
(pyengine.io.skyframe), or x/y pixels.  Pixel columns follow the 0-based astropy
convention (``--x-col`` is "0-based pixels"), except SExtractor's, which are FITS
1-based (``X_IMAGE``, ``XWIN_IMAGE``, ``XPEAK_IMAGE``, ``XMODEL_IMAGE``, ``XPSF_IMAGE``
and their Y twins: :func:`one_based`) and are shifted by -1 (pyengine.coords), each axis
by its own column's name, whether found or named with ``--x-col``.

**Both forms present** (SExtractor's ``X_IMAGE, Y_IMAGE, ALPHA_J2000, DELTA_J2000``, or
``ra, dec, x, y``) and none named: the RA/Dec columns are used when the image has a
celestial WCS (every mosaic pyengine opens has one: ``Mosaic.open`` refuses others), the
pixels only without one. Sky positions mean the same on any image; a catalog's pixels
are on the image it was measured on, which may not be this one (another stack of the
pointing, a cutout, a resampled image), and across the fields of a survey pixels mean
nothing at all. ``CatalogPositions.unused`` names the columns not used, and the scan's
start line and ``SOURCE`` key say so (``RA/Dec columns ALPHA_J2000, DELTA_J2000;
X_IMAGE, Y_IMAGE not used``). ``--x-col/--y-col`` (or ``--ra-col/--dec-col``) choose
the other form; naming both forms is refused, as is finding neither.

A row's position is *unusable* when a coordinate is NaN, infinite or masked
(ECSV/Parquet nulls, FITS TNULL), Dec is outside [-90, 90] or RA outside
[-360, 360] (RA in that range is wrapped modulo 360: -10 is 350).  Such rows
are kept, with NaN pixels (``CatalogPositions.usable`` False), so the scan
flags them off the image and reports their number; only a catalog with no
usable row is refused.

Every problem raises :class:`~pyengine.errors.CatalogError` naming the file,
the column or value, and what is accepted.  Rows are named as the user counts
them: ``data row N (1-based)`` (:func:`row_label`), the header not counted.

Thread safety: functions build new objects from their arguments; they may
run concurrently.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table
from astropy.units import UnitsWarning

from pyengine.coords import fits_to_pixel
from pyengine.errors import CatalogError
from pyengine.io.fitsfile import parse_spec
from pyengine.io.skyframe import icrs_to_pixel

__all__ = ["ACCEPTED", "FORMATS", "CatalogPositions", "catalog_format", "catalog_positions",
           "find_column", "numeric_column", "one_based", "read_catalog", "read_catalog_head",
           "row_label"]

FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits", ".ldac": "fits",
           ".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": "parquet"}
#: What messages about an unreadable catalog say is accepted.
ACCEPTED = ("FITS binary tables and FITS_LDAC (recognised by content, any name: .fits, .cat, "
            ".ldac, ...), SExtractor ASCII catalogs (by their '#   1 NUMBER' header lines), "
            ".ecsv, .csv, .parquet, .fits.gz")
RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "alpha_j2000", "alphawin_j2000", "ra2000",
            "radeg", "x_world")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "delta_j2000",
             "deltawin_j2000", "dec2000", "decdeg", "y_world")
X_NAMES = ("x", "x_pix", "xpix", "x_image", "xwin_image", "x_0", "xcentroid")
Y_NAMES = ("y", "y_pix", "ypix", "y_image", "ywin_image", "y_0", "ycentroid")
# SExtractor's position columns are FITS pixels (1-based): X_IMAGE, XWIN_IMAGE, XPEAK_IMAGE,
# XMODEL_IMAGE, XPSF_IMAGE and their Y twins (not X2_IMAGE, XMIN_IMAGE: moments, boxes).
_ONE_BASED = re.compile(r"[xy](win|peak|model|psf)?_image")
LDAC_OBJECTS, LDAC_IMHEAD = "LDAC_OBJECTS", "LDAC_IMHEAD"
_FITS_MAGIC = b"SIMPLE  ="
# SExtractor's ASCII_HEAD: "#   1 NUMBER   Running object number   [unit]" lines first.
_SEXTRACTOR_HEAD = re.compile(rb"#\s*\d+\s+[A-Za-z_][A-Za-z0-9_]*(\s|$)")
UNUSABLE = "non-finite or out-of-range positions (NaN, inf, null, |Dec| > 90 or |RA| > 360)"


def row_label(index: int) -> str:
    """How messages name the catalog row of 0-based ``index``: 1-based, header not counted."""
    return f"data row {int(index) + 1} (1-based)"


def one_based(name: str) -> bool:
    """Whether pixel column ``name`` is one of SExtractor's, in FITS 1-based pixels."""
    return _ONE_BASED.fullmatch(name.lower()) is not None


def catalog_format(path) -> str:
    """The astropy format ``path`` is read as: by content (FITS signature in the first
    card, SExtractor's ASCII header), else by suffix; one CatalogError line naming the
    file and :data:`ACCEPTED` otherwise."""
    path = Path(path)
    try:
        with path.open("rb") as fh:  # e.g. SExtractor's default test.cat in FITS_LDAC
            head = fh.read(80)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog file ({exc.strerror})") from None
    if head.startswith(_FITS_MAGIC):
        return "fits"
    if _SEXTRACTOR_HEAD.match(head):
        return "ascii.sextractor"
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise CatalogError(f"{path}: unknown catalog format; accepted: {ACCEPTED}")



def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_parquet(path: Path) -> Table:
    """Parquet through pyarrow alone (astropy's reader also wants pandas)."""
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
    except pq.lib.ArrowException as exc:
        raise ValueError(str(exc)) from None
    return Table({name: arrow.column(name).to_numpy(zero_copy_only=False)
                  for name in arrow.column_names})


def _fits_hdu(path: Path, spec, ext: str | None):
    """The HDU to read: ``ext`` as given, else a FITS_LDAC file's LDAC_OBJECTS, else None
    (astropy's first table)."""
    if ext is not None:
        return int(ext) if ext.isdigit() else ext
    from astropy.io import fits

    with fits.open(path) as hdul:
        names = [(i, str(h.header.get("EXTNAME", "")).strip().upper())
                 for i, h in enumerate(hdul)]
    objects = [i for i, name in names if name == LDAC_OBJECTS]
    if len(objects) > 1:
        raise CatalogError(f"{spec}: a FITS_LDAC catalog with {len(objects)} LDAC_OBJECTS "
                           f"HDUs ({', '.join(map(str, objects))}, one per image extension); "
                           f"choose one as {path.name}[{objects[0]}]")
    return objects[0] if objects else None


def read_catalog(spec) -> Table:
    """Read a catalog file (FITS table, FITS_LDAC, ECSV, CSV or Parquet) into an astropy Table.

    Masked entries (nulls, FITS TNULL) stay masked; float NaN in FITS stays NaN.
    Only astropy's unit warnings (SExtractor's ``count``, ``mag * arcsec**(-2)`` ...)
    are silenced, and only while the file is read.
    """
    path, ext = parse_spec(spec)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalog file")
    fmt = catalog_format(path)
    kwargs = {"format": fmt}
    if ext is not None and fmt != "fits":
        raise CatalogError(f"{spec}: [{ext}] selects an HDU, which only FITS catalogs have")
    try:
        if fmt == "fits":
            kwargs["hdu"] = _fits_hdu(path, spec, ext)
            kwargs["mask_invalid"] = False  # NaN stays NaN (a value, not a mask)
        if fmt == "parquet":
            table = _read_parquet(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = Table.read(str(path), **kwargs)
    except ImportError as exc:  # parquet without pyarrow
        raise CatalogError(f"{path}: reading {fmt} needs an extra package ({exc})") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CatalogError(f"{spec}: cannot read it as {fmt} ({_first_line(exc)}); accepted: "
                           f"{ACCEPTED}") from None
    if table.meta.get("EXTNAME", "").strip().upper() == LDAC_IMHEAD:
        raise CatalogError(f"{spec}: this HDU is a FITS_LDAC catalog's {LDAC_IMHEAD} (the image "
                           f"header); the sources are in {LDAC_OBJECTS}: give {path.name} "
                           "without [ext]")
    if len(table) == 0:
        raise CatalogError(f"{spec}: the catalog is empty; it needs at least one row")
    return table


def find_column(table: Table, candidates, *, given: str | None = None, where: str,
                what: str) -> str | None:
    """The table's column named ``given`` or the first of ``candidates`` (case-insensitive)."""
    lower = {name.lower(): name for name in table.colnames}
    if given is not None:
        if given.lower() not in lower:
            raise CatalogError(f"{where}: no column {given!r} for {what}; columns: "
                               f"{', '.join(table.colnames)}")
        return lower[given.lower()]
    for name in candidates:
        if name in lower:
            return lower[name]
    return None


def _first_not_number(col) -> tuple[int, object]:
    """The first (index, value) of a non-numeric column that is not a number (0 if all are)."""
    for i, value in enumerate(col):
        if value is np.ma.masked:
            continue
        try:
            float(value)
        except (TypeError, ValueError):
            return i, value
    return 0, col[0]


def numeric_column(table: Table, name: str, where: str,
                   need: str = "numbers in degrees or pixels are needed (convert sexagesimal "
                               "RA/Dec first)") -> np.ndarray:
    """Column ``name`` as float64, masked entries NaN; refuses non-numeric columns, naming
    the first row (1-based) whose value is not a number."""
    col = table[name]
    if col.dtype.kind not in "fiu":
        i, value = _first_not_number(col)
        raise CatalogError(f"{where}: column {name!r} is not numeric ({col.dtype}; "
                           f"{row_label(i)} holds {str(value)!r}); {need}")
    data = np.asarray(col, dtype=np.float64)
    if hasattr(col, "mask") and np.any(col.mask):
        data = np.where(np.asarray(col.mask), np.nan, data)
    return data


@dataclass(frozen=True)
class CatalogPositions:
    """0-based pixel positions of a catalog's rows, and where they came from.

    ``usable`` is False for rows whose catalog position is unusable (see the module
    docstring); their ``x`` and ``y`` are NaN.  ``unused``: the other form's columns,
    found but not used (a catalog with both RA/Dec and pixels), else empty.
    """

    x: np.ndarray
    y: np.ndarray
    columns: tuple[str, str]
    form: str  # "sky" or "pixel"
    usable: np.ndarray  # bool per row
    unused: tuple[str, ...] = ()

    def take(self, keep: np.ndarray) -> CatalogPositions:
        """The positions of the rows ``keep`` (a mask or indices) selects."""
        return CatalogPositions(self.x[keep], self.y[keep], self.columns, self.form,
                                self.usable[keep], self.unused)

    def describe(self) -> str:
        """Which columns gave the positions: ``RA/Dec columns RA, DEC``, ``pixel columns
        X_IMAGE, Y_IMAGE (FITS 1-based)``, and those not used."""
        if self.form == "sky":
            text = f"RA/Dec columns {', '.join(self.columns)}"
        else:
            text = f"pixel columns {', '.join(self.columns)}"
            if any(one_based(c) for c in self.columns):
                text += " (FITS 1-based)"
        if self.unused:
            text += f"; {', '.join(self.unused)} not used"
        return text

    @property
    def n_unusable(self) -> int:
        return int(self.usable.size - np.count_nonzero(self.usable))


def _refuse_if_none_usable(where, columns, usable) -> None:
    if not usable.any():
        n = usable.size
        rows = "the one row has" if n == 1 else f"all {n:,} rows have"
        raise CatalogError(f"{where}: no usable position in columns {', '.join(columns)}: "
                           f"{rows} {UNUSABLE}")


def _sky_pixels(wcs, ra, dec):
    """Pixels of RA/Dec, NaN where the position is unusable; (x, y, usable)."""
    with np.errstate(invalid="ignore"):
        usable = (np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
                  & (np.abs(ra) <= 360))
    px, py = np.full(ra.shape, np.nan), np.full(ra.shape, np.nan)
    if usable.any():  # through the WCS's frame (FK5, FK4, ...)
        px[usable], py[usable] = icrs_to_pixel(wcs, np.mod(ra[usable], 360.0), dec[usable])
    return px, py, usable


def catalog_positions(table: Table, wcs, *, where: str, ra_col=None, dec_col=None, x_col=None,
                      y_col=None, refuse_unusable: bool = True) -> CatalogPositions:
    """Pixel positions (x, y) of every row: from RA/Dec (deg, ICRS) via ``wcs`` or from x/y.

    Rows with unusable positions keep NaN pixels (``usable`` False); a table with no usable
    row is refused (unless ``refuse_unusable`` is false: a check of the columns on a
    catalog's first rows, which says nothing about the rest).
    """
    sky_given = ra_col is not None or dec_col is not None
    pix_given = x_col is not None or y_col is not None
    if sky_given and pix_given:
        raise CatalogError(f"{where}: give either --ra-col/--dec-col or --x-col/--y-col, not both")
    ra = dec = x = y = None
    if not pix_given:
        ra = find_column(table, RA_NAMES, given=ra_col, where=where, what="RA")
        dec = find_column(table, DEC_NAMES, given=dec_col, where=where, what="Dec")
    if not sky_given:
        x = find_column(table, X_NAMES, given=x_col, where=where, what="x")
        y = find_column(table, Y_NAMES, given=y_col, where=where, what="y")
    has_sky, has_pix = ra is not None and dec is not None, x is not None and y is not None
    unused: tuple[str, ...] = ()
    if has_sky and has_pix:  # both found, none named: the module docstring's rule
        if getattr(wcs, "has_celestial", False):
            has_pix, unused = False, (x, y)
        else:
            has_sky, unused = False, (ra, dec)
    if not (has_sky or has_pix):
        raise CatalogError(
            f"{where}: no usable position columns; need RA/Dec in degrees (e.g. {RA_NAMES[0]}, "
            f"{DEC_NAMES[0]}) or pixels (e.g. {X_NAMES[0]}, {Y_NAMES[0]}), or name them with "
            f"--ra-col/--dec-col or --x-col/--y-col; columns: {', '.join(table.colnames)}")
    if has_sky:
        px, py, usable = _sky_pixels(wcs, numeric_column(table, ra, where),
                                     numeric_column(table, dec, where))
        if refuse_unusable:
            _refuse_if_none_usable(where, (ra, dec), usable)
        return CatalogPositions(px, py, (ra, dec), "sky", usable, unused)
    px, py = numeric_column(table, x, where), numeric_column(table, y, where)
    fx, fy = fits_to_pixel(px, py)
    px = fx if one_based(x) else px  # each axis by its own column's convention
    py = fy if one_based(y) else py
    usable = np.isfinite(px) & np.isfinite(py)
    px, py = np.where(usable, px, np.nan), np.where(usable, py, np.nan)
    if refuse_unusable:
        _refuse_if_none_usable(where, (x, y), usable)
    return CatalogPositions(px, py, (x, y), "pixel", usable, unused)


def read_catalog_head(spec, rows: int = 1) -> Table:
    """The catalog's columns and at most its first ``rows`` rows, without reading the rest
    (FITS memory-mapped, Parquet's first batch, the first lines of a CSV or ECSV): a scan
    checks a catalog this way before loading its model.  Refuses what
    :func:`read_catalog` would: a missing, unreadable or empty file."""
    path, ext = parse_spec(spec)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalog file")
    fmt = catalog_format(path)
    if fmt != "fits" and ext is not None:
        raise CatalogError(f"{spec}: [{ext}] selects an HDU, which only FITS catalogs have")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
            table = Table() if batch is None else Table(
                {name: batch.column(name).to_numpy(zero_copy_only=False)
                 for name in batch.schema.names})
        elif fmt == "fits":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = Table.read(str(path), format="fits", hdu=_fits_hdu(path, spec, ext),
                                   memmap=True, mask_invalid=False)[:rows]
        else:
            # the header row (ECSV, CSV; SExtractor's names are all in '#' lines) and
            # ``rows`` data rows
            header = 0 if fmt == "ascii.sextractor" else 1
            lines, data = [], 0
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip() and not line.startswith("#"):
                        data += 1
                    lines.append(line)
                    if data >= rows + header:
                        break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = (Table.read("".join(lines), format=fmt) if data > header
                         else Table())
    except ImportError as exc:  # parquet without pyarrow
        raise CatalogError(f"{path}: reading {fmt} needs an extra package ({exc})") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, StopIteration) as exc:
        raise CatalogError(f"{spec}: cannot read it as {fmt} ({_first_line(exc)}); accepted: "
                           f"{ACCEPTED}") from None
    if len(table) == 0:
        raise CatalogError(f"{spec}: the catalog is empty; it needs at least one row")
    return table
