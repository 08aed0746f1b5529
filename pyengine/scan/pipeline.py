"""One scan's threads and queues: the read, gather, infer and collect stages that
:meth:`pyengine.scan.engine.Engine.iter_results` runs (the stages, their memory bound
and the stopping rules are described in :mod:`pyengine.scan.engine`).

Thread safety: a Pipeline is one scan; its stages run on their own threads and its
``run`` generator is consumed by one thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.errors import ConfigError, PyEngineError
from pyengine.flags import cutout_flags
from pyengine.io.tiles import Tile
from pyengine.scan.batching import BatchRing, gather
from pyengine.scan.buffers import TileBuffers
from pyengine.scan.results import TileResult
from pyengine.sources.base import tiles_to_do
from pyengine.stats import median_and_sigma

__all__ = ["Pipeline", "ScanStopped", "tile_affine"]

_POLL = 0.1  # seconds between checks of the abort flag while a stage waits
# Tiles one batch slot may pin in the tile-buffer pool: its dense segments are filled
# by the ring's workers straight from the tile buffer, which stays held until the
# slot is waited on; further dense segments of that slot are gathered directly like
# sparse ones.  One keeps the pool's bound at one tile per slot (module docstring).
_PINNED_PER_SLOT = 1


class ScanStopped(Exception):
    """Raised inside the pipeline threads when the scan is being torn down."""


@dataclass
class _TileWork:
    """A tile on its way through the pipeline."""

    tile: Tile
    pixels: np.ndarray | None  # a view of tile buffer ``buffer`` of the pool
    buffer: int
    x: np.ndarray
    y: np.ndarray
    row: np.ndarray
    columns: dict
    offset: np.ndarray
    scale: np.ndarray
    band_zero: np.ndarray  # (n, nband) bool: centre pixel exactly 0, per band
    scores: np.ndarray = None
    nan_counts: np.ndarray = None  # (n, nband) NaN pixels of each cutout, per band
    outputs: dict = None  # the runner's other per-row outputs the scan keeps (n, ...)
    filled: int = 0


def tile_affine(pixels: np.ndarray, sample: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Per-band (offset, scale) mapping the tile's sky to 0 and its noise to 1.

    Robust statistics (median, 1.4826 MAD) of every ``sample``-th pixel.  The
    models' in-graph preprocessing (border median / MAD) is invariant to such a
    map; it exists so that a float16 transfer keeps the faint end precise.
    """
    nband = pixels.shape[0]
    offset = np.zeros(nband, np.float32)
    scale = np.ones(nband, np.float32)
    for b in range(nband):
        v = pixels[b, ::sample, ::sample]
        v = v[np.isfinite(v)]
        if v.size < 16:
            continue
        med, mad = median_and_sigma(v)
        offset[b] = med
        if np.isfinite(mad) and mad > 0:
            scale[b] = 1.0 / mad
    return offset, scale



def _unscored(dtype) -> float | int:
    """What a per-row output holds before (or without) a score: NaN, or -1 for integers."""
    return np.nan if np.dtype(dtype).kind == "f" else -1


def _padded(slot: np.ndarray, n: int) -> np.ndarray:
    """The whole of ``slot`` (the run size's rows), rows n.. filled with copies of row n - 1:
    every batch a runner sees has the scan's one size (``Pipeline.run_size``).

    A runner's kernels may depend on the batch size (measured: ONNX Runtime fp32 on a
    CPU scores a batch of 2 differently from batches of 1 or 32, by up to 1.2e-7; GPU
    libraries pick algorithms per shape), and the short batches of a scan (the last one,
    the one completed when it is interrupted) fall differently in a resumed run.  With
    one batch size, a cutout's score no longer depends on where the batches were cut,
    so a resumed scan is bit-identical to an uninterrupted one.  The cost is one batch
    of padding per scan (and per interruption).  Copies of a real cutout, not zeros:
    the padding rows' own preprocessing stays well defined.
    """
    if n == 0:
        return slot[:0]  # nothing gathered (stopped at a batch boundary): nothing to run
    slot[n:] = slot[n - 1]
    return slot


