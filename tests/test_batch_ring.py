"""BatchRing: slots filled by C++ workers equal the NumPy reference; the protocol is checked."""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pyengine import _core
from pyengine.scan.batching import BatchRing, aligned_empty, gather_reference, make_slots

pytestmark = pytest.mark.timeout(60)  # a deadlock fails the test instead of hanging the run

DTYPES = [np.float32, np.float16]


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    view = np.uint16 if a.dtype == np.float16 else np.uint32
    return np.array_equal(a.view(view), b.view(view))


def make_tile(rng, nband=2, h=70, w=90):
    tile = rng.standard_normal((nband, h, w)).astype(np.float32)
    tile[0, 5:9, 30:33] = np.nan
    return tile


def positions(rng, n, tile, size):
    _, h, w = tile.shape
    return rng.integers(-size, w + size, n), rng.integers(-size, h + size, n)


def expected(tile, cx, cy, size, dtype, offset=None, scale=None):
    counts = np.zeros((len(cx), tile.shape[0]), np.int32)
    out = gather_reference(tile, cx, cy, size, offset=offset, scale=scale, dtype=dtype,
                           nan_count=counts)
    return out, counts


def test_aligned_empty_and_make_slots():
    a = aligned_empty((3, 5), np.float16, align=4096)
    assert a.shape == (3, 5) and a.dtype == np.float16 and a.flags.c_contiguous
    assert a.ctypes.data % 4096 == 0 and a.flags.writeable
    assert aligned_empty(7, np.int32, align=64).ctypes.data % 64 == 0
    with pytest.raises(ValueError, match="align must be a power of two"):
        aligned_empty((2,), np.float32, align=48)
    slots = make_slots(3, 8, 2, 16, np.float16)
    assert len(slots) == 3
    for s in slots:
        assert s.shape == (8, 2, 16, 16) and s.dtype == np.float16
        assert s.ctypes.data % 4096 == 0
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        make_slots(2, 8, 2, 16, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 3])
def test_fills_from_several_tiles_into_one_slot(dtype, threads):
    rng = np.random.default_rng(threads)
    size, cap = 16, 40
    with BatchRing(make_slots(2, cap, 2, size, dtype), threads=threads) as ring:
        assert (ring.nslots, ring.capacity, ring.nband, ring.size) == (2, cap, 2, size)
        assert ring.dtype == np.dtype(dtype) and ring.threads == threads
        slot = ring.acquire()
        want, want_counts = [], []
        start = 0
        for n, offset, scale in [(11, None, None), (20, [1.0, -1.0], [2.0, 0.5]), (9, 0.5, 3.0)]:
            tile = make_tile(rng, h=int(rng.integers(20, 80)), w=int(rng.integers(20, 80)))
            cx, cy = positions(rng, n, tile, size)
            ring.fill(slot, start, tile, cx, cy, offset=offset, scale=scale)
            out, counts = expected(tile, cx, cy, size, dtype, offset, scale)
            want.append(out)
            want_counts.append(counts)
            start += n
        ring.wait(slot)
        assert same_bits(ring.slots[slot], np.concatenate(want))
        np.testing.assert_array_equal(ring.nan_counts[slot], np.concatenate(want_counts))
        assert ring.nan_counts[slot].max() > 0
        ring.release(slot)


@pytest.mark.parametrize(("nslots", "threads", "dtype"),
                         [(2, 1, np.float32), (3, 2, np.float16), (4, 4, np.float32),
                          (2, 3, np.float16)])
