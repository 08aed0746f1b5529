"""The whole bench: which runners and precisions, each stage, the end-to-end pipeline,
the report and its plot (see :mod:`pyengine.bench`).

Thread safety: one bench per process (it times the whole machine).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.bench.config import (
    _CPU_PRECISIONS,
    _GPU_PRECISIONS,
    CPU_BATCHES,
    GPU_BATCHES,
    QUICK_BATCHES,
    BenchConfig,
)
from pyengine.bench.stages import (
    _field,
    _now,
    _thread_counts,
    bench_gather,
    bench_model_only,
    bench_read,
)

__all__ = ["format_report", "plot_batches", "run_bench"]


@dataclass
class _Combo:
    runner: str
    precision: str
    model: str | None
    device: str


def _combos(cfg: BenchConfig, on_gpu: bool) -> tuple[list[_Combo], list[str]]:
    """(runner, precision) pairs to measure, and notes on what is left out and why."""
    from pyengine.runners.base import PRECISIONS
    from pyengine.runners.probe import available_runners

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
    from pyengine.export.quantize import quantize_int8
    from pyengine.models.checkpoint import file_sha256
    from pyengine.runners.onnxrt import decision_agreement

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
    from pyengine.runners.select import make_runner

    for c in combos:
        if not (c.precision == "int8" and c.model is None):
            return make_runner(c.runner, c.model, precision=c.precision, threads=cfg.threads,
                               device=c.device).spec
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    return read_spec(Path(cfg.model) if cfg.model else DEMO_MODEL)[0]


def _end_to_end(cfg: BenchConfig, combo: _Combo, runner, batch: int, mosaic, source) -> dict:
    from pyengine.scan.engine import Engine

    engine = Engine(cfg.model, runner=runner, batch_size=batch, threads=cfg.threads)
    mosaic_, source_, plan_ = engine.prepare(mosaic, source)
    t0 = time.perf_counter()
    count = sum(len(r) for r in engine.iter_results(mosaic_, source_, plan_))
    seconds = time.perf_counter() - t0
    return {"runner": combo.runner, "precision": combo.precision, "device": combo.device,
            "batch": batch, "threads": engine.gather_threads, "positions": count,
            "seconds": seconds, "cutouts_per_s": count / seconds}


def _paired(cfg: BenchConfig, combo: _Combo, runner, batches, cutouts, min_time, mosaic,
            source, log) -> tuple[list[dict], dict, dict]:
    """(model-only sweep, end-to-end entry, ratio entry) of the median of ``cfg.pairs``
    interleaved pairs: a model-only sweep over ``batches`` (A), then the pipeline at the
    sweep's best batch (B).  Measured minutes apart, a ratio of two figures on a noisy
    machine is the noise's; measured back to back and repeated, the median pair is not.
    The figures reported all come from that one pair, so ratio = end to end / the
    sweep's best, at the sweep's best batch."""
    label = f"{combo.runner} {combo.precision}"
    pairs = []
    for i in range(cfg.pairs):
        sweep = []
        for batch in batches:
            log(f"model only: {label}, batch {batch} (pair {i + 1}/{cfg.pairs}) ...")
            sweep.append({"runner": combo.runner, "precision": combo.precision,
                          "device": combo.device, "batch": batch,
                          "cutouts_per_s": bench_model_only(runner, batch, cutouts, min_time)})
        best = max(sweep, key=lambda m: m["cutouts_per_s"])
        log(f"end to end: {label}, batch {best['batch']} (pair {i + 1}/{cfg.pairs}) ...")
        e2e = _end_to_end(cfg, combo, runner, best["batch"], mosaic, source)
        pairs.append({"sweep": sweep, "end_to_end": e2e, "summary": {
            "batch": best["batch"], "model_only_cutouts_per_s": best["cutouts_per_s"],
            "end_to_end_cutouts_per_s": e2e["cutouts_per_s"],
            "ratio": e2e["cutouts_per_s"] / best["cutouts_per_s"]}})
    ratios = [p["summary"]["ratio"] for p in pairs]
    chosen = pairs[ratios.index(statistics.median_low(ratios))]  # an actual pair, even if even
    return chosen["sweep"], chosen["end_to_end"], {
        "runner": combo.runner, "precision": combo.precision,
        "batch": chosen["summary"]["batch"], "ratio": chosen["summary"]["ratio"],
        "pairs": [p["summary"] for p in pairs]}


# -- the whole bench ----------------------------------------------------------------------

def run_bench(cfg: BenchConfig, log=print) -> dict:
    from pyengine.info.report import machine_info
    from pyengine.io.mosaic import Mosaic
    from pyengine.io.tiles import TilePlan
    from pyengine.runners.probe import torch_cuda_problem
    from pyengine.runners.select import make_runner
    from pyengine.sources.grid import GridSource

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
            "min_time_s": min_time, "pairs": cfg.pairs}}
        with Mosaic.open(paths, bands=None if cfg.images else list(spec.bands)) as opened, \
                contextlib.ExitStack() as reopened:
            from pyengine.scan.engine import match_bands

            mosaic = match_bands(opened, spec.bands)
            if mosaic is not opened:  # reopened in the model's band order: closed too
                reopened.enter_context(mosaic)
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
            from pyengine.scan.cutouts import extract_cutouts

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
                    sweep, e2e, ratio = _paired(cfg, combo, runner, batches, cutouts, min_time,
                                                mosaic, source, log)
                finally:
                    runner.deactivate()
                model_only.extend(sweep)
                end_to_end.append(e2e)
                ratios.append(ratio)
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
    lines += ["", "end to end (read, gather, infer, collect) vs model only at the same batch "
              "(median of interleaved pairs)",
              f"  {'runner':<12} {'precision':<9} {'batch':>6} {'positions':>10} "
              f"{'cutouts/s':>12} {'ratio':>7}  per pair"]
    for e, q in zip(r["end_to_end"], r["end_to_end_over_model_only"], strict=True):
        per_pair = ", ".join(f"{p['ratio']:.3f}" for p in q.get("pairs", []))
        lines.append(f"  {e['runner']:<12} {e['precision']:<9} {e['batch']:>6} "
                     f"{e['positions']:>10} {e['cutouts_per_s']:>12.1f} {q['ratio']:>7.3f}  "
                     f"{per_pair}")
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
