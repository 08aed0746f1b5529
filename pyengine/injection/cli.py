"""``pyengine inject``: injection-recovery of artificial clusters on the user's own images.

Importing this module is cheap (click only); the work loads when the command runs.  Bad
values raise :class:`pyengine.errors.ConfigError`, which the ``pyengine`` group prints as
one ``Error: ...`` line (exit 1).  Progress (one line per round) goes to stderr, the
summary to stdout.

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import click

from pyengine.bands import BANDS_HELP
from pyengine.defaults import (
    DEFAULT_APERTURE,
    DEFAULT_CORE,
    DEFAULT_DETECT_BAND,
    DEFAULT_DETECT_THRESHOLD,
    DEFAULT_MAX_NAN,
    DEFAULT_MIN_AREA,
)
from pyengine.errors import ConfigError

__all__ = ["inject", "parse_per_band", "parse_range"]


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``LO:HI`` as two floats (the order is checked by the caller)."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a range; give LO:HI, e.g. "
                          f"{'16:23' if option == '--mag' else '1:6'}") from None


def parse_per_band(text: str | None, option: str):
    """``VALUE`` (every band) or ``BAND=VALUE,BAND=VALUE`` as a float or a dict."""
    if text is None:
        return None
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for item in text.split(","):
            if item.strip():
                band, value = item.split("=")
                out[band.strip()] = float(value)
        return out
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not accepted; give a number for every band "
                          "or BAND=VALUE,... (e.g. g=0.8,i=0.7)") from None


def parse_colours(items, mag_band: str) -> dict:
    """``--colour B-M=VALUE`` items (M the magnitude band) as {B: VALUE}."""
    out = {}
    for item in items:
        try:
            pair, value = item.split("=")
            band, against = pair.split("-")
            value = float(value)
        except ValueError:
            raise ConfigError(f"--colour {item!r} is not accepted; give BAND-{mag_band}=VALUE, "
                              f"e.g. g-{mag_band}=0.9") from None
        if against.strip() != mag_band:
            raise ConfigError(f"--colour {item!r}: colours are against the magnitude band "
                              f"(--mag-band {mag_band}); give {band.strip()}-{mag_band}=VALUE")
        out[band.strip()] = value
    return out


@click.command()
@click.argument("images", nargs=-1, required=True, metavar="BAND_FITS...|SURVEY")
@click.option("--output-dir", "-o", default="inject-out", show_default=True,
              type=click.Path(file_okay=False),
              help="Folder for inject.json, injections.ecsv and the completeness PNGs.")
@click.option("--n", "n", type=int, default=500, show_default=True,
              help="Clusters to inject in all (shared among a survey's fields).")
@click.option("--mag", default="16:23", show_default=True, metavar="LO:HI",
              help="Total magnitudes (in --mag-band), drawn uniformly.")
@click.option("--rh", default="1:6", show_default=True, metavar="LO:HI",
              help="Half-light radii in ARCSEC, drawn log-uniformly.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed and inputs give the same report.")
@click.option("--per-round", type=int, default=None,
              help="At most this many clusters per round [as many as the image holds "
                   "apart]; each round is one detection pass.")
@click.option("--mag-band", default="i", show_default=True,
              help="Band of the injected magnitudes (and of the detections' magnitudes).")
@click.option("--colour", "colours", multiple=True, metavar="BAND-MAG=VALUE",
              help="Fixed colour of another band, e.g. g-i=0.9 [the synth's: young g-i "
                   "0-0.5, old 0.8-1.3]; repeat for more bands.")
@click.option("--concentration", default=None, metavar="LO:HI",
              help="King concentration c = log10(rt/rc), uniform [the synth's: young "
                   "0.5-1.2, old 1.0-1.8].")
@click.option("--zero-point", default=None, metavar="ZP|BAND=ZP,...",
              help="Photometric zero points [each band's MAGZPT/PHOTZP/... header key].")
@click.option("--psf-fwhm", default=None, metavar="ARCSEC|BAND=ARCSEC,...",
              help="Give the PSF FWHM instead of measuring it from the field's stars.")
@click.option("--psf-beta", type=float, default=None,
              help="Moffat beta of the PSF [fitted; 3 with --psf-fwhm].")
@click.option("--match-radius", type=float, default=1.0, show_default=True,
              help="Match radius in arcsec (a cluster's r_h where larger).")
@click.option("--members/--no-members", default=True, show_default=True,
              help="Resolved member stars (the synth's M31 populations).")
@click.option("--model", type=click.Path(dir_okay=False),
              help="Model file, .onnx or TensorRT engine [default: the shipped demo model].")
@click.option("--runner", default="auto", show_default=True,
              help="auto, onnxruntime, torch or tensorrt.")
@click.option("--precision", default=None, help="fp32, tf32, fp16 or bf16 (runner-dependent).")
@click.option("--batch-size", type=int, default=None, help="Cutouts per batch [runner's choice].")
@click.option("--threads", type=int, default=None, help="CPU threads [all].")
@click.option("--threshold", type=float, default=None,
              help="Candidate threshold on the score [the model's].")
@click.option("--bands", "band_names", default=None, help=BANDS_HELP)
@click.option("--mag-limit", type=float, default=None,
              help="Keep detections with aperture magnitude <= this, as scan --mag-limit.")
@click.option("--aperture", type=float, default=DEFAULT_APERTURE, show_default=True,
              help="Detection: aperture radius for magnitudes, pixels.")
@click.option("--detect-threshold", type=float, default=DEFAULT_DETECT_THRESHOLD,
              show_default=True, help="Detection threshold in sigma above the background.")
@click.option("--min-area", type=int, default=DEFAULT_MIN_AREA, show_default=True,
              help="Minimum connected pixels of a detection.")
@click.option("--detect-band", default=DEFAULT_DETECT_BAND, show_default=True,
              help="Band to detect on, or 'sum' (noise-weighted sum of all bands).")
@click.option("--tile-size", type=int, default=DEFAULT_CORE, show_default=True,
              help="Tile core size in pixels.")
@click.option("--max-nan", type=float, default=DEFAULT_MAX_NAN, show_default=True,
              help="Flag cutouts with more than this share of blank pixels in a band.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report in --output-dir.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def inject(images, output_dir, n, mag, rh, seed, per_round, mag_band, colours, concentration,
           zero_point, psf_fwhm, psf_beta, match_radius, members, model, runner, precision,
           batch_size, threads, threshold, band_names, mag_limit, aperture, detect_threshold,
           min_area, detect_band, tile_size, max_nan, overwrite, quiet):
    """Inject artificial King-profile star clusters into band images BAND_FITS... (one per
    model band) or a survey manifest, on the fly (the files are never modified), detect
    and classify them as ``pyengine scan`` does, and report completeness against magnitude
    and half-light radius with 50 % and 90 % limits."""
    from pyengine.bands import parse_band_list
    from pyengine.scan.inputs import check_model_file
    from pyengine.survey.manifest import is_manifest

    mag_range = parse_range(mag, "--mag")
    rh_range = parse_range(rh, "--rh")
    conc = parse_range(concentration, "--concentration") if concentration else None
    if len(images) > 1 and any(is_manifest(p) for p in images):
        raise ConfigError("a survey manifest is given alone: pyengine inject survey.ecsv ...")
    check_model_file(model)

    def progress(event):
        if not quiet:
            click.echo(f"field {event['field']} round {event['round']}/{event['rounds']}: "
                       f"{event['clusters']} clusters, {event['detected']} detected, "
                       f"{event['recovered']} recovered ({event['seconds']:.1f} s)", err=True)

    from pyengine.injection.report import summary_line
    from pyengine.injection.run import inject as run

    target = images[0] if len(images) == 1 and is_manifest(images[0]) else list(images)
    report = run(target, n=n, mag=mag_range, rh=rh_range, seed=seed, per_round=per_round,
                 mag_band=mag_band, colours=parse_colours(colours, mag_band),
                 concentration=conc, zero_point=parse_per_band(zero_point, "--zero-point"),
                 psf_fwhm=parse_per_band(psf_fwhm, "--psf-fwhm"), psf_beta=psf_beta,
                 match_radius=match_radius, members=members,
                 bands=parse_band_list(band_names), model=model, runner=runner,
                 precision=precision, batch_size=batch_size, threads=threads,
                 threshold=threshold, tile_size=tile_size, max_nan=max_nan,
                 detect_threshold=detect_threshold, min_area=min_area,
                 detect_band=detect_band, mag_limit=mag_limit, aperture=aperture,
                 output_dir=output_dir, overwrite=overwrite, progress=progress)
    for f in report["fields"]:
        psf = ", ".join(f"{b} {p['fwhm_arcsec']:.2f}\" (beta {p['beta']:.2f}, "
                        + (f"{p['stars']} stars)" if p["source"] == "measured" else "given)")
                        for b, p in f["psf"].items())
        zps = ", ".join(f"{b} {z['value']:g} ({z['from']})" for b, z in f["zero_points"].items())
        click.echo(f"field {f['id']}: PSF FWHM {psf}; zero points {zps}; {f['injected']} "
                   f"clusters in {f['rounds']} rounds of up to {f['per_round']}")
    click.echo(summary_line(report))
    lo, hi = mag_range

    def limit(value, note):
        if value is not None:
            return f"{value:.2f}"
        return f"> {hi:g}" if "fainter" in note else f"< {lo:g}" if "brightest" in note else "-"

    for kind in ("detected", "recovered"):
        lim = report["limits"][kind]
        per = "; ".join(
            f"r_h {r['rh_arcsec'][0]:.2g}-{r['rh_arcsec'][1]:.2g}\": "
            + limit(r["m50"], r["notes"].get("m50", "")) for r in lim["per_rh"])
        click.echo(f"  {kind}: 90 % at {limit(lim['m90'], lim['notes'].get('m90', ''))}; "
                   f"50 % per r_h bin: {per}")
    click.echo(f"  report: {output_dir}/inject.json (+ injections.ecsv, completeness_*.png)")