class Pipeline:
    """One scan's threads and queues (see the module docstring)."""

    def __init__(self, engine, mosaic, source, plan, skip, stop, on_batch):
        self.engine, self.mosaic, self.source, self.plan = engine, mosaic, source, plan
        self.skip = frozenset(int(t) for t in skip)
        self.stop = stop if stop is not None else threading.Event()
        self.on_batch = on_batch
        self.abort = threading.Event()  # teardown: every stage leaves at once
        self.error: BaseException | None = None
        # A user error of the read stage (an input shrank, say): reading stops, the tiles
        # read before it are still scored and yielded, then ``run`` raises it.
        self.read_error: BaseException | None = None
        self.size = engine.spec.cutout_size
        self.dtype = engine.transfer_dtype
        self.batch = engine.batch_size
        # The runner's per-row outputs beyond the score that this scan keeps (class
        # probabilities, an ensemble's votes): name -> (row shape, dtype); {} for a
        # score-only scan, whose hot path is then the same as before they existed.
        self.outputs = dict(getattr(engine, "row_outputs", {}))
        # Every batch reaches the runner at one size (_padded): the batch size, or the
        # scan's whole position count when that is known (catalog, grid) and smaller, so a
        # scan of a few positions does not pay for a full batch.  Both depend only on the
        # scan's inputs, never on what a resume skips.  A source that is one part of a
        # larger scan (a survey's tiles of one field) gives the whole's count instead.
        if hasattr(source, "run_positions"):
            total = source.run_positions()
        else:
            counts = [source.count(tile) for tile in plan]
            total = sum(counts) if all(c is not None for c in counts) else None
        self.run_size = self.batch if total is None else max(1, min(self.batch, total))
        self.tiles_q: queue.Queue = queue.Queue(maxsize=engine.prefetch)
        self.infer_q: queue.Queue = queue.Queue(maxsize=engine.nslots)
        self.collect_q: queue.Queue = queue.Queue()
        # Holders of a tile buffer at once (module docstring): the read stage (prefetch
        # loading + the one being queued, prefetch queued), the gather stage (one), and
        # the slots (each pins at most _PINNED_PER_SLOT until it is waited on).
        first = plan[0].window  # the largest window: cores are only cut at the far edges
        self.buffers = TileBuffers(mosaic.nband, first[1] - first[0], first[3] - first[2],
                                   2 * engine.prefetch + 1 + engine.nslots * _PINNED_PER_SLOT)

    # -- plumbing ------------------------------------------------------------------
    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.abort.is_set():
                raise ScanStopped
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue):
        while True:
            if self.abort.is_set():
                raise ScanStopped
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue

    def _stage(self, fn):
        def body():
            try:
                fn()
            except ScanStopped:
                pass
            except BaseException as exc:  # handed to the caller's thread
                if self.error is None:
                    self.error = exc
                self.abort.set()
        return threading.Thread(target=body, name=f"pyengine-{fn.__name__}", daemon=True)

    # -- stage 1: read tiles and find their positions --------------------------------
    def _wanted(self) -> list[Tile]:
        return tiles_to_do(self.plan, self.source, self.skip)

    def _load(self, tile: Tile) -> _TileWork:
        y0, y1, x0, x1 = tile.window
        nband = self.mosaic.nband
        buffer, pixels = self.buffers.take((nband, y1 - y0, x1 - x0))
        try:
            # Tiles known to own no position are skipped (_wanted); the pool's buffer is
            # C-contiguous, so the gather stage uses it as it is.
            self.mosaic.read(y0, y1, x0, x1, out=pixels)
            pos = self.source.positions(tile, pixels if self.source.needs_pixels else None)
            x, y = np.asarray(pos.x, np.float64), np.asarray(pos.y, np.float64)
            # Positions lie in the tile core, so their centre pixels are in the window.
            band_zero = (pixels[:, centre_pixel(y) - y0, centre_pixel(x) - x0] == 0).T
            if self.dtype == np.float16:
                offset, scale = tile_affine(pixels)
            else:
                offset, scale = np.zeros(nband, np.float32), np.ones(nband, np.float32)
        except BaseException:
            self.buffers.drop(buffer)
            raise
        return _TileWork(tile, pixels, buffer, x, y, np.asarray(pos.row, np.int64),
                         dict(pos.columns), offset, scale, band_zero)

    def read(self):
        tiles = self._wanted()
        workers = max(1, min(2, self.engine.threads or 2))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyengine-read") as pool:
            pending: deque = deque()
            it = iter(tiles)
            try:
                while True:
                    while len(pending) < self.engine.prefetch and not self.stop.is_set():
                        tile = next(it, None)
                        if tile is None:
                            break
                        pending.append(pool.submit(self._load, tile))
                    if not pending:
                        break
                    try:
                        work = pending.popleft().result()
                    except PyEngineError as exc:  # a bad input: finish what was read first
                        self.read_error = exc
                        break
                    self._put(self.tiles_q, work)
            finally:
                for fut in pending:
                    fut.cancel()
        self._put(self.tiles_q, None)

    # -- stage 2: gather windows into batch slots ------------------------------------
    def gather(self):
        ring, buffers = self.ring, self.buffers
        slot, used, segments, pinned = -1, 0, [], []
        while not self.stop.is_set() or slot >= 0:
            work = self._get(self.tiles_q)
            if work is None:
                break
            n = work.x.size
            work.scores = np.full(n, np.nan, np.float32)
            work.nan_counts = np.zeros((n, self.mosaic.nband), np.int64)
            work.outputs = {name: np.full((n, *shape), _unscored(dtype), dtype)
                            for name, (shape, dtype) in self.outputs.items()}
            self.collect_q.put(("tile", work))
            wy0, _, wx0, _ = work.tile.window
            cx = centre_pixel(work.x) - wx0
            cy = centre_pixel(work.y) - wy0
            done = 0
            while done < n:
                if slot < 0:
                    if self.stop.is_set():  # interrupted: only the batch in flight finishes
                        break
                    slot = self._acquire(ring)
                    used, segments, pinned = 0, [], []
                k = min(n - done, self.batch - used)
                part = slice(done, done + k)
                if len(pinned) < _PINNED_PER_SLOT and self._dense(work.pixels, k):
                    # The ring's workers copy straight from the tile buffer, which stays
                    # held until the infer stage has waited on this slot.
                    buffers.hold(work.buffer)
                    pinned.append(work.buffer)
                    ring.fill(slot, used, work.pixels, cx[part], cy[part], offset=work.offset,
                              scale=work.scale)
                else:
                    # Straight into the slot's rows, on this thread: one copy, nothing of
                    # the tile kept (the slot's NaN counts are what the infer stage reads).
                    gather(work.pixels, cx[part], cy[part], self.size, offset=work.offset,
                           scale=work.scale, out=ring.slots[slot][used : used + k],
                           nan_count=ring.nan_counts[slot][used : used + k])
                segments.append((work, done, used, k))
                used += k
                done += k
                if used == self.batch:
                    self._put(self.infer_q, (slot, used, segments, pinned))
                    slot = -1
            work.pixels = None  # this stage's reference; pinned slots hold their own
            buffers.drop(work.buffer)
        if slot >= 0:
            self._put(self.infer_q, (slot, used, segments, pinned))
        self._put(self.infer_q, None)

    def _dense(self, pixels: np.ndarray, k: int) -> bool:
        """Whether k windows cover at least a quarter of the tile: then the ring's worker
        pool copies them from the tile buffer (in parallel); sparser segments are
        gathered straight into the slot by this thread, which pins no tile buffer."""
        return k * self.size * self.size * 4 >= pixels[0].size

    def _acquire(self, ring: BatchRing) -> int:
        while True:
            if self.abort.is_set():
                raise ScanStopped
            try:
                return ring.acquire(timeout=_POLL)
            except TimeoutError:
                continue

    # -- stage 3: inference, the runner's in_flight batches outstanding --------------------
    def infer(self):
        ring, runner = self.ring, self.engine.runner
        depth = self.engine.in_flight
        flight: deque = deque()

        def retire():
            slot, n, segments, pending = flight.popleft()
            scores = np.asarray(pending.result(), dtype=np.float32).reshape(-1)[:n]
            extras = {}
            if self.outputs:
                got = pending.outputs()
                for name in self.outputs:
                    if name not in got:
                        raise ConfigError(f"the {runner.name} runner gives no {name!r} "
                                          "output, which the class columns need; scan "
                                          "without them (class_columns=False)")
                    extras[name] = got[name][:n]
            counts = ring.nan_counts[slot][:n].copy()
            ring.release(slot)
            self.collect_q.put(("scores", segments, scores, counts, extras))

        try:
            while True:
                item = self._get(self.infer_q)
                if item is None:
                    break
                slot, n, segments, pinned = item
                ring.wait(slot)
                for buffer in pinned:  # the slot's fills are done: its tiles may be reused
                    self.buffers.drop(buffer)
                batch = _padded(ring.slots[slot][: self.run_size], n)
                flight.append((slot, n, segments, runner.submit(batch)))
                if len(flight) >= depth:
                    retire()
            while flight:
                retire()
            self.collect_q.put(("end",))
        finally:
            # Every other way out (the scan stopped or failed): wait for the batches still
            # in flight, so that no copy or kernel is still reading a (pinned) slot when
            # the next scan of this engine refills it.  Their scores are not wanted.
            while flight:  # an error of theirs changes nothing: the scan's own is on its way
                with contextlib.suppress(Exception):
                    flight.popleft()[3].result()

    # -- stage 4: collect, in the caller's thread -------------------------------------------
    def _finish(self, work: _TileWork) -> TileResult:
        # Blankness per band (pyengine.flags.cutout_flags): a band with no data at a
        # position flags it whatever the other bands hold.
        band_nan = (work.nan_counts / (self.size * self.size)).astype(np.float32)
        flags = cutout_flags(band_nan, self.engine.max_nan_fraction)
        return TileResult(work.tile.index, work.x, work.y, work.row, work.scores,
                          band_nan.max(axis=1, initial=0.0), flags, work.columns, band_nan,
                          work.band_zero, work.outputs)

    def run(self) -> Iterator[TileResult]:
        # The runner's own memory (pinned on a GPU), in the dtype this scan sends.
        slots = self.engine.slots(self.batch, self.dtype)
        self.ring = BatchRing(slots, threads=self.engine.gather_threads)
        stages = [self._stage(self.read), self._stage(self.gather), self._stage(self.infer)]
        for t in stages:
            t.start()
        open_tiles: deque[_TileWork] = deque()
        try:
            while True:
                try:
                    msg = self.collect_q.get(timeout=_POLL)
                except queue.Empty:
                    msg = None
                if msg is None:
                    if self.error is not None:
                        raise self.error
                    if not any(t.is_alive() for t in stages):
                        raise RuntimeError("scan pipeline ended without finishing")  # a bug
                    continue
                kind = msg[0]
                if kind == "end":
                    break
                if kind == "tile":
                    open_tiles.append(msg[1])
                else:
                    _, segments, scores, counts, extras = msg
                    for work, start, at, k in segments:
                        work.scores[start : start + k] = scores[at : at + k]
                        work.nan_counts[start : start + k] = counts[at : at + k]
                        for name, values in extras.items():
                            work.outputs[name][start : start + k] = values[at : at + k]
                        work.filled += k
                    if self.on_batch is not None:
                        self.on_batch(int(scores.size))
                while open_tiles and open_tiles[0].filled == open_tiles[0].x.size:
                    work = open_tiles.popleft()
                    work.pixels = None
                    yield self._finish(work)
            if self.error is not None:
                raise self.error
            if self.read_error is not None:
                raise self.read_error
        finally:
            self.abort.set()
            for t in stages:
                t.join()
            self.ring.close()
        if self.error is not None:
            raise self.error
