"""Injection-recovery on a field or a survey: :func:`inject`.

For every field (one pair of band images, or each field of a survey manifest, the
clusters shared among them by how many each can hold per round):

1. open the field (bands in the model's order), find each band's zero point (the header's
   :data:`~pyengine.sources.detect.ZERO_POINT_KEYS`, else ``zero_point``), effective gain
   (``GAIN``) and saturation level (``SATURATE``), its noise and its PSF
   (:mod:`pyengine.injection.psf`, or ``psf_fwhm``); every field is checked so before the
   model loads;
2. plan the rounds (:mod:`pyengine.injection.clusters`): as many clusters per round as the
   grid holds (or ``per_round``), as many rounds as ``n`` needs;
3. detect the field as it is near every site (:func:`~pyengine.injection.recovery.baseline`);
4. per round: draw and render the clusters, scan the :class:`InjectedMosaic` with the
   scan's engine and detection options, restricted to detections near the clusters
   (:class:`~pyengine.injection.recovery.NearSource`), and match
   (:func:`~pyengine.injection.recovery.match`).

Everything random comes from one ``numpy`` generator seeded by ``seed`` and the field's
position in the survey, so a run is reproducible.  The images on disk are only read.

Thread safety: one call runs on the calling thread (the engine's pipeline uses its own
threads); an Engine passed in must not scan elsewhere meanwhile.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pyengine.defaults import (
    DEFAULT_APERTURE,
    DEFAULT_CORE,
    DEFAULT_DETECT_BAND,
    DEFAULT_DETECT_THRESHOLD,
    DEFAULT_MAX_NAN,
    DEFAULT_MIN_AREA,
)
from pyengine.errors import ConfigError
from pyengine.injection import clusters as C
from pyengine.injection.recovery import Matches, NearSource, baseline, match

__all__ = ["MAX_RH_PX", "inject"]

#: Largest half-light radius (px) drawn: its King profile fits the synth's largest stamp
#: at concentrations down to 0.3.
MAX_RH_PX = 64.0
_BLANK_TRIES = 20   # rounds in a row without a usable site before giving up


@dataclass
class _Field:
    """One field, ready for its rounds."""

    id: str
    index: int
    mosaic: object
    images: tuple
    shape: tuple
    pixel_scale: float
    mag_index: int
    zero_points: list
    zero_from: list
    gains: list
    colours: dict = field(default_factory=dict)   # band index -> given colour
    psfs: list = field(default_factory=list)      # PSFMeasurement per band
    noise: list = field(default_factory=list)
    spacing: float = 0.0
    capacity: int = 0
    n: int = 0


def _header_number(header, key):
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _per_band(value, bands, what: str):
    """A value per band from None, a number (every band) or a {band: number} mapping."""
    from pyengine.bands import band_index

    if value is None or isinstance(value, numbers.Real):
        return [value] * len(bands)
    out = [None] * len(bands)
    for name, v in dict(value).items():
        k = band_index(name, bands)
        if k is None:
            raise ConfigError(f"{what} for band {name!r}: not a band of the images; accepted: "
                              f"{', '.join(bands)}")
        out[k] = float(v)
    return out


def _zero_points(mosaic, given):
    from pyengine.sources.detect import ZERO_POINT_KEYS

    values, sources = [], []
    for b, header in enumerate(mosaic.headers):
        if given[b] is not None:
            values.append(float(given[b]))
            sources.append("given")
            continue
        for key in ZERO_POINT_KEYS:
            if key in header:
                v = header[key]
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    raise ConfigError(f"{mosaic.paths[b]}: header zero point {key} = {v!r} is "
                                      "not a finite number; fix the header or pass --zero-point")
                values.append(float(v))
                sources.append(key)
                break
        else:
            raise ConfigError(
                f"{mosaic.paths[b]}: no photometric zero point (none of "
                f"{', '.join(ZERO_POINT_KEYS)} in its header); injected magnitudes need one: "
                f"pass --zero-point ZP (every band) or BAND=ZP,...")
    return values, sources


def _noise(mosaic) -> list[float]:
    """Each band's pixel noise: robust spread of neighbour differences in the central
    window (at most 512 px), / sqrt 2."""
    from pyengine.stats import robust_sigma

    ny, nx = mosaic.shape
    h, w = min(512, ny), min(512, nx)
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    window = mosaic.read(y0, y0 + h, x0, x0 + w).astype(np.float64)
    out = []
    for b in range(mosaic.nband):
        d = np.diff(window[b], axis=1)
        d = d[np.isfinite(d)]
        out.append(float(robust_sigma(d) / math.sqrt(2.0)) if d.size >= 16 else 1.0)
    return [v if v > 0 else 1.0 for v in out]


def _prepare(field_, k: int, bands, engine, s) -> _Field:
    """Open and measure one field (step 1 of the module docstring)."""
    from pyengine.bands import band_index
    from pyengine.injection.psf import given_psf, measure_psf
    from pyengine.scan.engine import match_bands
    from pyengine.survey.manifest import pixel_scale_arcsec

    opened = field_.open(bands)
    try:
        mosaic = match_bands(opened, engine.spec.bands)
    except BaseException:
        opened.close()
        raise
    if mosaic is not opened:
        opened.close()
    try:
        mag_index = band_index(s["mag_band"], mosaic.bands)
        if mag_index is None:
            raise ConfigError(f"--mag-band {s['mag_band']!r} is not a band of "
                              f"{', '.join(mosaic.paths)}; accepted: {', '.join(mosaic.bands)}")
        colours = {}
        for name, value in s["colours"].items():
            b = band_index(name, mosaic.bands)
            if b is None or b == mag_index:
                raise ConfigError(f"--colour {name}-{mosaic.bands[mag_index]}={value:g}: "
                                  f"{name!r} is not another band of the images; accepted: "
                                  + ", ".join(x for i, x in enumerate(mosaic.bands)
                                              if i != mag_index))
            colours[b] = float(value)
        missing = C.needs_colour(mosaic.bands, mag_index, colours)
        if missing:
            m = mosaic.bands[mag_index]
            raise ConfigError(f"band(s) {', '.join(missing)} need a colour against the magnitude "
                              f"band {m}: pass --colour {missing[0]}-{m}=VALUE")
        zps, zp_from = _zero_points(mosaic, _per_band(s["zero_point"], mosaic.bands,
                                                      "--zero-point"))
        scale = pixel_scale_arcsec(mosaic.wcs)
        f = _Field(field_.id, k, mosaic, tuple(mosaic.paths), tuple(mosaic.shape), scale,
                   mag_index, zps, zp_from,
                   [_header_number(h, "GAIN") for h in mosaic.headers], colours)
        rh_hi_px = s["rh"][1] / scale
        if rh_hi_px > MAX_RH_PX:
            raise ConfigError(f"--rh {s['rh'][0]:g}:{s['rh'][1]:g}: r_h {s['rh'][1]:g}\" is "
                              f"{rh_hi_px:.0f} px at {scale:.3g}\"/px, larger than a cluster the "
                              f"synth can draw ({MAX_RH_PX:g} px = {MAX_RH_PX * scale:.3g}\")")
        match_px = s["match_radius"] / scale
        f.spacing = C.separation(engine.spec.cutout_size, match_px, rh_hi_px)
        f.capacity = C.cells_per_round(f.shape, engine.spec.cutout_size, f.spacing)
        if f.capacity == 0:
            ny, nx = f.shape
            small = C.separation(engine.spec.cutout_size, match_px, 0.0)
            fits = C.cells_per_round(f.shape, engine.spec.cutout_size, small) > 0
            hint = (f"r_h up to about {_largest_rh(f, engine, match_px):.2g}\" fits"
                    if fits else "no cluster fits: use larger images")
            raise ConfigError(
                f"{f.images[0]}: the image ({nx} x {ny} px) is too small for one cluster of "
                f"r_h up to {s['rh'][1]:g}\" (each needs a {C.cell_size(f.spacing):.0f} px "
                f"cell clear of the {engine.spec.cutout_size // 2 + 1} px edge); {hint}")
        fwhm = _per_band(s["psf_fwhm"], mosaic.bands, "--psf-fwhm")
        for b in range(mosaic.nband):
            if fwhm[b] is not None:
                f.psfs.append(given_psf(mosaic.bands[b], fwhm[b], s["psf_beta"] or 3.0, scale))
            else:
                f.psfs.append(measure_psf(mosaic, b, beta=s["psf_beta"],
                                          saturate=_header_number(mosaic.headers[b], "SATURATE")))
        f.noise = _noise(mosaic)
        return f
    except BaseException:
        mosaic.close()
        raise


def _largest_rh(f: _Field, engine, match_px: float) -> float:
    """Largest r_h (arcsec) whose clusters fit one cell of the field."""
    lo, hi = 0.0, MAX_RH_PX
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        sp = C.separation(engine.spec.cutout_size, match_px, mid)
        lo, hi = (mid, hi) if C.cells_per_round(f.shape, engine.spec.cutout_size, sp) else (lo, mid)
    return lo * f.pixel_scale


def _share(n: int, capacities: list[int]) -> list[int]:
    """n split over fields in proportion to their capacity (largest remainders)."""
    total = sum(capacities)
    raw = [n * c / total for c in capacities]
    out = [math.floor(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: out[k] - raw[k])[:n - sum(out)]:
        out[k] += 1
    return out


def _blank_test(mosaic, half: int):
    """blank(x, y): whether the cutout around (x, y) holds a blank pixel in any band."""
    from pyengine.coords import centre_pixel

    def blank(x, y):
        cx, cy = int(centre_pixel(x)), int(centre_pixel(y))
        w = mosaic.read(cy - half, cy + half, cx - half, cx + half)
        return not np.isfinite(w).all()
    return blank


def _run_field(f: _Field, engine, s, make_detect, progress) -> tuple[C.Injections, Matches]:
    """Rounds of one field (steps 2-4 of the module docstring)."""
    from pyengine.io.tiles import TilePlan
    from pyengine.synth.field import EPSILON

    rng = np.random.default_rng([s["seed"], f.index])
    cutout = engine.spec.cutout_size
    per_round = min(f.capacity, s["per_round"] or f.capacity)
    blank = _blank_test(f.mosaic, cutout // 2)
    xs, ys, rounds = [], [], []
    r, empty = 0, 0
    while sum(len(v) for v in xs) < f.n:
        x, y = C.site_grid(f.shape, cutout, f.spacing, rng, blank)
        take = min(per_round, f.n - sum(len(v) for v in xs), len(x))
        if take == 0:
            empty += 1
            if empty >= _BLANK_TRIES:
                raise ConfigError(f"{f.images[0]}: no site for a cluster clear of blank pixels "
                                  f"in {_BLANK_TRIES} tries; the image is mostly blank")
            continue
        pick = rng.permutation(len(x))[:take]
        xs.append(x[pick])
        ys.append(y[pick])
        rounds.append(np.full(take, r))
        r += 1
    x, y, rnd = np.concatenate(xs), np.concatenate(ys), np.concatenate(rounds)
    inj = C.draw_injections(rng, x, y, rnd, mag=s["mag"], rh=s["rh"], pixel_scale=f.pixel_scale,
                            bands=f.mosaic.bands, mag_index=f.mag_index, colours=f.colours,
                            concentration=s["concentration"])
    plan = TilePlan.for_cutout(f.shape, cutout=cutout, core=engine.core)
    # Each cluster's match radius: the one asked for, or its r_h when larger (recovery).
    radius = np.maximum(s["match_radius"] / f.pixel_scale, inj.rh_px)
    base = baseline(f.mosaic, make_detect, plan, inj.x, inj.y, radius + 2.0)
    psfs = [p.psf() for p in f.psfs]
    thresholds = [EPSILON * v for v in f.noise]
    out = Matches(len(inj))
    n_rounds = int(rnd.max()) + 1
    for r in range(n_rounds):
        t0 = time.perf_counter()
        index = np.flatnonzero(rnd == r)
        part = inj.take(index)
        stamps = C.render_round(part, psfs, thresholds, f.zero_points, f.gains,
                                mag_index=f.mag_index, bands=f.mosaic.bands, rng=rng,
                                members=s["members"])
        injected = C.InjectedMosaic(f.mosaic, stamps)
        source = NearSource(make_detect(), part.x, part.y, radius[index])
        catalog = engine.scan(injected, source)
        match(part.x, part.y, part.mag, catalog, base, radius[index], out, index)
        if progress is not None:
            progress({"event": "round", "field": f.id, "round": r + 1, "rounds": n_rounds,
                      "clusters": int(index.size), "detected": int(out.detected[index].sum()),
                      "recovered": int(out.recovered[index].sum()),
                      "seconds": time.perf_counter() - t0})
    return inj, out


def inject(images_or_survey, *, n: int = 500, mag=(16.0, 23.0), rh=(1.0, 6.0), seed: int = 0,
           per_round: int | None = None, mag_band: str = "i", colours=None,
           concentration=None, zero_point=None, psf_fwhm=None, psf_beta: float | None = None,
           match_radius: float = 1.0, members: bool = True, bands=None, model=None,
           runner: str = "auto", precision: str | None = None, batch_size: int | None = None,
           threads: int | None = None, threshold: float | None = None,
           tile_size: int = DEFAULT_CORE, max_nan: float = DEFAULT_MAX_NAN,
           detect_threshold: float = DEFAULT_DETECT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA,
           detect_band: str = DEFAULT_DETECT_BAND, mag_limit: float | None = None,
           aperture: float = DEFAULT_APERTURE, engine=None, output_dir=None,
           overwrite: bool = False, progress=None) -> dict:
    """Injection-recovery of artificial King clusters on band images or a survey.

    ``images_or_survey``: band image paths (one field; ``bands`` names them as ``scan
    --bands`` does), a :class:`~pyengine.survey.Survey` or a manifest's path.  ``n``
    clusters with magnitudes uniform in ``mag`` (in ``mag_band``), half-light radii
    log-uniform in ``rh`` (arcsec), ``concentration`` (LO, HI) or the synth's, ``colours``
    ({band: band - mag_band}) or the synth's, ``per_round`` at most per round (default:
    as many as the field's grid holds).  ``zero_point`` and ``psf_fwhm`` (arcsec):
    a number for every band or {band: value}; ``psf_beta`` holds the Moffat index.  A
    detection within ``match_radius`` arcsec matches.  Detection and classification
    take the scan's options (or ``engine``, an open :class:`pyengine.Engine`, whose
    model, runner and threshold are used).  Returns the report
    (:func:`pyengine.injection.report.build_report`); with ``output_dir`` also writes it
    (``inject.json``, ``injections.ecsv``, PNG figures; an existing ``inject.json`` is
    refused, before any work, unless ``overwrite``).  ``progress(event)`` is called with a
    dict after every round.
    """
    from pyengine.injection.report import build_report, write_outputs
    from pyengine.scan.engine import Engine
    from pyengine.sources.detect import DetectSource
    from pyengine.survey.manifest import Survey, as_survey
    from pyengine.validate import integer, number

    integer(n, "--n", 1, 10_000_000, accepted="a number of clusters >= 1 is needed")
    integer(seed, "--seed", 0, 2**63 - 1)
    if per_round is not None:
        integer(per_round, "--per-round", 1, 1_000_000, accepted="a number of clusters >= 1")
    mag = tuple(float(v) for v in mag)
    rh = tuple(float(v) for v in rh)
    C.check_ranges(mag, rh, concentration)
    number(match_radius, "--match-radius", 0.0, lo_open=True,
           accepted="a radius in arcsec > 0 is needed, e.g. 1")
    if psf_beta is not None:
        number(psf_beta, "--psf-beta", 1.1, 20.0, accepted="a Moffat index from 1.1 to 20")
    for b, v in (psf_fwhm.items() if isinstance(psf_fwhm, dict) else [("", psf_fwhm)]):
        if v is not None:
            number(v, f"--psf-fwhm{' ' + b if b else ''}", 0.0, 60.0, lo_open=True,
                   accepted="a FWHM in arcsec > 0 is needed, e.g. 0.8")
    if precision == "int8":
        raise ConfigError("--precision int8 is not available for injection (its calibration "
                          "is made for one scan's cutouts); use fp32 or fp16")
    if output_dir is not None and not overwrite and (Path(output_dir) / "inject.json").exists():
        from pyengine.errors import OutputError

        raise OutputError(f"{Path(output_dir) / 'inject.json'} exists; choose another "
                          "--output-dir or pass --overwrite")
    survey = as_survey(images_or_survey)
    if survey is None:
        images = ([images_or_survey] if isinstance(images_or_survey, str) else
                  list(images_or_survey))
        survey = Survey.single(images, bands)
    settings = {"n": int(n), "mag": mag, "rh": rh, "seed": int(seed), "per_round": per_round,
                "mag_band": mag_band, "colours": dict(colours or {}),
                "concentration": None if concentration is None else tuple(concentration),
                "zero_point": zero_point, "psf_fwhm": psf_fwhm, "psf_beta": psf_beta,
                "match_radius": float(match_radius), "members": bool(members)}
    own = engine is None
    if own:
        engine = Engine(model, runner=runner, precision=precision, batch_size=batch_size,
                        threads=threads, threshold=threshold, core=tile_size,
                        max_nan_fraction=max_nan)
    fields: list[_Field] = []
    try:
        for k, fld in enumerate(survey.fields):
            fields.append(_prepare(fld, k, survey.bands, engine, settings))
        for f, share in zip(fields, _share(int(n), [f.capacity for f in fields]), strict=True):
            f.n = share
        detect = {"threshold": detect_threshold, "min_area": min_area, "band": detect_band,
                  "mag_limit": mag_limit, "aperture": aperture}
        t0 = time.perf_counter()
        results = []
        for f in fields:
            if f.n == 0:
                continue

            def make_detect(f=f):
                return DetectSource(mag_band=f.mosaic.bands[f.mag_index],
                                    zero_point=f.zero_points[f.mag_index], **detect)

            results.append((f, *_run_field(f, engine, settings, make_detect, progress)))
        report = build_report(results, settings, engine, fields, detect,
                              seconds=time.perf_counter() - t0)
    finally:
        for f in fields:
            f.mosaic.close()
        if own:
            engine.close()
    if output_dir is not None:
        write_outputs(report, output_dir, overwrite=True)
    return report
