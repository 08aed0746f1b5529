"""Batch gathering: cut S x S windows around positions out of a tile.

``gather`` is the Python face of the C++ core (``pyengine._core.gather``);
``gather_reference`` is a plain NumPy implementation of the same contract,
kept for tests.  Both follow the DESIGN.md cutout contract: the window of
centre pixel c is [c - S//2, c - S//2 + S) in each axis, pixels outside the
tile are NaN, and each band is mapped as (value - offset) * scale, computed in
float32; float16 output is that float32 value rounded to nearest even (as
``ndarray.astype(np.float16)``), except that finite values beyond the float16
range saturate to +-65504 instead of overflowing to inf (a bright pixel after the
tile affine must stay bright: the model reads inf as a missing pixel); inf stays
inf and NaN stays NaN.  Both agree bit for bit.

``BatchRing`` fills K caller-owned batch slots (capacity, nband, S, S) with a
pool of C++ worker threads: acquire a free slot, fill rows of it from one or
more tiles, wait for it, consume it, release it.

Thread safety: ``gather`` releases the GIL during the copy and touches only
its arguments, so threads may call it concurrently on distinct outputs.
``BatchRing`` methods may be called from different threads (typically one
producer: acquire/fill, one consumer: wait/release); a slot is used by one
producer and one consumer at a time.  acquire, fill, wait and close release
the GIL.
"""

from __future__ import annotations

import math
import operator
import threading

import numpy as np

from pyengine import _core
from pyengine.memory import aligned_empty

__all__ = [
    "BatchRing",
    "aligned_empty",
    "gather",
    "gather_reference",
    "make_slots",
]

_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _prepare(tile, cx, cy, size, offset, scale):
    tile = np.ascontiguousarray(tile, dtype=np.float32)
    if tile.ndim != 3:
        raise ValueError(f"tile must be (nband, height, width), got shape {tile.shape}")
    cx, cy, offset, scale = _positions(tile.shape[0], cx, cy, offset, scale)
    return tile, cx, cy, int(size), offset, scale


def _positions(nband, cx, cy, offset, scale):
    cx = np.ascontiguousarray(cx, dtype=np.int64).reshape(-1)
    cy = np.ascontiguousarray(cy, dtype=np.int64).reshape(-1)
    if cx.shape != cy.shape:
        raise ValueError(f"cx and cy differ in length: {cx.size} and {cy.size}")
    offset = np.zeros(nband, np.float32) if offset is None else offset
    scale = np.ones(nband, np.float32) if scale is None else scale
    offset = np.ascontiguousarray(np.broadcast_to(offset, (nband,)), dtype=np.float32)
    scale = np.ascontiguousarray(np.broadcast_to(scale, (nband,)), dtype=np.float32)
    return cx, cy, offset, scale


def _out_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    return dtype


def gather(tile, cx, cy, size, *, offset=None, scale=None, out=None, dtype=np.float32,
           nan_count=None):
    """Gather windows centred on integer pixels (cx, cy) of ``tile`` (nband, h, w).

    Returns ``out`` (n, nband, size, size), allocated with ``dtype`` (float32 or
    float16) when not given; a given ``out`` (float32 or float16, C-contiguous)
    decides the dtype itself.  ``nan_count``, an int32 array (n, nband), receives the
    number of NaN pixels of each window in each band (counted in the copy's own pass).
    """
    tile, cx, cy, size, offset, scale = _prepare(tile, cx, cy, size, offset, scale)
    if out is None:
        out = np.empty((cx.size, tile.shape[0], size, size), dtype=_out_dtype(dtype))
    _core.gather(tile, cx, cy, size, offset, scale, out, nan_count)
    return out


_HALF_MAX = np.float32(65504.0)  # the largest finite float16


def gather_reference(tile, cx, cy, size, *, offset=None, scale=None, out=None,
                     dtype=np.float32, nan_count=None):
    """NumPy reference for :func:`gather` (slow; for tests)."""
    tile, cx, cy, size, offset, scale = _prepare(tile, cx, cy, size, offset, scale)
    nband, h, w = tile.shape
    pad = np.full((nband, h + 2 * size, w + 2 * size), np.nan, dtype=np.float32)
    pad[:, size : size + h, size : size + w] = tile
    res = np.full((cx.size, nband, size, size), np.nan, dtype=np.float32)
    half = size // 2
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, 1e5 -> float16: by contract
        for i, (x, y) in enumerate(zip(cx.tolist(), cy.tolist(), strict=True)):
            y0, x0 = y - half + size, x - half + size
            if 0 <= y0 and y0 + size <= pad.shape[1] and 0 <= x0 and x0 + size <= pad.shape[2]:
                window = pad[:, y0 : y0 + size, x0 : x0 + size]
                res[i] = (window - offset[:, None, None]) * scale[:, None, None]
        kind = _out_dtype(dtype if out is None else out.dtype)
        if kind == np.float16:  # finite values saturate at +-65504, as the C++ conversion does
            big = np.isfinite(res) & (np.abs(res) > _HALF_MAX)
            res[big] = np.copysign(_HALF_MAX, res[big])
        res = res.astype(kind, copy=False)
    if nan_count is not None:
        nan_count[...] = np.isnan(res).sum(axis=(2, 3))
    if out is None:
        return res
    out[...] = res
    return out


