"""Scanning a survey: every field that touches the area, each with the positions it owns,
joined into one catalog with a ``field`` column.

**Units and parts.** The work is the survey's units (field, tile) (:mod:`pyengine.survey.
units`), scanned in parts: runs of consecutive tiles of one field. Each part is one
:func:`pyengine.scan.run.run_scan` of the field with its share of the positions
(:class:`pyengine.survey.sources.OwnedSource`: the ownership rule, the area and the
part's tiles), so the field's tile journal, atomic writes and checks apply unchanged.
One process scans each field as one part; a cluster cuts fields into several
(:mod:`pyengine.survey.dask`); ``--shard I/N`` takes a contiguous share of the units.
A part's catalog goes to ``OUT.fields/<field>@<first>-<last>.fits``. Once every unit is
done the parts are joined into ``OUT``, and the folder is removed.

**Order:** with one catalog for the region, input row order; with each field's own
catalog (:class:`~pyengine.survey.sources.FieldCatalogs`), field order (the
manifest's), then each catalog's row order; otherwise field order, then each field's
tile order. ``id`` numbers the joined catalog. Every part of a field runs batches of the
field's one size (:meth:`OwnedSource.run_positions`), so a score does not depend on how
the field was cut: the catalog of a cluster or of merged shards equals the one-process
catalog bit for bit.

**Catalog rows that no field holds:** rows inside the area that no field covers, and
rows with unusable positions (wherever the area: where they lie is not known), are kept:
flagged off the image, not scored, with an empty ``field``. The part holding the
survey's first unit reports them. Rows outside the area are left out. The summary
counts them.

**Score maps** (grid mode): one per field, on its own grid and WCS, holding the points
the field owns, written beside the catalog as ``<OUT stem>_<field>_scoremap.fits``
(combined from its parts' maps, :func:`combine_scoremaps`).

**Resume:** units whose part exists are done and are not scanned again, whatever
grouping made the part. A part that was running resumes from its journal when the same
run is formed again. The outputs of a finished survey are the same whatever was
interrupted. ``OUT.fields/survey.json`` records what the survey scan started with: the
fields (and the area, the tile size and the source's options), each field's band files
and, with per-field catalogs, its catalog by content
(:func:`pyengine.hashing.file_identity`). A resume whose fields, files or options differ
is refused in one line naming the field, so that a finished part of other data is never
joined.

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

from pyengine.defaults import DEFAULT_CORE
from pyengine.errors import ConfigError, OutputError, ScanOutputError
from pyengine.output.grouping import regroup
from pyengine.scan.pixscale import check_field_scales  # before any part runs
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

__all__ = [
    "FIELD_ORDER",
    "FIELD_ROW",
    "MATCH_MARGIN",
    "MATCH_RADIUS",
    "SurveySummary",
    "combine_scoremaps",
    "finish",
    "iter_tables",
    "parse_shard",
    "parts_folder",
    "scan_part",
    "scan_survey",
    "scan_table",
]

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
                engine_config: dict | None = None, whole: dict | None = None,
                allow_pixel_scale_mismatch: bool = False):
    """Scan every field of ``survey`` touching the area into one catalog ``out``.

    ``make_source()`` returns a new, unbound position source (catalog, grid, detection)
    for one field; a :class:`~pyengine.survey.sources.FieldCatalogs` makes each field's
    from its own catalog. ``cone`` / ``regions``: the area (None: everything).  The work
    is the survey's units (field, tile) (:mod:`pyengine.survey.units`), scanned in parts.
    ``shard`` (I, N): only share I of the units, written to ``out`` as a shard file for
    :func:`pyengine.survey.merge.merge_shards`.  ``client`` (a
    ``dask.distributed.Client``): the parts run as tasks on its workers, each worker
    making one Engine from ``engine_config`` (``Engine``'s arguments) and keeping it for
    all its parts (:mod:`pyengine.survey.dask`); ``engine`` may then be None.

    ``whole`` (``pyengine scan g.fits i.fits``): a one-field survey scanned whole, with no
    area, shard or cluster, is one part, the field itself. Its catalog is ``out``, as a
    single-field scan writes it (no ``field`` column, no ownership to decide, so no
    celestial WCS needed), with its journal ``OUT.journal``, and ``whole``'s options for
    :func:`pyengine.scan.run.run_scan`: ``mosaic`` (the field, opened; else opened here),
    ``regions``, ``scoremap``, ``outputs_probed``. Returns the field's
    :class:`pyengine.scan.results.ScanSummary` then, else a :class:`SurveySummary`. The
    pixel-scale guard (:mod:`pyengine.scan.pixscale`) checks the touched fields first
    (``whole``: the CLI checks its field before the model loads)."""
    from pyengine.output.catalog import write_catalog
    from pyengine.survey import units as U

    if whole is not None:
        if len(survey.fields) != 1 or cone is not None or regions or shard or client:
            raise ConfigError("a survey scanned whole is one field, with no --within, "
                              "--region, --shard or --dask")
        return _scan_whole(engine, survey, out, make_source(), resume=resume,
                           overwrite=overwrite, stop=stop, progress=progress, **whole)
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not (overwrite or resume):
        raise ConfigError(f"--out {out}: the file exists; add --overwrite to replace it")
    geo = SurveyGeometry(survey)
    touched = geo.fields_touching(cone, regions)
    check_field_scales(engine if engine is not None else (engine_config or {}).get("model"),
                       geo, touched, allow=allow_pixel_scale_mismatch, stacklevel=3)
    parts = parts_folder(out)
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    core = engine.core if engine is not None else (engine_config or {}).get("core") \
        or DEFAULT_CORE
    identity = _identity(geo, touched, make_source, cone, regions)
    identity["tile_core"] = int(core)
    identity["model"] = _model_identity(engine, engine_config)
    _check_started_with(parts, identity, resume)
    summary = SurveySummary(out=str(out))
    summary.skipped_fields = [f.id for k, f in enumerate(geo.survey.fields) if k not in touched]
    every = U.unit_list(geo, touched, core)
    mine = U.share(every, shard)
    first_unit = every[0] if every else None  # its part reports the rows no field holds
    done_before = U.done_units(parts, geo, touched)
    todo = U.runs([u for u in mine if u not in done_before])
    kind = source_kind(make_source)
    for k in dict.fromkeys(k for k, _ in mine):
        if all((k, t) in done_before for kk, t in mine if kk == k):
            summary.fields[geo.survey.fields[k].id] = "done earlier"
    if client is not None:
        from pyengine.survey.dask import run_parts

        done = run_parts(client, scan_part, engine_config or {}, geo, todo, parts,
                         make_source, cone, regions, first_unit, progress)
    else:
        done = (scan_part(engine, geo, part, parts, make_source, cone, regions,
                          report_unowned=first_unit in part, stop=stop, progress=progress)
                for part in todo)
    for part, got in done:
        fid = geo.survey.fields[part.field].id
        _add_field_summary(summary.fields, fid, got)
        summary.outside_area += got.get("outside_area", 0)  # the reporting parts'
    files = _part_files(parts, geo, mine)
    table = _join(geo, parts, files)
    if not table.colnames:  # a shard with no unit (more shards than units)
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
    try:
        write_catalog(table, out)
        # grid mode: each field's score map (on its own grid and WCS) beside the catalog
        for fid, maps in _part_scoremaps(parts, geo, files).items():
            target = out.with_name(f"{out.stem}_{U.safe_name(fid)}_scoremap.fits")
            summary.scoremaps[fid] = str(combine_scoremaps(maps, target))
    except (OutputError, OSError) as exc:  # a full disk: the parts stay for --resume
        text = str(exc) if isinstance(exc, OutputError) else f"{out}: cannot write ({exc})"
        raise ScanOutputError(text, parts, len(mine)) from None
    shutil.rmtree(parts, ignore_errors=True)
    summary.positions = len(table)
    summary.candidates = (int(np.sum(np.asarray(table["is_candidate"], bool)))
                          if "is_candidate" in table.colnames else 0)
    summary.seconds = time.perf_counter() - t0
    return summary


def scan_table(engine, survey: Survey, sources=None, *, within=None, regions=None,
               client=None, allow_pixel_scale_mismatch: bool = False):
    """The survey's catalog as an astropy Table (:meth:`pyengine.scan.engine.Engine.scan`
    of a survey): :func:`scan_survey` in a temporary folder, read back. ``sources``: an
    unbound source (default: detection), copied for each part; ``within``: a Cone or
    ``"RA,DEC,RADIUS"``; ``client``: a ``dask.distributed.Client``, whose workers make
    Engines of ``engine``'s settings."""
    import tempfile

    from astropy.table import Table

    make, cone = _template(sources), _area(within)
    config = None
    if client is not None:
        config = engine.config
        if config is None:
            raise ConfigError("client=: the workers make their Engines from this one's "
                              "settings; make it with a runner name, not a Runner object")
    with tempfile.TemporaryDirectory(prefix="pyengine-survey-") as tmp:
        out = Path(tmp) / "survey.fits"
        scan_survey(engine, survey, out, make_source=make, cone=cone, regions=regions,
                    client=client, engine_config=config,
                    allow_pixel_scale_mismatch=allow_pixel_scale_mismatch)
        return _as_text(Table.read(out, mask_invalid=False, memmap=False))


