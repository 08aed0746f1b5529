"""The scan's catalog: one row per input position, written atomically in four formats.

Contract (DESIGN.md §4).  ``write_catalog(table, path)`` writes an astropy
Table whose standard columns are

=============  =======  ====  ==================================================
column         type     unit  meaning
=============  =======  ====  ==================================================
id             int64          identifier of the position (its input order)
ra, dec        float64  deg   ICRS position
x, y           float64  pix   0-based pixel on the mosaic grid (FITS x - 1)
score          float32        cluster probability; NaN where not scored
is_candidate   bool           score >= threshold and neither OFF_IMAGE nor BLANK
flags          int32          bitmask of :data:`FLAG_BITS`
tile           int64          tile of the plan that owns the position; -1 off image
=============  =======  ====  ==================================================

plus any pass-through columns (numbers, booleans, text, fixed-shape arrays,
masked or not).  Standard columns get their unit and description when the
table does not set them; nothing else about the table is changed (the caller's
table is never modified).  ``table.meta`` holds the run's metadata, the same
in every format: keys are FITS keywords (1-8 characters of ``A-Z 0-9 _ -``;
lower case is upper-cased; structural ones such as NAXIS or TTYPEn are
refused), values are str, int, float (finite) or bool, and ``DATE``/``DATE-*``
values are FITS dates (``YYYY-MM-DDThh:mm:ss[.fff]``, UTC, no zone: fitsverify
checks them).  Breaking these rules is a program bug (ValueError), raised
before anything is written.  When the table has a ``flags`` column and the
metadata no ``FLAGS`` key, ``FLAGS = describe_flags()`` is added.

Formats, chosen by extension (:data:`CATALOG_FORMATS`):

* ``.fits`` / ``.fit``: an empty primary HDU and a BINTABLE
  ``EXTNAME = 'CATALOG'`` written by this module (not astropy's table writer,
  which turns int8 into logicals and drops masks of booleans).  Metadata are
  header keywords with comments (long strings use the OGIP ``CONTINUE``
  convention, announced by ``LONGSTRN``), units ``TUNITn``, descriptions
  ``TCOMMn``.  Booleans are ``L`` columns (a masked value is the FITS null
  logical, byte 0, which STILTS/TOPCAT read as null and astropy as False with
  a warning), masked integers use ``TNULLn``, masked floats are NaN,
  masked text is empty, unsigned integers use ``TZEROn``, int8 widens to int16
  and float16 to float32.  What FITS cannot say is adapted, never refused:
  characters outside printable ASCII in text cells and header values are
  written as Python escapes (``é`` -> ``\\xe9``); column names keep only
  letters, digits and ``_`` (others become ``_``) and names equal apart from
  case get ``_2``, ``_3``...  The file passes ``fitsverify`` with no warnings.
* ``.ecsv``: astropy's ECSV writer: units, descriptions, masks and metadata in
  the YAML header; exact round trip through ``Table.read`` (bytes columns are
  written as text; astropy reads an empty or blank string back as masked).
* ``.parquet``: written with pyarrow alone (pandas is not needed): masks become
  nulls, each field carries ``unit`` and ``description`` field metadata, the
  schema metadata holds every key as text (``str`` for strings, JSON otherwise)
  and the whole dictionary, typed, as JSON under ``pyengine.meta``.  Bytes
  columns become UTF-8 text (undecodable bytes as ``\\xNN`` escapes).
* ``.csv``: one header row of column names, then rows (no comment lines, so
  TOPCAT/STILTS ``ifmt=csv`` and spreadsheets read it); masked cells are empty,
  NaN is ``nan``, float32 values are written as their shortest text (``0.1``).
  Array columns are spread over ``name_0, name_1, ...``.  CSV has no place for
  metadata, so a sidecar ``PATH.meta.json`` holds ``{"meta": {...}, "columns":
  {name: {"unit", "description", "dtype"}}}``.  Both files are written to
  temporary names first and renamed sidecar first, so a complete CSV always has
  its sidecar (a kill between the two renames can leave a new sidecar beside an
  old CSV, never the reverse).

Atomicity: every file is written to a hidden temporary file in the
destination's folder (``.NAME.PID.RANDOM.part``), flushed and fsynced, then
renamed over the destination, and the folder is fsynced
(:mod:`pyengine.atomic`).  An error removes the
temporary file; nothing incomplete is ever visible under the final name.

Call :func:`check_output` before a long scan so that a bad output path fails
at once, not after hours of work.

Thread safety: the functions build new objects from their arguments and share
no state; they may run concurrently on different output paths.  NumPy and
astropy work holds the GIL; file writes release it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pyengine.atomic import publish, temporary_beside
from pyengine.errors import OutputError
from pyengine.flags import describe_flags
from pyengine.output.fits_table import (
    as_text,
    check_meta,
    unit_text,
    values_and_mask,
)
from pyengine.output.fits_table import write_bintable as _write_fits

__all__ = ["CATALOG_FORMATS", "STANDARD_COLUMNS", "catalog_sidecar", "check_output",
           "check_writable", "write_catalog"]

#: Output format by (lower-case) extension; a name with another suffix, or none, is refused.
CATALOG_FORMATS = {".fits": "fits", ".fit": "fits", ".ecsv": "ecsv", ".parquet": "parquet",
                   ".csv": "csv"}

#: Standard column -> (unit or None, description).
STANDARD_COLUMNS = {
    "id": (None, "identifier of the position (its order in the scan's input)"),
    "ra": ("deg", "right ascension (ICRS)"),
    "dec": ("deg", "declination (ICRS)"),
    "x": ("pix", "0-based pixel x on the mosaic grid (FITS x - 1)"),
    "y": ("pix", "0-based pixel y on the mosaic grid (FITS y - 1)"),
    "score": (None, "cluster probability from the model; NaN where not scored"),
    "is_candidate": (None, "score >= threshold and neither OFF_IMAGE nor BLANK"),
    "flags": (None, "bitmask: 1 OFF_IMAGE, 2 BLANK, 4 EDGE (see FLAGS)"),
    "tile": (None, "index of the tile that owns the position; -1 off image"),
}


# --------------------------------------------------------------------------- paths

def _format(path: Path) -> str:
    fmt = CATALOG_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: unknown catalog format {path.suffix or '(no extension)'!r}; "
                          f"accepted extensions: {', '.join(CATALOG_FORMATS)}")
    return fmt


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def catalog_sidecar(path) -> Path | None:
    """The file written beside catalog ``path`` (a CSV's ``PATH.meta.json``), or None."""
    path = Path(path)
    return _sidecar(path) if CATALOG_FORMATS.get(path.suffix.lower()) == "csv" else None


def check_output(path, *, probe: bool = True) -> Path:
    """Refuse, before any work, a catalog path that cannot be written.

    Checks the extension, then :func:`check_writable` (``probe`` as there).  Returns the
    path.  Raises :class:`OutputError` with a one-line message.
    """
    path = Path(path)
    fmt = _format(path)
    if fmt == "csv" and _sidecar(path).is_dir():
        raise OutputError(f"{_sidecar(path)}: is a directory; the CSV's metadata sidecar "
                          "needs this name")
    return check_writable(path, f"a file name ending in {', '.join(CATALOG_FORMATS)}",
                          probe=probe)


def check_writable(path, name_hint: str = "a file name", *, probe: bool = True) -> Path:
    """Refuse a path that is a folder, or whose folder is missing or not writable
    (checked by creating and removing a temporary file in it, unless ``probe`` is
    False: then only the cheap checks, for a path probed already, e.g. by the scan
    before its work).  ``name_hint`` says what a good name looks like, for the folder
    case."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give {name_hint}")
    if not parent.exists():
        raise OutputError(f"{path}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {parent} is not writable")
    if not probe:
        return path
    probe_file = temporary_beside(path)
    try:
        with open(probe_file, "xb"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot create files in {parent} ({exc.strerror})") from None
    probe_file.unlink(missing_ok=True)
    return path


def _prepare(table, meta: dict):
    """A shallow copy with standard units/descriptions set, and the metadata to write."""
    from astropy.table import Table

    out = Table(table, copy=False)  # new column objects, same data
    for name, (unit, description) in STANDARD_COLUMNS.items():
        if name in out.colnames:
            col = out[name]
            if unit is not None and getattr(col, "unit", None) is None:
                col.unit = unit
            if not getattr(col.info, "description", None):
                col.info.description = description
    if "flags" in out.colnames and "FLAGS" not in meta:
        meta = {**meta, "FLAGS": describe_flags()}
    out.meta.clear()
    return out, meta


# ----------------------------------------------------------------- ECSV, CSV, Parquet

def _decode_bytes(table):
    """A shallow copy whose bytes columns are text (UTF-8; other bytes as \\xNN escapes)."""
    from astropy.table import Column, MaskedColumn, Table

    out = Table(table, copy=False)
    for name in out.colnames:
        col = out[name]
        if getattr(col, "dtype", None) is not None and col.dtype.kind == "S":
            data, mask = values_and_mask(col)
            text = as_text(data)
            new = (MaskedColumn(text, mask=np.ma.getmaskarray(col)) if mask is not None
                   else Column(text))
            new.unit = col.unit
            new.info.description = col.info.description
            out[name] = new
    return out


def _write_ecsv(table, meta: dict, fh) -> None:
    out = _decode_bytes(table)
    out.meta.update(meta)
    out.write(fh, format="ascii.ecsv")


def _csv_table(table):
    """Columns CSV can hold: arrays spread over name_0, name_1, ...; units stay."""
    from astropy.table import Column, MaskedColumn, Table

    out = Table()
    for name in table.colnames:
        col = table[name]
        shape = col.shape[1:]
        if not shape:
            out[name] = col
            continue
        data, mask = values_and_mask(col)
        data = data.reshape(len(data), int(np.prod(shape)))
        mask = None if mask is None else mask.reshape(data.shape)
        for k in range(data.shape[1]):
            part = (Column(data[:, k]) if mask is None
                    else MaskedColumn(data[:, k], mask=mask[:, k]))
            part.unit = getattr(col, "unit", None)
            part.info.description = getattr(col.info, "description", None)
            out[f"{name}_{k}"] = part
    return out


def _sidecar_text(table, meta: dict) -> str:
    columns = {}
    for name in table.colnames:
        col = table[name]
        columns[name] = {"unit": unit_text(col),
                         "description": getattr(col.info, "description", None),
                         "dtype": str(getattr(col, "dtype", ""))}
    return json.dumps({"meta": meta, "columns": columns}, indent=1, sort_keys=False) + "\n"


def _write_csv(table, fh) -> None:
    from astropy.table import Column, MaskedColumn

    plain = _decode_bytes(table)
    for name in plain.colnames:
        col = plain[name]
        if col.dtype == np.float32:
            # Shortest text that reads back as the same float32 ("0.1", not
            # the float64 expansion "0.10000000149011612").
            data, mask = values_and_mask(col)
            text = data.astype(str)
            plain[name] = (MaskedColumn(text, mask=mask) if mask is not None
                           else Column(text))
        plain[name].unit = None
    plain.meta.clear()
    plain.write(fh, format="ascii.csv")


def _arrow_array(col, pa):
    data, mask = values_and_mask(col)
    shape = data.shape[1:]
    kind = data.dtype.kind
    if kind not in "biuf":
        text = as_text(data)
        flat = text.reshape(len(text), -1) if shape else text
        arr = pa.array(flat.ravel().tolist() if shape else flat, type=pa.string(),
                       mask=None if shape else mask)
        if shape:
            arr = pa.FixedSizeListArray.from_arrays(arr, int(np.prod(shape)),
                                                    mask=pa.array(mask) if mask is not None
                                                    else None)
        return arr
    if kind == "f" and data.dtype.itemsize < 4:
        data = data.astype(np.float32)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    if not shape:
        return pa.array(data, mask=mask)
    # Array cells: a fixed-size list per row (masked rows as a whole).
    values = pa.array(data.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, int(np.prod(shape)),
                                             mask=pa.array(mask.reshape(len(mask), -1).any(1))
                                             if mask is not None else None)


def _write_parquet(table, meta: dict, tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields, arrays = [], []
    for name in table.colnames:
        col = table[name]
        arr = _arrow_array(col, pa)
        field_meta = {}
        unit = unit_text(col)
        if unit:
            field_meta["unit"] = unit
        description = getattr(col.info, "description", None)
        if description:
            field_meta["description"] = str(description)
        fields.append(pa.field(name, arr.type, nullable=True, metadata=field_meta or None))
        arrays.append(arr)
    schema_meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
    schema_meta["pyengine.meta"] = json.dumps(meta)
    schema = pa.schema(fields, metadata=schema_meta)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), tmp)


# ---------------------------------------------------------------------------- entry

def write_catalog(table, path, *, overwrite: bool = True) -> Path:
    """Write the scan's catalog atomically; the format follows the extension.

    ``table.meta`` gives the metadata (see the module docstring).  With
    ``overwrite=False`` an existing file is refused.  Returns the path.
    """
    # The cheap checks only: a scan probed the folder before its work (run_scan), and the
    # write itself fails with an OutputError if the folder refuses files meanwhile.
    path = check_output(path, probe=False)
    fmt = _format(path)
    if not overwrite and path.exists():
        raise OutputError(f"{path}: exists; remove it or allow overwriting")
    meta = check_meta(table.meta)
    prepared, meta = _prepare(table, meta)
    tmp = temporary_beside(path)
    made = [tmp]
    try:
        if fmt == "parquet":
            _write_parquet(prepared, meta, tmp)
            publish([(tmp, path)])
            return path
        if fmt == "fits":
            with open(tmp, "xb") as fh:
                _write_fits(prepared, meta, fh)
            publish([(tmp, path)])
            return path
        with open(tmp, "x", encoding="utf-8", newline="") as fh:
            if fmt == "ecsv":
                _write_ecsv(prepared, meta, fh)
            else:
                _write_csv(_csv_table(prepared), fh)
        if fmt == "ecsv":
            publish([(tmp, path)])
            return path
        side = temporary_beside(_sidecar(path))
        made.append(side)
        with open(side, "x", encoding="utf-8") as fh:
            fh.write(_sidecar_text(_csv_table(prepared), meta))
        publish([(side, _sidecar(path)), (tmp, path)])
        return path
    except OSError as exc:
        raise OutputError(f"{path}: writing the catalog failed ({exc.strerror or exc})") from None
    finally:
        for t in made:
            t.unlink(missing_ok=True)
