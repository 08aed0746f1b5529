"""``pyengine bench``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from pyengine.atomic import atomic_write_text

__all__ = ["bench"]


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


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
@click.option("--pairs", type=click.IntRange(1, 99), default=3, show_default=True,
              help="Model-only sweeps and end-to-end runs, interleaved (A B A B ...); the "
              "pair with the median ratio is reported.")
@click.option("--gather-batch", type=click.IntRange(1, 65536), default=256, show_default=True,
              help="Cutouts per batch in the gather stage.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the figures as JSON (keys: read, gather, model_only, end_to_end, "
              "end_to_end_over_model_only, machine).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Draw model-only throughput against batch size per runner (PNG).")
def bench(images, model, runners, precisions, batches, threads, positions, int8, size, workdir,
          quick, min_time, pairs, gather_batch, json_path, plot_path):
    """Measure each stage (read, gather, model only) and the whole scan, on IMAGES (one per
    model band) or on a synthetic field."""
    from pyengine.bench.config import BenchConfig
    from pyengine.bench.run import format_report, plot_batches, run_bench
    from pyengine.errors import ConfigError
    from pyengine.output.catalog import check_writable
    from pyengine.runners.select import RUNNER_NAMES

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
                      gather_batch=gather_batch, pairs=pairs)
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