def _template(sources):
    """``make_source`` for a survey from one unbound source (default: detection): a new
    copy for each part."""
    import copy

    from pyengine.sources.detect import DetectSource

    template = sources if sources is not None else DetectSource()
    if template.bound:
        raise ConfigError("a survey's source is given unbound (each part binds its own "
                          "copy to its field)")
    return lambda: copy.deepcopy(template)


def _area(within):
    """``within`` as a Cone (or None): a Cone already, or ``"RA,DEC,RADIUS"``."""
    from pyengine.survey.geometry import parse_within

    return parse_within(within) if isinstance(within, str) else within


def _as_text(table):
    """``table`` with its byte-string columns (FITS strings read back) as text."""
    for name in table.colnames:
        if table[name].dtype.kind == "S":
            table[name] = np.char.decode(np.asarray(table[name]), "utf-8")
    return table


def iter_tables(engine, survey: Survey, sources=None, *, within=None, regions=None,
                allow_pixel_scale_mismatch: bool = False):
    """The survey's catalog field by field (:meth:`pyengine.scan.engine.Engine.iter_scan`
    of a survey): each touched field's rows, with its ``field`` column, as soon as the
    field is scanned, in field order. Catalog rows that no field holds come with the
    first field (empty ``field``). A position kind that is reconciled across boundaries
    (detections, per-field catalogs) is not streamed: the rows of one object can come
    from two fields, so its fields come once every field is done, reconciled."""
    import tempfile

    from pyengine.survey.units import runs, unit_list

    make, cone = _template(sources), _area(within)
    kind = make().kind
    if kind in MEASURED:
        table = scan_table(engine, survey, sources, within=cone, regions=regions,
                           allow_pixel_scale_mismatch=allow_pixel_scale_mismatch)
        fields = np.asarray(table["field"]).astype(str)
        for fid in dict.fromkeys(fields):
            yield table[fields == fid]
        return
    geo = SurveyGeometry(survey)
    touched = geo.fields_touching(cone, regions)
    check_field_scales(engine, geo, touched, allow=allow_pixel_scale_mismatch, stacklevel=3)
    units = unit_list(geo, touched, engine.core)
    with tempfile.TemporaryDirectory(prefix="pyengine-survey-") as tmp:
        parts = Path(tmp)
        for part in runs(units):  # one per field
            scan_part(engine, geo, part, parts, make, cone, regions,
                      report_unowned=units[0] in part)
            table, _ = finish(_join(geo, parts, [part]), kind, geo)
            table.remove_column("id")
            yield _as_text(table)


