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

* ``.fits`` / ``.fit`` (default): an empty primary HDU and a BINTABLE
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
renamed over the destination, and the folder is fsynced.  An error removes the
temporary file; nothing incomplete is ever visible under the final name.

Call :func:`check_output` before a long scan so that a bad output path fails
at once, not after hours of work.

Thread safety: the functions build new objects from their arguments and share
no state; they may run concurrently on different output paths.  NumPy and
astropy work holds the GIL; file writes release it.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pyengine.errors import OutputError

__all__ = [
    "BLANK",
    "CATALOG_FORMATS",
    "EDGE",
    "FLAG_BITS",
    "OFF_IMAGE",
    "STANDARD_COLUMNS",
    "check_meta",
    "check_output",
    "check_writable",
    "describe_flags",
    "write_catalog",
]

#: Output format by (lower-case) extension; ``.fits`` is the default the CLI uses.
CATALOG_FORMATS = {".fits": "fits", ".fit": "fits", ".ecsv": "ecsv", ".parquet": "parquet",
                   ".csv": "csv"}

#: Centre pixel off the image, or position not finite: not scored (score NaN).
OFF_IMAGE = 1
#: More than the allowed share of the cutout is NaN: scored, but never a candidate.
BLANK = 2
#: Some cutout pixels are NaN (the image edge or blank pixels).
EDGE = 4

#: Flag name -> (bit, meaning).
FLAG_BITS = {
    "OFF_IMAGE": (OFF_IMAGE, "centre pixel off the image or position not finite; not scored"),
    "BLANK": (BLANK, "too much of the cutout is NaN; scored but never a candidate"),
    "EDGE": (EDGE, "some cutout pixels are NaN (image edge or blank pixels)"),
}

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

# Header comments of the metadata keys the scan writes.
_META_COMMENTS = {
    "MODEL": "model file",
    "MODELSHA": "SHA-256 of the model file",
    "THRESH": "decision threshold on score",
    "BANDS": "band names in model order",
    "RUNNER": "inference backend",
    "PRECISN": "inference precision",
    "PYENGVER": "pyengine version",
    "DATE": "UTC date and time of writing",
    "SOURCE": "where the positions came from",
    "NPOS": "number of positions (rows)",
    "NCAND": "number of candidates",
    "FLAGS": "bits of the flags column",
}

_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}")
# Keywords the FITS writer owns; metadata may not set them.
_RESERVED = re.compile(
    r"(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|TFIELDS|THEAP|EXTNAME"
    r"|EXTVER|EXTLEVEL|END|LONGSTRN|CONTINUE|BSCALE|BZERO|BUNIT|BLANK"
    r"|T(TYPE|FORM|UNIT|NULL|ZERO|SCAL|DIM|DISP|COMM)\d+)")
# FITS dates (DATE, DATE-OBS, ...): ISO 8601 in UTC without a zone (fitsverify checks).
_DATE_KEY = re.compile(r"DATE(-.*)?")
_DATE_VALUE = re.compile(r"\d{4}-\d\d-\d\d(T\d\d:\d\d:\d\d(\.\d+)?)?")


def describe_flags() -> str:
    """One line describing the bits of the ``flags`` column (the ``FLAGS`` keyword)."""
    return "; ".join(f"{bit} {name}: {text}" for name, (bit, text) in FLAG_BITS.items())


# --------------------------------------------------------------------------- paths

def _format(path: Path) -> str:
    fmt = CATALOG_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: unknown catalog format {path.suffix or '(no extension)'!r}; "
                          f"accepted extensions: {', '.join(CATALOG_FORMATS)}")
    return fmt


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def check_output(path) -> Path:
    """Refuse, before any work, a catalog path that cannot be written.

    Checks the extension, then :func:`check_writable`.  Returns the path.
    Raises :class:`OutputError` with a one-line message.
    """
    path = Path(path)
    fmt = _format(path)
    if fmt == "csv" and _sidecar(path).is_dir():
        raise OutputError(f"{_sidecar(path)}: is a directory; the CSV's metadata sidecar "
                          "needs this name")
    return check_writable(path, f"a file name ending in {', '.join(CATALOG_FORMATS)}")


