"""``pyengine synth``: write a synthetic PAndAS-like g, i field (or survey) and its truth.

Importing this module is cheap (click only); the renderer loads when the
command runs.  Bad values raise :class:`pyengine.errors.ConfigError`, which
the ``pyengine`` group prints as one ``Error: ...`` line.

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import sys

import click

from pyengine.errors import ConfigError

__all__ = ["synth"]

_SURVEY_ONLY = ("--field-size", "--overlap", "--rotation", "--dither", "--field-catalogs")


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--size", type=int, default=None,
              help="Width and height of the field, pixels [default: 2048].")
@click.option("--width", type=int, default=None, help="Width, pixels (overrides --size).")
@click.option("--height", type=int, default=None, help="Height, pixels (overrides --size).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed gives the same bytes.")
@click.option("--ra", type=float, default=None,
              help="Field (or survey) centre RA, deg [default: 11.013, on M31's NE disk].")
@click.option("--dec", type=float, default=None,
              help="Field (or survey) centre Dec, deg [default: 41.584].")
@click.option("--encoding", type=click.Choice(["float32", "int16", "rice", "mef"]),
              default="float32", show_default=True,
              help="float32 or int16 files per band, RICE-compressed .fits.fz per band, "
                   "or one multi-extension field.fits.")
@click.option("--tile-size", type=int, default=256, show_default=True,
              help="Rows rendered at a time (memory only; the output is the same).")
@click.option("--chip-gaps", is_flag=True, help="Blank (NaN) MegaCam-like CCD gaps.")
@click.option("--sky-subtracted", is_flag=True, help="Subtract the constant sky level.")
@click.option("--seeing-g", type=float, default=None, help="g-band FWHM, arcsec [default: 0.8].")
@click.option("--seeing-i", type=float, default=None, help="i-band FWHM, arcsec [default: 0.7].")
@click.option("--cluster-density", type=float, default=None,
              help="Clusters per deg^2 where M31's disk has i = 21 mag/arcsec^2 "
                   "[default: 3000].")
@click.option("--star-limit", type=float, default=None,
              help="Faintest star drawn, i mag [default: 23.5].")
@click.option("--survey", "grid", default=None, metavar="COLSxROWS",
              help="Write a survey: COLS x ROWS overlapping fields of one sky (F<col><row>/ "
                   "folders, truth.fits, survey.ecsv).")
@click.option("--field-size", type=int, default=None,
              help="Survey: width and height of each field, pixels [default: 1024].")
@click.option("--overlap", type=float, default=None,
              help="Survey: overlap of neighbouring fields, fraction of the field size "
                   "[default: 0.1].")
@click.option("--rotation", type=float, default=None,
              help="Survey: largest |rotation| of a field, deg [default: 0.5].")
@click.option("--dither", type=float, default=None,
              help="Survey: largest offset of a field's centre from its grid place, px "
                   "[default: 20].")
@click.option("--field-catalogs", is_flag=True,
              help="Survey: also write each field's truth as a SExtractor FITS_LDAC catalog "
                   "F<col><row>/F<col><row>.cat (X_IMAGE, Y_IMAGE 1-based, ALPHA_J2000, "
                   "DELTA_J2000, MAG_AUTO) and the manifest's catalog column.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
def synth(outdir, size, width, height, seed, ra, dec, encoding, tile_size, chip_gaps,
          sky_subtracted, seeing_g, seeing_i, cluster_density, star_limit, grid, field_size,
          overlap, rotation, dither, field_catalogs, quiet):
    """Write a synthetic PAndAS-like g, i field of M31 and its truth catalog to OUTDIR.

    Files: g.fits and i.fits (or g.fits.fz, i.fits.fz, or field.fits) and
    truth.fits (id, ra, dec, x, y, class, g_mag, i_mag, r_h_pc, subclass).
    Existing files of those names are replaced.

    With --survey COLSxROWS: overlapping fields of one sky, each in its own folder
    F<col><row> (column 0 east, row 0 south) with its images and truth.fits (and with
    --field-catalogs its F<col><row>.cat); truth.fits of the whole area (each object
    once, with placed, n_fields and fields); and the manifest survey.ecsv, written last.
    """
    import dataclasses

    from pyengine.synth.config import SynthConfig

    survey_options = dict(zip(_SURVEY_ONLY, (field_size, overlap, rotation, dither,
                                             field_catalogs or None), strict=True))
    if grid is None and any(v is not None for v in survey_options.values()):
        given = [k for k, v in survey_options.items() if v is not None]
        raise ConfigError(f"{', '.join(given)}: survey option{'s' if len(given) > 1 else ''}; "
                          "give --survey COLSxROWS too")
    if grid is not None and any(v is not None for v in (size, width, height)):
        raise ConfigError("--size, --width and --height set a single field's size; with "
                          "--survey give --field-size")
    size = 2048 if size is None else size
    overrides = {"ra": ra, "dec": dec, "cluster_density": cluster_density,
                 "star_limit": star_limit}
    defaults = SynthConfig()
    bands = tuple(
        dataclasses.replace(b, seeing=s) if s is not None else b
        for b, s in zip(defaults.bands, (seeing_g, seeing_i), strict=True))
    config = SynthConfig(
        width=size if width is None else width, height=size if height is None else height,
        seed=seed, encoding=encoding, tile_size=tile_size, chip_gaps=chip_gaps,
        sky_subtracted=sky_subtracted, bands=bands,
        **{k: v for k, v in overrides.items() if v is not None})
    if grid is not None:
        _survey(outdir, config, grid, field_size, overlap, rotation, dither, quiet,
                field_catalogs=field_catalogs)
        return

    from pyengine.synth.field import make_field

    if quiet:
        result = make_field(outdir, config)
    else:
        with click.progressbar(length=config.height, label="rendering rows",
                               file=sys.stderr) as bar:
            result = make_field(outdir, config, progress=_updater(bar))
    files = sorted({str(p) for p, _ in result.images.values()})
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(f"wrote {result.truth}")
    click.echo(f"{config.width} x {config.height} px, seed {config.seed}, {config.encoding}: "
               f"{_counts(result.counts)} in {result.seconds:.1f} s")


def _updater(bar):
    done = [0]

    def progress(rows, total):
        bar.update(rows - done[0])
        done[0] = rows

    return progress


def _counts(counts: dict[str, int]) -> str:
    plural = {"cluster": "clusters", "star": "stars", "galaxy": "galaxies"}
    return ", ".join(f"{n} {plural.get(k, k)}" for k, n in counts.items())


def _survey(outdir, base, grid, field_size, overlap, rotation, dither, quiet, *,
            field_catalogs: bool) -> None:
    from pyengine.synth.survey import SurveyConfig, make_survey, parse_grid

    columns, rows = parse_grid(grid)
    given = {"field_size": field_size, "overlap": overlap, "rotation_deg": rotation,
             "dither": dither}
    config = SurveyConfig(columns=columns, rows=rows, base=base,
                          **{k: v for k, v in given.items() if v is not None})
    if quiet:
        result = make_survey(outdir, config, field_catalogs=field_catalogs)
    else:
        with click.progressbar(length=columns * rows * config.field_size,
                               label="rendering fields", file=sys.stderr) as bar:
            result = make_survey(outdir, config, progress=_updater(bar),
                                 field_catalogs=field_catalogs)
    ids = list(result.fields)
    click.echo(f"wrote {len(ids)} fields ({ids[0]} .. {ids[-1]}) under {outdir}"
               + (f", each with its SExtractor catalog {ids[0]}/{ids[0]}.cat .."
                  if field_catalogs else ""))
    click.echo(f"wrote {result.truth}")
    click.echo(f"wrote {result.manifest}")
    click.echo(f"{columns} x {rows} fields of {config.field_size} px, seed {base.seed}, "
               f"{base.encoding}: {_counts(result.counts)} in {result.seconds:.1f} s")