def make_slots(count, batch, nband, size, dtype=np.float32):
    """``count`` page-aligned slot arrays (batch, nband, size, size) for :class:`BatchRing`."""
    dtype = _out_dtype(dtype)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [aligned_empty((batch, nband, size, size), dtype) for _ in range(count)]


class BatchRing:
    """K batch slots filled by ``threads`` C++ worker threads.

    ``slots``: C-contiguous writable arrays, all (capacity, nband, S, S) of one
    dtype, float32 or float16 (see :func:`make_slots`; for pinned torch tensors
    pass ``tensor.numpy()``).  ``nan_counts``: one int32 array (capacity, nband)
    per slot, allocated when not given; row i receives the NaN pixels of the
    window filled into row i, per band.  Rows not filled since ``acquire`` keep
    old contents.

    Protocol per slot: ``acquire`` -> ``fill`` (any number, rows of one slot
    from several tiles) -> ``wait`` -> read ``slots[i]`` -> ``release``.  The
    arrays given to ``fill`` are kept alive here until that slot's ``wait``
    returns.  After ``close`` (also on leaving a ``with`` block) every method
    raises ValueError.
    """

    def __init__(self, slots, *, threads=1, nan_counts=None):
        slots = tuple(slots)
        if nan_counts is None:
            first = slots[0] if slots else None
            shape = first.shape[:2] if isinstance(first, np.ndarray) and first.ndim == 4 else 0
            nan_counts = [np.zeros(shape, np.int32) for _ in slots]
        nan_counts = tuple(nan_counts)
        self._lock = threading.Lock()
        self._keep = {}  # slot -> arrays of its fills, alive until wait(slot) returns
        self._slots = slots
        self._nan_counts = nan_counts
        self._ring = _core.BatchRing(slots, nan_counts, operator.index(threads))
        self._dtype = np.dtype(self._ring.dtype)

    nslots = property(lambda self: self._ring.nslots, doc="Number of slots K.")
    capacity = property(lambda self: self._ring.capacity, doc="Windows per slot B.")
    nband = property(lambda self: self._ring.nband, doc="Bands per window.")
    size = property(lambda self: self._ring.size, doc="Window edge S in pixels.")
    threads = property(lambda self: self._ring.threads, doc="Worker threads.")
    dtype = property(lambda self: self._dtype, doc="Slot dtype, float32 or float16.")
    slots = property(lambda self: self._slots, doc="The slot arrays, by index.")
    nan_counts = property(lambda self: self._nan_counts,
                          doc="Per-slot int32 NaN counts (capacity, nband).")

    def acquire(self, timeout=None):
        """Index of a free slot, now filling; raises TimeoutError after ``timeout`` s."""
        if timeout is None or timeout == math.inf:
            while True:  # short waits keep Ctrl-C working in the main thread
                slot = self._ring.acquire(200)
                if slot >= 0:
                    return slot
        if not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")
        slot = self._ring.acquire(min(math.ceil(timeout * 1000), 10**12))
        if slot < 0:
            raise TimeoutError(f"no free BatchRing slot within {timeout} s")
        return slot

    def fill(self, slot, start, tile, cx, cy, *, offset=None, scale=None):
        """Gather the windows (cx, cy) of ``tile`` into rows [start, start + len(cx)) of ``slot``.

        ``tile``: (nband, h, w) float32, C-contiguous (not copied); cx, cy: centre
        pixels in tile coordinates.  Returns at once; the work is done by the
        workers and completes at ``wait(slot)``.
        """
        cx, cy, offset, scale = _positions(self.nband, cx, cy, offset, scale)
        keep = (tile, cx, cy, offset, scale)
        with self._lock:
            self._keep.setdefault(slot, []).append(keep)
        try:
            self._ring.fill(slot, start, tile, cx, cy, offset, scale)
        except BaseException:
            with self._lock:  # nothing was enqueued: let go of the arrays
                kept = [k for k in self._keep.get(slot, []) if k is not keep]
                if kept:
                    self._keep[slot] = kept
                else:
                    self._keep.pop(slot, None)
            raise

    def wait(self, slot):
        """Block until every fill of ``slot`` is done; re-raise a worker's error."""
        try:
            self._ring.wait(slot)
        finally:  # the core returns or raises only once no job of the slot runs
            with self._lock:
                self._keep.pop(slot, None)

    def release(self, slot):
        """Give a waited-for slot back to ``acquire``."""
        self._ring.release(slot)

    def close(self):
        """Stop the workers: queued fills are dropped, running ones finish.  Idempotent."""
        ring = getattr(self, "_ring", None)
        if ring is None:
            return
        ring.close()
        with self._lock:
            self._keep.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        return (f"BatchRing(nslots={self.nslots}, capacity={self.capacity}, nband={self.nband}, "
                f"size={self.size}, dtype={self.dtype}, threads={self.threads})")

