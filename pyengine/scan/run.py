"""A whole-field scan with its files: catalog, regions, score map, resume journal.

:func:`run_scan` is what ``pyengine scan`` runs, and what an embedding script
calls to get the same files: it checks every output path before any work,
journals each completed tile atomically beside the output
(:class:`pyengine.output.journal.Journal`), and writes the final files
atomically only when every tile is done, then removes the journal.  A resumed
scan skips the journalled tiles and gives the same catalog as an
uninterrupted one, because the catalog is assembled from per-tile results in
tile order, whatever run computed them.

Thread safety: a scan runs the engine's pipeline threads but these functions
are called from one thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pyengine import __version__
from pyengine.errors import InputFileError, OutputError
from pyengine.flags import BLANK, OFF_IMAGE
from pyengine.hashing import file_identity
from pyengine.output.catalog import check_output, check_writable, write_catalog
from pyengine.scan.assembly import assemble_catalog, candidates
from pyengine.scan.results import ScanInterrupted, ScanSummary, TileResult
from pyengine.sources.base import tiles_to_do

__all__ = ["default_scoremap_path", "output_paths", "run_scan", "scan_fingerprint"]


# -- resume fingerprint -------------------------------------------------------------------
def _file_identity(spec: str) -> dict:
    """A band file's cheap content identity (:func:`pyengine.hashing.file_identity`:
    size and a hash of sampled bytes; a full hash of a 22 GB band would cost minutes)
    and the HDU its spec names.  No path or mtime: a band restored with a plain ``cp``
    of the same bytes, or moved, resumes; other bytes of the same size are refused."""
    from pyengine.io.fitsfile import parse_spec

    path, ext = parse_spec(spec)
    return {**file_identity(path), "ext": ext}


def _graph_identity(model) -> dict:
    """The content identity (:func:`pyengine.hashing.file_identity`) of the file scanned
    (None: the shipped demo model); no path or time, so a copy of the same file resumes."""
    from pyengine.models.checkpoint import DEMO_MODEL

    return file_identity(model if model is not None else DEMO_MODEL)


def scan_fingerprint(engine, mosaic, source, plan, extra: dict | None = None) -> dict:
    """Everything that determines a scan's per-tile results (not threads or batch size)."""
    fp = {
        "pyengine": __version__,
        "bands": list(mosaic.bands),
        "band_files": [_file_identity(p) for p in mosaic.paths],
        # The model's identity names the model (shared by its exports, see
        # runners.loaders.model_identity); the graph actually run is named too, so that
        # a resume with another export of it (say, an int8 graph calibrated anew) is
        # refused rather than mixing two graphs' scores in one catalog.
        "model_sha256": engine.model_sha256,
        "model_file": _graph_identity(engine.model),
        "runner": engine.runner.name,
        "precision": engine.runner.precision,
        "transfer": str(engine.transfer_dtype),
        "tile_core": plan.core,
        "cutout": engine.spec.cutout_size,
        "max_nan_fraction": engine.max_nan_fraction,
        "source": source.fingerprint(),
    }
    if extra:
        fp.update(extra)
    return fp


# -- the whole job --------------------------------------------------------------------------
def output_paths(out, regions=None, scoremap=None, *, probe: bool = True) -> dict:
    """Check every output before work starts; returns the checked paths.  The one place
    that decides whether outputs are usable: ``pyengine scan`` calls it before loading
    anything, :func:`run_scan` again (cheaply, ``probe=False``, when told the caller did)."""
    paths = {"catalog": check_output(out, probe=probe)}
    if regions is not None:
        paths["regions"] = _check_other(regions, (".reg",), "regions", probe)
    if scoremap is not None:
        paths["scoremap"] = _check_other(scoremap, (".fits",), "score map", probe)
    values = [p.resolve() for p in paths.values()]
    if len(set(values)) != len(values):
        raise OutputError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
    return paths


def _check_other(path, suffixes, what, probe: bool) -> Path:
    path = Path(path)
    if not any(path.name.lower().endswith(s) for s in suffixes):
        raise OutputError(f"{path}: a {what} file must end in {' or '.join(suffixes)}")
    return check_writable(path, f"a {what} file name ending in {' or '.join(suffixes)}",
                          probe=probe)