def _scan_whole(engine, survey, out, source, *, mosaic=None, resume, overwrite, stop, progress,
                **options):
    """A one-field survey's one part, the whole field, written as ``out`` (see
    :func:`scan_survey`'s ``whole``)."""
    from pyengine.scan.run import run_scan

    opened = mosaic is None
    if opened:
        mosaic = survey.fields[0].open(survey.bands)
    try:
        return run_scan(engine, mosaic, source, out, resume=resume, stop=stop,
                        progress=progress, overwrite=overwrite, **options)
    finally:
        if opened:
            mosaic.close()


def _add_field_summary(fields: dict, fid: str, got: dict) -> None:
    """A part's summary added into its field's: counts and seconds summed (not the rate,
    which is no sum), parts counted."""
    have = fields.get(fid)
    if not isinstance(have, dict):
        fields[fid] = have = {"parts": 0}
    have["parts"] += 1
    for key, value in got.items():
        if key != "rate" and isinstance(value, int | float) and not isinstance(value, bool):
            have[key] = have.get(key, 0) + value


def _part_files(parts: Path, geo, units) -> list:
    """The parts (:class:`pyengine.survey.units.Part`) whose files in ``parts`` hold
    ``units``, in unit order."""
    from pyengine.survey.units import done_units

    found = done_units(parts, geo, sorted({k for k, _ in units}))
    missing = [u for u in units if u not in found]
    if missing:
        raise RuntimeError(f"survey scan: unit {missing[0]} has no part in {parts}")  # a bug
    return list(dict.fromkeys(found[u] for u in units))


