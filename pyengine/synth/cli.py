"""``pyengine synth``: write a synthetic PAndAS-like g, i field and its truth catalog.

Importing this module is cheap (click only); the renderer loads when the
command runs.  Bad values raise :class:`pyengine.errors.ConfigError`, which
the ``pyengine`` group prints as one ``Error: ...`` line.

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import sys

import click

__all__ = ["synth"]


@click.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--size", type=int, default=2048, show_default=True,
              help="Width and height of the field, pixels.")
@click.option("--width", type=int, default=None, help="Width, pixels (overrides --size).")
@click.option("--height", type=int, default=None, help="Height, pixels (overrides --size).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed gives the same bytes.")
@click.option("--ra", type=float, default=None,
              help="Field centre RA, deg [default: 11.013, on M31's NE disk].")
@click.option("--dec", type=float, default=None,
              help="Field centre Dec, deg [default: 41.584].")
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
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary.")
def synth(outdir, size, width, height, seed, ra, dec, encoding, tile_size, chip_gaps,
          sky_subtracted, seeing_g, seeing_i, cluster_density, star_limit, quiet):
    """Write a synthetic PAndAS-like g, i field of M31 and its truth catalog to OUTDIR.

    Files: g.fits and i.fits (or g.fits.fz, i.fits.fz, or field.fits) and
    truth.fits (id, ra, dec, x, y, class, g_mag, i_mag, r_h_pc, subclass).
    Existing files of those names are replaced.
    """
    import dataclasses

    from pyengine.synth.config import SynthConfig

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

    from pyengine.synth.field import make_field

    if quiet:
        result = make_field(outdir, config)
    else:
        with click.progressbar(length=config.height, label="rendering rows",
                               file=sys.stderr) as bar:
            done = [0]

            def progress(rows, total):
                bar.update(rows - done[0])
                done[0] = rows

            result = make_field(outdir, config, progress=progress)
    files = sorted({str(p) for p, _ in result.images.values()})
    for f in files:
        click.echo(f"wrote {f}")
    click.echo(f"wrote {result.truth}")
    plural = {"cluster": "clusters", "star": "stars", "galaxy": "galaxies"}
    counts = ", ".join(f"{n} {plural.get(k, k)}" for k, n in result.counts.items())
    click.echo(f"{config.width} x {config.height} px, seed {config.seed}, {config.encoding}: "
               f"{counts} in {result.seconds:.1f} s")
