"""``pyengine bench``: each stage of a scan alone, then the whole scan, on one machine.

Stages, each against its own limit:

- ``read``: :meth:`Mosaic.read` of every tile (core + halo) in MPix/s, as a ratio to
  a plain NumPy copy of the same raw bytes out of a memory map of the same file
  (no byte swap, no scaling); compressed images have no such baseline;
- ``gather``: the C++ batcher (:class:`~pyengine.batching.BatchRing`) cutting
  batches out of a tile in memory, in cutouts/s and GB/s written, for 1..N
  worker threads, as a ratio to one ``np.copyto`` of the same number of bytes;
- ``model_only``: each usable runner and precision at several batch sizes, the
  batches already prepared in the runner's own slots (two in flight, as the
  engine submits them);
- ``end_to_end``: the real pipeline (:meth:`Engine.iter_results`: read, gather,
  infer, collect) over a grid of positions, and its ratio to the same runner's
  model-only figure at the same batch size;
- ``machine``: CPU, threads, GPUs and library versions.

Images are the user's (one per model band) or a synthetic g, i field made in
``--workdir``.  ``--quick`` (ONNX Runtime fp32, two batch sizes, a 1024 px
field) finishes within a minute on 2 CPU cores.  An int8 ONNX Runtime graph is
measured when ``--int8`` names one, or (not with ``--quick``) is made from the
model on half of the field's cutouts, with its decision agreement on the other
half.  The figures are wall-clock medians; on a shared machine compare ratios
measured in one run.

Thread safety: one bench per process (it times the whole machine).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

__all__ = ["BenchConfig", "bench", "run_bench"]

CPU_BATCHES = (8, 16, 32, 64, 128)
GPU_BATCHES = (256, 512, 1024, 2048, 4096)
QUICK_BATCHES = (16, 32)
# Precisions measured per runner when none are asked for (CPU, GPU).  torch fp16 on
# a CPU has no fast kernels; TensorRT int8 needs an int8 export given with --int8.
_CPU_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "bf16")}
_GPU_PRECISIONS = {"torch": ("fp16", "bf16"), "tensorrt": ("fp16", "int8"),
                   "onnxruntime": ("fp32", "int8")}


@dataclass
class BenchConfig:
    images: tuple[str, ...] = ()
    model: str | None = None
    runners: tuple[str, ...] = ()  # () = every usable runner
    precisions: tuple[str, ...] = ()  # () = each runner's defaults
    batches: tuple[int, ...] = ()  # () = CPU or GPU defaults
    threads: int | None = None
    positions: int | None = None  # end-to-end positions (grid); None = by mode
    int8: str | None = None  # an int8 ONNX export to measure
    size: int | None = None  # synthetic field edge
    workdir: str | None = None
    quick: bool = False
    min_time: float | None = None  # seconds per measurement
    gather_batch: int = 256
    seed: int = 7
    notes: list[str] = field(default_factory=list)


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
    from pyengine.batching import BatchRing, make_slots

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
    """cutouts/s of ``runner`` on prepared batches, two in flight (as the engine runs it)."""
    slots = _runner_batches(runner, batch, cutouts)
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
            if len(pending) == 2:
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

@dataclass
class _Combo:
    runner: str
    precision: str
    model: str | None
    device: str


def _combos(cfg: BenchConfig, on_gpu: bool) -> tuple[list[_Combo], list[str]]:
    """(runner, precision) pairs to measure, and notes on what is left out and why."""
    from pyengine.runners.base import PRECISIONS, available_runners

    usable = available_runners()
    notes = []
    names = list(cfg.runners) or ["tensorrt", "torch", "onnxruntime"]
    if cfg.quick and not cfg.runners:
        names = ["onnxruntime"]
    combos = []
    for name in names:
        problem = usable.get(name)
        if name == "tensorrt" and problem is None and not on_gpu:
            problem = "no CUDA GPU"
        if problem is not None:
            notes.append(f"{name}: not measured ({problem})")
            continue
        defaults = (_GPU_PRECISIONS if on_gpu else _CPU_PRECISIONS).get(name, ("fp32",))
        wanted = list(cfg.precisions) or list(defaults)
        if cfg.quick and not cfg.precisions:
            wanted = ["fp32"]
        for precision in wanted:
            if precision not in PRECISIONS[name]:
                if cfg.precisions:
                    notes.append(f"{name}: {precision} not available")
                continue
            device = "cuda" if on_gpu and name != "onnxruntime" else "cpu"
            model = cfg.model
            if precision == "int8":
                if cfg.int8 is None and (cfg.quick or name == "tensorrt"):
                    if cfg.precisions or name == "tensorrt":
                        notes.append(f"{name} int8: give an int8 export with --int8")
                    continue
                model = cfg.int8  # None: made from the model below (onnxruntime)
            combos.append(_Combo(name, precision, model, device))
    return combos, notes


def _make_int8(cfg: BenchConfig, fp32_onnx: Path, cutouts: np.ndarray, threshold: float,
               workdir: Path, log) -> tuple[Path, dict]:
    """An int8 (ONNX Runtime recipe) export calibrated on half of ``cutouts``; cached."""
    from pyengine.export.quantize import decision_agreement, quantize_int8
    from pyengine.models.checkpoint import file_sha256

    calibration, held_out = cutouts[0::2], cutouts[1::2]
    path = workdir / f"int8-{file_sha256(fp32_onnx)[:16]}-{len(cutouts)}.onnx"
    if not path.exists():
        log(f"making an int8 export calibrated on {len(calibration)} cutouts of the field ...")
        quantize_int8(fp32_onnx, path, calibration)
    agree, diff = decision_agreement(fp32_onnx, path, held_out, threshold)
    return path, {"held_out": len(held_out), "decision_agreement": agree,
                  "max_score_difference": diff, "threshold": threshold, "path": str(path)}


def _spec(cfg: BenchConfig, combos: list[_Combo]):
    """The model's spec, from the first runner that can be made without an int8 export."""
    from pyengine.runners.base import make_runner

    for c in combos:
        if not (c.precision == "int8" and c.model is None):
            return make_runner(c.runner, c.model, precision=c.precision, threads=cfg.threads,
                               device=c.device).spec
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    return read_spec(Path(cfg.model) if cfg.model else DEMO_MODEL)[0]


