"""Streaming, atomic FITS image writer.

A :class:`FitsWriter` lays out one or more image HDUs whose shapes are known up
front, writes their headers, and then takes the data a block of rows at a time
(rows along the slowest FITS axis, i.e. the first NumPy axis), converting each
block to big-endian bytes of the HDU's BITPIX on the way.  Because every HDU's
place in the file is fixed when the writer opens, the rows of different HDUs
may be interleaved (a multi-extension file with one band per extension is
written band by band for each strip), and memory never holds more than the
block being written.

Integer HDUs may carry BSCALE/BZERO/BLANK: the writer then takes physical
values, stores ``round((value - BZERO) / BSCALE)`` (round half to even),
clips values outside the integer range (counted in :attr:`FitsWriter.clipped`)
and writes BLANK for NaN.  The scaling uses the values as they will be read
back from the header cards, so a reader recovers exactly
``BZERO + BSCALE * stored``.

Writes are atomic: data go to a hidden temporary file in the destination's
folder (``.NAME.PID.RANDOM.part``), which is renamed over the destination only
when every row of every HDU has been written and flushed to disk.  An error
(or a context-manager exit by exception) deletes the temporary file; a killed
process leaves only the hidden ``.part`` file, never a file that looks
complete under the final name.

Thread safety: a FitsWriter is not thread-safe; use each from one thread at a
time.  Different writers on different files may run concurrently.  Everything
here is Python and NumPy: conversions hold the GIL, file writes release it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io.fits import Card, Header

from pyengine.atomic import publish, temporary_beside

__all__ = ["BLOCK", "FitsWriter", "ImageSpec", "write_image"]

#: FITS block size: headers and data are padded to multiples of it.
BLOCK = 2880

# NumPy dtype name -> BITPIX.  Unsigned 16/32/64-bit types are not native FITS
# types (they need the BZERO offset convention) and are refused.
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}

# Cards the writer owns: a header passed in must not redefine the structure.
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT",
               "BSCALE", "BZERO", "BLANK", "END"}


def _is_structural(keyword: str) -> bool:
    k = keyword.upper()
    return k in _STRUCTURAL or (k.startswith("NAXIS") and k[5:].isdigit())


@dataclass(frozen=True)
class ImageSpec:
    """One image HDU: shape in NumPy order (slowest axis first), type and header.

    ``shape=()`` makes a header-only HDU (NAXIS = 0), e.g. the empty primary of a
    multi-extension file.  ``header`` holds the other cards (WCS, EXTNAME, ...);
    structural cards in it (BITPIX, NAXISn, BSCALE, ...) are ignored, the writer
    derives them.  ``bscale``, ``bzero`` and ``blank`` are for integer types only.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    header: Header | None = None
    bscale: float | None = None
    bzero: float | None = None
    blank: int | None = None

    def __post_init__(self):
        if self.dtype not in _BITPIX:
            raise ValueError(f"dtype must be one of {sorted(_BITPIX)}; got {self.dtype!r}")
        if any((not isinstance(n, (int, np.integer))) or n < 1 for n in self.shape):
            raise ValueError(f"shape must be positive integers; got {self.shape!r}")
        integer = _BITPIX[self.dtype] > 0
        if not integer and (self.bscale is not None or self.bzero is not None
                            or self.blank is not None):
            raise ValueError("bscale, bzero and blank apply to integer dtypes only")
        if self.bscale is not None and not (np.isfinite(self.bscale) and self.bscale != 0):
            raise ValueError(f"bscale must be finite and non-zero; got {self.bscale!r}")
        if self.blank is not None:
            info = np.iinfo(self.dtype)
            if not info.min <= self.blank <= info.max:
                raise ValueError(f"blank {self.blank} does not fit {self.dtype}")

    @property
    def bitpix(self) -> int:
        return _BITPIX[self.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes of data, before padding (0 for a header-only HDU)."""
        if not self.shape:
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _build_header(spec: ImageSpec, primary: bool) -> Header:
    """The HDU's header: mandatory cards in the standard's order, then the caller's."""
    h = Header()
    if primary:
        h.append(Card("SIMPLE", True, "conforms to FITS standard"))
    else:
        h.append(Card("XTENSION", "IMAGE", "image extension"))
    h.append(Card("BITPIX", spec.bitpix, "array data type"))
    h.append(Card("NAXIS", len(spec.shape), "number of array dimensions"))
    for i, n in enumerate(reversed(spec.shape)):
        h.append(Card(f"NAXIS{i + 1}", int(n)))
    if primary:
        h.append(Card("EXTEND", True, "FITS dataset may contain extensions"))
    else:
        h.append(Card("PCOUNT", 0, "number of parameters"))
        h.append(Card("GCOUNT", 1, "number of groups"))
    if spec.bscale is not None:
        h.append(Card("BSCALE", float(spec.bscale), "physical = BZERO + BSCALE * stored"))
    if spec.bzero is not None:
        h.append(Card("BZERO", float(spec.bzero), "physical = BZERO + BSCALE * stored"))
    if spec.blank is not None:
        h.append(Card("BLANK", int(spec.blank), "stored value of undefined pixels"))
    if spec.header is not None:
        for card in spec.header.cards:
            if not _is_structural(card.keyword):
                h.append(card, end=True)
    return h


class AtomicOutput:
    """Context-manager protocol for atomic writers: ``close()`` (publish) on success,
    ``abort()`` (delete the temporary output) when the block raises."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FitsWriter(AtomicOutput):
    """Write image HDUs of known shape block by block, then rename into place.

    Use as a context manager::

        specs = [ImageSpec((), header=primary), ImageSpec((ny, nx), header=h)]
        with FitsWriter("field.fits", specs) as w:
            for y0 in range(0, ny, 256):
                w.write_rows(1, y0, block)     # rows y0 .. y0 + len(block) - 1

    Rows of each HDU must arrive in order (``start`` equal to the number of rows
    already written).  Leaving the ``with`` block normally renames the finished
    file into place (existing files are replaced); leaving it by an exception,
    or with rows missing, removes the temporary file (the latter raises).
    """

    def __init__(self, path: str | os.PathLike, images: Sequence[ImageSpec]):
        if not images:
            raise ValueError("a FITS file needs at least one HDU")
        self.path = Path(path)
        self.specs = tuple(images)
        self._headers = []
        self._data_offset = []
        offset = 0
        for k, spec in enumerate(self.specs):
            text = _build_header(spec, primary=(k == 0)).tostring(
                sep="", endcard=True, padding=True).encode("ascii")
            self._headers.append((offset, text))
            offset += len(text)
            self._data_offset.append(offset)
            offset += _padded(spec.nbytes)
        self.size = offset
        # Scale factors as a reader will parse them from the cards, so that
        # reading back gives exactly BZERO + BSCALE * stored.
        self._scaling = []
        for _, text in self._headers:
            parsed = Header.fromstring(text.decode("ascii"))
            self._scaling.append((float(parsed.get("BSCALE", 1.0)),
                                  float(parsed.get("BZERO", 0.0))))
        self._rows_done = [0] * len(self.specs)
        #: Values clipped to the integer range, per HDU.
        self.clipped = [0] * len(self.specs)
        self._tmp = temporary_beside(self.path)
        self._fh = open(self._tmp, "xb")  # noqa: SIM115 -- closed by close()/abort()
        try:
            for off, text in self._headers:
                self._fh.seek(off)
                self._fh.write(text)
            # Zero-filled (sparse) to the final size: data padding is zeros.
            self._fh.truncate(self.size)
        except BaseException:
            self.abort()
            raise

    @property
    def rows_written(self) -> tuple[int, ...]:
        """Rows written so far, per HDU."""
        return tuple(self._rows_done)

    def header(self, hdu: int) -> Header:
        """The header HDU ``hdu`` is written with."""
        return Header.fromstring(self._headers[hdu][1].decode("ascii"))

    def _encode(self, hdu: int, data: np.ndarray) -> np.ndarray:
        spec = self.specs[hdu]
        target = np.dtype(spec.dtype).newbyteorder(">")
        if spec.bitpix < 0:
            return data.astype(target, copy=False)
        if spec.bscale is None and spec.bzero is None and spec.blank is None:
            if not np.issubdtype(data.dtype, np.integer):
                raise TypeError(f"HDU {hdu} is {spec.dtype} without scaling: write integers, "
                                f"not {data.dtype}")
            return data.astype(target, casting="safe", copy=False)
        bscale, bzero = self._scaling[hdu]
        info = np.iinfo(spec.dtype)
        lo = info.min + 1 if spec.blank == info.min else info.min
        hi = info.max - 1 if spec.blank == info.max else info.max
        stored = np.rint((np.asarray(data, dtype=np.float64) - bzero) / bscale)
        bad = np.isnan(stored)
        if spec.blank is None and bad.any():
            raise ValueError(f"HDU {hdu} has NaN values but no BLANK")
        stored[bad] = 0.0
        out_of_range = (stored < lo) | (stored > hi)
        self.clipped[hdu] += int(np.count_nonzero(out_of_range))
        np.clip(stored, lo, hi, out=stored)
        out = stored.astype(target)
        if spec.blank is not None:
            out[bad] = spec.blank
        return out

    def write_rows(self, hdu: int, start: int, data) -> None:
        """Write ``data`` (rows along the first axis) as rows ``start`` onwards of ``hdu``."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is closed")
        spec = self.specs[hdu]
        data = np.asarray(data)
        if not spec.shape:
            raise ValueError(f"HDU {hdu} has no data")
        if data.ndim != len(spec.shape) or data.shape[1:] != tuple(spec.shape[1:]):
            raise ValueError(f"HDU {hdu}: rows of shape {tuple(spec.shape[1:])} expected, "
                             f"got a block of shape {data.shape}")
        if start != self._rows_done[hdu]:
            raise ValueError(f"HDU {hdu}: rows must be written in order; next is "
                             f"{self._rows_done[hdu]}, got start={start}")
        if start + data.shape[0] > spec.shape[0]:
            raise ValueError(f"HDU {hdu}: rows {start}..{start + data.shape[0] - 1} exceed "
                             f"the {spec.shape[0]} rows of the image")
        if data.shape[0] == 0:
            return
        row_bytes = spec.nbytes // spec.shape[0]
        encoded = np.ascontiguousarray(self._encode(hdu, data))
        self._fh.seek(self._data_offset[hdu] + start * row_bytes)
        self._fh.write(memoryview(encoded).cast("B"))
        self._rows_done[hdu] += data.shape[0]

    def close(self) -> Path:
        """Check every row was written, flush to disk and rename into place."""
        if self._fh is None:
            return self.path
        missing = [k for k, s in enumerate(self.specs)
                   if s.shape and self._rows_done[k] != s.shape[0]]
        if missing:
            k = missing[0]
            self.abort()
            raise ValueError(f"{self.path}: HDU {k} has {self._rows_done[k]} of "
                             f"{self.specs[k].shape[0]} rows; file not written")
        try:
            self._fh.close()
            self._fh = None
            publish([(self._tmp, self.path)])  # fsync, rename, fsync the folder
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Close and delete the temporary file; the destination is left untouched."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)


def write_image(path: str | os.PathLike, data, header: Header | None = None, *,
                dtype: str | None = None, rows_per_block: int = 1024) -> Path:
    """Write one in-memory image as a single-HDU FITS file, atomically.

    ``dtype`` defaults to the array's own type (which must be one FITS supports).
    """
    data = np.asarray(data)
    spec = ImageSpec(tuple(data.shape), dtype or data.dtype.name, header)
    with FitsWriter(path, [spec]) as w:
        for y0 in range(0, data.shape[0], rows_per_block):
            w.write_rows(0, y0, data[y0:y0 + rows_per_block])
    return Path(path)
