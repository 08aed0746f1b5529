"""Host memory for batches: page-aligned arrays (the default runner slots and the
batcher's own slots), what a batch needs (:func:`batch_bytes`) and what this process
may still take (:func:`available_bytes`), so a batch that cannot fit is refused before
a scan.  A leaf: imports nothing of pyengine.

Thread safety: allocates new arrays or reads /proc; safe from any thread.
"""

from __future__ import annotations

import math
import operator
import os

import numpy as np

__all__ = ["ACTIVATION_BYTES_64", "PAGE", "aligned_empty", "available_bytes", "batch_bytes"]

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


# -- how much a batch needs, and how much there is -------------------------------------------
#: Peak resident memory ONNX Runtime's CPU provider adds per sample of a batch, for the
#: ResNet-50 on 64 x 64 cutouts (two bands, fp32).  Measured once (onnxruntime 1.x, one
#: intra-op thread, peak RSS of a fresh process after two runs, minus a batch-1 run): +408 MiB
#: at batch 256 and +929 MiB at batch 512, i.e. 1.6-1.8 MiB a sample on average and 2.0 MiB
#: a sample at the margin; the margin is taken.  Activations scale with the pixels of a
#: cutout, so other sizes scale by (S / 64)^2 (at 224 px about 25 MiB a sample).
ACTIVATION_BYTES_64 = 2 << 20


def batch_bytes(batch: int, nband: int, size: int, *, slots: int, itemsize: int = 4,
                activations: bool = True) -> int:
    """Host bytes a scan's batches need: ``slots`` slots of batch x nband x size^2 items,
    plus (``activations``: the model runs on the CPU) the runner's activations
    (:data:`ACTIVATION_BYTES_64` scaled by (size / 64)^2 a sample)."""
    total = slots * batch * nband * size * size * itemsize
    if activations:
        total += batch * ACTIVATION_BYTES_64 * size * size // (64 * 64)
    return int(total)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> int | None:
    """Memory this process may still take: the least of /proc/meminfo's MemAvailable, the
    cgroup v2 limit less its usage (``/sys/fs/cgroup/memory.max``, unless ``max``) and
    the address-space limit (RLIMIT_AS) less the process's size.  None: unknown."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _read_int("/sys/fs/cgroup/memory.max")
    if limit is not None:
        found.append(max(0, limit - (_read_int("/sys/fs/cgroup/memory.current") or 0)))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm", encoding="ascii") as fh:
                size = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            found.append(max(0, soft - size))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None
