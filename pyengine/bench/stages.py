"""One measurement per stage of a scan: read, gather, model only (see :mod:`pyengine.bench`).

Thread safety: one measurement at a time (each times the whole machine).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pyengine.bench.config import BenchConfig

__all__ = ["bench_gather", "bench_model_only", "bench_read"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _median_rate(work_per_call: float, fn, min_time: float, *, min_calls: int = 3,
                 max_calls: int = 10_000) -> float:
    """Median of work/second over calls of ``fn`` repeated for at least ``min_time`` s."""
    rates, start = [], time.perf_counter()
    while len(rates) < max_calls and (len(rates) < min_calls
                                      or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        rates.append(work_per_call / max(time.perf_counter() - t0, 1e-9))
    return float(statistics.median(rates))


# -- images -----------------------------------------------------------------------------

def _field(cfg: BenchConfig, spec, workdir: Path, log) -> tuple[list[str], str]:
    if cfg.images:
        return list(cfg.images), f"{len(cfg.images)} given image(s)"
    from pyengine.errors import ConfigError

    if tuple(spec.bands) != ("g", "i"):
        raise ConfigError(f"the model's bands are {list(spec.bands)}; give band images for them "
                          "(the synthetic field has g and i only)")
    from pyengine.synth import SynthConfig, make_field

    size = cfg.size or (1024 if cfg.quick else 2048)
    where = workdir / f"field-{size}-seed{cfg.seed}"
    paths = [where / "g.fits", where / "i.fits"]
    if not all(p.exists() for p in paths):
        log(f"making a synthetic {size}x{size} g,i field in {where} ...")
        make_field(where, SynthConfig(width=size, height=size, seed=cfg.seed))
    return [str(p) for p in paths], f"synthetic {size}x{size} g,i field (seed {cfg.seed})"


# -- read -------------------------------------------------------------------------------

def _raw_views(paths) -> list[np.ndarray] | None:
    """Memory maps of each band's raw bytes in their own (big-endian) type, or None
    when a band is compressed (there are no raw pixels to copy)."""
    from pyengine.io.fitsfile import parse_spec, scan_hdus, select_image

    dtypes = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
    views = []
    for spec in paths:
        path, ext = parse_spec(spec)
        info, shape = select_image(path, scan_hdus(path), ext)
        if info.kind == "compressed":
            return None
        from pyengine.io.fitsfile import image_header

        bitpix = int(image_header(info)["BITPIX"])
        views.append(np.memmap(path, dtype=np.dtype(dtypes[bitpix]), mode="r",
                               offset=info.data_offset, shape=shape))
    return views


def bench_read(mosaic, paths, windows, min_time: float, runs: int = 3) -> dict:
    ny, nx = mosaic.shape
    clipped = [(max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)) for y0, y1, x0, x1 in windows]
    pixels = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in clipped) * mosaic.nband
    hmax = max(y1 - y0 for y0, y1, _, _ in windows)
    wmax = max(x1 - x0 for _, _, x0, x1 in windows)
    buf = np.empty((mosaic.nband, hmax, wmax), np.float32)

    def read_pass():
        for y0, y1, x0, x1 in windows:
            mosaic.read(y0, y1, x0, x1, out=buf[:, : y1 - y0, : x1 - x0])

    raws = _raw_views(paths)
    out = {"tiles": len(windows), "pixels": int(pixels), "compressed": raws is None}
    if raws is None:
        read_pass()
        out["mpix_per_s"] = _median_rate(pixels / 1e6, read_pass, min_time)
        out.update(copy_mpix_per_s=None, ratio_to_copy=None,
                   note="compressed images: no raw bytes to copy, so no baseline")
        return out
    rawbufs = [np.empty((hmax, wmax), r.dtype) for r in raws]

    def copy_pass():
        for y0, y1, x0, x1 in clipped:
            for raw, rb in zip(raws, rawbufs, strict=True):
                np.copyto(rb[: y1 - y0, : x1 - x0], raw[y0:y1, x0:x1])

    copy_pass()  # page cache and Numba kernels warm before timing either
    read_pass()
    a, b = [], []
    for _ in range(runs):  # alternate, so drift on a shared machine hits both
        a.append(_median_rate(pixels / 1e6, read_pass, min_time / runs, min_calls=1))
        b.append(_median_rate(pixels / 1e6, copy_pass, min_time / runs, min_calls=1))
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    itemsize = sum(r.dtype.itemsize for r in raws) / len(raws)
    out.update(mpix_per_s=statistics.median(a), copy_mpix_per_s=statistics.median(b),
               gb_per_s_raw=statistics.median(a) * 1e6 * itemsize / 1e9,
               ratio_to_copy=statistics.median(ratios), ratio_per_run=ratios)
    return out


# -- gather -----------------------------------------------------------------------------

def _thread_counts(limit: int) -> list[int]:
    counts, n = [], 1
    while n < limit:
        counts.append(n)
        n *= 2
    return [*counts, limit]


def bench_gather(tile: np.ndarray, size: int, batch: int, threads: list[int], min_time: float,
                 dtype=np.float32, seed: int = 0, order: str = "scan") -> dict:
    """BatchRing on one tile in memory vs ``np.copyto`` of the same bytes.

    ``order``: ``scan`` takes uniformly random positions in row order, as a detection or
    grid scan presents them (neighbouring windows share cache lines); ``random`` leaves
    them unordered (an unsorted input catalog: each window's rows come from memory)."""
    from pyengine.scan.batching import BatchRing, make_slots

    nband, h, w = tile.shape
    rng = np.random.default_rng(seed)
    nbatch = 64
    cx = rng.integers(size // 2, w - size // 2, size=nbatch * batch)
    cy = rng.integers(size // 2, h - size // 2, size=nbatch * batch)
    if order == "scan":
        keep = np.lexsort((cx, cy))
        cx, cy = cx[keep], cy[keep]
    cx, cy = cx.reshape(nbatch, batch), cy.reshape(nbatch, batch)
    nbytes = batch * nband * size * size * np.dtype(dtype).itemsize
    flat = tile.reshape(-1).view(np.uint8)
    slots = make_slots(4, batch, nband, size, dtype)
    dest = slots[0].reshape(-1).view(np.uint8)
    span = max(1, flat.size - nbytes)
    starts = rng.integers(0, span, size=nbatch) // 64 * 64

    def copy_batches():
        for s in starts:
            np.copyto(dest, flat[s : s + nbytes])

    copy_batches()
    copy_rate = _median_rate(nbytes * nbatch / 1e9, copy_batches, min_time / 2)
    out = {"batch": batch, "cutout": size, "bands": nband, "dtype": np.dtype(dtype).name,
           "order": order, "tile": [h, w],
           "bytes_per_batch": nbytes, "copy_gb_per_s": copy_rate, "threads": []}
    for t in threads:
        with BatchRing(slots, threads=t) as ring:
            def run_ring(ring=ring):
                pending = deque()
                for i in range(nbatch):
                    if len(pending) == len(slots):
                        done = pending.popleft()
                        ring.wait(done)
                        ring.release(done)
                    slot = ring.acquire()
                    ring.fill(slot, 0, tile, cx[i], cy[i])
                    pending.append(slot)
                while pending:
                    done = pending.popleft()
                    ring.wait(done)
                    ring.release(done)

            run_ring()
            rate = _median_rate(nbatch * batch, run_ring, min_time / max(len(threads), 1))
        gb = rate / batch * nbytes / 1e9
        out["threads"].append({"threads": t, "cutouts_per_s": rate, "gb_per_s": gb,
                               "ratio_to_copy": gb / copy_rate})
    return out


# -- model only -------------------------------------------------------------------------

def _runner_batches(runner, batch: int, cutouts: np.ndarray, count: int = 2) -> list:
    slots = runner.allocate_slots(count, batch)
    reps = -(-batch // len(cutouts))
    source = np.concatenate([cutouts] * reps)[:batch]
    for slot in slots:
        slot[...] = source.astype(slot.dtype)
    return slots


def bench_model_only(runner, batch: int, cutouts: np.ndarray, min_time: float) -> float:
    """cutouts/s of ``runner`` on prepared batches, ``runner.in_flight`` outstanding (as
    the engine runs it: 2 on a CPU, 3 on a GPU)."""
    depth = max(1, int(getattr(runner, "in_flight", 2)))
    slots = _runner_batches(runner, batch, cutouts, count=depth + 1)
    # Warm-up (CUDA graphs, ONNX Runtime's first-run allocations, thread pools waking
    # from the previous stage): at least two batches and a fifth of the measuring time.
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < min_time / 5:
        runner.infer(slots[calls % len(slots)])
        calls += 1
    nbatch = max(4, int(min_time * 8))

    def run():
        pending = deque()
        for i in range(nbatch):
            if len(pending) == depth:
                pending.popleft().result()
            pending.append(runner.submit(slots[i % len(slots)]))
        while pending:
            pending.popleft().result()

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    if first < min_time:  # too short to trust alone: repeat and take the median
        return _median_rate(nbatch * batch, run, min_time, min_calls=3)
    return nbatch * batch / first


# -- the plan of what to measure ----------------------------------------------------------
