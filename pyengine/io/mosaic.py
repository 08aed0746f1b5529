"""Mosaic: the band images of one field, read window by window as float32.

``Mosaic.open(paths)`` takes one image per band, each a path or ``path[ext]``
(extension number or EXTNAME), checks that every band is a 2-D image on one
pixel grid (same shape, same celestial WCS within a tolerance) and reads
nothing but headers.  ``Mosaic.read(y0, y1, x0, x1)`` returns the window
``(nband, y1 - y0, x1 - x0)`` as native float32 with BSCALE/BZERO applied,
BLANK and off-image pixels as NaN.  Nothing ever reads, copies or scales a
whole image.

Two paths, one decode (pyengine.kernels.decode):
  * uncompressed images: a read-only memory map of the raw big-endian data;
    a Numba kernel swaps bytes, maps BLANK and scales in one pass straight
    into the caller's buffer.  Mapped pages are given back (madvise
    DONTNEED; they stay in the page cache) when reads move down the file and
    whenever a band's estimate of mapped bytes passes its share of
    ``MAPPED_BUDGET`` (320 MB per mosaic), so resident memory is bounded by
    configuration, not by the mosaic, while neighbouring tiles read in file
    order still share the pages the kernel maps around each fault.
  * tile-compressed images (RICE, GZIP, HCOMPRESS, PLIO; .fits.fz): cfitsio
    subset reads through fitsio with scaling switched off, one handle per
    thread, then the same decode kernel.

Inputs that change under a read.  Every band keeps a descriptor of its file
and checks it (``fstat``) before and after each read: a file shorter than when
it was opened, or written since (mtime), stops the read with a one-line
:class:`pyengine.errors.InputChangedError` naming the file, instead of a
SIGBUS on a mapped page past the new end (which kills the process without a
word) or a window of mixed old and new pixels (:mod:`pyengine.io.inputguard`).
A truncation racing with a read can still fault: ``install_sigbus_handler``
there (``pyengine scan`` calls it; importing the library does not) turns that
fault into one line naming the file.  A file replaced by a rename is
harmless to a map (it keeps the old bytes); a compressed band refuses to open a
new per-thread handle on a replaced file.

Thread safety: ``read`` may be called from any number of threads at once.
Memory-mapped bands share one read-only map; compressed bands open one fitsio
handle per thread.  One call at a time decodes on Numba's thread pool
(rows in parallel, holding the process-wide lock of pyengine.kernels.pool,
which the tiling kernel shares); calls that find the pool busy decode on
their own thread.  Decoding and cfitsio reads run without the GIL.  ``close`` must not
race with ``read``.
"""

from __future__ import annotations

import mmap
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from pyengine.bands import BandImage, band_contradictions, check_band_names, default_band_names
from pyengine.errors import (
    BandWarning,
    ConfigError,
    FitsFormatError,
    InputChangedError,
    InputFileError,
    MosaicMismatchError,
    WCSError,
)
from pyengine.io.fitsfile import HDUInfo, image_header, parse_spec, scan_hdus, select_image
from pyengine.io.inputguard import FileGuard, register_map, unregister_map
from pyengine.kernels.decode import (
    MODE_PLAIN,
    MODE_SCALED,
    MODE_UINT64,
    decode_parallel,
    decode_serial,
    native_view_dtype,
)
from pyengine.kernels.pool import POOL as _POOL  # held while a kernel runs on Numba's pool

__all__ = ["Mosaic", "celestial_wcs", "wcs_offset"]

# Windows smaller than this many pixels decode on the calling thread: the
# thread pool's start-up costs more than it saves.
_PARALLEL_MIN_PIXELS = 1 << 16
_PAGE = mmap.PAGESIZE
_FAULT_AROUND = 64 << 10  # Linux maps up to this much around a page fault
# Mapped file pages allowed per mosaic (split between its bands) before a full release.
MAPPED_BUDGET = 320 << 20
# (file, HDU, band given) -> the open mosaics that carry that contradiction: while one
# is open, a mosaic reopened from it (Engine.prepared's band order) does not warn again.
_WARNED: dict[tuple, weakref.WeakSet] = {}