def check_writable(path, name_hint: str = "a file name") -> Path:
    """Refuse a path that is a folder, or whose folder is missing or not writable
    (checked by creating and removing a temporary file in it).  ``name_hint``
    says what a good name looks like, for the folder case."""
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
    probe = _tmp_name(path)
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot create files in {parent} ({exc.strerror})") from None
    probe.unlink(missing_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp_to_final: list[tuple[Path, Path]]) -> None:
    """fsync each finished temporary file, rename it into place, fsync the folder."""
    for tmp, _ in tmp_to_final:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    for tmp, final in tmp_to_final:
        os.replace(tmp, final)
    _fsync_dir(tmp_to_final[0][1].parent)


# ------------------------------------------------------------------------ metadata

def check_meta(meta: Mapping) -> dict:
    """Metadata as written: upper-case FITS keywords -> str/int/float/bool.

    Raises ValueError for a key that is not a FITS keyword (or one the writer
    owns), for a value of another type or a non-finite float, and for a DATE
    value that is not a FITS date: metadata come from the program, not the
    user, so this is a bug to fix where they are made.
    """
    out = {}
    for key, value in meta.items():
        k = str(key).upper()
        if not _KEYWORD.fullmatch(k) or _RESERVED.fullmatch(k):
            raise ValueError(f"catalog metadata key {key!r} is not usable as a FITS keyword "
                             "(1-8 characters of A-Z 0-9 _ -, not a structural keyword)")
        if k in out:
            raise ValueError(f"catalog metadata key {key!r} appears twice (case-insensitive)")
        if isinstance(value, (bool, np.bool_)):
            value = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"catalog metadata {k} = {value}: FITS headers hold finite "
                                 "numbers only")
        elif isinstance(value, str):
            if _DATE_KEY.fullmatch(k) and not _DATE_VALUE.fullmatch(value):
                raise ValueError(f"catalog metadata {k} = {value!r}: FITS dates are "
                                 "'YYYY-MM-DD' or 'YYYY-MM-DDThh:mm:ss[.fff]' (UTC, no zone)")
        else:
            raise ValueError(f"catalog metadata {k} = {value!r}: values must be str, int, "
                             "float or bool")
        out[k] = value
    return out


