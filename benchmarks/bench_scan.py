"""End-to-end scan throughput against the runner alone, in one run.

On a synthetic field (``pyengine.synth``), for the same N positions (a grid):

1. **model only**: ``runner.infer`` on batches already in memory (cutouts cut
   beforehand), the ceiling of any scan with this runner;
2. **serial**: what a script without the engine does: per tile, read, gather,
   then infer, one step after another (``cutouts.iter_tile_cutouts``);
3. **engine**: ``Engine`` (read, gather and infer overlapped) over the same positions.

Prints cutouts/s of each and the ratios engine / model-only and engine / serial,
alternating the three A/B/C ``--runs`` times and reporting medians.

Usage: python benchmarks/bench_scan.py [--size 2048] [--stride 12] [--runner onnxruntime]
       [--batch 32] [--threads N] [--runs 3] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--stride", type=int, default=12)
    ap.add_argument("--runner", default="onnxruntime")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--core", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.cutouts import iter_tile_cutouts
    from pyengine.scan.engine import Engine
    from pyengine.sources import GridSource
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.field import make_field

    env = environment()
    print_environment(env)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scan_"))
    if not (work / "truth.fits").exists():
        make_field(work, SynthConfig(width=args.size, height=args.size, seed=5))
    bands = [str(work / "g.fits"), str(work / "i.fits")]
    engine = Engine(args.model, runner=args.runner, precision=args.precision,
                    batch_size=args.batch, threads=args.threads, core=args.core)
    engine.open()
    size = engine.spec.cutout_size
    with Mosaic.open(bands) as mosaic:
        source = GridSource(args.stride)
        mosaic_, source, plan = engine.prepare(mosaic, source)
        xs, ys = [], []
        for tile in plan:
            p = source.positions(tile, None)
            xs.append(p.x)
            ys.append(p.y)
        x, y = np.concatenate(xs), np.concatenate(ys)
        n = x.size
        print(f"# field {args.size}^2 px, grid stride {args.stride}: {n} positions, "
              f"{len(plan)} tiles of {args.core}^2; runner {engine.runner.name} "
              f"{engine.runner.precision}, batch {engine.batch_size}, cutout {size}")
        cut = np.concatenate([c for _, _, c in iter_tile_cutouts(mosaic, x, y, size,
                                                                 core=args.core)])
        runner = engine.runner
        runner.infer(cut[: engine.batch_size])  # warm-up

        def model_only():
            for s in range(0, n, engine.batch_size):
                runner.infer(cut[s : s + engine.batch_size])

        def serial():
            for _, _, c in iter_tile_cutouts(mosaic, x, y, size, core=args.core):
                for s in range(0, c.shape[0], engine.batch_size):
                    runner.infer(np.ascontiguousarray(c[s : s + engine.batch_size]))

        def pipelined():
            count = 0
            for result in engine.iter_results(mosaic_, source, plan):
                count += len(result)
            assert count == n, (count, n)

        times = {"model_only": [], "serial": [], "engine": []}
        for _ in range(args.runs):
            for name, fn in (("model_only", model_only), ("serial", serial),
                             ("engine", pipelined)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    engine.close()
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    for k in times:
        print(f"{k:>10}: {rate[k]:8.1f} cutouts/s  (median of {args.runs}: "
              f"{', '.join(f'{t:.2f}' for t in times[k])} s)")
    pairs_model = [m / e for m, e in zip(times["model_only"], times["engine"], strict=True)]
    pairs_serial = [s / e for s, e in zip(times["serial"], times["engine"], strict=True)]
    print(f"engine / model-only throughput: {statistics.median(pairs_model):.3f} "
          f"(per run: {', '.join(f'{v:.3f}' for v in pairs_model)})")
    print(f"engine / serial throughput:     {statistics.median(pairs_serial):.3f} "
          f"(per run: {', '.join(f'{v:.3f}' for v in pairs_serial)})")
    if args.json:
        write_json(args.json, {"env": env, "positions": n, "times": times, "rate": rate,
                               "engine_over_model": pairs_model,
                               "engine_over_serial": pairs_serial, "args": vars(args)})


if __name__ == "__main__":
    main()
