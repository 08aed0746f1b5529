"""The scan engine: tiles -> positions -> pinned batches -> runner -> per-tile results.

``Engine`` scores every position of a source (catalog, detection, grid;
:mod:`pyengine.sources`) on a mosaic with a runner (:mod:`pyengine.runners`).
Four stages run at once, joined by bounded queues, so the runner is never
waiting for pixels (DESIGN.md §2):

1. **read** (a small thread pool, tiles in file order, ``prefetch`` ahead):
   ``Mosaic.read`` of the tile window, the source's positions in the tile core
   (SEP detection runs here), and, for a float16 transfer, the tile's per-band
   offset and scale;
2. **gather** (one thread driving the C++ worker pool of
   :class:`pyengine.scan.batching.BatchRing`): fills fixed-size batch slots with the
   windows of consecutive positions, spanning tile boundaries, so every batch
   but the last is full;
3. **infer** (one thread): ``runner.submit`` with up to two batches in flight
   (the copy of one overlaps the compute of the other on a GPU);
4. **collect** (the caller's thread, inside :meth:`Engine.iter_scan`): scores
   and NaN counts back into tile order; each tile is yielded when its last
   position is scored, so tiles complete in file order.

Memory is bounded by configuration: ``prefetch`` tiles of (nband, core + 2 halo)^2
float32, plus the ring's slots.

Determinism: positions, their order and coordinates depend only on the inputs,
the tile plan and the source, never on thread count, batch size or resume.
Scores agree across batch sizes to float rounding of the runner.

Thread safety: an Engine owns one runner and runs one scan at a time (a lock
serialises ``scan``/``iter_scan``/``classify``); use one Engine per thread for
concurrent scans.  ``iter_scan`` must be consumed from one thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pyengine.bands import match_order
from pyengine.coords import centre_pixel
from pyengine.defaults import DEFAULT_CORE, DEFAULT_MAX_NAN  # re-exported here too
from pyengine.errors import ConfigError, MosaicMismatchError
from pyengine.flags import cutout_flags
from pyengine.io.tiles import Tile, TilePlan
from pyengine.runners.base import Runner
from pyengine.runners.select import make_runner
from pyengine.scan.batching import BatchRing, gather
from pyengine.scan.results import TileResult
from pyengine.sources.base import tiles_to_do
from pyengine.stats import median_and_sigma
from pyengine.validate import integer, number

__all__ = ["Engine", "ScanStopped", "match_bands", "tile_affine"]

_POLL = 0.1  # seconds between checks of the abort flag while a stage waits


class ScanStopped(Exception):
    """Raised inside the pipeline threads when the scan is being torn down."""


@dataclass
class _TileWork:
    """A tile on its way through the pipeline."""

    tile: Tile
    pixels: np.ndarray | None
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
        med, mad = median_and_sigma(v)
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
    """

    def __init__(self, model=None, runner: str | Runner = "auto", precision: str | None = None,
                 batch_size: int | None = None, threads: int | None = None, *,
                 threshold: float | None = None, core: int = DEFAULT_CORE,
                 max_nan_fraction: float = DEFAULT_MAX_NAN, device: str = "auto",
                 cache_dir=None, prefetch: int = 2, slots: int = 4):
        if batch_size is not None:
            integer(batch_size, "batch size", 1, 65536, whole_floats=True)
        if threads is not None:
            integer(threads, "threads", 1, accepted="a positive integer is needed",
                    whole_floats=True)
        number(max_nan_fraction, "max NaN fraction", 0.0, 1.0, accepted="a fraction in [0, 1] "
               "is needed")
        number(threshold, "threshold", 0.0, 1.0, allow_none=True,
               accepted="a probability in [0, 1] is needed")
        integer(core, "tile core", 64, 1 << 16, whole_floats=True)
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
        """The model's identity: the same SHA-256 for a model file and for its ONNX
        export or TensorRT engine (:func:`pyengine.runners.loaders.model_identity`)."""
        from pyengine.runners.loaders import model_identity

        return model_identity(self.model)

    # -- life cycle ------------------------------------------------------------
    def open(self) -> Engine:
        """Load the runner (model session or engine); called on first use anyway."""
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
        """(mosaic, source, plan) ready to scan: bands matched to the model, source bound.

        ``mosaic`` is a :class:`Mosaic` or the band image paths.  The mosaic returned
        is the one given when its bands are already in the model's order; otherwise
        (paths given, or bands to reorder) it is one this call opened, and the caller
        closes it (``returned is not given``); :meth:`prepared` does that.  Nothing
        opened here stays open when this raises.  A Mosaic the caller passed is
        never closed here.
        """
        from pyengine.io.mosaic import Mosaic
        from pyengine.sources.detect import DetectSource

        given = mosaic
        opened = mosaic = mosaic if isinstance(mosaic, Mosaic) else Mosaic.open(mosaic)
        try:
            mosaic = match_bands(opened, self.spec.bands)
            if opened is not given and mosaic is not opened:
                opened.close()  # reopened in the model's order: the first one is not used
            source = sources if sources is not None else DetectSource()
            plan = TilePlan.for_cutout(mosaic.shape, cutout=self.spec.cutout_size,
                                       core=self.core)
            source.bind(mosaic, plan)
        except BaseException:
            for m in (opened, mosaic):  # close() twice is harmless
                if m is not given:
                    m.close()
            raise
        return mosaic, source, plan

    @contextlib.contextmanager
    def prepared(self, mosaic, sources=None):
        """:meth:`prepare` as a context manager: closes on exit (error or not) the
        mosaic it opened, never the one given."""
        ready = self.prepare(mosaic, sources)
        try:
            yield ready
        finally:
            if ready[0] is not mosaic:
                ready[0].close()

    def scan(self, mosaic, sources=None):
        """The whole catalog (astropy Table) of ``sources`` (default: detection) on ``mosaic``."""
        from pyengine.scan.assembly import assemble_catalog

        with self.prepared(mosaic, sources) as (mosaic, source, plan):
            results = list(self.iter_results(mosaic, source, plan))
            return assemble_catalog(self, mosaic, source, results)

    def iter_scan(self, mosaic, sources=None):
        """Per-tile catalogs (astropy Tables), in tile order, as tiles complete.

        A mosaic opened for the scan is closed when the iterator ends or is closed.
        """
        from pyengine.scan.assembly import tile_table

        with self.prepared(mosaic, sources) as (mosaic, source, plan):
            for result in self.iter_results(mosaic, source, plan):
                yield tile_table(self, mosaic, result)

    def iter_results(self, mosaic, source, plan: TilePlan, *, skip=frozenset(),
                     stop: threading.Event | None = None,
                     on_batch: Callable[[int], None] | None = None) -> Iterator[TileResult]:
        """The pipeline: a :class:`TileResult` per tile with positions, in tile order.

        ``skip``: tile indices already done (resume).  ``stop``: when set, no new
        tile is started; batches already gathered finish and their complete
        tiles are still yielded, then the iterator ends.  ``on_batch(n)`` is
        called after each batch of n scores (progress).
        """
        with self._lock:
            self.runner.activate()
            yield from _Pipeline(self, mosaic, source, plan, skip, stop, on_batch).run()


