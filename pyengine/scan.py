"""A whole-field scan with its files: catalog, regions, score map, resume journal.

:func:`run_scan` is what ``pyengine scan`` runs, and what an embedding script
calls to get the same files: it checks every output path before any work,
journals each completed tile atomically beside the output
(:class:`pyengine.output.journal.Journal`), and writes the final files
atomically only when every tile is done, then removes the journal.  A resumed
scan skips the journalled tiles and gives the same catalog as an
uninterrupted one, because the catalog is assembled from per-tile results in
tile order, whatever run computed them.

:func:`assemble_catalog` turns per-tile results into the catalog of DESIGN.md
§4: one row per position (off-image positions flagged, not dropped),
``id, ra, dec, x, y, score, is_candidate, flags, tile``, the source's own
columns and the input catalog's columns (renamed ``in_<name>`` where they
collide), with metadata in ``table.meta``.

Thread safety: a scan runs the engine's pipeline threads but these functions
are called from one thread.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine import __version__
from pyengine.engine import Engine, TileResult
from pyengine.errors import OutputError
from pyengine.output.catalog import (
    BLANK,
    OFF_IMAGE,
    check_output,
    check_writable,
    describe_flags,
    write_catalog,
)

__all__ = ["ScanInterrupted", "ScanSummary", "assemble_catalog", "run_scan", "scan_fingerprint",
           "tile_table"]

STANDARD = ("id", "ra", "dec", "x", "y", "score", "is_candidate", "flags", "tile")


class ScanInterrupted(Exception):
    """The scan stopped on request; completed tiles are journalled for --resume."""

    def __init__(self, done: int, total: int, journal: Path):
        super().__init__(f"scan interrupted after {done} of {total} tiles; completed tiles are "
                         f"kept in {journal}")
        self.done, self.total, self.journal = done, total, journal


@dataclass
class ScanSummary:
    positions: int
    scored: int
    candidates: int
    flagged: int
    off_image: int
    tiles: int
    tiles_resumed: int
    wall_s: float
    rate: float  # cutouts scored per second in this run
    outputs: dict

    def line(self) -> str:
        return (f"{self.positions:,} positions, {self.scored:,} scored, {self.candidates:,} "
                f"candidates, {self.flagged:,} flagged ({self.off_image:,} off the image); "
                f"{self.tiles} tiles ({self.tiles_resumed} resumed) in {self.wall_s:.1f} s, "
                f"{self.rate:,.0f} cutouts/s")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# -- per-tile and whole catalogs --------------------------------------------------------
def _sky(mosaic, x, y):
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        ra, dec = mosaic.wcs.pixel_to_world_values(x, y)
    return np.asarray(ra, np.float64) % 360.0, np.asarray(dec, np.float64)


def _candidates(engine: Engine, score, flags):
    with np.errstate(invalid="ignore"):
        return (score >= engine.threshold) & ((flags & (BLANK | OFF_IMAGE)) == 0)


def tile_table(engine: Engine, mosaic, result: TileResult):
    """One tile's rows as an astropy Table (no ids: those number the whole catalog)."""
    from astropy.table import Table

    ra, dec = _sky(mosaic, result.x, result.y)
    table = Table()
    table["ra"], table["dec"] = ra, dec
    table["x"], table["y"] = result.x, result.y
    table["score"] = result.score
    table["is_candidate"] = _candidates(engine, result.score, result.flags)
    table["flags"] = result.flags
    table["tile"] = np.full(len(result), result.tile, np.int64)
    for name, values in result.columns.items():
        table[name] = values
    if np.any(result.row >= 0):
        table["row"] = result.row
    return table


def _off_image_result(source) -> TileResult | None:
    off = source.off_image()
    n = len(off.x)
    if n == 0:
        return None
    return TileResult(-1, np.asarray(off.x, np.float64), np.asarray(off.y, np.float64),
                      np.asarray(off.row, np.int64), np.full(n, np.nan, np.float32),
                      np.ones(n, np.float32), np.full(n, OFF_IMAGE | BLANK, np.int32),
                      {k: np.asarray(v) for k, v in off.columns.items()})