@dataclass(frozen=True)
class _Scaling:
    """How stored values become physical ones (see kernels.decode)."""

    bitpix: int
    mode: int
    bscale: float
    bzero: float
    blank: int
    has_blank: bool

    @classmethod
    def from_header(cls, header: fits.Header, where: str) -> _Scaling:
        bitpix = int(header["BITPIX"])
        bscale = float(header.get("BSCALE", 1.0))
        bzero = float(header.get("BZERO", 0.0))
        blank = header.get("BLANK") if bitpix > 0 else None
        if blank is not None and not isinstance(blank, int | np.integer):
            raise FitsFormatError(f"{where}: BLANK = {blank!r} is not an integer")
        if bscale == 0.0:
            raise FitsFormatError(f"{where}: BSCALE = 0; a non-zero scale is needed")
        if bitpix == 64 and bscale == 1.0 and bzero == 2.0**63:
            mode = MODE_UINT64
        elif bscale != 1.0 or bzero != 0.0 or blank is not None:
            mode = MODE_SCALED
        else:
            mode = MODE_PLAIN
        return cls(bitpix, mode, bscale, bzero, int(blank or 0), blank is not None)

    def decode(self, raw, y0, x0, out, oy, ox, h, w, *, swap: bool, parallel: bool) -> None:
        """raw[y0:y0+h, x0:x0+w] -> out[oy:oy+h, ox:ox+w] (see kernels.decode)."""
        args = (raw, y0, x0, out, oy, ox, h, w, swap, self.mode, self.bscale, self.bzero,
                self.blank, self.has_blank)
        if parallel and h * w >= _PARALLEL_MIN_PIXELS and _POOL.acquire(blocking=False):
            try:
                decode_parallel(*args)
            finally:
                _POOL.release()
        else:
            decode_serial(*args)


class _MemmapBand:
    """An uncompressed image read through a read-only memory map."""

    compressed = False

    def __init__(self, path: Path, info: HDUInfo, shape, scaling: _Scaling):
        self.path, self.shape, self.scaling = path, shape, scaling
        itemsize = abs(scaling.bitpix) // 8
        # mmap offsets must be page-aligned: map from the page holding the data start.
        self._start = info.data_offset - info.data_offset % _PAGE
        self._skip = info.data_offset - self._start
        length = self._skip + shape[0] * shape[1] * itemsize
        self._guard = FileGuard(path)
        try:
            self._map = mmap.mmap(self._guard.fd, length, access=mmap.ACCESS_READ,
                                  offset=self._start)
        except BaseException:
            self._guard.close()
            raise
        self._row_bytes = shape[1] * itemsize
        self._itemsize = itemsize
        self._lock = threading.Lock()
        # Rows [lo, hi) may be mapped; an upper estimate of the bytes mapped there.
        self._mapped_lo, self._mapped_hi, self._mapped_bytes = None, 0, 0
        self.mapped_budget = MAPPED_BUDGET  # Mosaic.open divides it between the bands
        self._raw = np.frombuffer(self._map, dtype=native_view_dtype(scaling.bitpix),
                                  count=shape[0] * shape[1], offset=self._skip).reshape(shape)
        # Where the map lies, for the SIGBUS handler's message (install_sigbus_handler).
        self._slot = register_map(self._raw.ctypes.data - self._skip, length, path)

    def read_into(self, y0, y1, x0, x1, out, oy, ox, parallel):
        # Checked before (a page past a shrunk file's end would fault) and after (a
        # window decoded while the file was rewritten is not used).
        self._guard.check()
        self.scaling.decode(self._raw, y0, x0, out, oy, ox, y1 - y0, x1 - x0, swap=True,
                            parallel=parallel)
        self._guard.check()
        self._release(y0, y1, x1 - x0)

    def _release(self, y0, y1, ncol):
        """Give back mapped pages (they stay in the page cache) so resident memory is
        bounded by ``mapped_budget`` per band, not by the mosaic.

        Reads in file order (a row of tiles after another) reuse each other's pages:
        the kernel maps 64 KB around every fault, so a tile's faults also map its
        neighbours' columns.  Rows above a read's first row are released once reads
        move down the file; everything is released when the estimate of mapped
        bytes passes the budget.  A concurrent reader of released rows just faults
        them in again.
        """
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        with self._lock:
            lo = self._mapped_lo if self._mapped_lo is not None else y0
            per_row = min(self._row_bytes, ncol * self._itemsize + 2 * _FAULT_AROUND)
            if y0 > lo:  # rows above this window: the file-order scan is past them
                self._madvise_rows(lo, y0)
                self._mapped_bytes = self._mapped_bytes * max(self._mapped_hi - y0, 0) // max(
                    self._mapped_hi - lo, 1)
                lo = y0
            self._mapped_lo = min(lo, y0)
            self._mapped_hi = max(self._mapped_hi, y1)
            self._mapped_bytes += (y1 - y0) * per_row
            if self._mapped_bytes > self.mapped_budget:
                self._madvise_rows(self._mapped_lo, self._mapped_hi)
                self._mapped_lo, self._mapped_hi, self._mapped_bytes = None, 0, 0

    def _madvise_rows(self, y0, y1):
        lo = self._skip + y0 * self._row_bytes
        lo -= lo % _PAGE
        self._map.madvise(mmap.MADV_DONTNEED, lo, self._skip + y1 * self._row_bytes - lo)

    def close(self):
        unregister_map(self._slot)
        self._slot = -1
        self._raw = None
        self._map.close()
        self._guard.close()


