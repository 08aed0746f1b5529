"""A bounded pool of tile buffers, reused from tile to tile by the scan engine.

A scan reads every tile window into one of these buffers (``Mosaic.read(...,
out=)``) instead of a new array per tile: the pool allocates a buffer only when
none is free and fewer than ``capacity`` exist, so the pixels a scan holds are
bounded by configuration, and a long scan stops paying the allocator (and the
page faults of fresh memory) once per tile.

A buffer is reference-counted: :meth:`TileBuffers.take` hands it out with one
reference (the tile on its way through the pipeline); every batch slot whose
worker fill reads it adds one (:meth:`hold`) and gives it back once the slot's
fills are done (:meth:`drop` after ``BatchRing.wait``).  It returns to the free
list only when no holder is left, so a buffer is never overwritten while a slot
in flight still reads it.  The engine sizes ``capacity`` to the most holders it
can have at once (see :mod:`pyengine.scan.engine`), so ``take`` never waits: it
raises instead, so that a reference lost by a bug fails the scan at once rather
than hanging it.

Thread safety: every method may be called from any thread.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from pyengine.memory import aligned_empty

__all__ = ["TileBuffers"]


class TileBuffers:
    """Up to ``capacity`` float32 buffers of ``nband * height * width`` values each.

    ``take(shape)`` returns ``(token, array)``: a C-contiguous float32 view of
    ``shape`` (at most the full size) at the start of a free buffer.  ``hold``
    and ``drop`` take the token.
    """

    def __init__(self, nband: int, height: int, width: int, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.values = int(nband) * int(height) * int(width)
        self._lock = threading.Lock()
        self._arrays: list[np.ndarray] = []
        self._refs: list[int] = []
        self._free: list[int] = []
        self.peak = 0  # most buffers held at once (for tests and logs)

    @property
    def allocated(self) -> int:
        """Buffers allocated so far (never more than ``capacity``)."""
        return len(self._arrays)

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._arrays) - len(self._free)

    def take(self, shape) -> tuple[int, np.ndarray]:
        """A free buffer viewed as ``shape``, with one reference; RuntimeError when all
        ``capacity`` buffers are held (the caller's bound on its holders is wrong)."""
        shape = tuple(int(v) for v in shape)
        count = math.prod(shape)
        if count > self.values:
            raise ValueError(f"a {shape} window does not fit in a tile buffer of "
                             f"{self.values} values")
        with self._lock:
            if not self._free and len(self._arrays) >= self.capacity:
                raise RuntimeError(f"all {self.capacity} tile buffers are held; a scan "
                                   "holds at most that many at once, so one was not given "
                                   "back (a bug)")
            if self._free:
                token = self._free.pop()
            else:
                token = len(self._arrays)
                self._arrays.append(aligned_empty((self.values,), np.float32))
                self._refs.append(0)
            self._refs[token] = 1
            self.peak = max(self.peak, len(self._arrays) - len(self._free))
            array = self._arrays[token]
        return token, array[:count].reshape(shape)

    def hold(self, token: int) -> None:
        """One more reference to a buffer already held."""
        with self._lock:
            if self._refs[token] < 1:
                raise ValueError(f"tile buffer {token} is not held")
            self._refs[token] += 1

    def drop(self, token: int) -> None:
        """One reference less; the buffer is free again when none is left."""
        with self._lock:
            if self._refs[token] < 1:
                raise ValueError(f"tile buffer {token} is not held")
            self._refs[token] -= 1
            if self._refs[token] == 0:
                self._free.append(token)