# -- the whole bench ----------------------------------------------------------------------

def run_bench(cfg: BenchConfig, log=print) -> dict:
    from pyengine.engine import Engine
    from pyengine.info import machine_info
    from pyengine.io.mosaic import Mosaic
    from pyengine.io.tiles import TilePlan
    from pyengine.runners.base import make_runner, torch_cuda_problem
    from pyengine.sources import GridSource

    min_time = cfg.min_time if cfg.min_time is not None else (0.3 if cfg.quick else 2.0)
    machine = machine_info()
    machine["date"] = _now()
    on_gpu = torch_cuda_problem() is None
    tmp = None
    if cfg.workdir:
        workdir = Path(cfg.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pyengine-bench-")
        workdir = Path(tmp.name)
    try:
        combos, notes = _combos(cfg, on_gpu)
        if not combos:
            from pyengine.errors import ConfigError

            raise ConfigError("nothing to measure: " + "; ".join(notes))
        spec = _spec(cfg, combos)
        paths, where = _field(cfg, spec, workdir, log)
        batches = list(cfg.batches) or list(
            QUICK_BATCHES if cfg.quick else GPU_BATCHES if on_gpu else CPU_BATCHES)
        results = {"machine": machine, "settings": {
            "images": where, "model": cfg.model or "shipped demo model",
            "batches": batches, "threads": cfg.threads, "quick": cfg.quick,
            "min_time_s": min_time}}
        with Mosaic.open(paths, bands=None if cfg.images else list(spec.bands)) as mosaic:
            from pyengine.engine import match_bands

            mosaic = match_bands(mosaic, spec.bands)
            size = spec.cutout_size
            plan = TilePlan.for_cutout(mosaic.shape, cutout=size, core=2048)
            windows = [t.window for t in plan]
            budget = 2e9 if not cfg.quick else 2e8  # bytes of tiles read per pass, at most
            per_tile = mosaic.nband * 4 * max((w[1] - w[0]) * (w[3] - w[2]) for w in windows)
            windows = windows[: max(1, int(budget // per_tile))]
            log("read ...")
            results["read"] = bench_read(mosaic, paths, windows, min_time)

            y0, y1, x0, x1 = windows[0]
            tile = mosaic.read(y0, y1, x0, x1)
            np.nan_to_num(tile, copy=False)
            cpus = machine["threads"]
            log("gather ...")
            counts = _thread_counts(cpus if not cfg.quick else min(cpus, 2))
            results["gather"] = bench_gather(tile, size, cfg.gather_batch, counts, min_time)
            if not cfg.quick:
                results["gather_unordered"] = bench_gather(tile, size, cfg.gather_batch, counts,
                                                           min_time, order="random")

            # Real cutouts for the model: a grid over the whole mosaic.
            target = cfg.positions or (1024 if cfg.quick else 6144 if not on_gpu else 262144)
            ny, nx = mosaic.shape
            stride = max(1, int(np.sqrt(ny * nx / target)))
            source = GridSource(stride)
            from pyengine.cutouts import extract_cutouts

            gy, gx = np.mgrid[stride // 2 : ny : stride, stride // 2 : nx : stride]
            pick = np.random.default_rng(cfg.seed).permutation(gy.size)[:512]
            cut = extract_cutouts(mosaic, gx.ravel()[pick], gy.ravel()[pick], size)
            cutouts = np.ascontiguousarray(np.nan_to_num(cut.pixels), np.float32)

            model_only, end_to_end, ratios, int8_check = [], [], [], None
            for combo in combos:
                label = f"{combo.runner} {combo.precision}"
                try:
                    if combo.precision == "int8" and combo.model is None:
                        fp32 = make_runner("onnxruntime", cfg.model, threads=cfg.threads)
                        fp32_path = fp32.onnx_file()
                        int8_path, int8_check = _make_int8(cfg, fp32_path, cutouts,
                                                           spec.threshold, workdir, log)
                        runner = make_runner("onnxruntime", int8_path, threads=cfg.threads)
                    else:
                        runner = make_runner(combo.runner, combo.model,
                                             precision=combo.precision, threads=cfg.threads,
                                             device=combo.device)
                    runner.activate()
                except Exception as exc:  # one unusable combination must not end the bench
                    notes.append(f"{label}: not measured ({exc})")
                    log(f"{label}: not measured ({exc})")
                    continue
                try:
                    best = None
                    for batch in batches:
                        log(f"model only: {label}, batch {batch} ...")
                        rate = bench_model_only(runner, batch, cutouts, min_time)
                        model_only.append({"runner": combo.runner, "precision": combo.precision,
                                           "device": combo.device, "batch": batch,
                                           "cutouts_per_s": rate})
                        if best is None or rate > best[1]:
                            best = (batch, rate)
                    batch, rate = best
                    log(f"end to end: {label}, batch {batch} ...")
                    engine = Engine(cfg.model, runner=runner, batch_size=batch,
                                    threads=cfg.threads)
                    mosaic_, source_, plan_ = engine.prepare(mosaic, source)
                    t0 = time.perf_counter()
                    count = sum(len(r) for r in engine.iter_results(mosaic_, source_, plan_))
                    seconds = time.perf_counter() - t0
                    e2e = count / seconds
                    end_to_end.append({"runner": combo.runner, "precision": combo.precision,
                                       "device": combo.device, "batch": batch,
                                       "threads": engine.gather_threads, "positions": count,
                                       "seconds": seconds, "cutouts_per_s": e2e})
                    ratios.append({"runner": combo.runner, "precision": combo.precision,
                                   "batch": batch, "ratio": e2e / rate})
                finally:
                    runner.deactivate()
        results.update(model_only=model_only, end_to_end=end_to_end,
                       end_to_end_over_model_only=ratios)
        if int8_check is not None:
            results["int8_check"] = int8_check
        results["notes"] = notes
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()


# -- report -------------------------------------------------------------------------------

def format_report(r: dict) -> str:
    m = r["machine"]
    lines = [f"pyengine bench, {m['date']}",
             f"machine: {m['cpu']}, {m['threads']} threads; GPU: "
             f"{', '.join(g['name'] for g in m['gpus']) or 'none'}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v),
             f"images: {r['settings']['images']}; model: {r['settings']['model']}", ""]
    rd = r["read"]
    ratio = f"{rd['ratio_to_copy']:.2f}" if rd["ratio_to_copy"] is not None else "-"
    copy = f"{rd['copy_mpix_per_s']:.0f}" if rd["copy_mpix_per_s"] is not None else "-"
    lines += ["read (Mosaic.read of every tile)",
              f"  {rd['mpix_per_s']:10.0f} MPix/s   plain copy of the raw bytes {copy} MPix/s   "
              f"ratio {ratio}   ({rd['tiles']} tiles)", ""]
    for key in ("gather", "gather_unordered"):
        if key not in r:
            continue
        g = r[key]
        lines += [f"gather (C++ batcher, {g['order']} order, batch {g['batch']} x {g['bands']} x "
                  f"{g['cutout']}^2 {g['dtype']} from a {g['tile'][0]}x{g['tile'][1]} tile; "
                  f"np.copyto of the same bytes: {g['copy_gb_per_s']:.2f} GB/s)",
                  f"  {'threads':>7} {'cutouts/s':>12} {'GB/s':>8} {'ratio':>7}"]
        lines += [f"  {t['threads']:>7} {t['cutouts_per_s']:>12.0f} {t['gb_per_s']:>8.2f} "
                  f"{t['ratio_to_copy']:>7.2f}" for t in g["threads"]]
        lines.append("")
    lines += ["model only (prepared batches)",
              f"  {'runner':<12} {'precision':<9} {'device':<6} {'batch':>6} {'cutouts/s':>12}"]
    lines += [f"  {e['runner']:<12} {e['precision']:<9} {e['device']:<6} {e['batch']:>6} "
              f"{e['cutouts_per_s']:>12.1f}" for e in r["model_only"]]
    lines += ["", "end to end (read, gather, infer, collect) vs model only at the same batch",
              f"  {'runner':<12} {'precision':<9} {'batch':>6} {'positions':>10} "
              f"{'cutouts/s':>12} {'ratio':>7}"]
    for e, q in zip(r["end_to_end"], r["end_to_end_over_model_only"], strict=True):
        lines.append(f"  {e['runner']:<12} {e['precision']:<9} {e['batch']:>6} "
                     f"{e['positions']:>10} {e['cutouts_per_s']:>12.1f} {q['ratio']:>7.3f}")
    if "int8_check" in r:
        c = r["int8_check"]
        lines += ["", f"int8 vs fp32 on {c['held_out']} held-out cutouts: decision agreement "
                      f"{100 * c['decision_agreement']:.2f} % at threshold {c['threshold']:.4g}, "
                      f"largest score difference {c['max_score_difference']:.3g}"]
    if r.get("notes"):
        lines += ["", *[f"note: {n}" for n in r["notes"]]]
    return "\n".join(lines)


def plot_batches(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(e["runner"], e["precision"], e["device"]) for e in r["model_only"]})
    for runner, precision, device in keys:
        pts = sorted((e["batch"], e["cutouts_per_s"]) for e in r["model_only"]
                     if (e["runner"], e["precision"], e["device"]) == (runner, precision, device))
        line, = ax.plot(*zip(*pts, strict=True), marker="o",
                        label=f"{runner} {precision} ({device}), model only")
        for e in r["end_to_end"]:
            if (e["runner"], e["precision"], e["device"]) == (runner, precision, device):
                ax.plot([e["batch"]], [e["cutouts_per_s"]], marker="*", markersize=14,
                        color=line.get_color(), linestyle="none",
                        label=f"{runner} {precision}, end to end")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("cutouts / s")
    m = r["machine"]
    gpu = ", ".join(g["name"] for g in m["gpus"]) or "no GPU"
    ax.set_title(f"pyengine bench: {m['cpu']}, {m['threads']} threads, {gpu}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _int_list(ctx, param, value):
    if not value:
        return ()
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated positive integers") from None
    if any(v < 1 for v in out):
        raise click.BadParameter(f"{value!r}: give comma-separated positive integers")
    return out


def _name_list(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


@click.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--model", type=click.Path(dir_okay=False),
              help="Model file or exported .onnx [default: the shipped demo model].")
@click.option("--runner", "runners", callback=_name_list,
              help="Comma-separated runners to measure [every usable one; --quick: onnxruntime].")
@click.option("--precision", "precisions", callback=_name_list,
              help="Comma-separated precisions [CPU: fp32, int8 (onnxruntime), bf16 (torch); "
              "GPU: fp16, bf16, int8].")
@click.option("--batch", "batches", callback=_int_list,
              help="Comma-separated batch sizes [CPU 8..128, GPU 256..4096; --quick 16,32].")
@click.option("--threads", type=click.IntRange(1), help="CPU threads [all].")
@click.option("--positions", type=click.IntRange(1),
              help="End-to-end grid positions [1024 quick, 6144 CPU, 262144 GPU].")
@click.option("--int8", "int8", type=click.Path(dir_okay=False),
              help="An int8 ONNX export to measure [made from the model unless --quick].")
@click.option("--size", type=click.IntRange(256, 65536),
              help="Synthetic field edge in pixels [1024 quick, else 2048].")
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Keep the synthetic field and int8 export here for later runs [temporary].")
@click.option("--quick", is_flag=True, help="ONNX Runtime fp32 at two batch sizes on a small "
              "field: within a minute on 2 CPU cores.")
@click.option("--min-time", type=click.FloatRange(0.01), help="Seconds per measurement "
              "[0.3 quick, else 2].")
@click.option("--gather-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="Cutouts per batch in the gather stage.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the figures as JSON (keys: read, gather, model_only, end_to_end, "
              "end_to_end_over_model_only, machine).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw model-only throughput against batch size per runner (PNG).")
def bench(images, model, runners, precisions, batches, threads, positions, int8, size, workdir,
          quick, min_time, gather_batch, json_path, plot_path):
    """Measure each stage (read, gather, model only) and the whole scan, on IMAGES (one per
    model band) or on a synthetic field."""
    from pyengine.errors import ConfigError
    from pyengine.output.catalog import check_writable
    from pyengine.runners.base import RUNNER_NAMES

    for name in runners:
        if name not in RUNNER_NAMES or name == "auto":
            raise ConfigError(f"--runner {name!r} is not known; accepted: onnxruntime, torch, "
                              "tensorrt")
    for p in images:
        if not Path(p).exists():
            raise ConfigError(f"{p}: no such image file")
    for p in (json_path, plot_path):
        if p is not None:
            check_writable(Path(p))
    if plot_path is not None and Path(plot_path).suffix.lower() != ".png":
        raise ConfigError(f"--plot {plot_path}: the plot is a PNG file; give a .png name")
    cfg = BenchConfig(images=tuple(images), model=model, runners=runners, precisions=precisions,
                      batches=batches, threads=threads, positions=positions, int8=int8,
                      size=size, workdir=workdir, quick=quick, min_time=min_time,
                      gather_batch=gather_batch)
    t0 = time.perf_counter()
    result = run_bench(cfg, log=lambda msg: click.echo(msg, err=True))
    result["seconds"] = time.perf_counter() - t0
    click.echo(format_report(result))
    if json_path:
        _write_json(Path(json_path), result)
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot_batches(result, Path(plot_path))
        click.echo(f"wrote {plot_path}")
    click.echo(f"bench took {result['seconds']:.1f} s")
