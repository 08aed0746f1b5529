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

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pyengine import __version__
from pyengine.errors import InputChangedError, OutputError, ResumeError, ScanOutputError
from pyengine.flags import BLANK, EDGE, OFF_IMAGE
from pyengine.hashing import file_identity
from pyengine.output.catalog import catalog_sidecar, check_output, check_writable, write_catalog
from pyengine.scan.assembly import assemble_catalog, candidates, scan_warnings
from pyengine.scan.results import ScanInterrupted, ScanSummary, TileResult
from pyengine.sources.base import tiles_to_do

__all__ = ["FINGERPRINT_OPTIONS", "default_scoremap_path", "output_paths", "plan_id",
           "refuse_inputs", "run_scan", "scan_fingerprint", "scan_inputs"]


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

    if isinstance(model, tuple | list):  # an ensemble: each member's, in order
        return [file_identity(m) for m in model]
    return file_identity(model if model is not None else DEMO_MODEL)


def plan_id(plan) -> str:
    """The tile plan's identity: SHA-256 of its image shape, core and halo.  Every journal
    entry carries it, so a tile file of another plan is never merged."""
    text = json.dumps({"shape": list(plan.shape), "core": plan.core, "halo": plan.halo})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Fingerprint keys (or their start) -> the ``pyengine scan`` option they come from, to name
#: what changed when a resume is refused (``--mag-limit: 20 → 19``).
FINGERPRINT_OPTIONS = {
    "band_files": "BAND_FITS", "bands": "--bands", "model_sha256": "--model",
    "model_file": "--model", "runner": "--runner", "precision": "--precision",
    "tile_core": "--tile-size", "max_nan_fraction": "--max-nan",
    "source.kind": "--catalog/--grid/detection", "source.file": "--catalog",
    "source.stride": "--grid", "source.mag_limit": "--mag-limit", "source.mag_col": "--mag-col",
    "source.columns": "--ra-col/--dec-col/--x-col/--y-col",
    "source.threshold": "--detect-threshold", "source.min_area": "--min-area",
    "source.band": "--detect-band", "source.mag_band": "--mag-band",
    "source.zero_point": "--zero-point", "source.aperture": "--aperture",
    "outputs": "--class-columns",
}


def scan_fingerprint(engine, mosaic, source, plan, extra: dict | None = None) -> dict:
    """Everything that determines a scan's per-tile results (not threads, batch size or the
    candidate threshold, which is applied when the catalog is assembled)."""
    fp = {
        "plan_id": plan_id(plan),
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
    outputs = getattr(engine, "row_outputs", {})
    if outputs:  # class columns, an ensemble's outputs: journalled with each tile
        fp["outputs"] = sorted(outputs)
    if extra:
        fp.update(extra)
    return fp


# -- the whole job --------------------------------------------------------------------------
def output_paths(out, regions=None, scoremap=None, *, grid: bool = False, inputs=None,
                 overwrite: bool = False, resume: bool = False, probe: bool = True) -> dict:
    """Check every output before work starts; returns the checked paths.  The one place
    that decides whether outputs are usable: ``pyengine scan`` calls it before loading
    anything, :func:`run_scan` again (cheaply, ``probe=False``, when told the caller did).

    ``grid``: a score map is written, at ``scoremap`` or beside the catalog
    (:func:`default_scoremap_path`).  ``inputs`` (:func:`scan_inputs`): no output, nor the
    catalog's sidecar or journal, may be one of them (:func:`refuse_inputs`).  An
    existing output (catalog, its CSV sidecar, regions, score map) is refused unless
    ``overwrite``, as astropy's ``overwrite=False``; a journal is the journal's business
    (:class:`pyengine.output.journal.Journal`).  ``resume``: outputs that exist beside the
    scan's journal are that scan's own, written before a failure at the end (a full disk
    after the catalog, say), and are replaced; a resume with no journal is refused, saying
    whether the scan finished.  Raises :class:`OutputError` or ``ResumeError``, one line.
    """
    if grid and scoremap is None:
        scoremap = default_scoremap_path(Path(out))
    paths = {"catalog": check_output(out, probe=probe)}
    if regions is not None:
        paths["regions"] = _check_other(regions, (".reg",), "regions", probe)
    if scoremap is not None:
        paths["scoremap"] = _check_other(scoremap, (".fits",), "score map", probe)
    values = [p.resolve() for p in paths.values()]
    if len(set(values)) != len(values):
        raise OutputError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
    written = dict(paths)
    if catalog_sidecar(paths["catalog"]) is not None:
        written["sidecar"] = catalog_sidecar(paths["catalog"])
    if inputs:
        refuse_inputs(written, inputs)
    journal = paths["catalog"].with_name(paths["catalog"].name + ".journal")
    if resume and not journal.is_dir():
        done = (f" ({paths['catalog']} exists: the scan has finished)"
                if os.path.lexists(paths["catalog"]) else "")
        raise ResumeError(f"nothing to resume at {journal}{done}; run without --resume"
                          + (" (and with --overwrite to scan again)" if done else ""))
    if not overwrite and not resume:
        existing = [str(p) for p in written.values() if os.path.lexists(p)]
        if existing:
            raise OutputError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}; "
                              "pass --overwrite (overwrite=True) to replace "
                              f"{'it' if len(existing) == 1 else 'them'}, or choose another --out")
    return paths


