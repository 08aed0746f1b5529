"""pyengine on a CUDA GPU: the model alone, host-to-device copies, the scan engine, threads.

One script, four sections, a table each, a summary printed last, and one JSON file
(``--json``).  ``benchmarks/gpu_check.sh`` runs it on a GPU machine as the last step of
the prepared check.

1. **model_only**: the torch runner (``make_runner("torch", ...)``; CUDA graphs off
   or a padded stem through ``TorchRunner(cuda_graphs=False, pad_channels=8)``, the
   runner's own switches), in the order of :func:`model_only_plan`: each precision with
   CUDA graphs at ``--batches`` and without at ``--eager-batches``, the first precision
   with the stem zero-padded to 8 channels at ``--pad-batches``, fp32 and tf32 at
   ``--fp32-batches``; each fed two ways:

   * ``device_resident``: the input already on the GPU; the runner's own launch
     (``runner._launch``, what ``submit`` enqueues: graph replay or eager model) on
     its compute stream, back to back: the model alone;
   * ``pinned_slots``: the input in the runner's pinned slots
     (``runner.allocate_slots``); ``runner.submit`` with ``runner.in_flight`` (3 on
     a GPU) batches outstanding as the scan engine keeps them: host-to-device copy,
     model, scores back.

   Each: warm-up, a calibration pass sizing a repeat to ``--min-seconds``, then
   ``--repeats`` timed repeats (fewer if they would end past ``--budget``) bracketed
   by ``torch.cuda.synchronize``; the median rate (cutouts/s) is reported, with min
   and max.
2. **h2d**: host-to-device copies of one batch (float16 and float32) from a pinned
   slot of the runner and from pageable memory, timed with CUDA events on a
   side stream (wall clock alongside); GB/s with GB = 1e9 bytes.
3. **end_to_end**: ``Engine(model, runner="torch", precision, batch_size,
   threads, device)`` scanning a grid (``GridSource(--stride)``) over a synthetic
   field (``pyengine.synth.make_field``, ``--field`` px square) as
   ``benchmarks/bench_scan.py`` drives it; cutouts/s and the ratio to the same
   runner's model-only figure from pinned slots (goal >= 0.9), and to the
   device-resident one.
4. **gather_threads**: the same scan for ``threads`` = 1, 2, 4, ... up to the CPU
   count (``Engine(threads=N, gather_threads=N)``: N batcher workers, past the
   engine's default cap of 4; the read pool min(2, N) and torch's intra-op threads
   N; the effective counts are reported), and the C++ batcher alone (``pyengine.scan.batching.BatchRing`` filling
   batches from one tile in memory) per thread count, next to the model-only
   rate, so the threads needed to feed the GPU can be read off.

A published anchor is printed apart from the measurements, never in their
tables: TensorRT INT8 ResNet-50 at 224x224 ~ 88,700 images/s on one H100 (MLPerf
Inference v4.0, Offline), scaled by the convolutions' FLOPs to 64x64 cutouts.

``--smoke``: device cpu, tiny sizes (batches 2,4, a 256^2 field, fp32 and bf16),
for a CPU check of every path that needs no CUDA; the CUDA-only parts (CUDA
graphs, the h2d section) are reported as skipped with the reason.  ``--smoke
--device cuda`` runs the same tiny sizes on a GPU, every section included: a
one-minute check of the script before the full run.  ``--device
cuda`` without CUDA is refused with one line on stderr and exit status 1; a run in
which a measurement failed (its entry says why) exits with status 3.

The **summary** (``summary`` in the JSON, printed last): the best model-only rate per
precision and input, the CUDA-graph and padded-stem speed-ups, H2D GB/s at the
end-to-end batch, the end-to-end ratio, the gather threads needed to feed the
model-only rate, and the M31 30 kpc region (5.6e9 px per band) projected on a grid of
``--m31-stride`` px at the best end-to-end rate measured.

**Time:** a measurement starts only if its estimate (the last one's) fits in
``--budget``, and its repeats are cut to what fits; those left out are marked skipped
with the reason.  A watchdog stops the run at ``--budget`` + ``--grace`` whatever it is
doing (a hung capture, say): the JSON, rewritten (atomically) after every measurement,
gets ``stopped`` and the summary, and the exit status is 4.  A section that raises is
recorded as an error with the reason (the field needs astropy and fitsio, the scan
sections ``pyengine._core``), and the run goes on.  ``--field-only`` writes the field
into ``--workdir`` and exits (gpu_check.sh makes it while the GPU tests run).

The tables, the anchor and the summary are printed by ``benchmarks/_gpu_report.py``.

Usage (GPU):  python benchmarks/bench_gpu.py --json gpu.json [--workdir DIR] [--budget S]
Usage (CPU):  python benchmarks/bench_gpu.py --smoke --json smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _gpu_report import (
    E2E_GOAL,
    anchor_block,
    print_anchor,
    print_header,
    print_section,
    print_summary,
    summary_block,
    torch_info,
)
from _gpu_report import fmt as _fmt
from _timing import environment, print_environment, write_json

SCHEMA = "pyengine.bench_gpu/1"
SECTIONS = ("model_only", "h2d", "end_to_end", "gather_threads")
PAD_CHANNELS = 8  # the zero-padded stem's channel count (TorchRunner(pad_channels=8))
STOPPED_EXIT = 4  # the hard deadline stopped the run (the JSON holds what was measured)


# The full run's plan, in this order (benchmarks/gpu_check.sh gives it about 4 minutes):
# model-only with CUDA graphs at every batch, without them at three, the padded stem at
# two, fp32 and tf32 at one; h2d; end-to-end; the thread sweep.
FULL = {"batches": "256,512,1024,2048,4096", "eager_batches": "256,1024,4096",
        "pad_batches": "1024,4096", "fp32_batches": "1024", "precisions": "fp16,bf16",
        "repeats": 3, "min_seconds": 0.2, "warmup": 3, "field": 4096, "stride": 4,
        "core": 2048, "e2e_batch": 1024, "e2e_repeats": 2, "thread_repeats": 1,
        "h2d_mb": 500.0, "budget": 240.0, "grace": 30.0, "seed": 5, "m31_stride": 4}
SMOKE = {"batches": "2,4", "eager_batches": "2,4", "pad_batches": "4", "fp32_batches": "",
         "precisions": "fp32,bf16", "repeats": 2, "min_seconds": 0.02, "warmup": 2,
         "field": 256, "stride": 32, "core": 128, "e2e_batch": 4, "e2e_repeats": 1,
         "thread_repeats": 1, "h2d_mb": 8.0, "budget": 240.0, "grace": 30.0, "seed": 5,
         "m31_stride": 4}


# -- small helpers ---------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def _words(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _thread_counts(cpus: int, cap: int | None = None) -> list[int]:
    """1, 2, 4, ... up to ``cpus`` (and ``cpus`` itself), at most ``cap``."""
    top = cpus if cap is None else min(cpus, cap)
    counts, t = [], 1
    while t <= top:
        counts.append(t)
        t *= 2
    if counts[-1] != top:
        counts.append(top)
    return counts


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _median_rate(work: float, seconds: list[float]) -> dict:
    """Median, min and max of ``work / t`` over the repeats."""
    rates = [work / t for t in seconds if t > 0]
    if not rates:
        return {"median": None, "min": None, "max": None}
    return {"median": float(statistics.median(rates)), "min": float(min(rates)),
            "max": float(max(rates))}


def section(results: list[dict], reason: str | None = None, **extra) -> dict:
    """A section: its status from its entries' (ok / partial / skipped / error)."""
    if reason is not None:
        return {"status": "skipped", "reason": reason, "results": results, **extra}
    statuses = {r["status"] for r in results}
    if not results:
        status = "skipped"
    elif statuses == {"ok"}:
        status = "ok"
    elif "ok" in statuses:
        status = "partial"
    elif statuses == {"skipped"}:
        status = "skipped"
    else:
        status = "error"
    reasons = list(dict.fromkeys(r["reason"] for r in results if r["status"] != "ok"))
    return {"status": status, "reason": "; ".join(reasons) if reasons else None,
            "results": results, **extra}