def assemble_catalog(engine: Engine, mosaic, source, results: list[TileResult], *,
                     meta: dict | None = None):
    """The catalog of a scan from its tile results (any order given; tile order kept)."""
    from astropy.table import Table

    results = sorted(results, key=lambda r: r.tile)
    off = _off_image_result(source)
    if off is not None:
        results.append(off)
    names = sorted({k for r in results for k in r.columns})

    def cat(get, dtype):
        parts = [np.asarray(get(r)) for r in results]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    x, y = cat(lambda r: r.x, np.float64), cat(lambda r: r.y, np.float64)
    row = cat(lambda r: r.row, np.int64)
    score, flags = cat(lambda r: r.score, np.float32), cat(lambda r: r.flags, np.int32)
    tile = cat(lambda r: np.full(len(r), r.tile, np.int64), np.int64)
    extra = {}
    for name in names:
        dtypes = [r.columns[name].dtype for r in results if name in r.columns]
        dtype = np.result_type(*dtypes)
        fill = np.nan if dtype.kind == "f" else 0
        extra[name] = cat(lambda r, n=name, d=dtype, f=fill:
                          r.columns.get(n, np.full(len(r), f, d)), dtype)
    passthrough = source.passthrough()
    # Catalog mode: input order.  Otherwise tile order, then each tile's own order.
    order = np.argsort(row, kind="stable") if passthrough is not None else np.arange(x.size)
    x, y, row, score, flags, tile = (a[order] for a in (x, y, row, score, flags, tile))
    extra = {k: v[order] for k, v in extra.items()}
    ra, dec = _sky(mosaic, x, y)
    table = Table()
    table["id"] = np.arange(1, x.size + 1, dtype=np.int64)
    table["ra"], table["dec"], table["x"], table["y"] = ra, dec, x, y
    table["score"] = score
    table["is_candidate"] = _candidates(engine, score, flags)
    table["flags"], table["tile"] = flags, tile
    for name, values in extra.items():
        table[name if name not in STANDARD else f"det_{name}"] = values
    if passthrough is not None:
        taken = set(table.colnames)
        rows = passthrough[row] if row.size else passthrough[:0]
        for name in passthrough.colnames:
            out = name if name.lower() not in {t.lower() for t in taken} else f"in_{name}"
            table[out] = rows[name]
            taken.add(out)
    table.meta.update(catalog_meta(engine, mosaic, source, table))
    if meta:
        table.meta.update(meta)
    return table


def catalog_meta(engine: Engine, mosaic, source, table) -> dict:
    """Header metadata of a catalog (FITS-safe keys)."""
    from pyengine.models.checkpoint import DEMO_MODEL

    meta = {
        "PYENGVER": __version__,
        "DATE": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "MODEL": str(engine.model if engine.model is not None else DEMO_MODEL.name),
        "MODELSHA": engine.model_sha256,
        "THRESH": engine.threshold,
        "RUNNER": engine.runner.name,
        "PRECISN": engine.runner.precision,
        "BANDS": ",".join(engine.spec.bands),
        "CUTOUT": engine.spec.cutout_size,
        "SOURCE": source.describe(),
        "MAXNAN": engine.max_nan_fraction,
        "NPOS": len(table),
        "NCAND": int(np.count_nonzero(table["is_candidate"])),
        "FLAGS": describe_flags(),
        "RADESYS": "ICRS",
    }
    for i, path in enumerate(mosaic.paths, 1):
        meta[f"BANDFIL{i}"] = str(path)
    return meta