def test_producer_consumer_threads(nslots, threads, dtype):
    """Many batches through K slots: a producer thread fills, a consumer thread waits/releases."""
    rng = np.random.default_rng(nslots * 10 + threads)
    size, cap, nbatch = 12, 24, 24
    tiles = [make_tile(rng, h=50, w=60) for _ in range(4)]
    jobs = []  # per batch: [(tile, start, cx, cy)], then the expected batch
    for b in range(nbatch):
        fills, start = [], 0
        for n in np.diff(np.sort(np.concatenate([[0, cap], rng.integers(0, cap, 2)]))):
            tile = tiles[int(rng.integers(len(tiles)))]
            cx, cy = positions(rng, int(n), tile, size)
            fills.append((tile, start, cx, cy))
            start += int(n)
        want = np.concatenate([expected(t, cx, cy, size, dtype)[0] for t, _, cx, cy in fills])
        jobs.append((b, fills, want))
    handoff = queue.Queue()
    ring = BatchRing(make_slots(nslots, cap, 2, size, dtype), threads=threads)

    def produce():
        for b, fills, _ in jobs:
            slot = ring.acquire(timeout=20)
            for tile, start, cx, cy in fills:
                ring.fill(slot, start, tile, cx, cy)
            handoff.put((b, slot))

    def consume():
        seen = set()
        for _ in jobs:
            b, slot = handoff.get(timeout=20)
            ring.wait(slot)
            assert same_bits(ring.slots[slot], jobs[b][2]), f"batch {b} in slot {slot} differs"
            seen.add(slot)
            ring.release(slot)
        return seen

    with ring, ThreadPoolExecutor(2) as pool:
        producer, consumer = pool.submit(produce), pool.submit(consume)
        producer.result()
        assert consumer.result() <= set(range(nslots))


def test_acquire_timeout():
    with BatchRing(make_slots(2, 4, 1, 8), threads=1) as ring:
        slots = {ring.acquire(), ring.acquire(timeout=0)}
        assert slots == {0, 1}
        t0 = time.perf_counter()
        with pytest.raises(TimeoutError, match=r"no free BatchRing slot within 0\.05 s"):
            ring.acquire(timeout=0.05)
        assert time.perf_counter() - t0 >= 0.04
        with pytest.raises(TimeoutError):
            ring.acquire(timeout=0)
        with pytest.raises(ValueError, match="timeout must be None or >= 0"):
            ring.acquire(timeout=-1)
        ring.wait(1)
        ring.release(1)
        assert ring.acquire(timeout=0) == 1


def test_gil_released_while_blocked():
    """A Python thread keeps running while another blocks in wait() and then in acquire()."""
    with BatchRing(make_slots(2, 4, 1, 8), threads=1) as ring:
        busy, held = ring.acquire(), ring.acquire()
        ring._ring._debug_post(busy, 300)  # a job that sleeps 0.3 s without the GIL
        waited, done = threading.Event(), threading.Event()

        def blocked():
            try:
                ring.wait(busy)  # about 0.3 s
                waited.set()
                return ring.acquire(timeout=10)  # until the main thread releases `held`
            finally:
                done.set()

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(blocked)
            now = last = time.perf_counter()
            deadline, gap = now + 0.6, 0.0
            while now < deadline:  # pure Python: it stalls whenever the other thread has the GIL
                now = time.perf_counter()
                gap, last = max(gap, now - last), now
            assert waited.is_set() and not done.is_set()
            assert gap < 0.15, f"the main thread stalled for {gap:.3f} s"
            ring.wait(held)
            ring.release(held)
            assert future.result(timeout=5) == held