class _CompressedBand:
    """A tile-compressed image read through fitsio, one handle per thread."""

    compressed = True

    def __init__(self, path: Path, info: HDUInfo, shape, scaling: _Scaling):
        self.path, self.shape, self.scaling = path, shape, scaling
        self._index = info.index
        self._local = threading.local()
        self._handles: list = []
        self._lock = threading.Lock()
        self._guard = FileGuard(path)
        try:
            self._hdu()  # open once now so errors surface at open time
        except BaseException:
            self._guard.close()
            raise

    def _hdu(self):
        hdu = getattr(self._local, "hdu", None)
        if hdu is None:
            import fitsio

            try:
                st = os.stat(self.path)
                handle = fitsio.FITS(str(self.path))
            except OSError as exc:
                raise InputFileError(f"{self.path}: cfitsio cannot open it ({exc})") from None
            if (st.st_dev, st.st_ino) != self._guard.inode:  # a handle opens the path anew
                handle.close()
                raise InputChangedError(f"{self.path}: the file was replaced by another while "
                                        "it was being read; restore it as it was")
            with self._lock:
                self._handles.append(handle)
            hdu = handle[self._index]
            hdu.ignore_scaling = True  # raw stored values: BLANK and scaling are ours
            self._local.hdu = hdu
        return hdu

    def read_into(self, y0, y1, x0, x1, out, oy, ox, parallel):
        self._guard.check()  # as _MemmapBand: before, and after the read
        try:
            raw = self._hdu()[y0:y1, x0:x1]
        except OSError as exc:
            self._guard.check()
            raise InputFileError(f"{self.path}: cfitsio cannot read rows {y0}..{y1 - 1}, "
                                 f"columns {x0}..{x1 - 1} ({exc})") from None
        self._guard.check()
        if raw.dtype.kind == "f":
            raw = raw.view(np.uint32 if raw.dtype.itemsize == 4 else np.uint64)
        self.scaling.decode(raw, 0, 0, out, oy, ox, y1 - y0, x1 - x0, swap=False,
                            parallel=parallel)

    def close(self):
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()
        self._local = threading.local()
        self._guard.close()


