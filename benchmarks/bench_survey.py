"""A survey scanned in one process and on a Dask LocalCluster: throughput and overhead.

The same synthetic one-sky survey (``pyengine.synth.survey.make_survey``, COLSxROWS
fields) is scanned on a grid (``GridSource(--stride)``) four ways, each timed as a whole
call, in alternation (A B A B ...) so that drift on a shared machine hits both sides:

* ``local``: ``scan_survey`` in this process, one Engine with ``--threads`` threads;
* ``dask``: ``scan_survey(client=...)`` on a ``LocalCluster`` of ``--workers`` worker
  processes with one thread each (the cluster started once, before the timing; each
  worker builds its Engine on its first field, inside the timed run).

It reports positions/s of each, the ratio dask / local (the issue's goal: >= 0.9 on 2
cores with 2 workers), and the per-field overhead: the sum over fields of the time from a
task's start on a worker to its result on the client, less the field's own scan time
(from the field's ScanSummary), as a share of the field's scan time.

Usage: python benchmarks/bench_survey.py [--grid 2x2] [--field-size 768] [--stride 8]
       [--workers 2] [--pairs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="2x2")
    ap.add_argument("--field-size", type=int, default=768)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="local Engine threads [the workers' total]")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--runner", default="onnxruntime")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cols, rows = (int(v) for v in args.grid.split("x"))
    threads = args.threads or args.workers

    from pyengine.scan.engine import Engine
    from pyengine.sources.grid import GridSource
    from pyengine.survey.dask import open_client
    from pyengine.survey.manifest import Survey
    from pyengine.survey.scan import scan_survey
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.survey import SurveyConfig, make_survey

    env = environment()
    print_environment(env)
    work = Path(tempfile.mkdtemp(prefix="bench_survey_"))
    made = make_survey(work / "survey", SurveyConfig(cols, rows, field_size=args.field_size,
                                                     base=SynthConfig(seed=3)))
    survey = Survey.read(made.manifest)
    config = {"model": None, "runner": args.runner, "threads": 1}
    make = lambda: GridSource(args.stride)  # noqa: E731
    engine = Engine(None, runner=args.runner, threads=threads).open()
    client, cluster = open_client(f"local:{args.workers}")
    # warm-up of both (exports, sessions, page cache): not timed
    scan_survey(engine, survey, work / "warm_local.fits", make_source=make, overwrite=True)
    scan_survey(None, survey, work / "warm_dask.fits", make_source=make, client=client,
                engine_config=config, overwrite=True)
    runs = {"local": [], "dask": []}
    scan_seconds = {"local": [], "dask": []}
    positions = None
    for _ in range(args.pairs):
        for name in ("local", "dask"):
            t0 = time.perf_counter()
            summary = scan_survey(engine if name == "local" else None, survey,
                                  work / f"{name}.fits", make_source=make, overwrite=True,
                                  client=client if name == "dask" else None,
                                  engine_config=config)
            runs[name].append(time.perf_counter() - t0)
            scan_seconds[name].append(sum(f.get("wall_s", 0.0) for f in
                                          summary.fields.values() if isinstance(f, dict)))
            positions = summary.positions
    client.close()
    cluster.close()
    engine.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    rate = {k: positions / v for k, v in med.items()}
    ratio = [runs["local"][i] / runs["dask"][i] for i in range(args.pairs)]
    # dask: wall time beyond the fields' own scan time spread over the workers
    field_time = statistics.median(scan_seconds["dask"])
    overhead = (med["dask"] - field_time / args.workers) / (field_time / args.workers)
    out = {"env": env, "args": vars(args), "positions": positions, "seconds": runs,
           "positions_per_s": rate, "dask_over_local": statistics.median(ratio),
           "pair_ratios": ratio, "dask_field_scan_seconds": scan_seconds["dask"],
           "dask_overhead_share": overhead}
    print(f"\nsurvey {args.grid} of {args.field_size} px fields, grid stride {args.stride}: "
          f"{positions:,} positions")
    for name in ("local", "dask"):
        print(f"  {name:<6} median {med[name]:6.1f} s  ({rate[name]:,.0f} positions/s)  "
              f"runs {', '.join(f'{t:.1f}' for t in runs[name])}")
    print(f"  dask / local throughput: {statistics.median(ratio):.3f} (pairs "
          f"{', '.join(f'{r:.3f}' for r in ratio)}; goal >= 0.9)")
    print(f"  dask beyond the fields' own scan time (spread over {args.workers} workers): "
          f"{100 * overhead:.1f} % (goal <= 5 %)")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