# -- resume fingerprint -------------------------------------------------------------------
def _file_identity(spec: str) -> dict:
    """Size, mtime and a hash of the first and last MiB of a band file (a full hash of a
    22 GB band would cost minutes)."""
    from pyengine.io.fitsfile import parse_spec

    path, ext = parse_spec(spec)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {"path": str(path.resolve()), "ext": ext, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


def scan_fingerprint(engine: Engine, mosaic, source, plan, extra: dict | None = None) -> dict:
    """Everything that determines a scan's per-tile results (not threads or batch size)."""
    fp = {
        "pyengine": __version__,
        "bands": list(mosaic.bands),
        "band_files": [_file_identity(p) for p in mosaic.paths],
        "model_sha256": engine.model_sha256,
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
def output_paths(out, regions=None, scoremap=None) -> dict:
    """Check every output before work starts; returns the checked paths."""
    paths = {"catalog": check_output(out)}
    if regions is not None:
        paths["regions"] = _check_other(regions, (".reg",), "regions")
    if scoremap is not None:
        paths["scoremap"] = _check_other(scoremap, (".fits",), "score map")
    values = [p.resolve() for p in paths.values()]
    if len(set(values)) != len(values):
        raise OutputError(f"output paths must differ: {', '.join(map(str, paths.values()))}")
    return paths


def _check_other(path, suffixes, what) -> Path:
    path = Path(path)
    if not any(path.name.lower().endswith(s) for s in suffixes):
        raise OutputError(f"{path}: a {what} file must end in {' or '.join(suffixes)}")
    return check_writable(path, f"a {what} file name ending in {' or '.join(suffixes)}")


def default_scoremap_path(out: Path) -> Path:
    name = out.name
    for suffix in (".fits", ".fit", ".ecsv", ".parquet", ".csv"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(name + "_scoremap.fits")


def run_scan(engine: Engine, mosaic, source, out, *, regions=None, scoremap=None,
             resume: bool = False, stop: threading.Event | None = None,
             progress: Callable[[dict], None] | None = None) -> ScanSummary:
    """Scan ``mosaic`` for ``source`` positions and write the catalog ``out`` (and
    ``regions``, and in grid mode a score map); journalled for ``resume``.

    ``progress(event)`` receives a dict after every batch and tile.  When
    ``stop`` is set the batch in flight finishes, its complete tiles are
    journalled and :class:`ScanInterrupted` is raised.
    """
    from pyengine.output.journal import Journal

    t0 = time.perf_counter()
    grid = source.kind == "grid"
    if grid and scoremap is None:
        scoremap = default_scoremap_path(Path(out))
    paths = output_paths(out, regions, scoremap)
    mosaic, source, plan = engine.prepare(mosaic, source)
    if grid:  # a WCS the score map cannot carry is refused now, not after the scan
        from pyengine.output.scoremap import scoremap_wcs

        scoremap_wcs(mosaic.wcs, source.stride, source.offset)
    fingerprint = scan_fingerprint(engine, mosaic, source, plan)
    journal = Journal(paths["catalog"])
    done = set(journal.start(fingerprint, resume=resume))
    wanted = [t.index for t in plan if t.index not in done and source.count(t) != 0]
    total_pos = None
    counts = [source.count(plan[t]) for t in wanted]
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
    for result in engine.iter_results(mosaic, source, plan, skip=done, stop=stop,
                                      on_batch=on_batch):
        journal.record(result.tile, result.to_arrays())
        done.add(result.tile)
        state["tiles_done"] += 1
        state["candidates"] += int(np.count_nonzero(
            _candidates(engine, result.score, result.flags)))
        report("tile")
    remaining = [t.index for t in plan if t.index not in done and source.count(t) != 0]
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


def _write_scoremap(path, engine, mosaic, source, table):
    from pyengine.output.scoremap import write_scoremap

    ny, nx = source.grid_shape()
    scores = np.full((ny, nx), np.nan, np.float32)
    j, i = source.grid_index(np.asarray(table["x"]), np.asarray(table["y"]))
    scores[j, i] = np.asarray(table["score"], np.float32)
    meta = {k: v for k, v in table.meta.items() if k in
            ("PYENGVER", "DATE", "MODELSHA", "THRESH", "RUNNER", "PRECISN", "BANDS")}
    return write_scoremap(path, scores, mosaic.wcs, source.stride, source.offset, meta=meta)