def default_scoremap_path(out: Path) -> Path:
    name = out.name
    for suffix in (".fits", ".fit", ".ecsv", ".parquet", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(name + "_scoremap.fits")


def run_scan(engine, mosaic, source, out, *, regions=None, scoremap=None,
             resume: bool = False, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None,
             outputs_probed: bool = False) -> ScanSummary:
    """Scan ``mosaic`` for ``source`` positions and write the catalog ``out`` (and
    ``regions``, and in grid mode a score map); journalled for ``resume``.

    ``progress(event)`` receives a dict after every batch and tile.  When
    ``stop`` is set the batch in flight finishes, its complete tiles are
    journalled and :class:`ScanInterrupted` is raised.  ``outputs_probed``: the caller
    ran :func:`output_paths` on these paths just before (the CLI does), so the folders are
    not probed again.

    On every way out (done, interrupted, an error) the journal's lock is released
    and a mosaic opened for the scan (paths given, or bands put in the model's
    order) is closed; a Mosaic the caller passed stays open.
    """
    from pyengine.output.journal import Journal

    t0 = time.perf_counter()
    if source.kind == "grid" and scoremap is None:
        scoremap = default_scoremap_path(Path(out))
    # A default score map lies beside the catalog, in a folder probed with it.
    paths = output_paths(out, regions, scoremap, probe=not outputs_probed)
    with engine.prepared(mosaic, source) as (mosaic, source, plan):
        journal = Journal(paths["catalog"])
        try:
            return _journalled_scan(engine, mosaic, source, plan, paths, journal, t0=t0,
                                    resume=resume, stop=stop, progress=progress)
        finally:
            journal.close()  # after finish() (success) a no-op; else keeps the journal


def _journalled_scan(engine, mosaic, source, plan, paths, journal, *, t0, resume, stop,
                     progress) -> ScanSummary:
    """The body of :func:`run_scan`, with the mosaic prepared and the journal made."""
    grid = source.kind == "grid"
    if grid:  # a WCS the score map cannot carry is refused now, not after the scan
        from pyengine.output.scoremap import scoremap_wcs

        scoremap_wcs(mosaic.wcs, source.stride, source.offset)
    fingerprint = scan_fingerprint(engine, mosaic, source, plan)
    done = set(journal.start(fingerprint, resume=resume))
    wanted = tiles_to_do(plan, source, done)
    total_pos = None
    counts = [source.count(t) for t in wanted]
    if all(c is not None for c in counts):
        total_pos = int(sum(counts))
    state = {"tiles_done": 0, "tiles_total": len(wanted), "positions_done": 0,
             "positions_total": total_pos, "candidates": 0, "t0": time.perf_counter()}

    def report(kind):
        if progress is None:
            return
        elapsed = time.perf_counter() - state["t0"]
        rate = state["positions_done"] / elapsed if elapsed > 0 else 0.0
        eta = None
        if total_pos and rate > 0:
            eta = (total_pos - state["positions_done"]) / rate
        elif state["tiles_done"] and state["tiles_total"]:
            eta = elapsed * (state["tiles_total"] - state["tiles_done"]) / state["tiles_done"]
        progress({"event": kind, "tiles_done": state["tiles_done"],
                  "tiles_total": state["tiles_total"], "positions_done": state["positions_done"],
                  "positions_total": total_pos, "candidates": state["candidates"],
                  "elapsed_s": round(elapsed, 3), "rate": round(rate, 1),
                  "eta_s": None if eta is None else round(eta, 1)})

    def on_batch(n):
        state["positions_done"] += n
        report("batch")

    if progress is not None:
        ny, nx = mosaic.shape
        progress({"event": "start", "width": nx, "height": ny, "bands": list(mosaic.bands),
                  "source": source.describe(), **engine.describe(), "tiles_total": len(wanted),
                  "tiles_resumed": len(done), "journal": str(journal.path)})
    stop = stop if stop is not None else threading.Event()
    for result in _keeping_journal(engine.iter_results(mosaic, source, plan, skip=done,
                                                       stop=stop, on_batch=on_batch),
                                   journal, done, len(done) + len(wanted)):
        journal.record(result.tile, result.to_arrays())
        done.add(result.tile)
        state["tiles_done"] += 1
        state["candidates"] += int(np.count_nonzero(
            candidates(engine, result.score, result.flags)))
        report("tile")
    remaining = tiles_to_do(plan, source, done)
    if remaining:
        if stop.is_set():
            raise ScanInterrupted(len(done), len(done) + len(remaining), journal.path)
        raise RuntimeError(f"scan ended with {len(remaining)} tiles not done")  # a bug
    results = [TileResult.from_arrays(t, journal.load(t)) for t in sorted(done)]
    table = assemble_catalog(engine, mosaic, source, results)
    outputs = {"catalog": str(write_catalog(table, paths["catalog"]))}
    if "regions" in paths:
        from pyengine.output.regions import write_regions

        cand = np.asarray(table["is_candidate"], bool)
        outputs["regions"] = str(write_regions(paths["regions"], np.asarray(table["ra"])[cand],
                                               np.asarray(table["dec"])[cand],
                                               np.asarray(table["score"])[cand]))
    if grid:
        outputs["scoremap"] = str(_write_scoremap(paths["scoremap"], engine, mosaic, source,
                                                  table))
    journal.finish()
    flags = np.asarray(table["flags"])
    scored = int(np.count_nonzero(np.isfinite(np.asarray(table["score"]))))
    wall = time.perf_counter() - t0
    run_positions = state["positions_done"]
    rate_time = time.perf_counter() - state["t0"]
    return ScanSummary(
        positions=len(table), scored=scored,
        candidates=int(np.count_nonzero(table["is_candidate"])),
        flagged=int(np.count_nonzero(flags & (BLANK | OFF_IMAGE))),
        off_image=int(np.count_nonzero(flags & OFF_IMAGE)),
        tiles=len(done), tiles_resumed=len(done) - state["tiles_done"], wall_s=wall,
        rate=run_positions / rate_time if rate_time > 0 else 0.0, outputs=outputs)


def _keeping_journal(results, journal, done: set, total: int):
    """``results``, with an input error met mid-scan (a band shrank or was modified,
    :class:`pyengine.errors.InputChangedError`) raised again as the same one-line error
    saying what was kept and how to go on; ``done`` is read when it is raised."""
    try:
        yield from results
    except InputFileError as exc:
        raise type(exc)(f"{exc}; the {len(done)} of {total} completed tiles are kept in "
                        f"{journal.path}: resume (pyengine scan --resume) once it is "
                        "restored") from None


def _write_scoremap(path, engine, mosaic, source, table):
    from pyengine.output.scoremap import write_scoremap

    ny, nx = source.grid_shape()
    scores = np.full((ny, nx), np.nan, np.float32)
    j, i = source.grid_index(np.asarray(table["x"]), np.asarray(table["y"]))
    scores[j, i] = np.asarray(table["score"], np.float32)
    meta = {k: v for k, v in table.meta.items() if k in
            ("PYENGVER", "DATE", "MODELSHA", "THRESH", "RUNNER", "PRECISN", "BANDS")}
    return write_scoremap(path, scores, mosaic.wcs, source.stride, source.offset, meta=meta)
