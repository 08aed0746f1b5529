"""Time and peak memory of ``pyengine synth`` on a large field.

Writes a synthetic g, i field (default 40,000 x 40,000 px per band, float32:
12.8 GB on disk) with :func:`pyengine.synth.make_field` in this process and
reports wall time, pixel rate, peak resident memory (goal: < 1 GB whatever
the field size) and the object counts.  The output is deleted afterwards
unless --keep.  Numba's first compilation is done on a small warm-up field
first so that it does not count.

Usage: python benchmarks/bench_synth.py [--size 40000] [--tile-size 256]
           [--encoding float32] [--workdir DIR] [--keep] [--json FILE]
For an outside check of the peak: /usr/bin/time -v python benchmarks/bench_synth.py
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, write_json

from pyengine.synth import SynthConfig, make_field


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40_000, help="width = height, px")
    ap.add_argument("--tile-size", type=int, default=256, help="rows per block")
    ap.add_argument("--encoding", default="float32",
                    choices=["float32", "int16", "rice", "mef"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to write (default: a temporary folder here)")
    ap.add_argument("--keep", action="store_true", help="keep the field")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    env = environment()
    print_environment(env)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_synth_", dir="."))
    try:
        t0 = time.perf_counter()
        make_field(workdir / "warmup", SynthConfig(width=256, height=256, seed=args.seed))
        warm = time.perf_counter() - t0
        rss_before = _peak_rss_mb()
        config = SynthConfig(width=args.size, height=args.size, seed=args.seed,
                             tile_size=args.tile_size, encoding=args.encoding)
        done = [0, time.perf_counter()]

        def progress(rows, total):
            if rows * 10 // total > done[0]:
                done[0] = rows * 10 // total
                print(f"  {rows}/{total} rows, {time.perf_counter() - done[1]:.0f} s, "
                      f"peak RSS {_peak_rss_mb():.0f} MB", flush=True)

        result = make_field(workdir / "field", config, progress=progress)
        size_gb = sum(p.stat().st_size for p in (workdir / "field").iterdir()) / 1e9
        res = {
            "size": args.size, "tile_size": args.tile_size, "encoding": args.encoding,
            "seconds": result.seconds, "warmup_seconds": warm,
            "mpix_per_s": 2 * args.size**2 / result.seconds / 1e6,
            "peak_rss_mb": _peak_rss_mb(), "peak_rss_before_mb": rss_before,
            "output_gb": size_gb, "counts": result.counts,
        }
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"field {args.size} x {args.size} px x 2 bands, {args.encoding}, "
          f"tile {args.tile_size} rows: {res['seconds']:.1f} s "
          f"({res['mpix_per_s']:.1f} Mpix/s over both bands), {size_gb:.2f} GB written")
    print(f"peak RSS {res['peak_rss_mb']:.0f} MB (after warm-up: {rss_before:.0f} MB); "
          f"objects: {res['counts']}")
    if args.json:
        write_json(args.json, {"environment": env, "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