def test_bad_arguments_raise_value_error():
    good = make_slots(2, 4, 2, 8)
    tile = np.zeros((2, 10, 10), np.float32)
    with pytest.raises(ValueError, match=r"slots\[0\] must be a writable C-contiguous float32 or "
                                         r"float16 array .* got float64 \(4, 2, 8, 8\)"):
        BatchRing([np.zeros((4, 2, 8, 8))])
    with pytest.raises(ValueError, match=r"slots\[1\] is float32 \(4, 2, 16, 16\) but slots\[0\]"):
        BatchRing([good[0], np.zeros((4, 2, 16, 16), np.float32)])
    with pytest.raises(ValueError, match=r"slots\[1\] is float16 .* all slots must match"):
        BatchRing([good[0], np.zeros((4, 2, 8, 8), np.float16)])
    with pytest.raises(ValueError, match=r"slots\[0\] must be"):
        BatchRing([np.zeros((4, 2, 8, 9), np.float32)])  # not square
    with pytest.raises(ValueError, match=r"slots\[0\] must be"):
        BatchRing([np.zeros((4, 2, 8, 16), np.float32)[..., ::2]])  # not contiguous
    readonly = np.zeros((4, 2, 8, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"slots\[0\] must be"):
        BatchRing([readonly])
    with pytest.raises(ValueError, match=r"slots\[0\] must be .* got list"):
        BatchRing([[1.0]])
    with pytest.raises(ValueError, match="slots must hold at least one array"):
        BatchRing([])
    with pytest.raises(ValueError, match=r"nan_counts\[1\] must be None or a writable C-contiguous "
                                         r"int32 array of shape \(4, 2\)"):
        BatchRing(good, nan_counts=[np.zeros((4, 2), np.int32), np.zeros((4, 2), np.int64)])
    with pytest.raises(ValueError, match=r"nan_counts\[0\] must be None .* shape \(4, 2\), "
                                         r"got int32 \(4,\)"):
        BatchRing(good, nan_counts=[np.zeros(4, np.int32), np.zeros((4, 2), np.int32)])
    with pytest.raises(ValueError, match="nan_counts must hold one array per slot: 2, got 1"):
        BatchRing(good, nan_counts=[np.zeros((4, 2), np.int32)])
    with pytest.raises(ValueError, match=r"threads must be in 1\.\.1024, got 0"):
        BatchRing(good, threads=0)

    with BatchRing(good, threads=2) as ring:
        cx = cy = np.array([3, 4], np.int64)
        with pytest.raises(ValueError, match="slot 0 is not acquired for filling"):
            ring.fill(0, 0, tile, cx, cy)
        slot = ring.acquire()
        for bad in (-1, 2):
            with pytest.raises(ValueError, match=rf"slot must be in 0\.\.1, got {bad}"):
                ring.fill(bad, 0, tile, cx, cy)
        with pytest.raises(ValueError, match=r"rows \[3, 3 \+ 2\) do not fit a slot of capacity 4"):
            ring.fill(slot, 3, tile, cx, cy)
        with pytest.raises(ValueError, match=r"rows \[-1, -1 \+ 2\) do not fit"):
            ring.fill(slot, -1, tile, cx, cy)
        with pytest.raises(ValueError, match="tile must be a C-contiguous float32 array"):
            ring.fill(slot, 0, tile.astype(np.float64), cx, cy)
        with pytest.raises(ValueError, match="tile must be a C-contiguous float32 array"):
            ring.fill(slot, 0, tile[:, :, ::2], cx, cy)
        with pytest.raises(ValueError, match="tile has 3 bands, the ring 2"):
            ring.fill(slot, 0, np.zeros((3, 10, 10), np.float32), cx, cy)
        with pytest.raises(ValueError, match="cx and cy differ in length: 2 and 1"):
            ring.fill(slot, 0, tile, cx, cy[:1])
        with pytest.raises(ValueError, match=r"slot 0 is not ready: call wait\(0\) before release"):
            ring.release(slot)
        with pytest.raises(ValueError, match="slot 1 is not acquired"):
            ring.wait(1)
        ring.fill(slot, 2, tile, cx, cy)  # still usable after the errors
        ring.wait(slot)
        np.testing.assert_array_equal(ring.slots[slot][2:], gather_reference(tile, cx, cy, 8))
        with pytest.raises(ValueError, match="slot 0 is not acquired for filling"):
            ring.fill(slot, 0, tile, cx, cy)  # ready, not filling
        ring.release(slot)
        assert not ring._keep


def test_worker_error_surfaces_on_wait():
    rng = np.random.default_rng(5)
    tile = make_tile(rng)
    cx, cy = positions(rng, 6, tile, 8)
    with BatchRing(make_slots(1, 6, 2, 8), threads=2) as ring:
        slot = ring.acquire()
        ring.fill(slot, 0, tile, cx, cy)
        ring._ring._debug_post(slot, 10, "worker failed on purpose")
        with pytest.raises(ValueError, match=r"^worker failed on purpose$"):
            ring.wait(slot)
        ring.release(slot)
        slot = ring.acquire()  # the error was reported once; the slot works again
        ring.fill(slot, 0, tile, cx, cy)
        ring.wait(slot)
        np.testing.assert_array_equal(ring.slots[slot], gather_reference(tile, cx, cy, 8))
        ring.release(slot)


def test_user_nan_counts_are_used_per_band():
    """Counts are (capacity, nband): a band with no data is counted alone, the other
    band's counts are its own (the ring's workers fill rows from `start` on)."""
    counts = [np.full((4, 2), -1, np.int32) for _ in range(2)]
    tile = np.ones((2, 6, 6), np.float32)
    tile[1] = np.nan  # band 1 has no data
    tile[0, 0, 0] = np.nan
    with BatchRing(make_slots(2, 4, 2, 4), nan_counts=counts, threads=2) as ring:
        assert ring.nan_counts[1] is counts[1]
        slot = ring.acquire()
        # Centres (3, 3): band 0 all there; (1, 1): rows/cols -1 off, one NaN pixel;
        # (100, 3): off the tile.
        ring.fill(slot, 1, tile, [3, 1, 100], [3, 1, 3])
        ring.wait(slot)
        np.testing.assert_array_equal(counts[slot], [[-1, -1], [0, 16], [8, 16], [16, 16]])
        ring.release(slot)


def test_close_idle_twice_and_after_use():
    ring = BatchRing(make_slots(2, 4, 1, 8), threads=4)
    ring.close()
    ring.close()
    for call in (ring.acquire, lambda: ring.wait(0), lambda: ring.release(0),
                 lambda: ring.fill(0, 0, np.zeros((1, 4, 4), np.float32), [1], [1])):
        with pytest.raises(ValueError, match="BatchRing is closed"):
            call()
    tile = np.ones((1, 20, 20), np.float32)
    with BatchRing(make_slots(2, 4, 1, 8), threads=2) as ring:
        for _ in range(5):
            slot = ring.acquire()
            ring.fill(slot, 0, tile, [5, 6, 7, 8], [5, 5, 5, 5])
            ring.wait(slot)
            ring.release(slot)
        slot = ring.acquire()
        ring.fill(slot, 0, tile, [5, 6, 7, 8], [5, 5, 5, 5])  # never waited for
    with pytest.raises(ValueError, match="BatchRing is closed"):
        ring.acquire()
    assert not ring._keep


def test_close_drops_queued_jobs_and_wakes_blocked_threads():
    ring = BatchRing(make_slots(2, 4, 1, 8), threads=1)
    busy, other = ring.acquire(), ring.acquire()
    for _ in range(3):
        ring._ring._debug_post(busy, 250)
    with ThreadPoolExecutor(2) as pool:
        acquiring = pool.submit(ring.acquire)  # no slot is free: blocks until close
        waiting = pool.submit(ring.wait, busy)  # blocks on the queued jobs
        time.sleep(0.1)
        t0 = time.perf_counter()
        ring.close()
        assert time.perf_counter() - t0 < 0.6  # at most the one running job, not all three
        with pytest.raises(ValueError, match="BatchRing is closed"):
            acquiring.result(timeout=5)
        with pytest.raises(ValueError, match="BatchRing closed before slot 0 was filled"):
            waiting.result(timeout=5)
    with pytest.raises(ValueError, match="BatchRing is closed"):
        ring.wait(other)


def _os_threads() -> set[str]:
    """Thread ids of this process as the kernel sees them (C++ workers included)."""
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_dropped_ring_stops_its_workers():
    """Garbage collection closes the ring (joins its workers) before the arrays go.

    The ring's workers are the threads that appear with it (ids, not counts: threads
    of earlier tests may end meanwhile); at least its two must be gone after the drop.
    """
    tile = np.ones((1, 50, 50), np.float32)
    before = _os_threads()
    ring = BatchRing(make_slots(2, 64, 1, 32), threads=2)
    slot = ring.acquire()
    ring.fill(slot, 0, tile, np.arange(64), np.arange(64))
    workers = _os_threads() - before
    assert len(workers) >= 2  # the two workers exist while the ring does
    ring.wait(slot)
    del ring
    gc.collect()
    deadline = time.monotonic() + 10.0
    while len(workers & _os_threads()) > len(workers) - 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(workers & _os_threads()) <= len(workers) - 2, \
        "the dropped ring's worker threads are still running"


def test_core_ring_direct_properties():
    ring = _core.BatchRing(make_slots(3, 5, 2, 6, np.float16), None, 2)
    assert (ring.nslots, ring.capacity, ring.nband, ring.size, ring.threads) == (3, 5, 2, 6, 2)
    assert ring.dtype == "float16"
    assert ring.acquire(0) == 0
    ring.close()
