"""``pyengine scan``: score every source of a field and write the catalog.

Progress goes to stderr (a one-line bar when stderr is a terminal), the closing
summary to stdout; ``--log-json`` writes one JSON object per line to stdout
instead (a start event, one per tile, then the summary) for pipelines.  SIGINT or SIGTERM lets
the batch in flight finish, keeps completed tiles in the journal, prints how
to resume and exits 130; a second signal exits at once (the journal is
always consistent).

On ``--resume`` the start event counts the whole scan (``tiles_total``) and splits it
into ``tiles_resumed`` and ``tiles_todo``; journal entries the resume set aside
(damaged, or not this scan's) are printed as ``Warning: ...`` lines on
stderr before any tile is scanned, even with ``--quiet`` or ``--log-json``.  A
``--threshold`` other than the journalled one is accepted (candidates are decided
when the catalog is assembled) and the start line says so.  A journal or output
write that fails after tiles were journalled (a full disk) is one ``Error:`` line
giving the exact command to resume.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import time

import click

from pyengine.bands import BANDS_HELP, parse_band_list
from pyengine.defaults import (
    DEFAULT_APERTURE,
    DEFAULT_CORE,
    DEFAULT_DETECT_BAND,
    DEFAULT_DETECT_THRESHOLD,
    DEFAULT_MAX_NAN,
    DEFAULT_MIN_AREA,
)
from pyengine.scan.int8 import MIN_AGREEMENT

__all__ = ["scan"]

EXIT_INTERRUPTED = 130


class _Progress:
    """A one-line progress display on a terminal, or JSON lines, or nothing."""

    def __init__(self, *, quiet: bool, log_json: bool):
        self.tty = sys.stderr.isatty() and not quiet and not log_json
        self.log_json = log_json
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, event: dict) -> None:
        if self.log_json and event["event"] in ("start", "tile"):
            click.echo(json.dumps(event, sort_keys=True))
        if event["event"] == "start":
            # Set-aside journal entries are data warnings: shown even with --quiet/--log-json.
            for note in event["journal_rejected"]:
                click.echo(f"Warning: {note}", err=True)
            if not self.quiet and not self.log_json:
                todo = (f"{event['tiles_todo']} of {event['tiles_total']} tiles to scan, "
                        f"{event['tiles_resumed']} done before" if event["tiles_resumed"]
                        else f"{event['tiles_total']} tiles to scan")
                threshold = ""
                if event["threshold_before"] is not None:
                    threshold = (f"; threshold {event['threshold']:g} (was "
                                 f"{event['threshold_before']:g}: candidates of every tile, "
                                 "resumed ones too, use the new threshold)")
                members = ""
                if event.get("members", 1) > 1:
                    members = (f"; an ensemble of {event['members']} models, threshold "
                               f"{event['threshold']:g} ({event['threshold_rule']})")
                click.echo(f"pyengine scan: {event['width']} x {event['height']} px, bands "
                           f"{', '.join(event['bands'])}; {event['source']}; runner "
                           f"{event['runner']} {event['precision']}, batch "
                           f"{event['batch_size']}{members}; {todo}{threshold}", err=True)
            return
        if not self.tty:
            return
        now = time.monotonic()
        if event["event"] == "batch" and now - self.last < 0.2:
            return
        self.last = now
        total = event["positions_total"]
        pos = f"{event['positions_done']:,}" + (f"/{total:,}" if total else "")
        eta = event["eta_s"]
        eta_text = "" if eta is None else f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        line = (f"tiles {event['tiles_done']}/{event['tiles_total']}  cutouts {pos}  "
                f"{event['rate']:,.0f}/s  candidates {event['candidates']:,}{eta_text}")
        click.echo("\r" + line.ljust(79), nl=False, err=True)

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


def _each_member(model, fn):
    """``fn`` of the model file (None: the demo model), or of each member of an ensemble
    (a list), in order."""
    if isinstance(model, list):
        return [fn(m) for m in model]
    return fn(model)


def _open_quietly(engine) -> None:
    """Load the engine's runner ahead of the scan (see ``scan``)."""
    try:
        engine.open()
    except Exception:  # the scan's own activation raises it again, in the main thread
        return


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """SIGINT/SIGTERM set the returned event (the batch in flight finishes); a second one
    quits at once.  Returns (event, the handlers replaced, to put back)."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(f"\n{signal.Signals(signum).name}: finishing the batch in flight "
                   "(again to quit now)...", err=True)

    return stop, {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _resume_command() -> str:
    argv = ["pyengine", *sys.argv[1:]]
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(argv)


def _prevalence_note(spec, catalog) -> None:
    """For a calibrated model: the prevalence of clusters these positions' scores imply
    (Saerens et al. 2002, pyengine.models.operating), and how to threshold at it."""
    cal = (spec.metrics or {}).get("calibration")
    if not cal or catalog is None or spec.num_classes != 2:
        return
    import numpy as np

    from pyengine.io.catalog import read_catalog
    from pyengine.models.operating import estimate_prevalence

    table = read_catalog(str(catalog))
    scores = np.asarray(table["score"], np.float64) if "score" in table.colnames else []
    if len(scores) < 50:
        return
    est = estimate_prevalence(scores, float(cal["prevalence"]))
    click.echo(f"note: these {len(scores)} positions' calibrated scores imply a cluster "
               f"prevalence of {est:.4f} (EM of Saerens et al. 2002; the calibration field's: "
               f"{cal['prevalence']:.4f}); a threshold for that prevalence: add --prevalence "
               f"{est:.4g} --resume", err=True)


def _prevalence_threshold(model, threshold, prevalence, target_purity, quiet):
    """The threshold for --target-purity at --prevalence, from the model file's rates."""
    from pathlib import Path

    from pyengine.errors import ConfigError
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec
    from pyengine.models.operating import threshold_for_spec

    if threshold is not None:
        raise ConfigError("give --threshold or --prevalence, not both (--prevalence chooses "
                          "the threshold)")
    path = Path(model) if model is not None else DEMO_MODEL
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"--prevalence: {path} is not a pyengine model file (.safetensors); "
                          "choose the threshold from its model file and give --threshold")
    chosen = threshold_for_spec(read_spec(path)[0], prevalence, target_purity)
    if not quiet:
        click.echo(f"threshold {chosen['value']:.4f} for prevalence {chosen['prevalence']:g}: "
                   f"expected purity {chosen['purity']:.3f}, recall {chosen['recall']:.3f} "
                   f"({chosen['rule'].replace('_', ' ')}, target {chosen['target']:g})", err=True)
    return chosen["value"]


