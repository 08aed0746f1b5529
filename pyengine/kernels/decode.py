"""Raw FITS pixels -> native float32, in one pass: byte swap, BLANK, BSCALE/BZERO.

The memmap fast path hands the kernels a *native-endian integer view* of the
big-endian bytes on disk (Numba cannot type non-native byte orders): signed
int8/16/32/64 views for BITPIX 8/16/32/64 (8 as uint8) and unsigned
uint32/uint64 views for BITPIX -32/-64, whose bits are reinterpreted as IEEE
floats after the swap.  Compressed images arrive from fitsio already
native-endian; they use the same kernels with ``swap=False``.

Arithmetic follows the FITS standard, physical = BZERO + BSCALE * stored,
evaluated in float64 and rounded once to float32; unscaled values convert
straight to float32 (also rounded once).  (astropy evaluates 8- and
16-bit data in float32, so its results can differ by a rounding step; see
tests/test_mosaic.py.)  Stored values equal to BLANK become NaN; for unsigned
64-bit data (BZERO = 2**63) the stored value is converted exactly through
uint64 so float32 is rounded once.

The kernels take whole arrays plus window offsets, raw[y0:y0+h, x0:x0+w] ->
out[oy:oy+h, ox:ox+w], so C-contiguous inputs keep unit-stride rows that
LLVM vectorises.

Thread safety: every kernel is ``nogil`` and touches only its arguments.
``decode_serial`` may run concurrently from any number of threads.
``decode_parallel`` spreads rows over Numba's thread pool; with Numba's
``workqueue`` threading layer two parallel kernels must never run at once,
so callers serialise it (pyengine.io.mosaic uses a try-lock and falls back
to ``decode_serial``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.extending import intrinsic, overload

__all__ = [
    "MODE_PLAIN",
    "MODE_SCALED",
    "MODE_UINT64",
    "decode_parallel",
    "decode_serial",
    "native_view_dtype",
]

MODE_PLAIN = 0  # no scaling, no BLANK: bits -> float32 only
MODE_SCALED = 1  # BSCALE/BZERO and/or BLANK
MODE_UINT64 = 2  # BITPIX 64 with BZERO = 2**63, BSCALE = 1 (unsigned convention)


def native_view_dtype(bitpix: int) -> np.dtype:
    """The native dtype the kernels expect for raw data of ``bitpix``."""
    return np.dtype({8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "u4", -64: "u8"}[bitpix])


@intrinsic
def _bswap(typingctx, v):
    """Reverse the bytes of an integer (LLVM's llvm.bswap; identity for 8 bits)."""
    if not isinstance(v, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        if v.bitwidth == 8:
            return args[0]
        return builder.bswap(args[0])

    return v(v), codegen


@intrinsic
def _bits_to_float(typingctx, v):
    """Reinterpret uint32 bits as float32, uint64 bits as float64."""
    if v == types.uint32:
        return types.float32(v), lambda ctx, b, sig, args: b.bitcast(args[0], ir.FloatType())
    if v == types.uint64:
        return types.float64(v), lambda ctx, b, sig, args: b.bitcast(args[0], ir.DoubleType())
    return None


def _stored_value(bits):  # pragma: no cover - replaced by the overload below
    raise NotImplementedError


@overload(_stored_value, jit_options={"nogil": True})
def _ov_stored_value(bits):
    """Stored (unscaled) value of native-order bits as float64."""
    if bits in (types.uint32, types.uint64):
        return lambda bits: np.float64(_bits_to_float(bits))
    if isinstance(bits, types.Integer):
        return lambda bits: np.float64(bits)
    return None


def _plain_value(bits):  # pragma: no cover - replaced by the overload below
    raise NotImplementedError


@overload(_plain_value, jit_options={"nogil": True})
def _ov_plain_value(bits):
    """Unscaled value of native-order bits as float32, rounded once."""
    if bits == types.uint32:
        return lambda bits: _bits_to_float(bits)
    if bits == types.uint64:
        return lambda bits: np.float32(_bits_to_float(bits))
    if isinstance(bits, types.Integer):
        return lambda bits: np.float32(bits)
    return None


# One tight loop per case, chosen once per row: branches inside the pixel loop
# keep LLVM from vectorising the swap.  Rows are sliced as raw[i, x0:x0 + w]
# from whole C-contiguous arrays, which Numba types as contiguous, and indexed
# from 0; a strided 2-D window (layout "A") or offset indices (x0 + j, which
# need a negative-index check) keep the loop scalar, 3-5x slower (measured).
@njit(nogil=True, cache=True, inline="always")
def _row_plain(src, dst, swap):
    if swap:
        for j in range(src.shape[0]):
            dst[j] = _plain_value(_bswap(src[j]))
    else:
        for j in range(src.shape[0]):
            dst[j] = _plain_value(src[j])


@njit(nogil=True, cache=True, inline="always")
def _row_scaled(src, dst, swap, bscale, bzero, blank, has_blank):
    nan = np.float32(np.nan)
    for j in range(src.shape[0]):
        b = _bswap(src[j]) if swap else src[j]
        v = np.float32(_stored_value(b) * bscale + bzero)
        dst[j] = nan if has_blank and np.int64(b) == blank else v


@njit(nogil=True, cache=True, inline="always")
def _row_uint64(src, dst, swap, blank, has_blank):
    nan = np.float32(np.nan)
    for j in range(src.shape[0]):
        b = _bswap(src[j]) if swap else src[j]
        v = np.float32(np.uint64(b) ^ np.uint64(0x8000000000000000))
        dst[j] = nan if has_blank and np.int64(b) == blank else v


@njit(nogil=True, cache=True)
def _decode_rows(raw, y0, x0, out, oy, ox, h, w, swap, mode, bscale, bzero, blank, has_blank,
                 r0, r1):
    for i in range(r0, r1):
        src = raw[y0 + i, x0 : x0 + w]
        dst = out[oy + i, ox : ox + w]
        if mode == MODE_PLAIN:
            _row_plain(src, dst, swap)
        elif mode == MODE_UINT64:
            _row_uint64(src, dst, swap, blank, has_blank)
        else:
            _row_scaled(src, dst, swap, bscale, bzero, blank, has_blank)


@njit(nogil=True, cache=True)
def decode_serial(raw, y0, x0, out, oy, ox, h, w, swap, mode, bscale, bzero, blank, has_blank):
    """Decode raw[y0:y0+h, x0:x0+w] into out[oy:oy+h, ox:ox+w] on the calling thread."""
    _decode_rows(raw, y0, x0, out, oy, ox, h, w, swap, mode, bscale, bzero, blank, has_blank,
                 0, h)


@njit(nogil=True, cache=True, parallel=True)
def decode_parallel(raw, y0, x0, out, oy, ox, h, w, swap, mode, bscale, bzero, blank, has_blank):
    """Decode raw[y0:y0+h, x0:x0+w] into out[oy:oy+h, ox:ox+w], rows spread over threads."""
    nchunk = min(h, 64)
    for c in prange(nchunk):
        r0 = c * h // nchunk
        r1 = (c + 1) * h // nchunk
        _decode_rows(raw, y0, x0, out, oy, ox, h, w, swap, mode, bscale, bzero, blank,
                     has_blank, r0, r1)