class Budget:
    """Measurements are started only while ``seconds`` since the start have not passed,
    and only if their estimated length fits in what is left; a timed measurement shortens
    its repeats to fit (:func:`_time_model`).  The hard stop after ``grace`` more seconds
    is main's watchdog."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def refuses(self, estimate: float = 0.0) -> str | None:
        """Why a measurement expected to take ``estimate`` s may not start (None: it may)."""
        if self.elapsed() + estimate > self.seconds:
            if estimate > 0 and self.elapsed() < self.seconds:
                return (f"would not end within --budget: about {estimate:.0f} s needed, "
                        f"{self.remaining():.0f} s left of {self.seconds:.0f} s")
            return (f"time budget exhausted ({self.elapsed():.0f} s used of --budget "
                    f"{self.seconds:.0f} s)")
        return None


class Bench:
    """What every section needs: torch, the device, the model, timing."""

    def __init__(self, args, torch, budget: Budget):
        self.args, self.torch, self.budget = args, torch, budget
        self.device = args.device
        self.cuda = self.device.startswith("cuda")
        self.model = Path(args.model) if args.model else None
        self.on_partial = None  # main's hook: (section name, its dict so far) -> saved
        self._block = None

    def partial(self, name: str, sec: dict) -> None:
        """Hand a section's results so far to main (the JSON survives a kill)."""
        if self.on_partial is not None:
            self.on_partial(name, sec)

    def log(self, text: str) -> None:
        print(f"[{self.budget.elapsed():5.0f} s] {text}", flush=True)

    def fill(self, arrays) -> None:
        """Fill batch arrays with the same standard-normal pixels (drawn once)."""
        rows = max(a.shape[0] for a in arrays)
        item = arrays[0].shape[1:]
        if self._block is None or self._block.shape[0] < rows or self._block.shape[1:] != item:
            rng = np.random.default_rng(0)
            self._block = rng.standard_normal((rows, *item), dtype=np.float32)
        for a in arrays:
            a[...] = self._block[: a.shape[0]]

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def cleanup(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.empty_cache()

    def timed(self, fn, iters: int, repeats: int) -> list[float]:
        """Seconds of ``repeats`` calls ``fn(iters)``, each bracketed by a device sync."""
        out = []
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn(iters)
            self.sync()
            out.append(time.perf_counter() - t0)
        return out

    def calibrate(self, fn) -> tuple[int, float]:
        """Warm up ``fn`` twice; (the iterations that make a repeat ``--min-seconds``,
        seconds per iteration)."""
        warm = max(1, self.args.warmup)
        self.timed(fn, warm, 1)
        (t,) = self.timed(fn, warm, 1)
        per_iter = max(t / warm, 1e-6)
        return int(min(100_000, max(2, math.ceil(self.args.min_seconds / per_iter)))), per_iter

    def fitting_repeats(self, seconds_each: float) -> int:
        """``--repeats``, or fewer so that they end inside the budget (0: none fits)."""
        left = self.budget.remaining()
        return int(min(self.args.repeats, left // max(seconds_each, 1e-9)))

    def stall(self) -> None:
        """``--debug-stall``: sleep in the first measurement (tests the hard deadline)."""
        if self.args.debug_stall:
            seconds, self.args.debug_stall = self.args.debug_stall, 0.0
            time.sleep(seconds)


# -- runners -----------------------------------------------------------------------------------
def _close(close, bench: Bench) -> str | None:
    """Call ``close`` (None: nothing to close) and free memory; why it failed, if it did."""
    problem = None
    try:
        if close is not None:
            close()
        bench.cleanup()
    except Exception as exc:
        problem = f"closing failed: {_one_line(exc)}"
    return problem


def make_torch_runner(bench: Bench, precision: str, batch: int, graphs: bool, threads=None,
                      pad: int | None = None):
    """The torch runner as the engine makes it (``make_runner``, CUDA graphs on); with
    graphs off or a padded stem, ``TorchRunner(cuda_graphs=..., pad_channels=...)``:
    make_runner has no such switches."""
    from pyengine.runners.select import make_runner
    from pyengine.runners.torch import TorchRunner

    if graphs and pad is None:
        return make_runner("torch", bench.model, precision=precision, batch_size=batch,
                           device=bench.device, threads=threads)
    return TorchRunner(bench.model, precision=precision, device=bench.device, threads=threads,
                       batch_size=batch, cuda_graphs=graphs, pad_channels=pad)


def _slot_label(bench: Bench) -> str:
    return "pinned_slots" if bench.cuda else "host_slots"


def _model_entry(precision, graphs, batch, mode, pad=None, **kw) -> dict:
    entry = {"precision": precision, "cuda_graphs": graphs, "batch": batch, "input": mode,
             "pad_channels": pad, "in_flight": None,
             "input_dtype": None, "bytes_per_cutout": None, "status": "ok", "reason": None,
             "cutouts_per_s": None, "cutouts_per_s_min": None, "cutouts_per_s_max": None,
             "repeats": 0, "cutouts_per_repeat": 0, "seconds": [], "setup_s": None,
             "graph_captured": None, "peak_gpu_mib": None}
    entry.update(kw)
    return entry


def measure_runner(bench: Bench, precision: str, graphs: bool, batch: int,
                   pad: int | None = None, estimate: float = 0.0) -> list[dict]:
    """Both input modes for one runner (precision, graphs, batch, padded stem or not);
    ``estimate``: the seconds it is expected to take (from the last one measured)."""
    torch = bench.torch
    modes = ("device_resident", _slot_label(bench))
    if graphs and not bench.cuda:
        return [_model_entry(precision, graphs, batch, m, pad, status="skipped",
                             reason="CUDA graphs need a CUDA device") for m in modes]
    why = bench.budget.refuses(estimate)
    if why:
        return [_model_entry(precision, graphs, batch, m, pad, status="skipped", reason=why)
                for m in modes]
    if bench.cuda:
        torch.cuda.reset_peak_memory_stats(bench.device)
    bench.stall()
    t0 = time.perf_counter()
    runner, entries = None, []
    try:
        runner = make_torch_runner(bench, precision, batch, graphs, pad=pad)
        runner.activate()
        depth = runner.in_flight  # as the scan engine keeps them; the feed's ring is one more
        # pinned on CUDA; captures the graph
        slots = runner.allocate_slots(depth + 1, batch)
        setup = time.perf_counter() - t0
        bench.fill(slots)
        dtype = slots[0].dtype
        common = {"input_dtype": str(dtype), "setup_s": setup, "in_flight": depth,
                  "bytes_per_cutout": int(slots[0][0].nbytes),
                  "graph_captured": bool(getattr(runner, "_graphs", {})) if bench.cuda else None}

        # the model alone: the runner's own launch on its compute stream, input on the device
        launch = getattr(runner, "_launch", None)
        if launch is None:
            entries.append(_model_entry(precision, graphs, batch, modes[0], pad, **common,
                                        status="skipped",
                                        reason="TorchRunner has no _launch (private API changed)"))
        else:
            x = torch.from_numpy(slots[0])
            compute = None
            if bench.cuda:
                x = x.to(bench.device)
                compute = runner._feed.compute  # the stream submit() enqueues the model on
            bench.sync()

            def resident(iters, x=x, compute=compute):
                on_stream = torch.cuda.stream(compute) if compute is not None else \
                    contextlib.nullcontext()
                with on_stream, torch.no_grad():
                    for _ in range(iters):
                        launch(x, batch)

            entries.append(_time_model(bench, resident, precision, graphs, batch, modes[0],
                                       pad, common))

        # from the runner's (pinned) slots: submit, in_flight batches outstanding, scores back
        def from_slots(iters):
            flight = deque()
            for i in range(iters):
                flight.append(runner.submit(slots[i % len(slots)]))
                if len(flight) >= depth:
                    flight.popleft().result()
            while flight:
                flight.popleft().result()

        entries.append(_time_model(bench, from_slots, precision, graphs, batch, modes[1], pad,
                                   common))
        scores = runner.infer(slots[0])
        if scores.shape != (batch,) or not np.all(np.isfinite(scores)):
            for e in entries:
                e.update(status="error", reason=f"scores not finite or of shape {scores.shape}")
    except Exception as exc:  # one configuration failing (e.g. out of memory) ends only itself
        done = {e["input"] for e in entries}
        entries += [_model_entry(precision, graphs, batch, m, pad, status="error",
                                 reason=_one_line(exc)) for m in modes if m not in done]
    finally:
        problem = _close(runner.deactivate if runner is not None else None, bench)
        runner = None
    if problem:
        for e in entries:
            e.update(status="error", reason=problem)
    if bench.cuda:
        peak = torch.cuda.max_memory_allocated(bench.device) / 2**20
        for e in entries:
            e["peak_gpu_mib"] = float(peak)
    return entries


def _time_model(bench: Bench, fn, precision, graphs, batch, mode, pad, common) -> dict:
    why = bench.budget.refuses()
    if why:
        return _model_entry(precision, graphs, batch, mode, pad, **common, status="skipped",
                            reason=why)
    iters, per_iter = bench.calibrate(fn)
    repeats = bench.fitting_repeats(iters * per_iter)
    if repeats < 1:
        return _model_entry(precision, graphs, batch, mode, pad, **common, status="skipped",
                            reason=bench.budget.refuses(iters * per_iter) or "no time left")
    seconds = bench.timed(fn, iters, repeats)
    rate = _median_rate(iters * batch, seconds)
    return _model_entry(precision, graphs, batch, mode, pad, **common,
                        cutouts_per_s=rate["median"],
                        cutouts_per_s_min=rate["min"], cutouts_per_s_max=rate["max"],
                        repeats=len(seconds), cutouts_per_repeat=iters * batch,
                        seconds=seconds)


def model_only_plan(args, cuda: bool) -> list[tuple[str, bool, int, int | None]]:
    """(precision, CUDA graphs, batch, padded stem) in the order they are measured: every
    precision with graphs at ``--batches`` (and the end-to-end batch), then without graphs
    at ``--eager-batches``; the first precision with a zero-padded stem at
    ``--pad-batches``; fp32 and tf32 at ``--fp32-batches`` (tf32 on CUDA only).  Graphs,
    padded or fp32, are the engine's choice (on with CUDA)."""
    plan = []
    graph_batches = sorted(set(args.batch_list) | {args.e2e_batch})
    for precision in args.precision_list:
        plan += [(precision, True, b, None) for b in graph_batches]
        plan += [(precision, False, b, None) for b in args.eager_batch_list]
    if args.precision_list:
        plan += [(args.precision_list[0], cuda, b, PAD_CHANNELS) for b in args.pad_batch_list]
    for precision in ("fp32", "tf32") if cuda else ("fp32",):
        plan += [(precision, cuda, b, None) for b in args.fp32_batch_list
                 if (precision, cuda, b, None) not in plan]
    return list(dict.fromkeys(plan))


def _runner_estimate(results: list[dict]) -> float:
    """Seconds the next runner's measurement is likely to take: the last one's setup and
    timed repeats (0 before any)."""
    done = [e for e in results if e["status"] == "ok" and e["seconds"]]
    if not done:
        return 0.0
    last = [e for e in done if (e["precision"], e["batch"]) == (done[-1]["precision"],
                                                              done[-1]["batch"])]
    return (last[0]["setup_s"] or 0.0) + sum(sum(e["seconds"]) * 1.5 for e in last)


def run_model_only(bench: Bench) -> dict:
    results = []
    for precision, graphs, batch, pad in model_only_plan(bench.args, bench.cuda):
        got = measure_runner(bench, precision, graphs, batch, pad, _runner_estimate(results))
        results += got
        bench.log(f"model_only {precision} graphs {_fmt(graphs)} batch {batch}"
                  f"{f' stem padded to {pad}' if pad else ''}: " +
                  ", ".join(f"{e['input']} {_brief(e)}" for e in got))
        bench.partial("model_only", section(results))
    return section(results)


def _brief(entry: dict, key: str = "cutouts_per_s", unit: str = "/s") -> str:
    if entry["status"] == "ok":
        return f"{entry[key]:,.{2 if 'gb' in key else 0}f}{unit}"
    return f"{entry['status']} ({entry['reason']})"


def model_rate(model_only: dict | None, bench: Bench, precision: str, batch: int,
               mode: str) -> float | None:
    """The model-only rate of the runner the engine uses (CUDA graphs on a GPU)."""
    if not model_only:
        return None
    graphs = bench.cuda  # make_runner's default; on the CPU graphs do not exist
    for e in model_only["results"]:
        if (e["precision"], e["cuda_graphs"], e["batch"], e["input"], e["pad_channels"]) == \
                (precision, graphs, batch, mode, None) and e["status"] == "ok":
            return e["cutouts_per_s"]
    return None


# -- host-to-device copies ---------------------------------------------------------------------
def _h2d_entry(memory, dtype, batch, nbytes, **kw) -> dict:
    entry = {"memory": memory, "dtype": dtype, "batch": batch, "bytes": nbytes, "pinned": None,
             "status": "ok", "reason": None, "gb_per_s": None, "gb_per_s_min": None,
             "gb_per_s_max": None, "wall_gb_per_s": None, "repeats": 0,
             "copies_per_repeat": 0, "seconds": []}
    entry.update(kw)
    return entry


def run_h2d(bench: Bench, batches: list[int]) -> dict:
    """Copies of one batch from the runner's pinned slots and from pageable memory."""
    if not bench.cuda:
        return section([], reason="needs CUDA: host-to-device copies (device is cpu)")
    from pyengine.memory import aligned_empty
    from pyengine.runners.torch import TorchRunner

    torch, args, device = bench.torch, bench.args, bench.device
    results = []

    def copy_pass(src, dst, iters) -> tuple[float, float]:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            start.record(stream)
            for _ in range(iters):
                dst.copy_(src, non_blocking=True)
            end.record(stream)
        end.synchronize()
        wall = time.perf_counter() - t0
        return start.elapsed_time(end) / 1e3, wall

    runner = None
    try:
        # the runner only provides its pinned slots here (no graphs: nothing captured)
        runner = TorchRunner(bench.model, precision="fp16", device=device,
                             batch_size=max(batches), cuda_graphs=False).activate()
        stream = torch.cuda.Stream(device=device)
        for batch in batches:
            for dtype in (np.dtype(np.float16), np.dtype(np.float32)):
                pinned = runner.allocate_slots(1, batch, dtype)[0]
                pageable = aligned_empty(pinned.shape, dtype)
                pinned.fill(1.0)  # contents do not matter to a copy; pages get touched
                pageable.fill(1.0)
                dst = torch.empty(pinned.shape, dtype=getattr(torch, dtype.name), device=device)
                for memory, host in (("pinned_slots", pinned), ("pageable", pageable)):
                    src = torch.from_numpy(host)
                    kw = {"pinned": bool(src.is_pinned())}
                    why = bench.budget.refuses()
                    if why:
                        results.append(_h2d_entry(memory, dtype.name, batch, host.nbytes, **kw,
                                                  status="skipped", reason=why))
                        continue
                    try:
                        iters = max(3, math.ceil(args.h2d_mb * 1e6 / host.nbytes))
                        copy_pass(src, dst, 2)  # warm-up
                        passes = [copy_pass(src, dst, iters) for _ in range(args.repeats)]
                        gpu = [p[0] for p in passes]
                        rate = _median_rate(iters * host.nbytes / 1e9, gpu)
                        wall = _median_rate(iters * host.nbytes / 1e9, [p[1] for p in passes])
                        results.append(_h2d_entry(
                            memory, dtype.name, batch, host.nbytes, **kw,
                            gb_per_s=rate["median"], gb_per_s_min=rate["min"],
                            gb_per_s_max=rate["max"], wall_gb_per_s=wall["median"],
                            repeats=len(gpu), copies_per_repeat=iters, seconds=gpu))
                    except Exception as exc:
                        results.append(_h2d_entry(memory, dtype.name, batch, host.nbytes, **kw,
                                                  status="error", reason=_one_line(exc)))
                del dst
                bench.log(f"h2d batch {batch} {dtype.name}: " + ", ".join(
                    f"{r['memory']} {_brief(r, 'gb_per_s', ' GB/s')}" for r in results[-2:]))
                bench.partial("h2d", section(results))
    except Exception as exc:
        results.append(_h2d_entry(None, None, None, None, status="error",
                                  reason=_one_line(exc)))
    problem = _close(runner.deactivate if runner is not None else None, bench)
    if problem:
        results.append(_h2d_entry(None, None, None, None, status="error", reason=problem))
    return section(results)


# -- the scan engine -------------------------------------------------------------------------
def ensure_field(bench: Bench, workdir: Path) -> dict:
    """The synthetic g, i field (reused from ``workdir`` when already there)."""
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.field import make_field

    args = bench.args
    where = workdir / f"field_{args.field}_seed{args.seed}"
    reused = (where / "truth.fits").exists()  # written last: the field is complete
    t0 = time.perf_counter()
    if not reused:
        make_field(where, SynthConfig(width=args.field, height=args.field, seed=args.seed))
    return {"dir": str(where), "size": args.field, "seed": args.seed, "reused": reused,
            "seconds": time.perf_counter() - t0,
            "bands": [str(where / "g.fits"), str(where / "i.fits")]}


def _e2e_entry(precision, batch, threads, **kw) -> dict:
    entry = {"precision": precision, "batch": batch, "threads": threads, "gather_threads": None,
             "read_workers": None, "torch_threads": None, "cuda_graphs": None,
             "transfer_dtype": None, "positions": None, "tiles": None, "status": "ok",
             "reason": None, "cutouts_per_s": None, "cutouts_per_s_min": None,
             "cutouts_per_s_max": None, "repeats": 0, "seconds": [], "setup_s": None,
             "model_only_from_slots": None, "model_only_device_resident": None,
             "ratio_to_model_only": None, "ratio_to_device_resident": None, "goal": E2E_GOAL,
             "meets_goal": None}
    entry.update(kw)
    return entry


def scan_rate(bench: Bench, field: dict, precision: str, batch: int, threads, repeats: int,
              model_only: dict | None, estimate: float | None, gather=None) -> dict:
    """Engine over the grid: warm-up on a coarser grid, then ``repeats`` timed scans."""
    from pyengine import Engine
    from pyengine.io.mosaic import Mosaic
    from pyengine.sources import GridSource

    args, torch = bench.args, bench.torch
    slots_rate = model_rate(model_only, bench, precision, batch, _slot_label(bench))
    resident_rate = model_rate(model_only, bench, precision, batch, "device_resident")
    refs = {"model_only_from_slots": slots_rate, "model_only_device_resident": resident_rate}
    why = bench.budget.refuses(estimate or 0.0)
    if why:
        return _e2e_entry(precision, batch, threads, **refs, status="skipped", reason=why)
    t0 = time.perf_counter()
    engine = None
    try:
        engine = Engine(bench.model, runner="torch", precision=precision, batch_size=batch,
                        threads=threads, device=bench.device, core=args.core,
                        gather_threads=gather)
        engine.open()
        setup = time.perf_counter() - t0
        info = {"gather_threads": engine.gather_threads,
                # the read pool's size as scan/pipeline.py's Pipeline.read sets it
                "read_workers": max(1, min(2, engine.threads or 2)),
                "torch_threads": torch.get_num_threads(),
                "cuda_graphs": getattr(engine.runner, "_cuda_graphs", None) if bench.cuda
                else None,
                "transfer_dtype": str(engine.transfer_dtype), "setup_s": setup}
        with Mosaic.open(field["bands"]) as mosaic:
            mosaic_, source, plan = engine.prepare(mosaic, GridSource(args.stride))
            n = sum(source.count(tile) for tile in plan)
            coarse = min(args.stride * 4, max(1, min(mosaic_.shape) // 2))
            warm = engine.prepare(mosaic_, GridSource(coarse))
            sum(len(r) for r in engine.iter_results(*warm))  # warm-up: a 16th of the positions
            seconds = []
            for _ in range(repeats):
                if seconds and bench.budget.remaining() < 1.1 * max(seconds):
                    break  # another pass would end past the budget: report those done
                bench.sync()
                t1 = time.perf_counter()
                count = sum(len(r) for r in engine.iter_results(mosaic_, source, plan))
                bench.sync()
                seconds.append(time.perf_counter() - t1)
                if count != n:
                    raise RuntimeError(f"the scan returned {count} results for {n} positions")
        rate = _median_rate(n, seconds)
        ratio = rate["median"] / slots_rate if slots_rate else None
        entry = _e2e_entry(
            precision, batch, threads, **refs, **info, positions=n, tiles=len(plan),
            cutouts_per_s=rate["median"], cutouts_per_s_min=rate["min"],
            cutouts_per_s_max=rate["max"], repeats=len(seconds), seconds=seconds,
            ratio_to_model_only=ratio,
            ratio_to_device_resident=rate["median"] / resident_rate if resident_rate else None,
            meets_goal=None if ratio is None else bool(ratio >= E2E_GOAL))
    except Exception as exc:
        entry = _e2e_entry(precision, batch, threads, **refs, status="error",
                           reason=_one_line(exc))
    problem = _close(engine.close if engine is not None else None, bench)
    if problem:
        entry.update(status="error", reason=problem)
    return entry


def _estimate(results: list[dict], repeats: int) -> float | None:
    """Seconds one more ``scan_rate`` of ``repeats`` passes is likely to take, from the
    last one measured (setup, a sixteenth of a pass to warm up, the passes)."""
    done = [r for r in results if r["status"] == "ok" and r["seconds"]]
    if not done:
        return None
    last = done[-1]
    return (last["setup_s"] or 0.0) + max(last["seconds"]) * (repeats + 0.1)


def _first_estimate(bench: Bench, field: dict, model_only: dict | None, precision: str,
                    repeats: int) -> float | None:
    """Before any scan was timed: the grid's positions at the model-only rate from slots
    (an upper bound on the engine's), warm-up and ``repeats`` passes, plus a setup."""
    rate = model_rate(model_only, bench, precision, bench.args.e2e_batch, _slot_label(bench))
    if not rate:
        return None
    positions = (math.ceil(field["size"] / bench.args.stride)) ** 2
    return positions / rate * (repeats + 0.1)


def run_end_to_end(bench: Bench, field: dict, model_only: dict | None) -> dict:
    args = bench.args
    results = []
    for precision in args.e2e_precision_list:
        estimate = _estimate(results, args.e2e_repeats) or _first_estimate(
            bench, field, model_only, precision, args.e2e_repeats)
        results.append(scan_rate(bench, field, precision, args.e2e_batch, args.e2e_threads,
                                 args.e2e_repeats, model_only, estimate))
        bench.log(f"end_to_end {precision} batch {args.e2e_batch}: {_brief(results[-1])}")
        bench.partial("end_to_end", section(results))
    return section(results)


# -- threads: the engine and the batcher alone -------------------------------------------------
def _batcher_entry(threads, dtype, batch, **kw) -> dict:
    entry = {"threads": threads, "dtype": dtype, "batch": batch, "status": "ok",
             "reason": None, "cutouts_per_s": None, "cutouts_per_s_min": None,
             "cutouts_per_s_max": None, "gb_per_s": None, "repeats": 0,
             "cutouts_per_repeat": 0, "seconds": []}
    entry.update(kw)
    return entry


def batcher_rates(bench: Bench, field: dict, batch: int, counts: list[int]) -> list[dict]:
    """BatchRing alone: all grid positions of the fullest tile, read once into memory,
    gathered into batches (slots cycled, all in flight) per worker-thread count."""
    from pyengine.coords import centre_pixel
    from pyengine.io.mosaic import Mosaic
    from pyengine.io.tiles import TilePlan
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec
    from pyengine.scan.batching import BatchRing, make_slots
    from pyengine.scan.pipeline import tile_affine
    from pyengine.sources import GridSource

    args = bench.args
    spec, _ = read_spec(bench.model or DEMO_MODEL)
    with Mosaic.open(field["bands"]) as mosaic:
        plan = TilePlan.for_cutout(mosaic.shape, cutout=spec.cutout_size, core=args.core)
        source = GridSource(args.stride)
        source.bind(mosaic, plan)
        tile = max(plan, key=source.count)
        pixels = mosaic.read(*tile.window)
        pos = source.positions(tile)
    wy0, _, wx0, _ = tile.window
    cx, cy = centre_pixel(pos.x) - wx0, centre_pixel(pos.y) - wy0
    n = int(cx.size)
    results = []
    for dtype in (np.dtype(np.float16), np.dtype(np.float32)):
        # the engine maps sky to 0 and noise to 1 for float16 transfers
        offset, scale = tile_affine(pixels) if dtype == np.float16 else (None, None)
        row_bytes = spec.nband * spec.cutout_size**2 * dtype.itemsize
        for threads in counts:
            why = bench.budget.refuses()
            if why:
                results.append(_batcher_entry(threads, dtype.name, batch, status="skipped",
                                              reason=why))
                continue
            slots = make_slots(4, batch, spec.nband, spec.cutout_size, dtype)
            try:
                with BatchRing(slots, threads=threads) as ring:
                    def passes(k, ring=ring, offset=offset, scale=scale):
                        flight = deque()
                        for _ in range(k):
                            for s in range(0, n, batch):
                                if len(flight) == ring.nslots:
                                    done = flight.popleft()
                                    ring.wait(done)
                                    ring.release(done)
                                slot = ring.acquire()
                                ring.fill(slot, 0, pixels, cx[s : s + batch], cy[s : s + batch],
                                          offset=offset, scale=scale)
                                flight.append(slot)
                        while flight:
                            done = flight.popleft()
                            ring.wait(done)
                            ring.release(done)

                    k, per_pass = bench.calibrate(passes)
                    repeats = bench.fitting_repeats(k * per_pass)
                    if repeats < 1:
                        results.append(_batcher_entry(
                            threads, dtype.name, batch, status="skipped",
                            reason=bench.budget.refuses(k * per_pass) or "no time left"))
                        continue
                    seconds = bench.timed(passes, k, repeats)
                rate = _median_rate(k * n, seconds)
                bench.log(f"gather_threads batcher {dtype.name} threads {threads}: "
                          f"{rate['median']:,.0f}/s")
                results.append(_batcher_entry(
                    threads, dtype.name, batch, cutouts_per_s=rate["median"],
                    cutouts_per_s_min=rate["min"], cutouts_per_s_max=rate["max"],
                    gb_per_s=rate["median"] * row_bytes / 1e9, repeats=len(seconds),
                    cutouts_per_repeat=k * n, seconds=seconds))
            except Exception as exc:
                results.append(_batcher_entry(threads, dtype.name, batch, status="error",
                                              reason=_one_line(exc)))
    return results


def _sweep_estimate(e2e: dict | None, precision: str, threads: int,
                    repeats: int) -> float | None:
    """The first thread count's scan, from the end-to-end scan at the same precision:
    its passes scaled by its gather threads over ``threads`` (fewer: slower)."""
    done = [e for e in (e2e or {}).get("results", []) if e["status"] == "ok" and
            e["precision"] == precision and e["seconds"]]
    if not done:
        return None
    last = done[-1]
    slower = max(1.0, (last["gather_threads"] or 1) / threads)
    return (last["setup_s"] or 0.0) + max(last["seconds"]) * slower * (repeats + 0.1)


def run_gather_threads(bench: Bench, field: dict, model_only: dict | None,
                       e2e: dict | None = None) -> dict:
    args = bench.args
    precision, batch = args.e2e_precision_list[0], args.e2e_batch
    engine_rows = []
    for threads in args.thread_list:
        estimate = (_estimate(engine_rows, args.thread_repeats) or
                    _sweep_estimate(e2e, precision, threads, args.thread_repeats) or
                    _first_estimate(bench, field, model_only, precision, args.thread_repeats))
        # the batcher gets N threads too (the engine's default caps it at 4)
        engine_rows.append(scan_rate(bench, field, precision, batch, threads,
                                     args.thread_repeats, model_only, estimate,
                                     gather=threads))
        bench.log(f"gather_threads engine threads {threads}: {_brief(engine_rows[-1])}")
        bench.partial("gather_threads", section(engine_rows))
    batcher = batcher_rates(bench, field, batch, args.thread_list)
    reference = {"precision": precision, "batch": batch,
                 "from_slots": model_rate(model_only, bench, precision, batch,
                                          _slot_label(bench)),
                 "device_resident": model_rate(model_only, bench, precision, batch,
                                               "device_resident")}
    out = section(engine_rows + batcher)
    out["results"] = engine_rows
    out.update(batcher=batcher, model_only_reference=reference)
    return out


# -- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="CPU check: device cpu, tiny sizes, CUDA-only parts skipped")
    ap.add_argument("--device", default=None,
                    help="cuda, cuda:N or cpu (default: cuda; cpu with --smoke)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped demo model)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--batches", default=None,
                    help="model-only batch sizes with CUDA graphs, comma-separated")
    ap.add_argument("--eager-batches", default=None,
                    help="model-only batch sizes without CUDA graphs")
    ap.add_argument("--pad-batches", default=None,
                    help=f"model-only batch sizes with the stem zero-padded to {PAD_CHANNELS} "
                         "channels (first precision)")
    ap.add_argument("--fp32-batches", default=None,
                    help="model-only batch sizes at fp32 and tf32 (tf32 on CUDA only)")
    ap.add_argument("--precisions", default=None, help="torch precisions, comma-separated")
    ap.add_argument("--e2e-precisions", default=None,
                    help="end-to-end precisions (default: --precisions; the first is used for "
                         "the thread sweep)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="length of one timed repeat (model only, batcher)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up iterations (twice)")
    ap.add_argument("--field", type=int, default=None, help="synthetic field side, px")
    ap.add_argument("--stride", type=int, default=None, help="grid stride, px")
    ap.add_argument("--core", type=int, default=None, help="engine tile core, px")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--e2e-batch", type=int, default=None)
    ap.add_argument("--e2e-threads", type=int, default=None,
                    help="Engine threads for end_to_end (default: the engine's choice)")
    ap.add_argument("--e2e-repeats", type=int, default=None)
    ap.add_argument("--threads", default=None,
                    help="thread counts for gather_threads (default 1,2,4,... up to the CPUs)")
    ap.add_argument("--thread-repeats", type=int, default=None)
    ap.add_argument("--h2d-mb", type=float, default=None, help="MB copied per h2d repeat")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: no measurement starts, or is repeated, past them")
    ap.add_argument("--grace", type=float, default=None,
                    help=f"seconds after --budget at which the run is stopped whatever it is "
                         f"doing (the JSON keeps what was measured; exit status {STOPPED_EXIT})")
    ap.add_argument("--m31-stride", type=int, default=None,
                    help="grid stride (px) of the projected M31 scan")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark for the whole run (the torch "
                         "runner turns it on while active anyway)")
    ap.add_argument("--workdir", default=None,
                    help="where the synthetic field is written and reused (default: a "
                         "temporary directory, removed afterwards)")
    ap.add_argument("--field-only", action="store_true",
                    help="only write the synthetic field into --workdir, then exit")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--debug-stall", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    if args.device not in ("cpu", "cuda") and not (args.device.startswith("cuda:") and
                                                   args.device[5:].isdigit()):
        ap.error(f"--device {args.device!r} is not accepted; accepted: cpu, cuda, cuda:N")
    if args.field_only and not args.workdir:
        ap.error("--field-only needs --workdir (where the field is written)")
    args.section_list = _words(args.sections)
    unknown = sorted(set(args.section_list) - set(SECTIONS))
    if unknown:
        ap.error(f"--sections: unknown {', '.join(unknown)}; accepted: {', '.join(SECTIONS)}")
    try:
        args.batch_list = _ints(args.batches)
        args.eager_batch_list = _ints(args.eager_batches)
        args.pad_batch_list = _ints(args.pad_batches)
        args.fp32_batch_list = _ints(args.fp32_batches)
        args.thread_list = _ints(args.threads) if args.threads else None
    except ValueError:
        ap.error("--batches, --eager-batches, --pad-batches, --fp32-batches and --threads take "
                 "comma-separated integers, e.g. 256,512")
    args.precision_list = _words(args.precisions)
    args.e2e_precision_list = _words(args.e2e_precisions or args.precisions)
    from pyengine.runners.base import PRECISIONS

    for p in {*args.precision_list, *args.e2e_precision_list}:
        if p not in PRECISIONS["torch"]:
            ap.error(f"precision {p!r} is not accepted; accepted: "
                     f"{', '.join(PRECISIONS['torch'])}")
    cpus = _usable_cpus()
    args.thread_list = args.thread_list or _thread_counts(cpus, 2 if args.smoke else None)
    args.threads = ",".join(map(str, args.thread_list))
    lists = (args.batch_list, args.eager_batch_list, args.pad_batch_list, args.fp32_batch_list)
    if not args.batch_list or min(min(x, default=1) for x in lists) < 1 or \
            not args.thread_list or min(args.thread_list) < 1 or args.repeats < 1 or \
            args.e2e_batch < 1 or args.budget < 0 or args.grace < 0 or args.m31_stride < 1:
        ap.error("batch sizes, thread counts, --repeats, --e2e-batch and --m31-stride must "
                 "be positive; --budget and --grace at least 0")
    return args


def _section_failed(name: str, exc: BaseException) -> dict:
    """A section that raised: recorded as an error with the reason, never the end of the run."""
    return {"status": "error", "reason": f"the section failed: {_one_line(exc)}", "results": [],
            **({"batcher": [], "model_only_reference": {}} if name == "gather_threads" else {})}


def _field_failure(exc: BaseException) -> str:
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if missing:
        return (f"the synthetic field could not be made: {missing} is not installed (the synth "
                f"needs astropy and fitsio; carry their wheels: benchmarks/gpu_check.sh)")
    return f"the synthetic field could not be made: {_one_line(exc)}"


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    if args.field_only:
        bench = Bench(args, None, budget)
        field = ensure_field(bench, Path(args.workdir))
        print(f"# field {field['size']}^2 px (seed {field['seed']}) in {field['dir']}: "
              f"{'reused' if field['reused'] else 'synthesised'} in {field['seconds']:.1f} s")
        return 0
    from pyengine.runners.probe import torch_cuda_problem

    if args.device.startswith("cuda"):
        problem = torch_cuda_problem()
        if problem is not None:
            print(f"bench_gpu: --device {args.device} needs a CUDA GPU: {problem}; "
                  "run with --smoke to check the script on the CPU", file=sys.stderr)
            return 1
    sys.stdout.reconfigure(line_buffering=True)
    import torch

    from pyengine.models.checkpoint import DEMO_MODEL, file_sha256, read_spec

    if args.device.startswith("cuda"):
        index = int(args.device[5:]) if args.device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            print(f"bench_gpu: --device {args.device}: only {torch.cuda.device_count()} CUDA "
                  "device(s) visible", file=sys.stderr)
            return 1
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    bench = Bench(args, torch, budget)
    model_path = bench.model or DEMO_MODEL
    spec, _ = read_spec(model_path)
    env = environment()
    print_environment(env)
    payload = {
        "schema": SCHEMA, "smoke": bool(args.smoke), "device": args.device, "env": env,
        "torch": torch_info(torch, args.device),
        "model": {"path": str(model_path), "sha256": file_sha256(model_path),
                  "arch": spec.architecture, "bands": list(spec.bands), "nband": spec.nband,
                  "cutout_size": spec.cutout_size},
        "args": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
        "field": None, "anchor": anchor_block(None, bench.cuda),
        "sections": {name: section([], reason="not reached: the run stopped before it" if
                                   name in args.section_list else "not selected (--sections)")
                     for name in SECTIONS},
        "summary": None, "stopped": None, "elapsed_s": None,
    }
    running = {"section": None}  # the section being measured, for the watchdog
    print_header(payload)
    saving = threading.Lock()

    def save():
        with saving:
            payload["elapsed_s"] = budget.elapsed()
            if args.json:
                write_json(args.json, payload)

    def partial(name, sec):
        payload["sections"][name] = sec
        save()

    def finish_summary():
        model_only = payload["sections"]["model_only"]
        payload["anchor"] = anchor_block(model_only if model_only["results"] else None,
                                         bench.cuda)
        payload["summary"] = summary_block(payload)

    def deadline():
        """The hard stop: whatever is running, keep what was measured and end the run."""
        payload["stopped"] = (f"hard deadline: --budget {args.budget:.0f} s + --grace "
                              f"{args.grace:.0f} s passed during a measurement; sections not "
                              "finished hold the entries measured before it")
        name = running["section"]
        if name is not None:
            sec = payload["sections"][name]
            payload["sections"][name] = {
                **sec, "status": "partial" if sec["results"] else "error",
                "reason": "stopped by the hard deadline during this section"
                          + (f"; {sec['reason']}" if sec.get("reason") and sec["results"]
                             else "")}
        try:
            finish_summary()
            save()
            print_summary(payload["summary"], payload)
        finally:
            print(f"\n# stopped at {budget.elapsed():.1f} s (exit status {STOPPED_EXIT})",
                  flush=True)
            os._exit(STOPPED_EXIT)

    watchdog = threading.Timer(max(0.0, args.budget + args.grace - budget.elapsed()), deadline)
    watchdog.daemon = True
    watchdog.start()
    bench.on_partial = partial

    sections = payload["sections"]

    def run(name, fn, *a):
        running["section"] = name
        try:
            sections[name] = fn(*a)
        except Exception as exc:  # one section failing ends only itself
            sections[name] = _section_failed(name, exc)
        running["section"] = None
        print_section(name, sections[name])
        save()

    if "model_only" in args.section_list:
        run("model_only", run_model_only, bench)
    model_only = sections["model_only"] if "model_only" in args.section_list else None
    if "h2d" in args.section_list:
        run("h2d", run_h2d, bench, args.batch_list)
    scans = [s for s in ("end_to_end", "gather_threads") if s in args.section_list]
    if scans:
        with contextlib.ExitStack() as stack:
            if args.workdir:
                workdir = Path(args.workdir)
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="bench_gpu_")))
            try:
                field = ensure_field(bench, workdir)
            except Exception as exc:
                field, why = None, _field_failure(exc)
                for name in scans:
                    sections[name] = {**_section_failed(name, exc), "reason": why}
                    print_section(name, sections[name])
                save()
            if field is not None:
                payload["field"] = field
                print(f"\n# field {field['size']}^2 px (seed {field['seed']}) in "
                      f"{field['dir']}: {'reused' if field['reused'] else 'synthesised'} in "
                      f"{field['seconds']:.1f} s", flush=True)
                if "end_to_end" in scans:
                    run("end_to_end", run_end_to_end, bench, field, model_only)
                if "gather_threads" in scans:
                    run("gather_threads", run_gather_threads, bench, field, model_only,
                        sections["end_to_end"] if "end_to_end" in scans else None)
    watchdog.cancel()
    finish_summary()
    print_anchor(payload["anchor"])
    save()
    print_summary(payload["summary"], payload)
    failed = [f"{name}: {e['reason']}" for name, sec in sections.items()
              for e in [*sec["results"], *sec.get("batcher", [])] if e["status"] == "error"]
    failed += [f"{name}: {sec['reason']}" for name, sec in sections.items()
               if sec["status"] == "error" and not sec["results"]]
    print(f"\n# done in {budget.elapsed():.1f} s" +
          (f"; results in {args.json}" if args.json else ""))
    if failed:
        print(f"# {len(failed)} measurement(s) or section(s) failed, first: {failed[0]}",
              flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