@click.command()
@click.argument("bands", nargs=-1, required=True, metavar="BAND_FITS...")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Catalog to write; format from the suffix: .fits, .ecsv, .parquet or .csv.")
@click.option("--catalog", type=click.Path(dir_okay=False),
              help="Classify these positions: FITS tables and FITS_LDAC (by content, any "
                   "name: .cat, .ldac), SExtractor ASCII, ECSV, CSV, Parquet; RA/Dec deg or x/y "
                   "pixels (both present: RA/Dec). A survey: one catalog for the whole region "
                   "[each field's own, when its manifest has a catalog column].")
@click.option("--grid", type=int, metavar="STRIDE",
              help="Classify every STRIDE pixels and write a score map.")
@click.option("--model", type=click.Path(dir_okay=False), multiple=True,
              help="Model file (.safetensors), exported .onnx or TensorRT .engine "
                   "[default: the shipped demo model]. Repeat it for an ensemble, scanned in "
                   "one pass (pyengine train --members N writes STEM.m0.safetensors ...): "
                   "mean p_<class> and score, the modal class, class_agreement, score_std; "
                   "threshold: the members' mean unless --threshold.")
@click.option("--class-columns/--no-class-columns", default=None,
              help="p_<class> probability columns and the predicted class [default: for "
                   "models of more than two classes and for ensembles].")
