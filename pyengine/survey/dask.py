"""A survey's fields as tasks on a Dask cluster (``--dask ADDRESS``, ``--dask local:N``).

Each field is one task (:func:`pyengine.survey.scan.scan_field`). It writes the field's
catalog atomically under its name in the shared ``OUT.fields/`` folder, with its own tile
journal, and returns a small summary dict, never pixels. So a task that Dask runs twice
(it retries a task whose worker died) finds the catalog done, or resumes the journal the
dead worker left, and changes nothing.

Each worker process makes one Engine from the scan's engine settings the first time it
runs a field, and keeps it for every later field (:func:`worker_engine`). Where workers
declare GPUs (``dask worker --resources GPU=1``, dask-cuda's ``LocalCUDACluster``), each
task asks for ``GPU=1``, so a GPU runs one field at a time. The client does the
ownership bookkeeping and the join, as in a local scan.

``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each. Another
address is connected with a 10 s timeout. An address where no scheduler answers is one
line naming it.

Thread safety: the worker-side Engine cache is per process, and a worker runs one field
per thread; workers have one thread each (``local:N``) unless their operator chose
otherwise, and each thread gets its own Engine.
"""

from __future__ import annotations

import json
import threading

from pyengine.errors import ConfigError

__all__ = ["open_client", "run_fields", "worker_engine"]

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
    from pyengine.scan.engine import Engine

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


def _field_task(scan_field, config, survey, k, parts, make_source, cone, regions,
                report_unowned):
    return scan_field(worker_engine(config), worker_geometry(survey), k, parts, make_source,
                      cone, regions, report_unowned=report_unowned)


def run_fields(client, scan_field, config, geo, todo, parts, make_source, cone, regions,
               first, progress=None):
    """The fields ``todo`` as tasks on ``client``'s workers, each running ``scan_field``
    (:func:`pyengine.survey.scan.scan_field`); yields (k, summary dict) as they finish.
    A task whose worker dies is run again (3 tries in all)."""
    distributed = _import_distributed()
    info = client.scheduler_info()
    gpus = any("GPU" in (w.get("resources") or {}) for w in info.get("workers", {}).values())
    futures = []
    for k in todo:
        futures.append(client.submit(
            _field_task, scan_field, config, geo.survey, k, parts, make_source, cone, regions,
            k == first,
            key=f"pyengine-field-{parts.name}-{geo.survey.fields[k].id}", retries=2,
            pure=False, resources={"GPU": 1} if gpus else None))
    for done, future in enumerate(distributed.as_completed(futures), start=1):
        k, got = future.result()
        if progress is not None:
            progress({"event": "field", "field": geo.survey.fields[k].id, "done": done,
                      "total": len(todo)})
        yield k, got