def match_bands(mosaic, bands):
    """The mosaic with its bands in the model's order; refuses other band sets.

    Names compare by :func:`pyengine.bands.band_index` (case and MegaCam ``.MP``
    numbers ignored: FILTER ``g.MP9401`` is a model's band ``g``).  Bands already
    in order: the same mosaic.  Otherwise a new Mosaic of the same files in the
    model's order, keeping the mosaic's own band names; the caller closes it.
    """
    have = tuple(mosaic.bands)
    bands = tuple(bands)
    order = match_order(have, bands)
    if order is None:
        raise MosaicMismatchError(
            f"the model needs bands {', '.join(bands)} but the mosaic has "
            f"{', '.join(have)} ({', '.join(mosaic.paths)}); give one image per model band, "
            "or name them with --bands")
    if order == list(range(len(have))):
        return mosaic
    from pyengine.io.mosaic import Mosaic

    return Mosaic.open([mosaic.paths[i] for i in order], bands=[have[i] for i in order])


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
        pixels = self.mosaic.read(*tile.window)  # tiles known to own no position are skipped
        pos = self.source.positions(tile, pixels if self.source.needs_pixels else None)
        nband = self.mosaic.nband
        if self.dtype == np.float16:
            offset, scale = tile_affine(pixels)
        else:
            offset, scale = np.zeros(nband, np.float32), np.ones(nband, np.float32)
        return _TileWork(tile, pixels, np.asarray(pos.x, np.float64),
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
        ring = self.ring
        slot, used, segments = -1, 0, []
        while not self.stop.is_set() or slot >= 0:
            work = self._get(self.tiles_q)
            if work is None:
                break
            n = work.x.size
            work.scores = np.full(n, np.nan, np.float32)
            work.nan_counts = np.zeros(n, np.int64)
            self.collect_q.put(("tile", work))
            if n == 0:
                continue
            wy0, _, wx0, _ = work.tile.window
            cx = centre_pixel(work.x) - wx0
            cy = centre_pixel(work.y) - wy0
            done = 0
            while done < n:
                if slot < 0:
                    if self.stop.is_set():  # interrupted: only the batch in flight finishes
                        break
                    slot = self._acquire(ring)
                    used, segments = 0, []
                k = min(n - done, self.batch - used)
                pixels, scx, scy = self._segment(work.pixels, cx[done : done + k],
                                                 cy[done : done + k])
                ring.fill(slot, used, pixels, scx, scy, offset=work.offset, scale=work.scale)
                segments.append((work, done, used, k))
                used += k
                done += k
                if used == self.batch:
                    self._put(self.infer_q, (slot, used, segments))
                    slot = -1
            work.pixels = None  # the ring keeps what it still needs until the slot is waited on
        if slot >= 0:
            self._put(self.infer_q, (slot, used, segments))
        self._put(self.infer_q, None)

    def _segment(self, pixels: np.ndarray, cx: np.ndarray, cy: np.ndarray):
        """The array a ring fill reads for these k windows, and their centres in it.

        A batch may hold positions of many tiles, and the ring keeps each tile
        array alive until the batch is gathered.  For a sparse segment (its
        windows cover under a quarter of the tile) the windows are first copied
        side by side into a compact (nband, S, k * S) strip, so sparse catalogs
        never pin a batch's worth of whole tiles in memory.
        """
        k, size = cx.size, self.size
        if k * size * size * 4 >= pixels[0].size:
            return pixels, cx, cy
        windows = gather(pixels, cx, cy, size)  # raw float32, NaN kept
        strip = np.ascontiguousarray(windows.transpose(1, 2, 0, 3).reshape(
            pixels.shape[0], size, k * size))
        centres = np.arange(k, dtype=np.int64) * size + size // 2
        return strip, centres, np.full(k, size // 2, np.int64)

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
            slot, n, segments = item
            ring.wait(slot)
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
        flags = cutout_flags(frac, self.engine.max_nan_fraction)
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
