"""``pyengine survey init`` (find the fields among image files, write a manifest) and
``pyengine survey show`` (fields, area, overlaps, pixels; footprints drawn as a PNG).

Importing this module is cheap (click only).  Bad input raises a PyEngineError, which
the ``pyengine`` group prints as one ``Error: ...`` line.

Thread safety: click commands; run one per process.
"""

from __future__ import annotations

import click

__all__ = ["merge", "survey"]


@click.group()
def survey():
    """Surveys of many fields: make a manifest, look at it."""


@survey.command("init")
@click.argument("paths", nargs=-1, required=True)
@click.option("--bands", default=None,
              help="Comma-separated bands to take, in this order [every band found].")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The manifest to write (.ecsv or .csv).")
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest.")
def init(paths, bands, out, overwrite):
    """Find the fields among PATHS (files, globs, folders) and write their manifest.

    Images of one pointing (one pixel grid) make a field, with one image per band
    (named by FILTER keys, MegaCam's g.MP9401 as g, or by file names).  A catalog beside
    them named after the pointing (<field>.cat, <field>.ldac: FITS or SExtractor, by
    content) is the field's own (the manifest's catalog column)."""
    from pathlib import Path

    from pyengine.bands import parse_band_list
    from pyengine.errors import ConfigError
    from pyengine.survey.discover import discover

    target = Path(out)
    if target.exists() and not overwrite:
        raise ConfigError(f"-o {out}: the file exists; add --overwrite to replace it")
    notes: list[str] = []
    found = discover(paths, parse_band_list(bands), notes=notes)
    found.write(target)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    catalogs = sum(1 for f in found.fields if f.catalog)
    click.echo(f"{len(found.fields)} field(s), bands {', '.join(found.bands)}, "
               f"{found.total_pixels / 1e6:,.1f} Mpx per band"
               + (f", {catalogs} with their own catalog" if catalogs else "") + f" -> {out}")


@survey.command("show")
@click.argument("manifest", type=click.Path())
@click.option("--png", default=None, type=click.Path(dir_okay=False),
              help="Draw the footprints on the sky into this PNG.")
@click.option("--within", default=None,
              help="RA,DEC,RADIUS (deg): draw this circle and count the fields it touches.")
@click.option("--candidates", default=None, type=click.Path(),
              help="A scan's catalog: draw its candidates on the PNG.")
def show(manifest, png, within, candidates):
    """Fields, area, overlaps and pixels of a survey MANIFEST (and each field's own
    catalog, where the manifest has a catalog column)."""
    from pyengine.survey.geometry import SurveyGeometry, parse_within
    from pyengine.survey.manifest import read_manifest
    from pyengine.survey.report import coverage, draw_footprints

    cone = parse_within(within) if within else None
    geo = SurveyGeometry(read_manifest(manifest))
    touched = geo.fields_touching(cone) if cone is not None else None
    cover = coverage(geo)
    click.echo(f"{manifest}: {len(geo)} field(s), bands {', '.join(geo.survey.bands)}")
    catalogs = geo.survey.has_catalogs
    click.echo(f"{'field':<24} {'nx':>7} {'ny':>7} {'RA':>10} {'Dec':>10} {'arcsec/px':>9}"
               + ("  catalog" if catalogs else ""))
    for frame, field in zip(geo.frames, geo.survey.fields, strict=True):
        ny, nx = frame.shape
        ra, dec = frame.wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        click.echo(f"{field.id:<24} {nx:>7} {ny:>7} {float(ra):>10.5f} {float(dec):>10.5f} "
                   f"{frame.scale:>9.4f}" + (f"  {_catalog_name(field.catalog, manifest)}"
                                             if catalogs else ""))
    click.echo(f"area {cover['area_deg2']:.4g} deg^2 (footprints {cover['sum_deg2']:.4g} "
               f"deg^2: {cover['overlap_fraction']:.1%} in overlaps); "
               f"{geo.survey.total_pixels / 1e6:,.1f} Mpx per band")
    pairs = cover["overlapping_pairs"]
    click.echo(f"{len(pairs)} overlapping pair(s)" + (": " + ", ".join(
        f"{a}/{b}" for a, b in pairs[:12]) + (" ..." if len(pairs) > 12 else "") if pairs
        else ""))
    if touched is not None:
        click.echo(f"--within {within}: {len(touched)} of {len(geo)} field(s) touch it")
    if png:
        draw_footprints(geo, png, cone=cone, candidates=candidates)
        click.echo(f"wrote {png}")


def _catalog_name(spec, manifest) -> str:
    """A field's catalog as ``survey show`` lists it: relative to the manifest's folder
    when below it, '-' for none."""
    import os
    from pathlib import Path

    from pyengine.io.fitsfile import parse_spec

    if not spec:
        return "-"
    base = Path(manifest).resolve().parent
    path, ext = parse_spec(spec)
    shown = os.path.relpath(path, base) if path.is_relative_to(base) else str(path)
    return shown + ("" if ext is None else f"[{ext}]")


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="The survey's catalog to write (.fits, .ecsv, .parquet or .csv).")
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog.")
def merge(parts, out, overwrite):
    """Join the outputs PARTS... of pyengine scan SURVEY --shard I/N (every I of one N)
    into the catalog a single process would have written."""
    from pyengine.survey.merge import merge_shards

    got = merge_shards(parts, out, overwrite=overwrite)
    click.echo(f"merged {got['shards']} shard(s): {got['rows']:,} rows"
               + (f" ({got['merged_duplicates']:,} rows merged: objects two fields measured)"
                  if got["merged_duplicates"] else "") + f" -> {out}")
    for name, path in got["scoremaps"].items():
        click.echo(f"  score map {name}: {path}")
