"""A survey's units as tasks on a Dask cluster (``--dask ADDRESS``, ``--dask local:N``).

Each task is a part of the survey's units (:mod:`pyengine.survey.units`: whole tiles of
one field; :func:`pyengine.survey.scan.scan_part`), the parts cut so that every worker
thread gets several (:data:`TASKS_PER_THREAD`). A task writes its part's catalog
atomically under its name in the shared ``OUT.fields/`` folder, with its own tile journal,
and returns a small summary dict, never pixels. So a task that Dask runs twice (it
retries a task whose worker died) finds the part done, or resumes the journal the dead
worker left, and changes nothing.

Each worker process makes one Engine from the scan's engine settings the first time it
runs a part, and keeps it for every later part (:func:`worker_engine`). Where workers
declare GPUs (``dask worker --resources GPU=1``, dask-cuda's ``LocalCUDACluster``), each
task asks for ``GPU=1``, so a GPU runs one part at a time. The client does the
ownership bookkeeping and the join, as in a local scan.

``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each. Another
address is connected with a 10 s timeout. An address where no scheduler answers is one
line naming it.

Thread safety: the worker-side Engine cache is per process, and a worker runs one part
per thread; workers have one thread each (``local:N``) unless their operator chose
otherwise, and each thread gets its own Engine.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from pyengine.errors import ConfigError

__all__ = ["TASKS_PER_THREAD", "open_client", "run_parts", "worker_engine"]

_ENGINES: dict = {}
_LOCK = threading.Lock()


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError("--dask needs dask.distributed (pip install 'pyengine[dask]')"
                          ) from None
    return distributed


def open_client(address: str):
    """(Client, the LocalCluster it started or None) for ``--dask ADDRESS``."""
    import logging

    distributed = _import_distributed()
    text = str(address).strip()
    if text.startswith("local:"):
        count = text[len("local:"):]
        if not count.isdigit() or not 1 <= int(count) <= 1024:
            raise ConfigError(f"--dask {address!r} is not accepted; accepted: local:N with N "
                              "worker processes (1..1024), or a scheduler address such as "
                              "tcp://host:8786")
        cluster = distributed.LocalCluster(n_workers=int(count), threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
        return distributed.Client(cluster), cluster
    try:
        client = distributed.Client(text, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        why = " ".join(str(exc).split())[:160]
        raise ConfigError(f"--dask {text}: no Dask scheduler answers there ({why}); check the "
                          "address, or use --dask local:N") from None
    return client, None


def worker_engine(config: dict):
    """This worker thread's Engine for ``config`` (made once, then kept)."""
    from pyengine import Engine  # the package's lazy export: no import cycle with the engine

    key = (threading.get_ident(), json.dumps(config, sort_keys=True, default=str))
    with _LOCK:
        engine = _ENGINES.get(key)
    if engine is None:
        engine = Engine(**config).open()
        with _LOCK:
            _ENGINES[key] = engine
    return engine


_GEOMETRIES: dict = {}


def worker_geometry(survey):
    """This worker's SurveyGeometry of ``survey``, built from the fields' own headers as
    the client built its own (never a pickled WCS), once per process."""
    from pyengine.survey.geometry import SurveyGeometry

    key = repr(survey)
    with _LOCK:
        geo = _GEOMETRIES.get(key)
    if geo is None:
        geo = SurveyGeometry(survey)
        with _LOCK:
            _GEOMETRIES[key] = geo
    return geo


def _part_task(scan_part, config, survey, part, parts, make_source, cone, regions,
               report_unowned):
    return scan_part(worker_engine(config), worker_geometry(survey), part, parts, make_source,
                     cone, regions, report_unowned=report_unowned)


#: Tasks a cluster gets per worker thread, at least: parts are cut to fit (whole tiles,
#: never more than a field), so that a slow worker or a field larger than the others
#: does not leave the rest idle at the end.
TASKS_PER_THREAD = 4


def run_parts(client, scan_part, config, geo, todo, parts, make_source, cone, regions,
              first_unit, progress=None):
    """The parts ``todo`` (:class:`pyengine.survey.units.Part`), cut into tasks of whole
    tiles (:data:`TASKS_PER_THREAD`), on ``client``'s workers, each running ``scan_part``
    (:func:`pyengine.survey.scan.scan_part`); yields (part, summary dict) as they finish.
    A task whose worker dies is run again (3 tries in all)."""
    import math

    from pyengine.survey.units import split_runs

    distributed = _import_distributed()
    info = client.scheduler_info()
    workers = info.get("workers", {}).values()
    gpus = any("GPU" in (w.get("resources") or {}) for w in workers)
    threads = max(1, sum(int(w.get("nthreads", 1)) for w in workers))
    tiles = sum(len(p.tiles) for p in todo)
    tasks = split_runs(todo, math.ceil(tiles / (TASKS_PER_THREAD * threads)) if tiles else 1)
    # keys name the parts folder by its whole path: two scans on one cluster whose outputs
    # share a name (m31.fits in two folders) never share a task
    where = hashlib.sha256(str(Path(parts).resolve()).encode()).hexdigest()[:12]
    futures = []
    for part in tasks:
        fid = geo.survey.fields[part.field].id
        futures.append(client.submit(
            _part_task, scan_part, config, geo.survey, part, parts, make_source, cone, regions,
            first_unit in part,
            key=f"pyengine-part-{where}-{part.name(fid)}", retries=2,
            pure=False, resources={"GPU": 1} if gpus else None))
    for done, future in enumerate(distributed.as_completed(futures), start=1):
        part, got = future.result()
        if progress is not None:
            progress({"event": "part", "field": geo.survey.fields[part.field].id,
                      "tiles": [part.first, part.last], "done": done, "total": len(tasks)})
        yield part, got