def celestial_wcs(where: str, header: fits.Header, shape) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except (ValueError, KeyError, MemoryError) as exc:
            raise WCSError(f"{where}: astropy cannot interpret its WCS ({exc})") from None
    ctypes = f"CTYPE1 = {wcs.wcs.ctype[0]!r}, CTYPE2 = {wcs.wcs.ctype[1]!r}"
    if not wcs.has_celestial or wcs.wcs.lng < 0 or wcs.wcs.lat < 0:
        raise WCSError(
            f"{where}: no celestial WCS ({ctypes}); both image axes must be sky axes, "
            "e.g. RA---TAN and DEC--TAN"
        )
    wcs.pixel_shape = (shape[1], shape[0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            sky = wcs.pixel_to_world_values((shape[1] - 1) / 2, (shape[0] - 1) / 2)
        except (ValueError, MemoryError) as exc:
            raise WCSError(f"{where}: astropy cannot evaluate its WCS ({exc})") from None
    if not np.all(np.isfinite(sky)):
        raise WCSError(f"{where}: its WCS ({ctypes}) gives no sky position at the image centre")
    return wcs


def wcs_offset(a: WCS, b: WCS, shape) -> float:
    """Largest pixel offset between two WCS over a 5 x 5 grid spanning the image."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        world = a.pixel_to_world_values(gx.ravel(), gy.ravel())
        bx, by = b.world_to_pixel_values(*world)
    d = np.hypot(bx - gx.ravel(), by - gy.ravel())
    return float(np.max(d)) if np.all(np.isfinite(d)) else float("inf")


def _wcs_key_differences(a: WCS, b: WCS) -> list[str]:
    ha, hb = a.to_header(relax=True), b.to_header(relax=True)
    diffs = []
    for key in dict.fromkeys([*ha.keys(), *hb.keys()]):
        va, vb = ha.get(key), hb.get(key)
        same = va == vb
        if not same and isinstance(va, float | int) and isinstance(vb, float | int):
            same = bool(np.isclose(va, vb, rtol=1e-10, atol=0.0))
        if not same and key not in ("DATE-OBS", "MJD-OBS", "DATEREF", "MJDREF"):
            diffs.append(f"{key} ({va!r} vs {vb!r})")
    return diffs


class Mosaic:
    """Band images of one field on one pixel grid.  Use :meth:`open`."""

    def __init__(self, specs, bands, bandreaders, headers, wcs):
        self._specs = tuple(specs)
        self._bands = tuple(bands)
        self._readers = list(bandreaders)
        self._headers = tuple(headers)
        self._wcs = wcs
        self._shape = bandreaders[0].shape

    @classmethod
    def open(cls, paths, bands: Sequence[str] | None = None, *,
             wcs_tolerance: float = 0.05) -> Mosaic:
        """Open one image per band: each a path or ``path[ext]`` (number or EXTNAME).

        ``bands`` names the bands (default: FILTER or BAND header keys, else file
        stems, or EXTNAMEs for several extensions of one file: the rule of
        :mod:`pyengine.bands`); a name that contradicts the image's own FILTER/BAND
        key is used but warned about (:class:`pyengine.errors.BandWarning`; not again
        while a mosaic that warned so is open, e.g. one reopened in the model's band order).  One image (file and HDU, whatever the path)
        given twice is refused (ConfigError).  Bands must share one pixel grid: same
        shape and celestial WCS agreeing within ``wcs_tolerance`` pixels over the image.
        """
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        specs = [os.fspath(p) for p in paths]
        if not specs:
            raise ConfigError("Mosaic.open: no band images given; give one FITS image per band")
        if bands is not None:
            bands = [str(b) for b in bands]
            if len(bands) != len(specs):
                raise ConfigError(
                    f"Mosaic.open: {len(bands)} band names {bands} for {len(specs)} images; "
                    "give one name per image"
                )
        readers, headers, images, wcses = [], [], [], []
        seen: dict[tuple, str] = {}  # (device, inode, HDU) -> the spec that named it
        try:
            for spec in specs:
                path, ext = parse_spec(spec)
                where = spec
                hdus = scan_hdus(path)
                info, shape = select_image(path, hdus, ext)
                cls._check_distinct(spec, path, info.index, seen)
                header = image_header(info)
                scaling = _Scaling.from_header(header, where)
                kind = _CompressedBand if info.kind == "compressed" else _MemmapBand
                readers.append(kind(path, info, shape, scaling))
                headers.append(header)
                images.append(BandImage(path, info.index, info.extname, header))
                wcses.append(celestial_wcs(where, header, shape))
            cls._check_grid(specs, readers, wcses, wcs_tolerance)
            for reader in readers:
                reader.mapped_budget = MAPPED_BUDGET // len(readers)
            if bands is not None:
                names = bands
                check_band_names(names, "given")
                contradictions = band_contradictions(names, images, specs)
                for key, message in contradictions:
                    if not _WARNED.get(key):
                        warnings.warn(message, BandWarning, stacklevel=2)
            else:
                names = default_band_names(images)
                check_band_names(names, "from FILTER/BAND keys or file names")
        except BaseException:
            for reader in readers:
                reader.close()
            raise
        mosaic = cls(specs, names, readers, headers, wcses[0])
        for key, _ in contradictions if bands is not None else ():
            _WARNED.setdefault(key, weakref.WeakSet()).add(mosaic)
        return mosaic

    @staticmethod
    def _check_distinct(spec: str, path: Path, index: int, seen: dict) -> None:
        """Refuse an image given twice: the same HDU of one file, whatever the path
        (``g.fits`` twice, ``g.fits[0]``, a symlink or hard link to it)."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, index)
        if key in seen:
            raise ConfigError(
                f"{spec}: the same image as {seen[key]} (one file, HDU {index}) given as a "
                "second band; each band needs its own image (a model cannot score one "
                "band's pixels as another band's)")
        seen[key] = spec

    @staticmethod
    def _check_grid(specs, readers, wcses, tolerance):
        ref = readers[0].shape
        for spec, reader, wcs in zip(specs[1:], readers[1:], wcses[1:], strict=True):
            if reader.shape != ref:
                raise MosaicMismatchError(
                    f"{spec}: shape {reader.shape[0]} x {reader.shape[1]} (rows x columns) differs "
                    f"from {specs[0]}: {ref[0]} x {ref[1]}; all bands must share one pixel grid"
                )
            offset = wcs_offset(wcses[0], wcs, ref)
            if offset > tolerance:
                keys = "; ".join(_wcs_key_differences(wcses[0], wcs)) or "none (distortion terms?)"
                raise MosaicMismatchError(
                    f"{spec}: WCS differs from {specs[0]} by up to {offset:.3g} px "
                    f"(tolerance {tolerance} px); differing keys: {keys}. All bands must share "
                    "one pixel grid: resample them first"
                )

    # -- properties ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx): rows and columns of every band."""
        return self._shape

    @property
    def bands(self) -> tuple[str, ...]:
        return self._bands

    @property
    def nband(self) -> int:
        return len(self._bands)

    @property
    def wcs(self) -> WCS:
        """The celestial WCS (astropy) of the first band; all bands agree within tolerance."""
        return self._wcs

    @property
    def paths(self) -> tuple[str, ...]:
        return self._specs

    @property
    def headers(self) -> tuple[fits.Header, ...]:
        """Each band's image header (compressed images translated)."""
        return self._headers

    @property
    def compressed(self) -> tuple[bool, ...]:
        return tuple(r.compressed for r in self._readers)

    def __repr__(self):
        ny, nx = self.shape
        return f"Mosaic(bands={list(self._bands)}, shape=({ny}, {nx}), paths={list(self._specs)})"

    # -- reading ------------------------------------------------------------
    def read(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None,
             *, parallel: bool = True) -> np.ndarray:
        """Window rows [y0, y1), columns [x0, x1) of every band as float32 (nband, h, w).

        The window may extend past the image: outside pixels are NaN.  ``out``,
        when given, is filled and returned instead of a new array: it must be a
        writable float32 array of exactly that shape (else ConfigError); any
        strides are accepted (a view into a larger buffer works), but a
        C-contiguous ``out`` is what the C++ gather and ``BatchRing`` read without
        a copy, which is why the scan engine reads every tile into a C-contiguous
        buffer of its pool (:mod:`pyengine.scan.buffers`).  Every pixel of
        ``out`` is written.  ``parallel=False`` keeps the decode on the calling
        thread.
        """
        y0, y1, x0, x1 = (int(v) for v in (y0, y1, x0, x1))
        if y1 < y0 or x1 < x0:
            raise ConfigError(
                f"Mosaic.read: empty or reversed window rows [{y0}, {y1}), columns [{x0}, {x1}); "
                "need y0 <= y1 and x0 <= x1"
            )
        want = (self.nband, y1 - y0, x1 - x0)
        if out is None:
            out = np.empty(want, dtype=np.float32)
        elif not isinstance(out, np.ndarray) or out.shape != want or \
                out.dtype != np.float32 or not out.flags.writeable:
            got = (f"{out.dtype} {out.shape}{'' if out.flags.writeable else ' read-only'}"
                   if isinstance(out, np.ndarray) else type(out).__name__)
            raise ConfigError(
                f"Mosaic.read: out must be a writable float32 array of shape {want}, "
                f"got {got}"
            )
        if self._readers is None:
            raise ConfigError("Mosaic.read: the mosaic is closed")
        ny, nx = self.shape
        cy0, cy1 = min(max(y0, 0), ny), max(min(y1, ny), 0)
        cx0, cx1 = min(max(x0, 0), nx), max(min(x1, nx), 0)
        if cy1 <= cy0 or cx1 <= cx0:
            out.fill(np.nan)
            return out
        # NaN only where the window leaves the image.
        out[:, : cy0 - y0].fill(np.nan)
        out[:, cy1 - y0 :].fill(np.nan)
        out[:, cy0 - y0 : cy1 - y0, : cx0 - x0].fill(np.nan)
        out[:, cy0 - y0 : cy1 - y0, cx1 - x0 :].fill(np.nan)
        for b, reader in enumerate(self._readers):
            # Whole band plane plus offsets: a C-contiguous plane keeps the
            # kernel's rows unit-stride (see kernels.decode).
            reader.read_into(cy0, cy1, cx0, cx1, out[b], cy0 - y0, cx0 - x0, parallel)
        return out

    # -- life cycle ---------------------------------------------------------
    def close(self) -> None:
        """Release file handles and maps.  Must not race with ``read``."""
        if self._readers is not None:
            for reader in self._readers:
                reader.close()
            self._readers = None
            for live in _WARNED.values():
                live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        # Pickles as "open these files again": tiles of one mosaic can be shipped
        # to other processes (shards, Dask workers) without moving pixels.
        return (_reopen, (self._specs, self._bands))


def _reopen(specs, bands):
    return Mosaic.open(list(specs), bands=list(bands))
