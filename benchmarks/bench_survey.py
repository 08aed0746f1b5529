"""A survey scanned in one process and on a Dask LocalCluster: throughput, overhead, memory.

The same synthetic one-sky survey (``pyengine.synth.survey.make_survey``, COLSxROWS
fields of --field-size px, at the default tile size unless --tile-size) is scanned on a
grid (``GridSource(--stride)``: the stride sets the density, 1,024 positions per 2048²
tile at stride 64, about a PAndAS catalogue's) two ways, each timed as a whole call, in
alternation (A B A B ...) so that drift on a shared machine hits both sides:

* ``local``: ``scan_survey`` in this process, one Engine with ``--workers`` threads;
* ``dask``: ``scan_survey(client=...)`` on a ``LocalCluster`` of ``--workers`` worker
  processes with one thread each (started once, before the timing; each worker's Engine
  is made in the warm-up and kept).

Reported:

* positions/s of each and the ratio dask / local (the goal: >= 0.9 on 2 cores);
* **scheduling and result transfer**, from Dask's task stream of the timed runs: per
  worker thread, the gaps between one task's end and its next task's start, plus every
  transfer and deserialisation, as a share of the tasks' compute time (the unit time:
  a part's whole scan, its field opened and its source bound); and the whole wall time
  beyond the compute time spread over the threads (that includes the tail, where one
  thread has finished and the other has not);
* **peak memory per worker** (its process's peak RSS): after scanning a one-field survey
  on a fresh cluster, and again after the whole survey. Equal peaks mean the peak does
  not grow with the survey.

Usage: python benchmarks/bench_survey.py [--grid 2x2] [--field-size 4096] [--stride 64]
       [--workers 2] [--pairs 2] [--runner onnxruntime] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, write_json


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stream_overhead(records) -> dict:
    """Compute seconds, scheduling gaps and transfers, from task stream records."""
    compute, moves, by_worker = 0.0, 0.0, {}
    for rec in records:
        for ss in rec.get("startstops", ()):
            span = ss["stop"] - ss["start"]
            if ss["action"] == "compute":
                compute += span
                by_worker.setdefault(rec["worker"], []).append((ss["start"], ss["stop"]))
            else:  # transfer, deserialize, disk-read/write
                moves += span
    gaps = 0.0
    for spans in by_worker.values():  # one thread per worker (local:N)
        spans.sort()
        gaps += sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(spans))
    return {"tasks": len(records), "compute_s": compute, "gaps_s": gaps, "transfer_s": moves,
            "share": (gaps + moves) / compute if compute else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="2x2")
    ap.add_argument("--field-size", type=int, default=4096)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--tile-size", type=int, default=None, help="[the default tile core]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--runner", default="onnxruntime")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cols, rows = (int(v) for v in args.grid.split("x"))

    from distributed import get_task_stream

    from pyengine.defaults import DEFAULT_CORE
    from pyengine.scan.engine import Engine
    from pyengine.sources.grid import GridSource
    from pyengine.survey.dask import open_client
    from pyengine.survey.geometry import SurveyGeometry
    from pyengine.survey.manifest import Survey
    from pyengine.survey.scan import scan_survey
    from pyengine.survey.units import unit_list
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.survey import SurveyConfig, make_survey

    env = environment()
    print_environment(env)
    core = args.tile_size or DEFAULT_CORE
    work = Path(tempfile.mkdtemp(prefix="bench_survey_"))
    t0 = time.perf_counter()
    made = make_survey(work / "survey", SurveyConfig(cols, rows, field_size=args.field_size,
                                                     base=SynthConfig(seed=3)))
    print(f"survey made in {time.perf_counter() - t0:.1f} s")
    survey = Survey.read(made.manifest)
    one = Survey(survey.fields[:1], survey.bands, survey.manifest)
    config = {"model": None, "runner": args.runner, "precision": args.precision,
              "threads": 1, "core": core}
    make = lambda: GridSource(args.stride)  # noqa: E731
    engine = Engine(None, runner=args.runner, precision=args.precision, threads=args.workers,
                    core=core).open()
    client, cluster = open_client(f"local:{args.workers}")
    # peak RSS per worker after a one-field survey, then after the whole one
    scan_survey(None, one, work / "one.fits", make_source=make, client=client,
                engine_config=config, overwrite=True)
    rss_one = sorted(client.run(_peak_rss_mib).values())
    # warm-up of both (sessions, page cache): not timed
    scan_survey(engine, survey, work / "warm_local.fits", make_source=make, overwrite=True)
    scan_survey(None, survey, work / "warm_dask.fits", make_source=make, client=client,
                engine_config=config, overwrite=True)
    runs = {"local": [], "dask": []}
    streams = []
    positions = None
    for _ in range(args.pairs):
        for name in ("local", "dask"):
            t1 = time.perf_counter()
            if name == "local":
                summary = scan_survey(engine, survey, work / "local.fits", make_source=make,
                                      overwrite=True)
            else:
                with get_task_stream(client) as ts:
                    summary = scan_survey(None, survey, work / "dask.fits", make_source=make,
                                          overwrite=True, client=client, engine_config=config)
                streams.append(_stream_overhead(ts.data))
            runs[name].append(time.perf_counter() - t1)
            positions = summary.positions
    rss_all = sorted(client.run(_peak_rss_mib).values())
    client.close()
    cluster.close()
    engine.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    rate = {k: positions / v for k, v in med.items()}
    ratio = [runs["local"][i] / runs["dask"][i] for i in range(args.pairs)]
    whole = [(runs["dask"][i] * args.workers - s["compute_s"]) / s["compute_s"]
             for i, s in enumerate(streams)]
    tiles = len(unit_list(SurveyGeometry(survey), range(len(survey.fields)), core))
    out = {"env": env, "args": vars(args), "tile_core": core, "units": tiles,
           "positions": positions, "seconds": runs, "positions_per_s": rate,
           "dask_over_local": statistics.median(ratio), "pair_ratios": ratio,
           "task_streams": streams, "dask_beyond_compute_share": whole,
           "worker_peak_rss_mib": {"one_field": rss_one, "whole_survey": rss_all}}
    print(f"\nsurvey {args.grid} of {args.field_size}² px fields, {tiles} units (field, tile) "
          f"of {core}² px, grid stride {args.stride}: {positions:,} positions")
    for name in ("local", "dask"):
        print(f"  {name:<6} median {med[name]:6.1f} s  ({rate[name]:,.0f} positions/s)  "
              f"runs {', '.join(f'{t:.1f}' for t in runs[name])}")
    print(f"  dask / local throughput: {statistics.median(ratio):.3f} (pairs "
          f"{', '.join(f'{r:.3f}' for r in ratio)}; goal >= 0.9)")
    for i, s in enumerate(streams):
        print(f"  dask run {i + 1}: {s['tasks']} tasks, compute {s['compute_s']:.1f} s, "
              f"scheduling gaps {s['gaps_s']:.3f} s, transfers {s['transfer_s']:.3f} s: "
              f"{100 * s['share']:.2f} % of unit time (goal <= 5 %); wall beyond compute "
              f"over {args.workers} threads {100 * whole[i]:.1f} %")
    print(f"  peak RSS per worker: {', '.join(f'{v:.0f}' for v in rss_one)} MiB after one "
          f"field; {', '.join(f'{v:.0f}' for v in rss_all)} MiB after the whole survey")
    if args.json:
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