def _part_scoremaps(parts: Path, geo, files) -> dict[str, list[Path]]:
    """Field id -> the score maps its parts wrote (grid mode), in part order."""
    maps: dict[str, list[Path]] = {}
    for part in files:
        fid = geo.survey.fields[part.field].id
        if part.scoremap(parts, fid).exists():
            maps.setdefault(fid, []).append(part.scoremap(parts, fid))
    return maps


def combine_scoremaps(paths, target) -> Path:
    """One field's score map from its parts' (one grid and WCS, each part scored on its
    own tiles, NaN elsewhere): every scored pixel kept, written atomically to ``target``
    with the first part's header; the parts' files are left as they are."""
    from astropy.io import fits

    from pyengine.io.fitswrite import write_image

    paths = [Path(p) for p in paths]
    with fits.open(paths[0], memmap=False) as first:
        header, data = first[0].header.copy(), np.array(first[0].data, np.float32)
    for path in paths[1:]:
        with fits.open(path, memmap=False) as hdul:
            more = np.asarray(hdul[0].data, np.float32)
        if more.shape != data.shape:
            raise RuntimeError(f"{path}: a score map of {more.shape}, not {data.shape}")  # a bug
        data = np.where(np.isfinite(more), more, data)
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND"):
        header.remove(key, ignore_missing=True)
    return write_image(target, data, header)


def finish(table, kind, geo):
    """The survey's catalog from stacked field catalogs (one process's or all shards'):
    ordered (one region catalog: input rows; else field order, then each field's order),
    measured positions (detections, per-field catalogs) reconciled, ``id`` numbered, the
    ordering columns dropped; also the number of rows merged."""
    merged = 0
    if len(table):
        key = np.asarray(table[INPUT_ROW]) if kind == "catalog" and INPUT_ROW in \
            table.colnames else None
        # per-field catalogs: field order, then each catalog's rows (whatever the parts)
        within = INPUT_ROW if kind == FIELD_CATALOGS else FIELD_ROW
        order = np.argsort(key, kind="stable") if key is not None else \
            np.lexsort((np.asarray(table[within]), np.asarray(table[FIELD_ORDER])))
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
    regroup(table, kind)  # one object, one candidate across parts and fields
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