#: How :func:`refuse_inputs` names each output (the option that gave it).
_OUTPUT_NAMES = {"catalog": "--out", "regions": "--regions", "scoremap": "--scoremap",
                 "sidecar": "--out's metadata sidecar", "journal": "--out's resume journal"}


def scan_inputs(bands, catalog=None, model=None) -> dict[str, Path]:
    """The files a scan reads, named for messages: band images (``path[ext]`` specs
    allowed), the ``--catalog`` file and the ``--model`` file, or files (an ensemble's
    list; None: neither)."""
    from pyengine.io.fitsfile import parse_spec

    inputs = {}
    for spec in bands:
        path = parse_spec(spec)[0]
        inputs[f"the band image {path}"] = path
    if catalog is not None:
        path = parse_spec(catalog)[0]
        inputs[f"the --catalog file {path}"] = path
    for path in (model if isinstance(model, tuple | list) else
                 () if model is None else (model,)):
        inputs[f"the --model file {path}"] = Path(path)
    return inputs


def _same_file(a: Path, b: Path) -> bool:
    """One file: the same (st_dev, st_ino) when both exist, else the same resolved path
    (symlinks and ``..`` followed)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def refuse_inputs(outputs: dict, inputs: dict) -> None:
    """Refuse an output that is an input (:func:`_same_file`), and a journal folder
    (``OUT.journal``, emptied and removed by the scan) that is an input or holds one."""
    outputs = dict(outputs)
    journal = Path(outputs["catalog"]).with_name(Path(outputs["catalog"]).name + ".journal")
    for kind, out in [*outputs.items(), ("journal", journal)]:
        out = Path(out)
        for what, path in inputs.items():
            path = Path(path)
            hit = _same_file(out, path)
            if kind == "journal" and not hit:
                hit = out.resolve() in path.resolve().parents
            if hit:
                raise OutputError(f"{_OUTPUT_NAMES[kind]} {out} is {what} (an input); choose "
                                  "another path")


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
             outputs_probed: bool = False, overwrite: bool = False) -> ScanSummary:
    """Scan ``mosaic`` for ``source`` positions and write the catalog ``out`` (and
    ``regions``, and in grid mode a score map); journalled for ``resume``.

    ``progress(event)`` receives a dict after every batch and tile.  When
    ``stop`` is set the batch in flight finishes, its complete tiles are
    journalled and :class:`ScanInterrupted` is raised.  ``outputs_probed``: the caller
    ran :func:`output_paths` on these paths just before (the CLI does), so the folders are
    not probed again.  Outputs that are inputs (band files, the catalog, the model) are
    refused, and existing outputs too unless ``overwrite`` (see :func:`output_paths`).

    On every way out (done, interrupted, an error) the journal's lock is released
    and a mosaic opened for the scan (paths given, or bands put in the model's
    order) is closed; a Mosaic the caller passed stays open.  An error before the
    first tile is journalled (runner activation, allocation, the first batch) removes
    the journal this call created, so the next run needs no ``--resume``; a resumed
    journal, or one holding tiles, is kept.  A journal or output write that fails
    once tiles are journalled raises :class:`pyengine.errors.ScanOutputError`, which
    says the tiles are kept and that ``--resume`` continues.

    A resume first verifies every journal entry (:meth:`Journal.start`); entries set
    aside are in the ``start`` event (``journal_rejected``) and their tiles are
    scanned again.
    """
    from pyengine.output.journal import Journal

    t0 = time.perf_counter()
    # A default score map lies beside the catalog, in a folder probed with it.
    bands = mosaic.paths if hasattr(mosaic, "paths") else [str(p) for p in mosaic]
    inputs = scan_inputs(bands, getattr(source, "spec", None) if source.kind == "catalog"
                         else None, engine.model)
    paths = output_paths(out, regions, scoremap, grid=source.kind == "grid", inputs=inputs,
                         overwrite=overwrite, resume=resume, probe=not outputs_probed)
    with engine.prepared(mosaic, source) as (mosaic, source, plan):
        journal = Journal(paths["catalog"])
        try:
            return _journalled_scan(engine, mosaic, source, plan, paths, journal, t0=t0,
                                    resume=resume, stop=stop, progress=progress)
        except ScanInterrupted:
            raise  # stopped on request: the journal stays, as the resume message says
        except Exception:
            journal.discard_if_empty()  # a failed start must not block the next run
            raise
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
    scan_tiles = [t.index for t in tiles_to_do(plan, source)]
    done = set(journal.start(fingerprint, resume=resume, tiles=scan_tiles,
                             labels=FINGERPRINT_OPTIONS,
                             settings={"threshold": engine.threshold}))
    resumed = len(done)
    wanted = tiles_to_do(plan, source, done)
    total_pos = None
    counts = [source.count(t) for t in wanted]
    if all(c is not None for c in counts):
        total_pos = int(sum(counts))
    # tiles_done/tiles_total: of the whole scan (resumed tiles count as done); positions:
    # of this run.
    state = {"tiles_done": resumed, "tiles_total": len(scan_tiles), "positions_done": 0,
             "positions_total": total_pos, "candidates": 0, "t0": time.perf_counter()}

    def report(kind, tile=None):
        if progress is None:
            return
        elapsed = time.perf_counter() - state["t0"]
        rate = state["positions_done"] / elapsed if elapsed > 0 else 0.0
        eta = None
        ran = state["tiles_done"] - resumed
        if total_pos and rate > 0:
            eta = (total_pos - state["positions_done"]) / rate
        elif ran:
            eta = elapsed * (state["tiles_total"] - state["tiles_done"]) / ran
        event = {"event": kind, "tiles_done": state["tiles_done"],
                 "tiles_total": state["tiles_total"], "positions_done": state["positions_done"],
                 "positions_total": total_pos, "candidates": state["candidates"],
                 "elapsed_s": round(elapsed, 3), "rate": round(rate, 1),
                 "eta_s": None if eta is None else round(eta, 1)}
        if tile is not None:
            event["tile"] = tile
        progress(event)

    def on_batch(n):
        state["positions_done"] += n
        report("batch")

    if progress is not None:
        ny, nx = mosaic.shape
        was = journal.previous_settings.get("threshold")
        progress({"event": "start", "width": nx, "height": ny, "bands": list(mosaic.bands),
                  "source": source.describe(), **engine.describe(),
                  "tiles_total": len(scan_tiles), "tiles_resumed": resumed,
                  "tiles_todo": len(wanted), "journal": str(journal.path),
                  "journal_rejected": [r.message() for r in journal.rejected],
                  "threshold_before": was if resume and was != engine.threshold else None})
    stop = stop if stop is not None else threading.Event()
    try:
        for result in _keeping_journal(engine.iter_results(mosaic, source, plan, skip=done,
                                                           stop=stop, on_batch=on_batch),
                                       journal, done, len(done) + len(wanted)):
            journal.record(result.tile, result.to_arrays())
            done.add(result.tile)
            state["tiles_done"] += 1
            state["candidates"] += int(np.count_nonzero(
                candidates(engine, result.score, result.flags)))
            report("tile", result.tile)
    except OutputError as exc:
        if not done:
            raise  # nothing journalled: run_scan removes the journal it made
        raise ScanOutputError(str(exc), journal.path, len(done)) from None
    remaining = tiles_to_do(plan, source, done)
    if remaining:
        if stop.is_set():
            raise ScanInterrupted(len(done), len(done) + len(remaining), journal.path)
        raise RuntimeError(f"scan ended with {len(remaining)} tiles not done")  # a bug
    results = [TileResult.from_arrays(t, journal.load(t)) for t in sorted(done)]
    table = assemble_catalog(engine, mosaic, source, results)
    try:
        outputs = _write_outputs(engine, mosaic, source, table, paths)
    except (OutputError, OSError) as exc:
        text = str(exc) if isinstance(exc, OutputError) else f"cannot write ({exc})"
        raise ScanOutputError(text, journal.path, len(done)) from None
    journal.finish()
    flags = np.asarray(table["flags"])
    scored = int(np.count_nonzero(np.isfinite(np.asarray(table["score"]))))
    wall = time.perf_counter() - t0
    run_positions = state["positions_done"]
    rate_time = time.perf_counter() - state["t0"]
    return ScanSummary(
        positions=len(table), scored=scored,
        candidates=int(np.count_nonzero(table["is_candidate"])),
        flagged=int(np.count_nonzero(flags)),
        off_image=int(np.count_nonzero(flags & OFF_IMAGE)), bad_positions=source.n_bad_positions,
        blank=int(np.count_nonzero(flags & BLANK)), edge=int(np.count_nonzero(flags & EDGE)),
        tiles=len(done), tiles_resumed=resumed, wall_s=wall,
        rate=run_positions / rate_time if rate_time > 0 else 0.0, outputs=outputs,
        journal_rejected=[r.message() for r in journal.rejected],
        warnings=scan_warnings(mosaic, results, table))


def _write_outputs(engine, mosaic, source, table, paths) -> dict:
    """Write the catalog, regions and (grid mode) score map; their paths by kind."""
    outputs = {"catalog": str(write_catalog(table, paths["catalog"]))}
    if "regions" in paths:
        from pyengine.output.regions import write_regions

        cand = np.asarray(table["is_candidate"], bool)
        outputs["regions"] = str(write_regions(paths["regions"], np.asarray(table["ra"])[cand],
                                               np.asarray(table["dec"])[cand],
                                               np.asarray(table["score"])[cand]))
    if source.kind == "grid":
        outputs["scoremap"] = str(_write_scoremap(paths["scoremap"], engine, mosaic, source,
                                                  table))
    return outputs


def _keeping_journal(results, journal, done: set, total: int):
    """``results``, with an input error met mid-scan (a band shrank or was modified,
    :class:`pyengine.errors.InputChangedError`) raised again as the same one-line error
    saying what was kept and how to go on; ``done`` is read when it is raised."""
    try:
        yield from results
    except InputChangedError as exc:
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