def _ascii(text: str) -> str:
    """Printable ASCII: other characters as Python escapes."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if (" " <= c <= "~") else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _meta_cards(meta: dict):
    """(keyword, value, comment) for FITS headers; str values made printable ASCII."""
    for k, v in meta.items():
        yield k, (_ascii(v) if isinstance(v, str) else v), _META_COMMENTS.get(k, "")


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


def _unit_text(col) -> str | None:
    unit = getattr(col, "unit", None)
    if unit is None:
        return None
    try:
        return unit.to_string(format="fits")
    except (ValueError, AttributeError):
        return str(unit)


def _values_and_mask(col):
    """(data ndarray, mask ndarray or None) of any table column (mixins as arrays)."""
    if isinstance(col, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(col)
        data = np.asarray(col.data)
        return data, (mask if mask.any() else None)
    data = np.asarray(col)
    return data, None


def _as_text(data: np.ndarray) -> np.ndarray:
    """Anything that is not a number or bool, as a unicode array."""
    if data.dtype.kind == "U":
        return data
    if data.dtype.kind == "S":
        return np.char.decode(data, "utf-8", "backslashreplace")
    if data.dtype.kind == "M":
        return np.datetime_as_string(data)
    return np.array([str(v) for v in data.ravel()], dtype=str).reshape(data.shape)


# ---------------------------------------------------------------------------- FITS

class _FitsColumn:
    """One BINTABLE field: TFORM and cards, and the conversion of a row range."""

    def __init__(self, ttype: str, col):
        data, mask = _values_and_mask(col)
        self.ttype = ttype
        self.cards: list[tuple[str, object, str]] = []
        self.mask = mask
        shape = data.shape[1:]
        kind = data.dtype.kind
        if kind not in "biufc":
            self._text(data, mask)
        elif kind == "b":
            self.dtype, self.code = np.dtype("u1"), "L"
            self.data = data
            self.convert = self._bool
        elif kind in "iu":
            self._integer(data, mask)
        elif kind == "f":
            self.dtype = np.dtype(">f8" if data.dtype.itemsize > 4 else ">f4")
            self.code = "D" if data.dtype.itemsize > 4 else "E"
            self.data = data
            self.convert = self._float
        else:  # complex
            self.dtype = np.dtype(">c16" if data.dtype.itemsize > 8 else ">c8")
            self.code = "M" if data.dtype.itemsize > 8 else "C"
            self.data = data
            self.convert = self._float
        if self.code != "A":
            self.shape = shape
            repeat = int(np.prod(shape, dtype=np.int64)) if shape else 1
            self.tform = f"{repeat}{self.code}" if shape else self.code
            if len(shape) > 1:
                self.cards.append(("TDIM", "(" + ",".join(map(str, shape[::-1])) + ")", ""))
        self.nbytes_row = self.dtype.itemsize * (int(np.prod(self.shape)) if self.shape else 1)

    def _text(self, data, mask):
        text = _as_text(data)
        if text.size and text.dtype.itemsize:
            codes = np.ascontiguousarray(text).view(np.uint32)
            clean = bool(np.all(((codes >= 32) & (codes <= 126)) | (codes == 0)))
            if not clean:
                text = np.vectorize(_ascii, otypes=[str])(text)
        width = max(1, int(np.char.str_len(text).max())) if text.size else 1
        self.data = text.astype(f"S{width}")
        if mask is not None:
            self.data[mask] = b""
        self.dtype, self.code, self.shape = np.dtype(f"S{width}"), "A", text.shape[1:]
        repeat = width * (int(np.prod(self.shape)) if self.shape else 1)
        self.tform = f"{repeat}A"
        if self.shape:
            self.cards.append(("TDIM", "(" + ",".join(map(str, (width, *self.shape[::-1]))) + ")",
                               ""))
        self.convert = self._plain
        self.mask = None

    def _integer(self, data, mask):
        dt = data.dtype
        tzero = 0
        if dt == np.int8:
            data, dt = data.astype(np.int16), np.dtype(np.int16)
        if dt == np.uint8:
            self.dtype, self.code = np.dtype("u1"), "B"
        elif dt.kind == "u":
            bits = dt.itemsize * 8
            tzero = 1 << (bits - 1)
            self.dtype = np.dtype(f">i{dt.itemsize}")
            self.code = {16: "I", 32: "J", 64: "K"}[bits]
            # Stored value = value - TZERO: flipping the top bit does exactly that.
            data = (data.astype(dt.newbyteorder("=")) ^ np.array(tzero, dtype=dt)).view(
                f"i{dt.itemsize}")
        else:
            self.dtype = np.dtype(f">i{dt.itemsize}")
            self.code = {2: "I", 4: "J", 8: "K"}[dt.itemsize]
        self.data = data
        if tzero:
            self.cards.append(("TZERO", tzero, "offset for unsigned integers"))
        if mask is not None:
            null = self._null_value(data, mask)
            if null is None:  # every stored value is in use: widen (uint8 -> int16)
                wide = np.dtype(">i2") if self.dtype.itemsize == 1 else None
                if wide is None:
                    raise ValueError(f"column {self.ttype!r}: no integer left for TNULL")
                self.dtype, self.code, self.data = wide, "I", data.astype(np.int16)
                null = self._null_value(self.data, mask)
            self.null = null
            self.cards.append(("TNULL", int(null), "stored value of masked cells"))
            self.convert = self._masked_int
        else:
            self.convert = self._plain

    def _null_value(self, data, mask):
        info = np.iinfo(self.dtype)
        used = data[~mask]
        for candidate in (info.min, info.max):
            if not np.any(used == candidate):
                return candidate
        values = np.unique(used)
        if values.size >= int(info.max) - int(info.min) + 1:
            return None
        gaps = np.nonzero(np.diff(values) > 1)[0]
        return int(values[gaps[0]]) + 1

    # Row-range conversions to the stored (big-endian) representation.
    def _plain(self, a, b):
        return self.data[a:b].astype(self.dtype, copy=False)

    def _bool(self, a, b):
        out = np.where(self.data[a:b], np.uint8(84), np.uint8(70))  # 'T' / 'F'
        if self.mask is not None:
            out[self.mask[a:b]] = 0  # FITS null logical
        return out

    def _float(self, a, b):
        out = self.data[a:b].astype(self.dtype)
        if self.mask is not None:
            out[self.mask[a:b]] = np.nan
        return out

    def _masked_int(self, a, b):
        out = self.data[a:b].astype(self.dtype)
        out[self.mask[a:b]] = self.null
        return out


def _fits_names(names: list[str]) -> list[str]:
    """Column names fitsverify accepts: letters, digits, '_', unique ignoring case."""
    out, seen = [], set()
    for name in names:
        clean = re.sub(r"[^A-Za-z0-9_]", "_", _ascii(name)) or "col"
        candidate, n = clean, 1
        while candidate.upper() in seen:
            n += 1
            candidate = f"{clean}_{n}"
        seen.add(candidate.upper())
        out.append(candidate)
    return out


def _card(key: str, value, comment: str):
    """A header card; the comment is dropped when it would not fit (never truncated)."""
    import warnings

    from astropy.io.fits import Card
    from astropy.io.fits.verify import VerifyWarning

    card = Card(key, value, comment)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VerifyWarning)
        try:
            card.image  # noqa: B018 -- formats the card, warning if the comment is cut
        except VerifyWarning:
            card = Card(key, value)
    return card


def _fits_header(columns: list[_FitsColumn], table, nrows: int, meta: dict):
    from astropy.io.fits import Card, Header

    h = Header()
    h.append(Card("XTENSION", "BINTABLE", "binary table extension"))
    h.append(Card("BITPIX", 8, "array data type"))
    h.append(Card("NAXIS", 2, "number of array dimensions"))
    h.append(Card("NAXIS1", sum(c.nbytes_row for c in columns), "bytes per row"))
    h.append(Card("NAXIS2", nrows, "number of rows"))
    h.append(Card("PCOUNT", 0, "size of special data area"))
    h.append(Card("GCOUNT", 1, "one data group"))
    h.append(Card("TFIELDS", len(columns), "number of columns"))
    for i, (c, name) in enumerate(zip(columns, table.colnames, strict=True), start=1):
        col = table[name]
        h.append(Card(f"TTYPE{i}", c.ttype, ""))
        h.append(Card(f"TFORM{i}", c.tform, ""))
        unit = _unit_text(col)
        if unit:
            h.append(Card(f"TUNIT{i}", _ascii(unit), ""))
        for key, value, comment in c.cards:
            h.append(_card(f"{key}{i}", value, comment))
        description = getattr(col.info, "description", None)
        if description:
            h.append(_card(f"TCOMM{i}", _ascii(str(description)), ""))
    h.append(Card("EXTNAME", "CATALOG", "pyengine scan catalog"))
    for key, value, comment in _meta_cards(meta):
        h.append(_card(key, value, comment))
    text = h.tostring(sep="", endcard=True, padding=True)
    if "CONTINUE" in text:
        h.insert("EXTNAME", Card("LONGSTRN", "OGIP 1.0", "long strings use CONTINUE"),
                 after=True)
        text = h.tostring(sep="", endcard=True, padding=True)
    return text.encode("ascii")


_PRIMARY = None


def _primary_header() -> bytes:
    global _PRIMARY
    if _PRIMARY is None:
        from astropy.io.fits import Card, Header

        h = Header([Card("SIMPLE", True, "conforms to FITS standard"),
                    Card("BITPIX", 8, "array data type"),
                    Card("NAXIS", 0, "no data in the primary HDU"),
                    Card("EXTEND", True, "the catalog is in extension 1")])
        _PRIMARY = h.tostring(sep="", endcard=True, padding=True).encode("ascii")
    return _PRIMARY


def _write_fits(table, meta: dict, fh, rows_per_block: int = 1 << 18) -> None:
    nrows = len(table)
    names = _fits_names(table.colnames)
    columns = [_FitsColumn(n, table[c]) for n, c in zip(names, table.colnames, strict=True)]
    header = _fits_header(columns, table, nrows, meta)
    fh.write(_primary_header())
    fh.write(header)
    row = np.dtype([(f"f{i}", c.dtype, c.shape) for i, c in enumerate(columns)])
    if row.itemsize != sum(c.nbytes_row for c in columns):  # packed, no alignment
        raise AssertionError("BINTABLE row layout is not packed")
    for a in range(0, nrows, rows_per_block):
        b = min(nrows, a + rows_per_block)
        block = np.empty(b - a, dtype=row)
        for i, c in enumerate(columns):
            block[f"f{i}"] = c.convert(a, b)
        fh.write(memoryview(block).cast("B"))
    size = row.itemsize * nrows
    fh.write(b"\0" * (-size % 2880))


# ----------------------------------------------------------------- ECSV, CSV, Parquet

def _decode_bytes(table):
    """A shallow copy whose bytes columns are text (UTF-8; other bytes as \\xNN escapes)."""
    from astropy.table import Column, MaskedColumn, Table

    out = Table(table, copy=False)
    for name in out.colnames:
        col = out[name]
        if getattr(col, "dtype", None) is not None and col.dtype.kind == "S":
            data, mask = _values_and_mask(col)
            text = _as_text(data)
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
        data, mask = _values_and_mask(col)
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
        columns[name] = {"unit": _unit_text(col),
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
            data, mask = _values_and_mask(col)
            text = data.astype(str)
            plain[name] = (MaskedColumn(text, mask=mask) if mask is not None
                           else Column(text))
        plain[name].unit = None
    plain.meta.clear()
    plain.write(fh, format="ascii.csv")


def _arrow_array(col, pa):
    data, mask = _values_and_mask(col)
    shape = data.shape[1:]
    kind = data.dtype.kind
    if kind not in "biuf":
        text = _as_text(data)
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
        unit = _unit_text(col)
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
    path = check_output(path)
    fmt = _format(path)
    if not overwrite and path.exists():
        raise OutputError(f"{path}: exists; remove it or allow overwriting")
    meta = check_meta(table.meta)
    prepared, meta = _prepare(table, meta)
    tmp = _tmp_name(path)
    made = [tmp]
    try:
        if fmt == "parquet":
            _write_parquet(prepared, meta, tmp)
            _publish([(tmp, path)])
            return path
        if fmt == "fits":
            with open(tmp, "xb") as fh:
                _write_fits(prepared, meta, fh)
            _publish([(tmp, path)])
            return path
        with open(tmp, "x", encoding="utf-8", newline="") as fh:
            if fmt == "ecsv":
                _write_ecsv(prepared, meta, fh)
            else:
                _write_csv(_csv_table(prepared), fh)
        if fmt == "ecsv":
            _publish([(tmp, path)])
            return path
        side = _tmp_name(_sidecar(path))
        made.append(side)
        with open(side, "x", encoding="utf-8") as fh:
            fh.write(_sidecar_text(_csv_table(prepared), meta))
        _publish([(side, _sidecar(path)), (tmp, path)])
        return path
    except OSError as exc:
        raise OutputError(f"{path}: writing the catalog failed ({exc.strerror or exc})") from None
    finally:
        for t in made:
            t.unlink(missing_ok=True)