def _model_identity(engine, config) -> dict:
    """What the parts' scores depend on beyond the inputs: the model (by content, so a
    copy resumes), the runner and precision asked for, the blank-cutout limit. A resume
    with another is refused, so that finished parts of one model are never joined with
    another's."""
    from pyengine.runners.loaders import model_identity

    config = (engine.config if engine is not None else config) or {}
    if engine is not None and engine.config is None:  # a Runner object: what it is
        config = {"runner": engine.runner.name, "precision": engine.runner.precision,
                  "max_nan_fraction": engine.max_nan_fraction}
        sha = engine.model_sha256
    else:
        sha = model_identity(config.get("model"))  # an ensemble's: all its members
    columns = config.get("class_columns")  # the parts' columns (None: the model's default)
    return {"sha256": sha, "runner": config.get("runner", "auto"),
            "precision": config.get("precision"),
            "max_nan_fraction": config.get("max_nan_fraction"),
            **({} if columns is None else {"class_columns": columns})}


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
        labels = {"tile_core": "--tile-size", "model": "the model"}
        for key in ("bands", "source", "options", "cone", "regions", "tile_core", "model"):
            if before.get(key) != identity[key]:
                raise ResumeError(f"--resume: the survey scan started with "
                                  f"{labels.get(key, key)} {before.get(key)!r}, now "
                                  f"{identity[key]!r}; give the same options, or scan again "
                                  "without --resume")
        if sorted(before.get("fields", {})) != sorted(identity["fields"]):
            raise ResumeError("--resume: the survey's fields differ from those the scan "
                              f"started with ({', '.join(sorted(before.get('fields', {})))});"
                              " scan again without --resume")
        return
    atomic_write_text(record, json.dumps(identity, indent=1, sort_keys=True) + "\n")


#: Columns that carry a row's place through shards to the joined catalog (then dropped).
FIELD_ORDER, FIELD_ROW = "survey_field_order", "survey_field_row"


def scan_part(engine, geo, part, parts, make_source, cone, regions, *, report_unowned: bool,
              stop=None, progress=None) -> tuple:
    """One part (:class:`pyengine.survey.units.Part`: tiles of one field) scanned into its
    file in ``parts`` (atomically, with its own tile journal): (part, the part's
    ScanSummary dict plus ``outside_area``).  A part whose file exists is done; one with
    a journal resumes from it, so running a part twice (a retried task) changes nothing."""
    from pyengine.scan.run import run_scan

    fld = geo.survey.fields[part.field]
    path = part.path(parts, fld.id)
    if path.exists():
        return part, {"done": "earlier"}
    journal = path.with_name(path.name + ".journal")
    inner, kind = field_source(make_source, fld), source_kind(make_source)
    # the first unit's part (with per-field catalogs, each field's first part, of its own
    # catalog) also reports the catalog rows that no field holds; measured positions keep
    # a margin, reconciled after the join
    source = OwnedSource(inner, geo, part.field, cone, regions,
                         report_unowned=report_unowned or (kind == FIELD_CATALOGS
                                                           and part.first == 0),
                         margin=MATCH_MARGIN if kind in MEASURED else 0.0,
                         tiles=part.tiles)
    mosaic = fld.open(geo.survey.bands)
    try:
        got = run_scan(engine, mosaic, source, path, resume=journal.exists(), stop=stop,
                       progress=progress, overwrite=True)
    finally:
        mosaic.close()
    return part, {**got.to_dict(), "outside_area": source.outside_area}


def _join(geo, parts: Path, files):
    """The catalogs of the parts ``files`` (in unit order) in the folder ``parts``,
    stacked, with the ``field`` column and the columns that order them (``finish`` sorts
    by them and drops them)."""
    from astropy.table import Table, vstack

    from pyengine.output.fits_table import writer_keyword

    tables = []
    width = max(1, *(len(f.id) for f in geo.survey.fields))
    for part in files:
        fid = geo.survey.fields[part.field].id
        t = Table.read(part.path(parts, fid), mask_invalid=False)
        if "field" in t.colnames:  # the input catalog's own
            t.rename_column("field", "in_field")
        t["field"] = np.where(np.asarray(t["tile"]) < 0, "", fid).astype(f"<U{width}")
        t[FIELD_ORDER] = np.full(len(t), part.field, np.int64)
        # the part's first tile, then the row in the part: each field's rows in the
        # order of its tiles, however the field was cut into parts (and shards)
        t[FIELD_ROW] = (np.int64(part.first) << np.int64(32)) + np.arange(len(t),
                                                                          dtype=np.int64)
        tables.append(t)
    meta = dict(tables[0].meta) if tables else {}
    table = vstack(tables, metadata_conflicts="silent") if tables else Table()
    table.meta.clear()
    # the part catalog's own metadata, less what its FITS writer put there itself
    table.meta.update({k: v for k, v in meta.items() if not writer_keyword(k)})
    return table
