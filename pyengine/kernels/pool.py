"""The process-wide lock around Numba's thread pool.

Numba's ``workqueue`` threading layer (the one used when neither TBB nor
OpenMP is installed) is not thread-safe: two ``parallel=True`` kernels
launched at once from two threads can crash or deadlock the process.  So every
parallel kernel of pyengine's scan path runs while holding :data:`POOL`, and a
caller that finds it held runs the serial twin of the kernel on its own thread
instead of waiting (``POOL.acquire(blocking=False)``): concurrent scans never
queue behind each other, they just use one core each for that call.

Users: :mod:`pyengine.io.mosaic` (the decode kernels),
:mod:`pyengine.kernels.tiling` (tile ownership) and :mod:`pyengine.synth.field` (the
rendering kernels, which have no serial twins and so wait for the lock).

Thread safety: that is what it is for; it holds no other state.
"""

from __future__ import annotations

import threading

__all__ = ["POOL"]

POOL = threading.Lock()  # held while a kernel runs on Numba's thread pool
