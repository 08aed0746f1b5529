"""FITS header cards and the BINTABLE writer of the catalog (and the metadata rules the
score map shares).

:func:`check_meta` enforces the metadata contract of :mod:`pyengine.output.catalog`
(FITS keywords, str/int/float/bool values, FITS dates); :func:`write_bintable`
writes an empty primary HDU and one ``BINTABLE`` (``EXTNAME = 'CATALOG'``) to an
open binary file, with the column conventions described in
:mod:`pyengine.output.catalog` (``L`` booleans with FITS nulls, ``TNULLn`` for masked
integers, NaN for masked floats, ``TZEROn`` for unsigned integers, printable-ASCII
escapes, fitsverify-clean names).  It is pyengine's own writer, not astropy's table
writer, which turns int8 into logicals and drops masks of booleans.

Thread safety: pure functions of their arguments, except a header cached once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

__all__ = ["as_text", "ascii_text", "check_meta", "header_card", "meta_cards", "unit_text",
           "values_and_mask", "write_bintable", "writer_keyword"]

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


# ------------------------------------------------------------------------ metadata

def writer_keyword(key) -> bool:
    """Whether ``key`` is one the FITS writer sets itself (structure, column cards, LONGSTRN),
    so metadata read back from a written catalog must drop it before writing again."""
    return bool(_RESERVED.fullmatch(str(key).upper())) or str(key).upper() in ("COMMENT",
                                                                               "HISTORY")


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


def ascii_text(text: str) -> str:
    """Printable ASCII: other characters as Python escapes."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c if (" " <= c <= "~") else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def meta_cards(meta: dict):
    """(keyword, value, comment) for FITS headers; str values made printable ASCII."""
    for k, v in meta.items():
        yield k, (ascii_text(v) if isinstance(v, str) else v), _META_COMMENTS.get(k, "")



def unit_text(col) -> str | None:
    unit = getattr(col, "unit", None)
    if unit is None:
        return None
    try:
        return unit.to_string(format="fits")
    except (ValueError, AttributeError):
        return str(unit)


def values_and_mask(col):
    """(data ndarray, mask ndarray or None) of any table column (mixins as arrays)."""
    if isinstance(col, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(col)
        data = np.asarray(col.data)
        return data, (mask if mask.any() else None)
    data = np.asarray(col)
    return data, None


def as_text(data: np.ndarray) -> np.ndarray:
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
        data, mask = values_and_mask(col)
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
        text = as_text(data)
        if text.size and text.dtype.itemsize:
            codes = np.ascontiguousarray(text).view(np.uint32)
            clean = bool(np.all(((codes >= 32) & (codes <= 126)) | (codes == 0)))
            if not clean:
                text = np.vectorize(ascii_text, otypes=[str])(text)
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
        clean = re.sub(r"[^A-Za-z0-9_]", "_", ascii_text(name)) or "col"
        candidate, n = clean, 1
        while candidate.upper() in seen:
            n += 1
            candidate = f"{clean}_{n}"
        seen.add(candidate.upper())
        out.append(candidate)
    return out


def header_card(key: str, value, comment: str):
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
        unit = unit_text(col)
        if unit:
            h.append(Card(f"TUNIT{i}", ascii_text(unit), ""))
        for key, value, comment in c.cards:
            h.append(header_card(f"{key}{i}", value, comment))
        description = getattr(col.info, "description", None)
        if description:
            h.append(header_card(f"TCOMM{i}", ascii_text(str(description)), ""))
    h.append(Card("EXTNAME", "CATALOG", "pyengine scan catalog"))
    for key, value, comment in meta_cards(meta):
        h.append(header_card(key, value, comment))
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


def write_bintable(table, meta: dict, fh, rows_per_block: int = 1 << 18) -> None:
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