@click.option("--runner", default="auto", show_default=True,
              help="auto, onnxruntime, torch or tensorrt.")
@click.option("--precision", default=None, help="fp32, tf32, fp16, bf16 or int8 (runner-dependent; "
              "fp32 on a GPU is IEEE, tf32 asks for TensorFloat-32).  int8 with a model file "
              "on ONNX Runtime calibrates on the scan's own cutouts the first time, refuses a "
              f"graph whose decisions agree with fp32 on under {100 * MIN_AGREEMENT:g} % of "
              "held-out cutouts, and caches it for the next scan of the same inputs.")
@click.option("--batch-size", type=int, default=None, help="Cutouts per batch [runner's choice].")
@click.option("--threads", type=int, default=None, help="CPU threads [all].")
@click.option("--threshold", type=float, default=None,
              help="Candidate threshold on the score [the model's].")
@click.option("--prevalence", type=float, default=None,
              help="Share of clusters expected among this scan's positions: the threshold is "
                   "the one reaching --target-purity at it, from the calibrated model's rates "
                   "(pyengine calibrate). The scan's end note estimates it from the scores.")
@click.option("--target-purity", type=float, default=None,
              help="With --prevalence: the purity aimed for [the model's calibration target].")
@click.option("--group-radius", type=float, default=None,
              help="Detection mode: candidates within this many arcsec of each other (chains "
                   "of them) are one object, the highest-scoring one the candidate, the others "
                   "flagged FRAGMENT; 0: no grouping [2.0].")
@click.option("--regions", type=click.Path(dir_okay=False),
              help="Also write the candidates as DS9 regions (.reg).")
@click.option("--scoremap", type=click.Path(dir_okay=False),
              help="Score map path in grid mode [OUT stem + _scoremap.fits].")
@click.option("--resume", is_flag=True, help="Finish an interrupted scan of the same inputs.")
@click.option("--overwrite", is_flag=True,
              help="Replace outputs that exist (else they are refused; inputs never are).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--log-json", is_flag=True,
              help="JSON lines on stdout: a start event, one per tile, then a summary.")
@click.option("--bands", "band_names", default=None, help=BANDS_HELP)
@click.option("--ra-col", default=None, help="Catalog RA column (degrees).")
@click.option("--dec-col", default=None, help="Catalog Dec column (degrees).")
@click.option("--x-col", default=None,
              help="Catalog x column (0-based pixels; SExtractor's X_IMAGE, XWIN_IMAGE, ... "
                   "are 1-based and converted); chooses pixels where RA/Dec exist too.")
@click.option("--y-col", default=None, help="Catalog y column (as --x-col).")
@click.option("--mag-col", default=None, help="Catalog magnitude column for --mag-limit.")
@click.option("--mag-limit", type=float, default=None,
              help="Keep sources with magnitude <= this (catalog column, or detection "
                   "aperture magnitude).")
@click.option("--mag-band", default=None,
              help="Detection: band of the aperture magnitudes [detection band, or the last].")
@click.option("--zero-point", type=float, default=None,
              help="Detection: magnitude zero point [MAGZPT/PHOTZP/... header key].")
@click.option("--aperture", type=float, default=DEFAULT_APERTURE, show_default=True,
              help="Detection: aperture radius for magnitudes, pixels.")
@click.option("--detect-threshold", type=float, default=DEFAULT_DETECT_THRESHOLD, show_default=True,
              help="Detection threshold in sigma above the background.")
@click.option("--min-area", type=int, default=DEFAULT_MIN_AREA, show_default=True,
              help="Minimum connected pixels of a detection.")
@click.option("--detect-band", default=DEFAULT_DETECT_BAND, show_default=True,
              help="Band to detect on, or 'sum' (noise-weighted sum of all bands).")
@click.option("--tile-size", type=int, default=DEFAULT_CORE, show_default=True,
              help="Tile core size in pixels (the unit of work and of resume).")
