"""``pyengine scan --precision int8`` with a model file: an int8 graph calibrated on the
scan's own cutouts, judged on cutouts held out from the calibration, and cached.

**When.** ``--precision int8`` with a model file (``.safetensors``, or the shipped demo
model) and ONNX Runtime as the runner: ``--runner onnxruntime``, or ``auto`` where auto
picks ONNX Runtime (a machine without a usable GPU runner; :func:`applies`).  An
exported ``.onnx`` is scanned as it is.  Other runners keep their own rules: torch has no
int8, and TensorRT needs the graph ``pyengine export --format tensorrt --precision int8``
makes.

**The sample** (:func:`sample_cutouts`): :data:`CUTOUTS` cutouts of the positions the
scan classifies, drawn deterministically, so the same inputs and options give the same
cutouts on any machine, in any shard and on any run:

- *Fields*: the field scanned, or every field a survey scan touches (``--within``,
  ``--region``), including the fields other shards or Dask workers scan.  Fields are
  visited in a seeded order.  Each of the first :data:`MIN_FIELDS` contributes an equal
  share of the cutouts still missing, so a field short of positions hands its shortfall
  to the next.
- *Tiles*: the scan's own tile plan (``--tile-size``).  In each field, tiles are visited
  in a seeded order.  Each of the first :data:`MIN_TILES` (all of them, where there are
  fewer) contributes an equal share of what the field still lacks, drawn at random
  (seeded) among the tile's positions.
- *Positions*: those of the scan's own source, bound as the scan binds it: catalog rows
  (after ``--mag-limit``), grid points, or detections; in a survey, only the positions
  each field owns in the area (:class:`pyengine.survey.sources.OwnedSource`).
- *Detection*: SEP runs on each visited tile's pixels, exactly as in the scan, but on at
  most :data:`DETECT_TILES` tiles in all.  Detecting a whole mosaic to draw a few hundred
  cutouts would cost as much as the scan itself.  A grid would be cheaper still, but its
  points are mostly sky, and int8's activation ranges must be calibrated on cutouts like
  the scan's, centred on sources, bright ones included.
- Cutouts centred off the image or blank over half their pixels are left out
  (:func:`pyengine.scan.cutouts.usable_cutouts`, as in the export's checks).

The even-numbered cutouts calibrate the graph (ONNX Runtime's static quantisation, the
recipe of ``pyengine export --precision int8``:
:func:`pyengine.runners.onnxrt.calibrate_int8`). The odd-numbered ones are held out to
judge it.  Inputs with fewer than a quarter of :data:`CUTOUTS` usable cutouts are
refused: an agreement measured on a handful of cutouts proves nothing.

**The check.** On the held-out cutouts, the int8 graph and the fp32 graph (the cached fp32
export of the model file, which an fp32 scan runs) must take the same decision at the
model's threshold on at least :data:`MIN_AGREEMENT` (99.5 %) of them.  That is stricter
than ``pyengine export``'s default (99 %), because nobody has read a report before this
graph runs.  The result is one line on stderr.  Below the bar, the scan is refused in one
line (:class:`pyengine.errors.ExportCheckError`), before any output or journal is written.

**The cache.** The graph is cached beside the model file's fp32 export, in ONNX Runtime's
cache (:func:`pyengine.runners.onnxrt.default_cache_dir`: ``$XDG_CACHE_HOME/pyengine/onnx``),
as ``<model SHA-256[:32]>-int8-<key[:24]>.onnx``.  The key (:func:`calibration_key`) is the
SHA-256 of everything that decides the sample and the recipe:

- the model file's SHA-256;
- per field, the band names and the band files' content identities
  (:func:`pyengine.hashing.file_identity`: size and sampled bytes, never path or mtime);
- the source's kind and options, and a catalog's content identity;
- the survey's area (``--within``, ``--region``) and the tile core;
- the sample's count, seed and rules (:data:`SAMPLE_RULES`);
- the pyengine and ONNX Runtime versions.

The sampled positions are a pure function of these inputs, so the key names them through
the inputs.  Computing the positions would mean detecting, which is what the cache
spares.  The entry records its key and what it was judged on in its metadata
(``pyengine_int8_calibration``) and, like every export, carries its graph's checksum.
It is reused only when the key, the model hash, the recipe and the checksum all match
and its recorded agreement meets :data:`MIN_AGREEMENT`.  Otherwise it is made again
and replaced, never run.  The new graph is written under a hidden name beside the entry,
checked, then renamed over it.  A second scan of the same inputs starts at once and says
``reusing cached int8 ...``.

**Surveys.** The process that starts the scan prepares the graph once, before any field
runs.  With ``--dask``, the client passes the graph's path to the workers in the engine
config, so they run it and never calibrate.  The cache must then be on a file system the
workers see (a shared ``$XDG_CACHE_HOME``).  Each ``--shard I/N`` process computes the same
key (the sample does not depend on the shard) and reuses the entry when it exists, so
shards on a shared file system share one entry.  Shards that calibrate apart make
byte-identical graphs on machines of one kind (calibration is deterministic; tested);
another CPU's kernels may round the calibration's activation ranges otherwise, which a
shared entry avoids.  Shards calibrating at the same time each write the whole entry;
the last rename wins.

**Resume.** The scan runs the cached ``.onnx`` as its model.  The resume fingerprint names
that graph (``model_file``: its content identity) and its precision, so a resume with the
same cached graph resumes, and a graph calibrated anew with other bytes is refused, as
any other change of graph is.  The catalog's ``MODEL`` is the graph's path; its
``MODELSHA`` is the model file's hash, as for every export.

**Cost** (2-core AMD EPYC, the demo model, the 1536 px demo field, 512 cutouts): about
11 s once: the sample 1.4 s (SEP on one tile), quantisation and the check 8.5 s, writing
the entry 1 s; plus 4.5 s for the fp32 export when it is not cached yet.  It took 25-30 s
while another job shared the cores.  A reuse costs the hashes of the model file and of the
cached graph.

Importing this module is cheap (``pyengine scan --help`` reads :data:`MIN_AGREEMENT`).

Thread safety: call from one thread; the functions use the ONNX Runtime sessions they
make and write only their own cache entry (atomically).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyengine.errors import ConfigError, ExportCheckError, OutputError

__all__ = ["CALIBRATION_KEY", "CUTOUTS", "DETECT_TILES", "MIN_AGREEMENT", "MIN_FIELDS",
           "MIN_TILES", "SAMPLE_RULES", "SEED", "SampleField", "applies", "calibration_key",
           "int8_for_field", "int8_for_survey", "prepare_int8", "sample_cutouts"]

#: Least share of held-out cutouts on which the int8 graph must take the fp32 graph's
#: decision at the model's threshold (``pyengine export --min-agreement`` defaults to 0.99).
MIN_AGREEMENT = 0.995
#: Cutouts drawn from the scan's inputs: half calibrate the graph, half are held out.
CUTOUTS = 512
#: The seed of every draw of the sample.
SEED = 1
#: The sample is spread over at least this many fields and, in each, tiles (where present).
MIN_FIELDS, MIN_TILES = 8, 8
#: Detection: at most this many tiles are read and detected on for the sample.
DETECT_TILES = 8
#: Names the sampling rules in the cache key; change it when the rules change.
SAMPLE_RULES = "fields-then-tiles/1"
#: The metadata key of a cached graph's calibration record (JSON).
CALIBRATION_KEY = "pyengine_int8_calibration"

if TYPE_CHECKING:
    import numpy as np

_KINDS = {"catalog": "catalog positions", "grid": "grid points", "detect": "detections"}


@dataclass(frozen=True)
class SampleField:
    """One field a sample is drawn from: its band images (``path[ext]`` specs) named
    ``bands``, its (ny, nx), and ``source()``, a new unbound source of the positions the
    scan classifies in it."""

    name: str
    images: tuple[str, ...]
    bands: tuple[str, ...]
    shape: tuple[int, int]
    source: Callable


def applies(model, runner: str, precision: str | None) -> bool:
    """Whether a scan calibrates its own int8 graph (see the module docstring)."""
    from pyengine.runners.base import ENGINE_SUFFIXES
    from pyengine.runners.select import chosen_runner

    if precision != "int8" or runner not in ("auto", "onnxruntime"):
        return False
    if model is not None and Path(model).suffix.lower() in (".onnx", *ENGINE_SUFFIXES):
        return False
    return chosen_runner(runner, model, precision) == "onnxruntime"


def int8_for_field(model, runner: str, precision: str | None, mosaic, source, *, core: int,
                   report: Callable[[str], None] | None = None):
    """``model``, or where :func:`applies`, the int8 graph (path) calibrated on the field
    ``mosaic`` (open) with ``source`` (unbound; bound here and again by the scan)."""
    if not applies(model, runner, precision):
        return model
    names = _file_names(mosaic.paths)
    fields = [SampleField(names, tuple(mosaic.paths), tuple(mosaic.bands), tuple(mosaic.shape),
                          lambda: source)]
    return str(prepare_int8(model, fields, source, names, core=core, report=report))


def _file_names(specs) -> str:
    """Band images as messages name them: their file names (``g.fits, i.fits``)."""
    from pyengine.io.fitsfile import parse_spec

    return ", ".join(Path(parse_spec(p)[0]).name for p in specs)


def int8_for_survey(model, runner: str, precision: str | None, geo, make_source, cone=None,
                    regions=None, *, core: int, report: Callable[[str], None] | None = None):
    """``model``, or where :func:`applies`, the int8 graph (path) calibrated on every field
    of ``geo`` (a SurveyGeometry) that the area touches, shards and workers alike."""
    if not applies(model, runner, precision):
        return model
    from pyengine.survey.sources import OwnedSource, field_source

    touched = geo.fields_touching(cone, regions)
    fields = []
    for k in touched:
        fld = geo.survey.fields[k]
        fields.append(SampleField(
            fld.id, tuple(fld.images), tuple(geo.survey.bands), tuple(geo.frames[k].shape),
            lambda k=k, fld=fld: OwnedSource(field_source(make_source, fld), geo, k, cone,
                                             regions)))
    inputs = (f"{_count(len(fields), 'field')} of {Path(geo.survey.manifest).name}"
              if geo.survey.manifest else _file_names(fields[0].images))  # images, an area
    area = {"cone": None if cone is None else [cone.ra, cone.dec, cone.radius],
            "regions": [str(r) for r in regions or ()]}
    # the source's options key the cache (per-field catalogs: the first field's, and the
    # sample drawn from every field's own)
    return str(prepare_int8(model, fields, field_source(make_source, geo.survey.fields[
        touched[0]]), inputs, core=core, area=area, report=report))


def prepare_int8(model, fields, source, inputs: str, *, core: int, area=None, cache_dir=None,
                 report: Callable[[str], None] | None = None) -> Path:
    """The cached int8 graph of ``model`` (a model file, None: the demo model) for a scan
    of ``fields`` (:class:`SampleField`) with ``source`` (unbound: its options name the
    entry), reused or calibrated now (module docstring); ``inputs`` names the fields in
    messages.  ``report`` gets the one line said (default: stderr)."""
    from pyengine.hashing import file_sha256
    from pyengine.runners.loaders import cached_export, model_file_export
    from pyengine.runners.onnxrt import default_cache_dir

    report = report or (lambda line: print(line, file=sys.stderr))
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    model_path, spec, _, _, fp32 = model_file_export(model, "fp32", cache_dir, ("fp32",))
    sha = file_sha256(model_path)
    key = calibration_key(sha, fields, source, core=core, area=area)
    entry = cache_dir / f"{sha[:32]}-int8-{key[:24]}.onnx"
    record = _reusable(entry, sha, key)
    if record is not None:
        report(f"int8: reusing cached int8 graph {entry} (calibrated on {record['calibrated']} "
               f"cutouts of {record['inputs']}; decisions agreed with fp32 on "
               f"{_percent(record['agreement'])} % of {record['held_out']} held-out cutouts)")
        return entry
    t0 = time.perf_counter()
    cutouts, where = sample_cutouts(fields, spec, core)
    described = f"{inputs} ({where})"
    if len(cutouts) < CUTOUTS // 4:
        raise ConfigError(
            f"--precision int8: only {len(cutouts)} usable cutouts in {described}, and at "
            f"least {CUTOUTS // 4} are needed to calibrate and check an int8 graph; scan with "
            f"--precision fp32, or make the graph with pyengine export {model_path} "
            "--precision int8 --images ... (a larger field) and give the .onnx")
    try:
        cached_export(model_path, fp32, "fp32")  # the fp32 graph a scan runs: the reference
        check = _calibrated(fp32, entry, cutouts, spec, {"key": key, "inputs": described})
    except OSError as exc:  # the cache folder: unwritable, full
        raise OutputError(f"--precision int8: cannot write the int8 graph in {cache_dir} "
                          f"({exc.strerror or exc}); set XDG_CACHE_HOME to a writable folder, "
                          "or scan with --precision fp32") from None
    if not check.agreement >= MIN_AGREEMENT:
        raise ExportCheckError(
            f"--precision int8: calibrated on {check.calibrated} cutouts of {described}, "
            f"the int8 graph takes the fp32 decision (threshold {spec.threshold:g}) on "
            f"{100 * check.agreement:.2f} % of {check.held_out} held-out cutouts, below the "
            f"{100 * MIN_AGREEMENT:g} % a scan requires; scan with --precision fp32, or "
            f"make the graph with pyengine export {model_path} --precision int8 --images "
            "... --cutouts 4096 (more calibration cutouts; --min-agreement sets its bar) "
            "and give the .onnx")
    report(f"int8: calibrated on {check.calibrated} cutouts of {described}, decisions agree "
           f"with fp32 on {_percent(check.agreement)} % of {check.held_out} held-out cutouts "
           f"(threshold {spec.threshold:g}, {100 * MIN_AGREEMENT:g} % required; "
           f"{time.perf_counter() - t0:.0f} s); cached at {entry}")
    return entry


def _calibrated(fp32: Path, entry: Path, cutouts, spec, record: dict):
    """:func:`~pyengine.runners.onnxrt.calibrate_int8` of ``fp32`` on ``cutouts``; the graph
    renamed onto ``entry``, with ``record`` and the check in its metadata, only when it
    passes :data:`MIN_AGREEMENT` (written under a hidden name beside it until then)."""
    from pyengine.atomic import temporary_beside
    from pyengine.export.onnx import finish_onnx, onnx_metadata
    from pyengine.runners.onnxrt import calibrate_int8

    unchecked = temporary_beside(entry, suffix=".onnx")  # ONNX Runtime wants .onnx
    try:
        check = calibrate_int8(fp32, unchecked, cutouts, spec.threshold)
        if check.agreement >= MIN_AGREEMENT:
            record = {**record, "calibrated": check.calibrated, "held_out": check.held_out,
                      "agreement": check.agreement,
                      "largest_difference": check.largest_difference,
                      "threshold": spec.threshold, "min_agreement": MIN_AGREEMENT}
            meta = onnx_metadata(unchecked)
            finish_onnx(unchecked, entry, meta["pyengine"], meta["pyengine_model_sha256"],
                        "int8", extra={CALIBRATION_KEY: json.dumps(record, sort_keys=True)})
    finally:
        unchecked.unlink(missing_ok=True)
    return check


def _percent(share: float) -> str:
    """A share as a percentage for messages: one decimal, two where one would read 100."""
    text = f"{100 * share:.1f}"
    return f"{100 * share:.2f}" if text == "100.0" and share < 1 else text


def _reusable(entry: Path, model_sha: str, key: str) -> dict | None:
    """The calibration record of the cache ``entry`` when it may run for ``key``: made
    from this model file, for ONNX Runtime, for this key, intact, and passing
    :data:`MIN_AGREEMENT`; None otherwise (missing, damaged, foreign: made again)."""
    from pyengine.errors import ModelFileError
    from pyengine.export.onnx import graph_damage, onnx_metadata
    from pyengine.export.quantize import int8_target

    if not entry.exists():
        return None
    try:
        meta = onnx_metadata(entry)
        record = json.loads(meta.get(CALIBRATION_KEY) or "null")
    except (ModelFileError, ValueError):
        return None
    if not (isinstance(record, dict) and record.get("key") == key
            and meta.get("pyengine_model_sha256") == model_sha
            and int8_target(meta) == "onnxruntime"
            and isinstance(record.get("agreement"), float)
            and record["agreement"] >= MIN_AGREEMENT):
        return None
    try:
        return record if graph_damage(entry, meta) is None else None
    except ModelFileError:
        return None


def calibration_key(model_sha: str, fields, source, *, core: int, area=None) -> str:
    """The SHA-256 naming a scan's int8 graph: the model, the fields' band files by
    content, the source's kind and options, the area, the tile core, the sample's rules
    and the versions (module docstring).  The same for every shard of a survey."""
    import onnxruntime

    from pyengine import __version__
    from pyengine.hashing import file_identity
    from pyengine.io.fitsfile import parse_spec

    def identity(spec):
        path, ext = parse_spec(spec)
        return {"ext": ext, **file_identity(path)}

    options = {k: v for k, v in sorted(vars(source).items())
               if not k.startswith("_") and k != "spec"
               and isinstance(v, str | int | float | bool | None)}
    if isinstance(getattr(source, "spec", None), str):  # a catalog: by its content
        options["catalog"] = identity(source.spec)
    described = {
        "model_sha256": model_sha,
        "fields": [[{"band": b, **identity(s)} for b, s in zip(f.bands, f.images, strict=True)]
                   for f in fields],
        "source": source.kind, "options": options, "area": area, "core": int(core),
        "sample": {"cutouts": CUTOUTS, "seed": SEED, "min_fields": MIN_FIELDS,
                   "min_tiles": MIN_TILES, "detect_tiles": DETECT_TILES, "rules": SAMPLE_RULES},
        "target": "onnxruntime", "pyengine": __version__, "onnxruntime": onnxruntime.__version__,
    }
    import hashlib

    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _share(missing: int, slots: int) -> int:
    """An equal share of ``missing`` over ``slots`` still to come (all of it past them)."""
    return math.ceil(missing / max(1, slots))


def sample_cutouts(fields, spec, core: int) -> tuple[np.ndarray, str]:
    """(up to :data:`CUTOUTS` cutouts (n, nband, S, S) in the model's band order, what they
    were drawn from) for a scan of ``fields`` with tile core ``core``, by the rules of the
    module docstring; the same inputs give the same cutouts."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    parts: list[np.ndarray] = []
    have, used_fields, used_tiles, reads = 0, 0, 0, 0
    kind = ""
    for k in rng.permutation(len(fields)):
        if have >= CUTOUTS or reads >= DETECT_TILES:
            break
        quota = _share(CUTOUTS - have, min(len(fields), MIN_FIELDS) - used_fields)
        got, tiles, read, kind = _from_field(fields[int(k)], spec, core, quota, rng,
                                             DETECT_TILES - reads)
        reads += read
        if got:
            parts.extend(got)
            have += sum(len(p) for p in got)
            used_fields, used_tiles = used_fields + 1, used_tiles + tiles
    shape = (0, spec.nband, spec.cutout_size, spec.cutout_size)
    cutouts = np.concatenate(parts)[:CUTOUTS] if parts else np.zeros(shape, np.float32)
    where = (f"{_KINDS.get(kind, kind or 'positions')} in {_count(used_tiles, 'tile')}"
             + (f" of {_count(used_fields, 'field')}" if len(fields) > 1 else ""))
    return np.ascontiguousarray(cutouts), where


