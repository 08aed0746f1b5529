"""Input catalogs: positions (RA/Dec or x/y) and optional labels and magnitudes.

``read_catalog`` reads FITS (a table HDU, ``path[ext]`` allowed), ECSV, CSV
or Parquet by extension.  ``catalog_positions`` finds the position columns
case-insensitively (or takes the names given) and returns 0-based pixel
positions on a mosaic's grid: RA/Dec in degrees (ICRS) through the mosaic's
WCS, converted to its frame when that is not ICRS (pyengine.io.skyframe), or
x/y pixels.  Pixel columns follow the 0-based astropy convention, except
SExtractor's ``X_IMAGE``-style columns, which are FITS 1-based and are shifted
(pyengine.coords).  Giving both forms, or neither, is refused: the catalog
must say unambiguously where its sources are.

Every problem raises :class:`~pyengine.errors.CatalogError` naming the file,
the column or value, and what is accepted.

Thread safety: functions build new objects from their arguments; they may
run concurrently.
"""

from __future__ import annotations

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

__all__ = ["FORMATS", "CatalogPositions", "catalog_positions", "find_column", "numeric_column",
           "read_catalog", "read_catalog_head"]

FORMATS = {".fits": "fits", ".fit": "fits", ".fts": "fits", ".fits.gz": "fits",
           ".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".parquet": "parquet"}
RA_NAMES = ("ra", "ra_deg", "raj2000", "ra_icrs", "alpha_j2000", "ra2000", "radeg")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "de_icrs", "dec_icrs", "delta_j2000",
             "dec2000", "decdeg")
X_NAMES = ("x", "x_pix", "xpix", "x_image", "xwin_image", "x_0", "xcentroid")
Y_NAMES = ("y", "y_pix", "ypix", "y_image", "ywin_image", "y_0", "ycentroid")
ONE_BASED = ("x_image", "y_image", "xwin_image", "ywin_image")  # SExtractor: FITS pixels


def _format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise CatalogError(f"{path}: unknown catalog format; accepted extensions: "
                       f"{', '.join(sorted(FORMATS))}")


def _read_parquet(path: Path) -> Table:
    """Parquet through pyarrow alone (astropy's reader also wants pandas)."""
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(path)
    except pq.lib.ArrowException as exc:
        raise ValueError(str(exc)) from None
    return Table({name: arrow.column(name).to_numpy(zero_copy_only=False)
                  for name in arrow.column_names})


def read_catalog(spec) -> Table:
    """Read a catalog file (FITS table, ECSV, CSV or Parquet) into an astropy Table."""
    path, ext = parse_spec(spec)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalog file")
    fmt = _format(path)
    kwargs = {"format": fmt}
    if fmt == "fits":
        kwargs["hdu"] = int(ext) if ext is not None and ext.isdigit() else ext
        kwargs["mask_invalid"] = False  # NaN stays NaN (a value, not a mask)
    elif ext is not None:
        raise CatalogError(f"{spec}: [{ext}] selects an HDU, which only FITS catalogs have")
    try:
        if fmt == "parquet":
            table = _read_parquet(path)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = Table.read(str(path), **kwargs)
    except ImportError as exc:  # parquet without pyarrow
        raise CatalogError(f"{path}: reading {fmt} needs an extra package ({exc})") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise CatalogError(f"{spec}: cannot read it as {fmt} ({str(exc).splitlines()[0]})") from None
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


def numeric_column(table: Table, name: str, where: str,
                   need: str = "numbers in degrees or pixels are needed (convert sexagesimal "
                               "RA/Dec first)") -> np.ndarray:
    """Column ``name`` as float64, masked entries NaN; refuses non-numeric columns."""
    col = table[name]
    if col.dtype.kind not in "fiu":
        raise CatalogError(f"{where}: column {name!r} holds {col.dtype} values; {need}")
    data = np.asarray(col, dtype=np.float64)
    if hasattr(col, "mask") and np.any(col.mask):
        data = np.where(np.asarray(col.mask), np.nan, data)
    return data


@dataclass(frozen=True)
class CatalogPositions:
    """0-based pixel positions of a catalog's rows, and where they came from."""

    x: np.ndarray
    y: np.ndarray
    columns: tuple[str, str]
    form: str  # "sky" or "pixel"


def catalog_positions(table: Table, wcs, *, where: str, ra_col=None, dec_col=None, x_col=None,
                      y_col=None) -> CatalogPositions:
    """Pixel positions (x, y) of every row: from RA/Dec (deg, ICRS) via ``wcs`` or from x/y."""
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
    if has_sky and has_pix:
        raise CatalogError(
            f"{where}: positions are given both as RA/Dec ({ra}, {dec}) and as pixels ({x}, {y});"
            " choose one with --ra-col/--dec-col or --x-col/--y-col")
    if not (has_sky or has_pix):
        raise CatalogError(
            f"{where}: no usable position columns; need RA/Dec in degrees (e.g. {RA_NAMES[0]}, "
            f"{DEC_NAMES[0]}) or pixels (e.g. {X_NAMES[0]}, {Y_NAMES[0]}), or name them with "
            f"--ra-col/--dec-col or --x-col/--y-col; columns: {', '.join(table.colnames)}")
    if has_sky:
        ra_v, dec_v = numeric_column(table, ra, where), numeric_column(table, dec, where)
        bad = np.isfinite(ra_v) & ~((-360 <= ra_v) & (ra_v <= 360) & (np.abs(dec_v) <= 90))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise CatalogError(f"{where}: row {i} has RA, Dec = {ra_v[i]}, {dec_v[i]}; degrees "
                               "with |Dec| <= 90 are needed")
        px, py = icrs_to_pixel(wcs, ra_v, dec_v)  # through the WCS's frame (FK5, FK4, ...)
        return CatalogPositions(px, py, (ra, dec), "sky")
    px, py = numeric_column(table, x, where), numeric_column(table, y, where)
    if x.lower() in ONE_BASED:
        px, py = fits_to_pixel(px, py)
    return CatalogPositions(px, py, (x, y), "pixel")


def read_catalog_head(spec, rows: int = 1) -> Table:
    """The catalog's columns and at most its first ``rows`` rows, without reading the rest
    (FITS memory-mapped, Parquet's first batch, the first lines of a CSV or ECSV): a scan
    checks a catalog this way before loading its model.  Refuses what
    :func:`read_catalog` would: a missing, unreadable or empty file."""
    path, ext = parse_spec(spec)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalog file")
    fmt = _format(path)
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
                hdu = int(ext) if ext is not None and ext.isdigit() else ext
                table = Table.read(str(path), format="fits", hdu=hdu, memmap=True,
                                   mask_invalid=False)[:rows]
        else:
            lines, data = [], 0
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip() and not line.startswith("#"):
                        data += 1
                    lines.append(line)
                    if data > rows:  # the header row and ``rows`` data rows
                        break
            table = Table.read("".join(lines), format=fmt) if data > 1 else Table()
    except ImportError as exc:  # parquet without pyarrow
        raise CatalogError(f"{path}: reading {fmt} needs an extra package ({exc})") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, StopIteration) as exc:
        raise CatalogError(f"{spec}: cannot read it as {fmt} ({str(exc).splitlines()[0]})") from None
    if len(table) == 0:
        raise CatalogError(f"{spec}: the catalog is empty; it needs at least one row")
    return table