@click.option("--max-nan", type=float, default=DEFAULT_MAX_NAN, show_default=True,
              help="Flag cutouts (BLANK, never candidates) where a band has more than this "
                   "share of blank/off-image pixels, or no data at all.")
@click.option("--within", default=None, metavar="RA,DEC,RADIUS",
              help="Survey: only positions within RADIUS deg of RA,DEC (deg); fields that "
                   "do not touch the circle are not read.")
@click.option("--region", "sky_region", default=None, type=click.Path(dir_okay=False),
              help="Survey: only positions inside this DS9 sky region file.")
@click.option("--shard", default=None, metavar="I/N",
              help="Survey: scan only share I of N (fields at positions p % N == I) into a "
                   "shard output; join the N outputs with pyengine merge.")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS",
              help="Survey: run the fields on the Dask scheduler at ADDRESS, or on local:N "
                   "worker processes (pip install 'pyengine[dask]').")
@click.option("--allow-pixel-scale-mismatch", "allow_scale", is_flag=True,
              help="Scan images whose pixel scale differs from the model's by more than 5 % "
                   "(refused otherwise), with a warning.")
def scan(bands, out, catalog, grid, model, class_columns, runner, precision, batch_size,
         threads, threshold, prevalence, target_purity, group_radius,
         regions, scoremap, resume, overwrite, quiet, log_json, band_names, ra_col, dec_col, x_col, y_col,
         mag_col, mag_limit, mag_band, zero_point, aperture, detect_threshold, min_area,
         detect_band, tile_size, max_nan, within, sky_region, shard, dask_address, allow_scale):
    """Scan band images BAND_FITS... (one per model band, e.g. g.fits i.fits), or a survey
    manifest (survey.ecsv: many fields, one catalog with a field column), for star-cluster
    candidates.  Sources: --catalog, --grid, or detection (default)."""
    from pyengine.errors import ConfigError, ScanOutputError
    from pyengine.io.mosaic import Mosaic
    from pyengine.survey.manifest import is_manifest, read_manifest

    # --model given once: that file; repeated: an ensemble's member files; not given: demo
    model = None if not model else model[0] if len(model) == 1 else list(model)
    if catalog is not None and grid is not None:
        raise ConfigError("--catalog and --grid are exclusive; give one source of positions "
                          "(or neither, to detect sources)")
    if scoremap is not None and grid is None:
        raise ConfigError("--scoremap needs --grid STRIDE (a score map samples a grid)")
    if prevalence is not None:
        threshold = _prevalence_threshold(model, threshold, prevalence, target_purity, quiet)
    elif target_purity is not None:
        raise ConfigError("--target-purity needs --prevalence (the purity a threshold reaches "
                          "depends on the share of clusters among the positions)")
    # a manifest with a catalog column, scanned without --catalog or --grid: each field's
    # positions are the rows of its own catalog
    own_catalogs = (catalog is None and grid is None and len(bands) == 1
                    and is_manifest(bands[0]) and read_manifest(bands[0]).has_catalogs)
    catalog_opts = {"ra_col": ra_col, "dec_col": dec_col, "x_col": x_col, "y_col": y_col,
                    "mag_col": mag_col}
    if catalog is None and not own_catalogs and any(v is not None for v in catalog_opts.values()):
        used = [f"--{k.replace('_', '-')}" for k, v in catalog_opts.items() if v is not None]
        raise ConfigError(f"{', '.join(used)} apply to --catalog, which was not given")
    detect_opts = {"mag_band": mag_band, "zero_point": zero_point}
    if (catalog is not None or grid is not None or own_catalogs) and any(
            v is not None for v in detect_opts.values()):
        used = [f"--{k.replace('_', '-')}" for k, v in detect_opts.items() if v is not None]
        raise ConfigError(f"{', '.join(used)} apply to detection (no --catalog or --grid, "
                          "and no catalog column in the manifest)")
    if grid is not None and mag_limit is not None:
        raise ConfigError("--mag-limit does not apply to --grid (grid points have no "
                          "magnitudes)")
    from pyengine.io.inputguard import install_sigbus_handler
    from pyengine.scan.engine import Engine, capped_threads
    from pyengine.scan.inputs import check_catalog, check_model_file
    from pyengine.scan.results import ScanInterrupted
    from pyengine.scan.run import output_paths, scan_inputs
    from pyengine.sources.catalog import CatalogSource
    from pyengine.sources.detect import DetectSource
    from pyengine.sources.grid import GridSource
    from pyengine.survey.manifest import Survey
    from pyengine.survey.scan import scan_survey
    from pyengine.validate import integer

    # Every input and output is checked before the model or a runtime loads (seconds,
    # hundreds of MB): options, outputs (not an input, not existing unless --overwrite),
    # the model file, the band headers, the catalog's first row.
    if batch_size is not None:
        integer(batch_size, "--batch-size", 1, 65536)
    if threads is not None:
        threads = capped_threads(threads)
    survey_mode = ((len(bands) == 1 and is_manifest(bands[0])) or within or sky_region or shard
                   or dask_address)
    if survey_mode:
        # a survey's work in progress is its parts folder (OUT.fields), not OUT.journal
        from pyengine.errors import ResumeError
        from pyengine.survey.scan import parts_folder

        parts = parts_folder(out)
        if resume and not parts.is_dir():
            raise ResumeError(f"nothing to resume at {parts}; run without --resume")
        output_paths(out, grid=False, inputs=scan_inputs(bands, catalog, model),
                     overwrite=overwrite or resume)
    else:
        output_paths(out, regions, scoremap, grid=grid is not None,
                     inputs=scan_inputs(bands, catalog, model), overwrite=overwrite,
                     resume=resume)
    if survey_mode:
        _scan_survey(bands, out, catalog=catalog, grid=grid, model=model, runner=runner,
                     precision=precision, batch_size=batch_size, threads=threads,
                     threshold=threshold, group_radius=group_radius, regions=regions,
                     scoremap=scoremap, resume=resume,
                     overwrite=overwrite, quiet=quiet, log_json=log_json,
                     band_names=band_names, catalog_opts=catalog_opts, mag_limit=mag_limit,
                     detect={"threshold": detect_threshold, "min_area": min_area,
                             "band": detect_band, "mag_limit": mag_limit,
                             "mag_band": mag_band, "zero_point": zero_point,
                             "aperture": aperture},
                     tile_size=tile_size, max_nan=max_nan, within=within,
                     sky_region=sky_region, shard=shard, dask_address=dask_address,
                     allow_scale=allow_scale, class_columns=class_columns)
        return
    if any(is_manifest(b) for b in bands):
        raise ConfigError("a survey manifest is scanned alone: pyengine scan survey.ecsv "
                          "--out ... (not with band images)")
    _each_member(model, check_model_file)
    install_sigbus_handler()  # a mapped input shrinking under a read: one line, exit 75
    mosaic = Mosaic.open(list(bands), bands=parse_band_list(band_names))
    try:  # the pixel-scale guard, before anything is calibrated, loaded or read
        from pyengine.scan.pixscale import check_mosaic_scale

        _each_member(model, lambda m: check_mosaic_scale(m, mosaic, allow=allow_scale))
    except BaseException:
        mosaic.close()
        raise
    if catalog is not None:
        source = CatalogSource(catalog, mag_limit=mag_limit, **catalog_opts)
        try:
            check_catalog(source, mosaic.wcs)
        except BaseException:
            mosaic.close()
            raise
    elif grid is not None:
        source = GridSource(grid)
    else:
        source = DetectSource(threshold=detect_threshold, min_area=min_area, band=detect_band,
                              mag_limit=mag_limit, mag_band=mag_band, zero_point=zero_point,
                              aperture=aperture)
    try:
        from pyengine.scan.int8 import int8_for_field  # a model file at int8: calibrated here

        model = _each_member(model, lambda m: int8_for_field(m, runner, precision, mosaic,
                                                             source, core=tile_size))
        engine = Engine(model, runner=runner, precision=precision, batch_size=batch_size,
                        threads=threads, threshold=threshold, core=tile_size,
                        group_radius=group_radius,
                        max_nan_fraction=max_nan, class_columns=class_columns)
    except BaseException:
        mosaic.close()
        raise
    stop, signals = _stop_on_signals()
    show = _Progress(quiet=quiet, log_json=log_json)
    # The runner loads (ONNX Runtime builds its session mostly without the GIL) while
    # this thread hashes the model, reads the journal and binds the source: a small
    # scan's fixed cost falls by the overlap.  A failure here is raised again, as a
    # one-line error, by the scan's own activation in this thread.
    opening = threading.Thread(target=_open_quietly, args=(engine,), name="pyengine-open",
                               daemon=True)
    opening.start()
    try:
        try:
            # a one-field survey scanned whole: the survey's own code path, whose one
            # part is the field itself (the catalog, regions, score map and journal of
            # a single-field scan, unchanged)
            summary = scan_survey(engine, Survey.single(list(bands), mosaic.bands), out,
                                  make_source=lambda: source, resume=resume, stop=stop,
                                  progress=show, overwrite=overwrite,
                                  whole={"mosaic": mosaic, "regions": regions,
                                         "scoremap": scoremap, "outputs_probed": True})
        finally:
            opening.join()
            engine.close()
    except ScanInterrupted as exc:
        show.close()
        click.echo(f"Interrupted: {exc}. Resume with:\n  {_resume_command()}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ScanOutputError as exc:
        show.close()
        raise ScanOutputError(exc.reason, exc.journal, exc.done,
                              f"resume with: {_resume_command()}") from None
    except KeyboardInterrupt:
        show.close()
        click.echo(f"Interrupted. Completed tiles are journalled; resume with:\n  "
                   f"{_resume_command()}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        for sig, old in signals.items():
            signal.signal(sig, old)
        mosaic.close()
    show.close()
    if log_json:
        click.echo(json.dumps({"event": "summary", **summary.to_dict()}, sort_keys=True))
    else:
        click.echo(summary.line())
        for kind, path in summary.outputs.items():
            click.echo(f"  {kind}: {path}")
    for line in summary.warnings:  # whole-field problems (scan.assembly.scan_warnings)
        click.echo(f"Warning: {line}", err=True)
    if not quiet and not log_json:
        _prevalence_note(engine.spec, summary.outputs.get("catalog"))


def _scan_survey(bands, out, *, catalog, grid, model, runner, precision, batch_size, threads,
                 group_radius,
                 threshold, regions, scoremap, resume, overwrite, quiet, log_json, band_names,
                 catalog_opts, mag_limit, detect, tile_size, max_nan, within, sky_region,
                 shard, dask_address, allow_scale, class_columns=None):
    """``pyengine scan survey.ecsv ...`` (or band images with --within/--region, a
    one-field survey): :func:`pyengine.survey.scan.scan_survey` with the scan's options."""
    from pyengine.errors import ConfigError, ScanOutputError
    from pyengine.io.fitsfile import parse_spec
    from pyengine.io.inputguard import install_sigbus_handler
    from pyengine.scan.engine import Engine
    from pyengine.scan.inputs import check_model_file
    from pyengine.scan.results import ScanInterrupted
    from pyengine.scan.run import refuse_inputs
    from pyengine.sources.catalog import CatalogSource
    from pyengine.sources.detect import DetectSource
    from pyengine.sources.grid import GridSource
    from pyengine.survey.geometry import SurveyGeometry, parse_within, read_sky_region
    from pyengine.survey.manifest import Survey, is_manifest, read_manifest
    from pyengine.survey.scan import parse_shard, scan_survey
    from pyengine.survey.sources import FieldCatalogs

    if regions is not None or scoremap is not None:
        raise ConfigError("--regions and --scoremap are not written by survey scans yet (grid "
                          "mode writes one score map per field beside the catalog)")
    share = parse_shard(shard) if shard else None
    cone = parse_within(within) if within else None
    sky = read_sky_region(sky_region) if sky_region else None
    if len(bands) == 1 and is_manifest(bands[0]):
        if band_names is not None:
            raise ConfigError("--bands applies to band images; a survey manifest names its "
                              "bands in its path_<band> columns")
        survey = read_manifest(bands[0])
    else:
        survey = Survey.single(list(bands), parse_band_list(band_names))
    geo = SurveyGeometry(survey)
    touched = geo.fields_touching(cone, sky)  # none touched: one line before the model loads
    refuse_inputs({"catalog": out}, {f"field {f.id}'s catalog": parse_spec(f.catalog)[0]
                                     for f in survey.fields if f.catalog})

    def make_source():
        if catalog is not None:
            return CatalogSource(catalog, mag_limit=mag_limit, **catalog_opts)
        if grid is not None:
            return GridSource(grid)
        return DetectSource(**detect)

    if catalog is None and grid is None and survey.has_catalogs:
        make_source = FieldCatalogs(manifest=survey.manifest, mag_limit=mag_limit,
                                    **catalog_opts)
        for k in touched:  # each catalog's first row, before the model loads
            make_source.check(survey.fields[k], geo.frames[k].wcs)
        if not quiet and not log_json:
            click.echo("sources: each field's own catalog (manifest column catalog)", err=True)

    _each_member(model, check_model_file)
    from pyengine.scan.pixscale import check_field_scales

    _each_member(model, lambda m: check_field_scales(m, geo, touched, allow=allow_scale))
    install_sigbus_handler()
    from pyengine.scan.int8 import int8_for_survey  # once, for every shard and worker

    model = _each_member(model, lambda m: int8_for_survey(m, runner, precision, geo,
                                                          make_source, cone, sky,
                                                          core=tile_size))
    config = {"model": model, "runner": runner, "precision": precision,
              "batch_size": batch_size, "threads": threads, "threshold": threshold,
              "group_radius": group_radius,
              "core": tile_size, "max_nan_fraction": max_nan, "class_columns": class_columns}
    client = cluster = None
    if dask_address:
        from pyengine.survey.dask import open_client

        client, cluster = open_client(dask_address)
        engine = None  # each worker makes its own

        started = time.monotonic()

        def show(event):
            if event.get("event") != "part":
                return
            if log_json:
                click.echo(json.dumps(event, sort_keys=True))
            elif not quiet:
                first, last = event["tiles"]
                elapsed = time.monotonic() - started
                eta = elapsed / event["done"] * (event["total"] - event["done"])
                click.echo(f"field {event['field']} tiles {first}-{last} done "
                           f"({event['done']}/{event['total']} tasks, {elapsed:.0f} s, "
                           f"ETA {int(eta) // 60}:{int(eta) % 60:02d})", err=True)
        show.close = lambda: None
    else:
        engine = Engine(**config)
        show = _Progress(quiet=quiet, log_json=log_json)
    stop, old = _stop_on_signals()
    try:
        summary = scan_survey(engine, geo.survey, out, make_source=make_source, cone=cone,
                              regions=sky, resume=resume, overwrite=overwrite, stop=stop,
                              progress=show, shard=share, client=client, engine_config=config,
                              allow_pixel_scale_mismatch=allow_scale)
    except (ScanInterrupted, KeyboardInterrupt):
        show.close()
        click.echo(f"Interrupted: finished fields and tiles are kept. Resume with:\n  "
                   f"{_resume_command()}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ScanOutputError as exc:  # a full disk under a part's journal, or the join
        show.close()
        raise ScanOutputError(exc.reason, exc.journal, exc.done,
                              f"resume with: {_resume_command()}") from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if engine is not None:
            engine.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    show.close()
    if log_json:
        import dataclasses

        click.echo(json.dumps({"event": "summary", **dataclasses.asdict(summary)},
                              sort_keys=True, default=str))
        return
    click.echo(summary.line())
    for fid, path in summary.scoremaps.items():
        click.echo(f"  score map {fid}: {path}")
