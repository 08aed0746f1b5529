"""The scan engine: tiles -> positions -> pinned batches -> runner -> per-tile results.

``Engine`` scores every position of a source (catalog, detection, grid;
:mod:`pyengine.sources`) on a mosaic with a runner (:mod:`pyengine.runners`).
Four stages run at once, joined by bounded queues, so the runner is never
waiting for pixels (DESIGN.md §2):

1. **read** (up to two threads, tiles in file order, ``prefetch`` ahead; tiles
   resumed or known to own no position are not read): ``Mosaic.read`` of the
   tile window into a buffer of the tile-buffer pool
   (:class:`pyengine.scan.buffers.TileBuffers`), the source's positions in the
   tile core (SEP detection runs here), and, for a float16 transfer, the tile's
   per-band offset and scale;
2. **gather** (one thread): fills fixed-size batch slots with the windows of
   consecutive positions, spanning tile boundaries, so every batch but the last
   is full.  A dense segment (a tile's windows in one slot covering at least a
   quarter of the tile) is filled by the C++ worker pool of
   :class:`pyengine.scan.batching.BatchRing` straight from the tile buffer, which
   the slot then pins until it is waited on (at most ``_PINNED_PER_SLOT`` tiles
   per slot); any other segment is gathered by this thread straight into the
   slot's rows (one copy, NaN counts into the ring's per-slot counts);
3. **infer** (one thread): waits for the slot's fills, lets go of its pinned tile
   buffers, and calls ``runner.submit`` with up to two batches in flight (the
   copy of one overlaps the compute of the other on a GPU);
4. **collect** (the thread consuming :meth:`Engine.iter_results`, which
   ``scan`` and ``iter_scan`` wrap): copies each batch's scores and NaN counts
   into its tiles' arrays, calls ``on_batch``, and yields a tile's
   :class:`TileResult` (NaN fraction and flags made here) once every position of
   it and of every tile read before it is scored, so results come in file order
   (a tile read but owning no position, as detection may find, gives an empty
   result).

Memory is bounded by configuration, not by the mosaic.  Pixels: at most
``2 * prefetch + 1 + slots * _PINNED_PER_SLOT`` tile buffers of nband x
(core + 2 halo)^2 float32 (``prefetch`` tiles being read, ``prefetch`` queued,
the one being gathered, one pinned per slot; allocated only as needed, reused
from tile to tile); batches: ``slots`` runner slots of batch x nband x S^2 in
the transfer dtype (allocated once per runner activation).  No per-segment
copy or strip is made.  Positions and per-tile results grow with the tiles
read but not yet complete.

Determinism: positions, their order and coordinates depend only on the inputs,
the tile plan and the source, never on thread count, batch size or resume.
Scores agree across batch sizes to float rounding of the runner.

Thread safety: an Engine owns one runner and runs one scan at a time (a lock
serialises ``scan``/``iter_scan``/``classify``); use one Engine per thread for
concurrent scans.  ``iter_scan`` must be consumed from one thread.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.errors import ConfigError, MosaicMismatchError
from pyengine.flags import BLANK, EDGE
from pyengine.io.tiles import Tile, TilePlan
from pyengine.runners.base import Runner
from pyengine.runners.select import make_runner
from pyengine.scan.batching import BatchRing, gather
from pyengine.scan.buffers import TileBuffers
from pyengine.scan.results import TileResult

__all__ = ["Engine", "ScanStopped", "match_bands", "tile_affine"]

DEFAULT_CORE = 2048
DEFAULT_MAX_NAN = 0.5
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
    scores: np.ndarray = None
    nan_counts: np.ndarray = None
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
        med = np.median(v)
        mad = 1.4826 * np.median(np.abs(v - med))
        offset[b] = med
        if np.isfinite(mad) and mad > 0:
            scale[b] = 1.0 / mad
    return offset, scale


def _affine_invariant(spec) -> bool:
    p = spec.preprocess
    return p.background == "border_median" and p.scale == "border_mad"


class Engine:
    """Scores positions on mosaics with one model and one runner.

    ``model``: a pyengine model file, an exported ``.onnx`` (onnxruntime) or
    TensorRT engine, or None for the shipped demo model.  ``runner``: a name
    (``auto``, ``onnxruntime``, ``torch``, ``tensorrt``) or a :class:`Runner`.
    ``batch_size`` None takes the runner's preferred size; ``threads`` None lets
    each library choose.  ``threshold`` None takes the model's decision threshold.
    ``prefetch`` (at least 1) tiles are read ahead of the gather stage and
    ``slots`` (at least 2) batch slots circulate between gather and infer; with
    ``core`` they bound a scan's memory (see the module docstring).
    """

    def __init__(self, model=None, runner: str | Runner = "auto", precision: str | None = None,
                 batch_size: int | None = None, threads: int | None = None, *,
                 threshold: float | None = None, core: int = DEFAULT_CORE,
                 max_nan_fraction: float = DEFAULT_MAX_NAN, device: str = "auto",
                 cache_dir=None, prefetch: int = 2, slots: int = 4):
        if batch_size is not None and not 1 <= int(batch_size) <= 65536:
            raise ConfigError(f"batch size {batch_size} is out of range; accepted: 1..65536")
        if threads is not None and int(threads) < 1:
            raise ConfigError(f"threads = {threads}; a positive number is needed")
        if not 0.0 <= float(max_nan_fraction) <= 1.0:
            raise ConfigError(f"max NaN fraction {max_nan_fraction} is out of range; "
                              "accepted: 0..1")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold {threshold} is out of range; accepted: a "
                              "probability in [0, 1]")
        if not 64 <= int(core) <= 1 << 16:
            raise ConfigError(f"tile core {core} is out of range; accepted: 64..65536")
        if isinstance(runner, Runner):
            self.runner = runner
        else:
            self.runner = make_runner(runner, model, precision=precision, threads=threads,
                                      cache_dir=cache_dir, device=device, batch_size=batch_size)
        self.spec = self.runner.spec
        preferred = getattr(self.runner, "preferred_batch_size", 32) or 32
        self.batch_size = int(batch_size) if batch_size is not None else int(preferred)
        limit = getattr(self.runner, "max_batch_size", None)
        if limit is not None and self.batch_size > limit:
            raise ConfigError(f"batch size {self.batch_size} exceeds the {self.runner.name} "
                              f"runner's maximum {limit}")
        self.threads = int(threads) if threads is not None else None
        self.threshold = float(threshold) if threshold is not None else float(self.spec.threshold)
        self.core = int(core)
        self.max_nan_fraction = float(max_nan_fraction)
        self.prefetch = max(1, int(prefetch))
        self.nslots = max(2, int(slots))
        self.model = model
        self._lock = threading.Lock()
        self._slots_key, self._slots = None, None

    @functools.cached_property
    def model_sha256(self) -> str:
        """SHA-256 of the model file given (the shipped demo model's when None)."""
        from pyengine.models.checkpoint import DEMO_MODEL, file_sha256

        return file_sha256(self.model if self.model is not None else DEMO_MODEL)

    # -- life cycle ------------------------------------------------------------
    def open(self) -> Engine:
        """Load the runner (model session or engine); called on first use anyway.

        Takes the scan lock, so it may run in another thread while the caller
        prepares a scan (the CLI does): a scan that starts meanwhile waits for it
        instead of loading the runner a second time."""
        with self._lock:
            self.runner.activate()
        return self

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def transfer_dtype(self):
        """dtype of the batches handed to the runner (float16 halves the copy)."""
        dtype = np.dtype(getattr(self.runner, "input_dtype", np.float32))
        if dtype == np.float16 and not _affine_invariant(self.spec):
            return np.dtype(np.float32)  # the runner converts; no rescaling allowed
        return dtype

    @property
    def gather_threads(self) -> int:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
        return max(1, min(4, self.threads or cpus))

    def describe(self) -> dict:
        """Runner, precision and batch settings, for logs and catalog metadata."""
        return {"runner": self.runner.name, "precision": self.runner.precision,
                "batch_size": self.batch_size, "threshold": self.threshold,
                "transfer_dtype": str(self.transfer_dtype),
                "chosen_because": getattr(self.runner, "chosen_because", "")}

    def slots(self, batch: int, dtype) -> list[np.ndarray]:
        """The runner's batch slots (pinned on a GPU) for a scan, allocated once per runner
        activation and reused by later scans, so an engine that scans many mosaics does
        not accumulate pinned memory.  Scans hold ``_lock``, so one scan uses them at a time."""
        runner = self.runner
        key = (id(runner), runner.activations, self.nslots, int(batch), np.dtype(dtype).str)
        if key != self._slots_key:
            self._slots_key, self._slots = None, None  # drop the old ones first
            self._slots = runner.allocate_slots(self.nslots, int(batch), dtype)
            self._slots_key = key
        return self._slots

    # -- arrays the caller already has -------------------------------------------
    def classify(self, cutouts: np.ndarray) -> np.ndarray:
        """Scores (n,) float32 for raw cutouts (n, nband, S, S) (NaN allowed)."""
        cutouts = np.asarray(cutouts)
        want = (self.spec.nband, self.spec.cutout_size, self.spec.cutout_size)
        if cutouts.ndim != 4 or cutouts.shape[1:] != want:
            raise ConfigError(f"classify: cutouts must be (n, {', '.join(map(str, want))}) for "
                              f"this model (bands {', '.join(self.spec.bands)}), got "
                              f"{cutouts.shape}")
        cutouts = cutouts.astype(np.float32, copy=False)
        with self._lock:
            self.runner.activate()
            out = np.empty(cutouts.shape[0], np.float32)
            for s in range(0, cutouts.shape[0], self.batch_size):
                out[s : s + self.batch_size] = self.runner.infer(
                    np.ascontiguousarray(cutouts[s : s + self.batch_size]))
        return out

    # -- scanning ------------------------------------------------------------------
    def prepare(self, mosaic, sources=None):
        """(mosaic, source, plan) ready to scan: bands matched to the model, source bound."""
        from pyengine.io.mosaic import Mosaic
        from pyengine.sources.detect import DetectSource

        if not isinstance(mosaic, Mosaic):
            mosaic = Mosaic.open(mosaic)
        mosaic = match_bands(mosaic, self.spec.bands)
        source = sources if sources is not None else DetectSource()
        plan = TilePlan.for_cutout(mosaic.shape, cutout=self.spec.cutout_size, core=self.core)
        source.bind(mosaic, plan)
        return mosaic, source, plan

    def scan(self, mosaic, sources=None):
        """The whole catalog (astropy Table) of ``sources`` (default: detection) on ``mosaic``."""
        from pyengine.scan.assembly import assemble_catalog

        mosaic, source, plan = self.prepare(mosaic, sources)
        results = list(self.iter_results(mosaic, source, plan))
        return assemble_catalog(self, mosaic, source, results)

    def iter_scan(self, mosaic, sources=None):
        """Per-tile catalogs (astropy Tables), one per :meth:`iter_results` result: in
        tile order, each as soon as it and the tiles before it are scored."""
        from pyengine.scan.assembly import tile_table

        mosaic, source, plan = self.prepare(mosaic, sources)
        for result in self.iter_results(mosaic, source, plan):
            yield tile_table(self, mosaic, result)

    def iter_results(self, mosaic, source, plan: TilePlan, *, skip=frozenset(),
                     stop: threading.Event | None = None,
                     on_batch: Callable[[int], None] | None = None) -> Iterator[TileResult]:
        """The pipeline (module docstring): a :class:`TileResult` per tile read, in tile
        order, each yielded once it and every tile before it are fully scored.

        Tiles in ``skip`` (indices already done: resume) and tiles the source knows
        to own no position (``source.count(tile) == 0``) are not read and give no
        result; a tile read whose positions turn out empty (detection) gives an
        empty result.  ``stop``: when set, no new tile is read and no new batch
        started; the batch being filled is completed from tiles already read (or sent
        part-full when they run out), the batches gathered finish, the tiles they complete are still yielded, then
        the iterator ends (a partly scored tile is not yielded).  ``on_batch(n)`` is
        called in the consuming thread after each batch of n scores (progress).
        """
        with self._lock:
            self.runner.activate()
            yield from _Pipeline(self, mosaic, source, plan, skip, stop, on_batch).run()


def match_bands(mosaic, bands):
    """The mosaic with its bands in the model's order; refuses other band sets."""
    have = tuple(mosaic.bands)
    bands = tuple(bands)
    if have == bands:
        return mosaic
    if sorted(have) != sorted(bands):
        raise MosaicMismatchError(
            f"the model needs bands {', '.join(bands)} but the mosaic has "
            f"{', '.join(have)} ({', '.join(mosaic.paths)}); give one image per model band, "
            "or name them with --bands")
    from pyengine.io.mosaic import Mosaic

    order = [have.index(b) for b in bands]
    return Mosaic.open([mosaic.paths[i] for i in order], bands=list(bands))


class _Pipeline:
    """One scan's threads and queues (see the module docstring)."""

    def __init__(self, engine: Engine, mosaic, source, plan, skip, stop, on_batch):
        self.engine, self.mosaic, self.source, self.plan = engine, mosaic, source, plan
        self.skip = frozenset(int(t) for t in skip)
        self.stop = stop if stop is not None else threading.Event()
        self.on_batch = on_batch
        self.abort = threading.Event()  # teardown: every stage leaves at once
        self.error: BaseException | None = None
        self.size = engine.spec.cutout_size
        self.dtype = engine.transfer_dtype
        self.batch = engine.batch_size
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
        tiles = []
        for tile in self.plan:
            if tile.index in self.skip:
                continue
            if self.source.count(tile) == 0:
                continue
            tiles.append(tile)
        return tiles

    def _load(self, tile: Tile) -> _TileWork:
        y0, y1, x0, x1 = tile.window
        nband = self.mosaic.nband
        buffer, pixels = self.buffers.take((nband, y1 - y0, x1 - x0))
        try:
            # Tiles known to own no position are skipped (_wanted); the pool's buffer is
            # C-contiguous, so the gather stage uses it as it is.
            self.mosaic.read(y0, y1, x0, x1, out=pixels)
            pos = self.source.positions(tile, pixels if self.source.needs_pixels else None)
            if self.dtype == np.float16:
                offset, scale = tile_affine(pixels)
            else:
                offset, scale = np.zeros(nband, np.float32), np.ones(nband, np.float32)
        except BaseException:
            self.buffers.drop(buffer)
            raise
        return _TileWork(tile, pixels, buffer, np.asarray(pos.x, np.float64),
                         np.asarray(pos.y, np.float64), np.asarray(pos.row, np.int64),
                         dict(pos.columns), offset, scale)

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
                    work = pending.popleft().result()
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
            work.nan_counts = np.zeros(n, np.int64)
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

    # -- stage 3: inference, two batches in flight ---------------------------------------
    def infer(self):
        ring, runner = self.ring, self.engine.runner
        flight: deque = deque()

        def retire():
            slot, n, segments, pending = flight.popleft()
            scores = np.asarray(pending.result(), dtype=np.float32).reshape(-1)[:n]
            counts = ring.nan_counts[slot][:n].copy()
            ring.release(slot)
            self.collect_q.put(("scores", segments, scores, counts))

        while True:
            item = self._get(self.infer_q)
            if item is None:
                break
            slot, n, segments, pinned = item
            ring.wait(slot)
            for buffer in pinned:  # the slot's fills are done: its tiles may be reused
                self.buffers.drop(buffer)
            flight.append((slot, n, segments, runner.submit(ring.slots[slot][:n])))
            if len(flight) > 1:
                retire()
        while flight:
            retire()
        self.collect_q.put(("end",))

    # -- stage 4: collect, in the caller's thread -------------------------------------------
    def _finish(self, work: _TileWork) -> TileResult:
        npix = self.mosaic.nband * self.size * self.size
        frac = (work.nan_counts / npix).astype(np.float32)
        flags = np.zeros(work.x.size, np.int32)
        flags[frac > 0] |= EDGE
        blank = frac > self.engine.max_nan_fraction
        flags[blank] |= BLANK
        return TileResult(work.tile.index, work.x, work.y, work.row, work.scores, frac, flags,
                          work.columns)

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
                    _, segments, scores, counts = msg
                    for work, start, at, k in segments:
                        work.scores[start : start + k] = scores[at : at + k]
                        work.nan_counts[start : start + k] = counts[at : at + k]
                        work.filled += k
                    if self.on_batch is not None:
                        self.on_batch(int(scores.size))
                while open_tiles and open_tiles[0].filled == open_tiles[0].x.size:
                    work = open_tiles.popleft()
                    work.pixels = None
                    yield self._finish(work)
            if self.error is not None:
                raise self.error
        finally:
            self.abort.set()
            for t in stages:
                t.join()
            self.ring.close()
        if self.error is not None:
            raise self.error
