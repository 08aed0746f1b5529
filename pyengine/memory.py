"""Host memory for batches: page-aligned arrays (the default runner slots and the
batcher's own slots).  A leaf: imports nothing of pyengine.

Thread safety: allocates new arrays only; safe from any thread.
"""

from __future__ import annotations

import math
import operator

import numpy as np

__all__ = ["PAGE", "aligned_empty"]

PAGE = 4096


def aligned_empty(shape, dtype, align: int = PAGE) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte
    boundary (the array keeps its over-allocated buffer alive)."""
    align = operator.index(align)
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)
