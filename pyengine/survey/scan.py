"""Scanning a survey: every field that touches the area, each with the positions it owns,
joined into one catalog with a ``field`` column.

:func:`scan_survey` runs :func:`pyengine.scan.run.run_scan` once per field. Each field
gets its share of the positions (:class:`pyengine.survey.sources.OwnedSource`: the
ownership rule and the area), so the field's own tile journal, atomic writes and
checks apply unchanged. The field's catalog goes to ``OUT.fields/<field>.fits``. Once
every field is done they are joined into ``OUT``, and the folder is removed.

**Order:** with one catalog for the region, input row order; with each field's own
catalog (:class:`~pyengine.survey.sources.FieldCatalogs`), field order (the
manifest's), then each catalog's row order; otherwise field order, then each field's
tile order. ``id`` numbers the joined catalog.

**Catalog rows that no field holds:** rows inside the area that no field covers, and
rows with unusable positions (wherever the area: where they lie is not known), are kept:
flagged off the image, not scored, with an empty ``field``. Rows outside the area are left
out. The summary counts them.

**Score maps** (grid mode): one per field, on its own grid and WCS, holding the points
the field owns, written beside the catalog as ``<OUT stem>_<field>_scoremap.fits``.

**Resume:** fields whose catalog exists are done and are not scanned again. The field
that was running resumes from its journal. The outputs of a finished survey are the
same whatever was interrupted. ``OUT.fields/survey.json`` records what the survey scan
started with: the fields (and the area, and the source's options), each field's band
files and, with per-field catalogs, its catalog by content
(:func:`pyengine.hashing.file_identity`). A resume whose fields, files or options differ
is refused in one line naming the field, so that a finished field of other data is
never joined.

**Detections and per-field catalogs** (measured positions: an object in an overlap is
in each field's list at that field's position) keep, in each field, the positions
within ``MATCH_MARGIN`` (2") of being owned; after the join, rows of different fields
within ``MATCH_RADIUS`` (1") are one object and keep one field's rows
(:mod:`pyengine.survey.reconcile`). A detection (a catalog row) only one field made
near a boundary (the owner has a chip gap there, say) is kept.

A survey's catalogs must give RA/Dec, and theirs are used where they also have pixel
columns: pixels mean nothing across fields.

Thread safety: one scan at a time per Engine (see :class:`pyengine.scan.engine.Engine`).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.survey.geometry import SurveyGeometry
from pyengine.survey.manifest import Survey
from pyengine.survey.sources import (
    FIELD_CATALOGS,
    INPUT_ROW,
    MEASURED,
    OwnedSource,
    field_source,
    source_kind,
)

__all__ = ["FIELD_ORDER", "FIELD_ROW", "MATCH_MARGIN", "MATCH_RADIUS", "SurveySummary",
           "finish", "parse_shard", "parts_folder", "scan_survey"]

#: Detections: kept this close (arcsec) to being owned, then matched within this radius.
MATCH_MARGIN, MATCH_RADIUS = 2.0, 1.0


@dataclass
class SurveySummary:
    """What a survey scan did: per field (id -> the field's ScanSummary dict, or
    "done earlier"), the fields left out, positions and candidates in the catalog."""

    fields: dict = field(default_factory=dict)
    skipped_fields: list = field(default_factory=list)
    positions: int = 0
    candidates: int = 0
    off_image: int = 0
    outside_area: int = 0
    seconds: float = 0.0
    out: str = ""
    scoremaps: dict = field(default_factory=dict)
    merged_duplicates: int = 0

    def line(self) -> str:
        return (f"survey: {len(self.fields)} field(s) scanned"
                + (f" ({len(self.skipped_fields)} outside the area, not read)"
                   if self.skipped_fields else "")
                + f", {self.positions:,} positions, {self.candidates:,} candidates"
                + (f", {self.off_image:,} in no field" if self.off_image else "")
                + (f", {self.outside_area:,} catalog rows outside the area"
                   if self.outside_area else "")
                + (f", {self.merged_duplicates:,} rows merged (objects two fields measured)"
                   if self.merged_duplicates else "")
                + f" in {self.seconds:.1f} s -> {self.out}")


def parts_folder(out) -> Path:
    """Where a survey scan writing ``out`` keeps its per-field catalogs."""
    out = Path(out)
    return out.with_name(out.name + ".fields")


def _part_name(field_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", field_id) + ".fits"


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0 <= I < N) -> (I, N); one line otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard {text!r} is not accepted; accepted: I/N with 0 <= I < N, "
                          "e.g. 0/16 (Slurm: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    return int(m.group(1)), int(m.group(2))


def scan_survey(engine, survey: Survey, out, *, make_source: Callable, cone=None, regions=None,
                resume: bool = False, overwrite: bool = False, stop=None,
                progress: Callable[[dict], None] | None = None,
                shard: tuple[int, int] | None = None, client=None,
                engine_config: dict | None = None) -> SurveySummary:
    """Scan every field of ``survey`` touching the area into one catalog ``out``.

    ``make_source()`` returns a new, unbound position source (catalog, grid, detection)
    for one field; a :class:`~pyengine.survey.sources.FieldCatalogs` makes each field's
    from its own catalog. ``cone`` / ``regions``: the area (None: everything).  ``shard``
    (I, N): only the touched fields at positions p with p % N == I, written to ``out``
    as a shard file for :func:`pyengine.survey.merge.merge_shards`.  ``client`` (a
    ``dask.distributed.Client``): the fields run as tasks on its workers, each worker
    making one Engine from ``engine_config`` (``Engine``'s arguments) and keeping it for
    all its fields (:mod:`pyengine.survey.dask`); ``engine`` may then be None."""
    from pyengine.atomic import publish
    from pyengine.output.catalog import write_catalog

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not (overwrite or resume):
        raise ConfigError(f"--out {out}: the file exists; add --overwrite to replace it")
    geo = SurveyGeometry(survey)
    touched = geo.fields_touching(cone, regions)
    parts = parts_folder(out)
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    identity = _identity(geo, touched, make_source, cone, regions)
    _check_started_with(parts, identity, resume)
    summary = SurveySummary(out=str(out))
    summary.skipped_fields = [f.id for k, f in enumerate(geo.survey.fields) if k not in touched]
    mine = touched if shard is None else [k for p, k in enumerate(touched)
                                          if p % shard[1] == shard[0]]
    kind = source_kind(make_source)
    todo = []
    for k in mine:
        fld = geo.survey.fields[k]
        if (parts / _part_name(fld.id)).exists():
            summary.fields[fld.id] = "done earlier"
        else:
            todo.append(k)
    if client is not None:
        from pyengine.survey.dask import run_fields

        done = run_fields(client, scan_field, engine_config or {}, geo, todo, parts,
                          make_source, cone, regions, touched[0], progress)
    else:
        done = (scan_field(engine, geo, k, parts, make_source, cone, regions,
                           report_unowned=k == touched[0], stop=stop, progress=progress)
                for k in todo)
    for k, got in done:
        summary.fields[geo.survey.fields[k].id] = got
        summary.outside_area += got.get("outside_area", 0)  # the reporting fields'
    table = _join(engine, geo, mine, parts, kind)
    if not table.colnames:  # a shard with no field (more shards than fields)
        table["id"] = np.zeros(0, np.int64)
    table.meta["SURVEY"] = str(Path(survey.manifest).resolve()) if survey.manifest else ""
    table.meta["NFIELDS"] = len(touched)
    if shard is None:
        table, summary.merged_duplicates = finish(table, kind, geo)
    else:
        table.meta.update(SHARD=f"{shard[0]}/{shard[1]}", SURVEYID=_identity_hash(identity),
                          SRCKIND=kind)
    summary.off_image = int(np.sum(np.asarray(table["tile"]) < 0)) if len(table) and \
        "tile" in table.colnames else 0
    write_catalog(table, out)
    # grid mode: each field's score map (on its own grid and WCS) beside the catalog
    for k in mine:
        fid = geo.survey.fields[k].id
        scoremap = parts / (_part_name(fid)[: -len(".fits")] + "_scoremap.fits")
        if scoremap.exists():
            target = out.with_name(f"{out.stem}_{_part_name(fid)[:-5]}_scoremap.fits")
            publish([(scoremap, target)])
            summary.scoremaps[fid] = str(target)
    shutil.rmtree(parts, ignore_errors=True)
    summary.positions = len(table)
    summary.candidates = (int(np.sum(np.asarray(table["is_candidate"], bool)))
                          if "is_candidate" in table.colnames else 0)
    summary.seconds = time.perf_counter() - t0
    return summary


def finish(table, kind, geo):
    """The survey's catalog from stacked field catalogs (one process's or all shards'):
    ordered (one region catalog: input rows; else field order, then each field's order),
    measured positions (detections, per-field catalogs) reconciled, ``id`` numbered, the
    ordering columns dropped; also the number of rows merged."""
    merged = 0
    if len(table):
        key = np.asarray(table[INPUT_ROW]) if kind == "catalog" and INPUT_ROW in \
            table.colnames else None
        order = np.argsort(key, kind="stable") if key is not None else \
            np.lexsort((np.asarray(table[FIELD_ROW]), np.asarray(table[FIELD_ORDER])))
        table = table[order]
    if kind in MEASURED and len(table):
        from pyengine.survey.reconcile import reconcile

        keep = reconcile(np.asarray(table["ra"]), np.asarray(table["dec"]),
                         np.asarray(table[FIELD_ORDER]), geo, radius=MATCH_RADIUS,
                         margin=MATCH_MARGIN)
        merged = int(np.sum(~keep))
        table = table[keep]
    for name in (INPUT_ROW, FIELD_ORDER, FIELD_ROW):
        if name in table.colnames:
            table.remove_column(name)
    table["id"] = np.arange(1, len(table) + 1, dtype=np.int64)
    return table, merged


def _identity_hash(identity: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _identity(geo, touched, make_source, cone, regions) -> dict:
    """What a resumed survey scan must share with the run it continues."""
    from pyengine.hashing import file_identity
    from pyengine.io.fitsfile import parse_spec

    kind = source_kind(make_source)
    catalogs = {}
    for k in touched if kind == FIELD_CATALOGS else ():  # checked: one line naming the field
        make_source.check(geo.survey.fields[k], geo.frames[k].wcs)
        catalogs[geo.survey.fields[k].id] = make_source.identity(geo.survey.fields[k])
    source = field_source(make_source, geo.survey.fields[touched[0]])
    options = {k: v for k, v in vars(source).items()
               if not k.startswith("_") and isinstance(v, str | int | float | bool | None)}
    if isinstance(getattr(source, "spec", None), str):  # a catalog: its content too
        options["catalog_file"] = file_identity(parse_spec(source.spec)[0])
    fields = {}
    for k in touched:
        f = geo.survey.fields[k]
        fields[f.id] = [{"spec": spec, **file_identity(parse_spec(spec)[0])}
                        for spec in f.images]
    return {"bands": list(geo.survey.bands), "fields": fields, "source": kind,
            "options": options,
            "cone": None if cone is None else [cone.ra, cone.dec, cone.radius],
            "regions": [str(r) for r in regions or ()], **({"catalogs": catalogs} if catalogs
                                                          else {})}


def _check_started_with(parts: Path, identity: dict, resume: bool) -> None:
    import json

    from pyengine.atomic import atomic_write_text
    from pyengine.errors import ResumeError

    record = parts / "survey.json"
    if resume and record.exists():
        before = json.loads(record.read_text())
        for fid, files in identity["fields"].items():
            was = before.get("fields", {}).get(fid)
            if was is not None and [(f["size"], f["sha256_sampled"]) for f in was] != \
                    [(f["size"], f["sha256_sampled"]) for f in files]:
                raise ResumeError(f"--resume: field {fid!r}: its band files changed since the "
                                  f"scan started ({', '.join(f['spec'] for f in files)}); "
                                  "scan again without --resume")
        for fid, now in identity.get("catalogs", {}).items():
            was = before.get("catalogs", {}).get(fid)
            if was is not None and (was["size"], was["sha256_sampled"]) != \
                    (now["size"], now["sha256_sampled"]):
                raise ResumeError(f"--resume: field {fid!r}: its catalog {now['spec']} changed "
                                  "since the scan started; scan again without --resume")
        for key in ("bands", "source", "options", "cone", "regions"):
            if before.get(key) != identity[key]:
                raise ResumeError(f"--resume: the survey scan started with {key} "
                                  f"{before.get(key)!r}, now {identity[key]!r}; give the same "
                                  "options, or scan again without --resume")
        if sorted(before.get("fields", {})) != sorted(identity["fields"]):
            raise ResumeError("--resume: the survey's fields differ from those the scan "
                              f"started with ({', '.join(sorted(before.get('fields', {})))});"
                              " scan again without --resume")
        return
    atomic_write_text(record, json.dumps(identity, indent=1, sort_keys=True) + "\n")


#: Columns that carry a row's place through shards to the joined catalog (then dropped).
FIELD_ORDER, FIELD_ROW = "survey_field_order", "survey_field_row"


def scan_field(engine, geo, k, parts, make_source, cone, regions, *, report_unowned: bool,
               stop=None, progress=None) -> tuple[int, dict]:
    """One field's share of the survey, scanned into ``parts/<field>.fits`` (atomically,
    with its own tile journal): (k, the field's ScanSummary dict plus ``outside_area``).
    A field whose catalog exists is done; one with a journal resumes from it, so running
    a field twice (a retried task) changes nothing."""
    from pyengine.scan.run import run_scan

    fld = geo.survey.fields[k]
    part = parts / _part_name(fld.id)
    if part.exists():
        return k, {"done": "earlier"}
    journal = part.with_name(part.name + ".journal")
    inner, kind = field_source(make_source, fld), source_kind(make_source)
    # the first field (each field, of its own catalog) also reports the catalog rows that
    # no field holds; measured positions keep a margin, reconciled after the join
    source = OwnedSource(inner, geo, k, cone, regions,
                         report_unowned=report_unowned or kind == FIELD_CATALOGS,
                         margin=MATCH_MARGIN if kind in MEASURED else 0.0)
    mosaic = fld.open(geo.survey.bands)
    try:
        got = run_scan(engine, mosaic, source, part, resume=journal.exists(), stop=stop,
                       progress=progress, overwrite=True)
    finally:
        mosaic.close()
    return k, {**got.to_dict(), "outside_area": source.outside_area}


def _join(engine, geo, fields, parts, kind):
    """The field catalogs of ``fields`` stacked, with the ``field`` column and the
    columns that order them (``finish`` sorts by them and drops them)."""
    from astropy.table import Table, vstack

    from pyengine.output.fits_table import writer_keyword

    tables = []
    width = max(1, *(len(f.id) for f in geo.survey.fields))
    for k in fields:
        fld = geo.survey.fields[k]
        t = Table.read(parts / _part_name(fld.id), mask_invalid=False)
        if "field" in t.colnames:  # the input catalog's own
            t.rename_column("field", "in_field")
        t["field"] = np.where(np.asarray(t["tile"]) < 0, "", fld.id).astype(f"<U{width}")
        t[FIELD_ORDER] = np.full(len(t), k, np.int64)
        t[FIELD_ROW] = np.arange(len(t), dtype=np.int64)
        tables.append(t)
    meta = dict(tables[0].meta) if tables else {}
    table = vstack(tables, metadata_conflicts="silent") if tables else Table()
    table.meta.clear()
    # the field catalog's own metadata, less what its FITS writer put there itself
    table.meta.update({k: v for k, v in meta.items() if not writer_keyword(k)})
    return table