def _from_field(field: SampleField, spec, core: int, quota: int, rng, reads_left: int):
    """(cutout arrays, tiles that gave some, tiles read, source kind) of one field's share
    ``quota``, reading at most ``reads_left`` tiles' pixels (sources that need them)."""
    from pyengine.io.mosaic import Mosaic
    from pyengine.io.tiles import TilePlan
    from pyengine.scan.cutouts import usable_cutouts
    from pyengine.scan.engine import match_bands

    plan = TilePlan.for_cutout(field.shape, cutout=spec.cutout_size, core=core)
    got: list[np.ndarray] = []
    have = used = reads = 0
    source = field.source()
    with Mosaic.open(list(field.images), bands=list(field.bands)) as opened:
        mosaic = match_bands(opened, spec.bands)
        try:
            source.bind(mosaic, plan)
            for t in rng.permutation(len(plan)):
                tile = plan[int(t)]
                if have >= quota or (source.needs_pixels and reads >= reads_left):
                    break
                if source.count(tile) == 0:
                    continue
                pixels = None
                if source.needs_pixels:
                    pixels, reads = mosaic.read(*tile.window), reads + 1
                pos = source.positions(tile, pixels)
                share = _share(quota - have, min(len(plan), MIN_TILES) - used)
                # an eighth more drawn, for those that turn out unusable (blank, edge)
                pick = rng.permutation(len(pos))[:share + share // 8 + 1]
                cut = usable_cutouts(mosaic, pos.x[pick], pos.y[pick], spec.cutout_size)[:share]
                if len(cut):
                    got.append(cut)
                    have, used = have + len(cut), used + 1
        finally:
            if mosaic is not opened:
                mosaic.close()
    return got, used, reads, source.kind
