"""``pyengine evaluate CATALOG --truth LABELS``: a scan's catalog against a truth catalog.

Prints a short summary (or, with ``--json``, the result itself) on stdout and writes the
JSON and PNG figures with ``--output-dir DIR`` or ``-o PREFIX``
(:mod:`pyengine.evaluation.figures`). The definitions are in
:mod:`pyengine.evaluation.run`. Importing this module is cheap (click only).

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import json

import click

__all__ = ["evaluate", "summary_lines"]


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _limits(block) -> str:
    unit = f" {block['unit']}" if block["unit"] else ""

    def one(v):
        return "not crossed" if v is None else f"{v:.2f}{unit}"

    return (f"{block['column']}: 90 % at {one(block['limit_90'])}, 50 % at "
            f"{one(block['limit_50'])} (detected: 50 % at {one(block['detected_limit_50'])})")


def summary_lines(r: dict) -> list[str]:
    """The human summary of an evaluation result."""
    c, op = r["counts"], r["operating_point"]
    src = "the catalog's" if r["threshold_source"] == "catalog" else "given"
    lines = [
        f"{r['catalog']} against {r['truth']} (match radius {r['match_radius_arcsec']:g}\"): "
        f"{c['catalog_rows']:,} catalog rows ({c['eligible_rows']:,} scored and counted), "
        f"{c['truth_counted']:,} truth objects counted in {r['area']['method']} area "
        f"({c['truth_positives']:,} {'/'.join(r['labels']['positive'])})",
        f"at threshold {op['threshold']:.6g} ({src}): purity {_pct(op['precision'])} "
        f"({op['tp']} of {op['tp'] + op['fp']} candidates), recall {_pct(op['recall'])} "
        f"({op['tp']} of {c['truth_positives']}; {c['positives_without_row']} with no "
        f"catalog row, {c['positives_unscored']} unscored), F1 {op['f1']:.3f}",
        f"average precision {r['pr_curve']['average_precision'] or 0:.3f}; "
        f"ECE {'n/a' if r['ece'] is None else format(r['ece'], '.3f')} "
        f"({len(r['reliability']['count'])} bins)",
    ]
    for key in ("completeness_vs_mag", "completeness_vs_size"):
        if r.get(key):
            lines.append("completeness " + _limits(r[key]))
    z = r["reference"]["zhang2025"]
    lines.append(f"Zhang et al. 2025: purity {_pct(z['precision'])}, recall "
                 f"{_pct(z['recall'])} at threshold {z['threshold']}")
    if r["area"]["note"]:
        lines.append(f"area: {r['area']['description']} ({r['area']['note']})")
    return lines


@click.command()
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--truth", required=True, type=click.Path(dir_okay=False),
              help="Truth/label catalog (FITS, FITS_LDAC, ECSV, CSV, Parquet) with RA/Dec "
                   "(deg) and a label column.")
@click.option("--match-radius", default="0.5arcsec", show_default=True,
              help='Sky match radius: 0.5arcsec, 0.5", 500mas, 0.01arcmin, or 2px (pixels '
                   "of the catalog's images); a bare number is arcsec.")
@click.option("--threshold", type=float, default=None,
              help="Candidate threshold on the score [the catalog's THRESH].")
@click.option("--label-col", default=None, help="Truth label column [label, class, type].")
@click.option("--positive", default=None,
              help="Comma-separated label values that are clusters [cluster, 1 or True].")
@click.option("--truth-ra-col", default=None, help="Truth RA column (deg).")
@click.option("--truth-dec-col", default=None, help="Truth Dec column (deg).")
@click.option("--mag-col", default=None, help="Truth magnitude column [mag, i_mag, ...].")
@click.option("--size-col", default=None, help="Truth size column [r_h_pc, r_h, rh, ...].")
@click.option("--mag-limit", type=float, default=None,
              help="Count only truth objects brighter than this (--mag-col); catalog rows "
                   "matched to fainter ones are left out.")
@click.option("--within", default=None, metavar="RA,DEC,RADIUS",
              help="Count only truth objects and rows within RADIUS deg of RA,DEC.")
@click.option("--area", type=click.Choice(["auto", "footprint", "hull"]), default="auto",
              show_default=True,
              help="Scanned area: the images' footprint (from the catalog's metadata), the "
                   "catalog positions' convex hull, or auto (footprint if readable).")
@click.option("--bins", type=int, default=10, show_default=True,
              help="Score bins of the reliability diagram and purity against score.")
@click.option("--mag-bin", type=float, default=0.5, show_default=True,
              help="Magnitude bin width of completeness against magnitude.")
@click.option("--size-bins", type=int, default=10, show_default=True,
              help="Equal-width bins of completeness against size.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Write DIR/evaluation.json and DIR/<figure>.png.")
@click.option("--out", "-o", "prefix", default=None, metavar="PREFIX",
              help="Write PREFIX.json and PREFIX_<figure>.png.")
@click.option("--no-figures", is_flag=True, help="Write the JSON only.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def evaluate(catalog, truth, match_radius, threshold, label_col, positive, truth_ra_col,
             truth_dec_col, mag_col, size_col, mag_limit, within, area, bins, mag_bin,
             size_bins, output_dir, prefix, no_figures, overwrite, as_json):
    """Score a pyengine scan CATALOG against a truth catalog: purity, recall and F1 at the
    threshold, the PR curve, completeness against magnitude and size, purity against
    score and the reliability of the score (JSON and PNG figures)."""
    from pyengine.errors import OutputError
    from pyengine.evaluation.figures import output_paths, write_outputs
    from pyengine.evaluation.run import evaluate as run

    if output_dir is not None and prefix is not None:
        raise OutputError("--output-dir and -o are exclusive; give one")
    if output_dir is not None or prefix is not None:
        for path in output_paths(output_dir, prefix).values():  # before the work
            if path.exists() and not overwrite:
                raise OutputError(f"{path}: the file exists; add --overwrite to replace it")
    result = run(catalog, truth, match_radius=match_radius, threshold=threshold,
                 label_col=label_col,
                 positive=[p.strip() for p in positive.split(",")] if positive else None,
                 truth_ra_col=truth_ra_col, truth_dec_col=truth_dec_col, mag_col=mag_col,
                 size_col=size_col, mag_limit=mag_limit, within=within, area=area, bins=bins,
                 mag_bin=mag_bin, size_bins=size_bins)
    written = {}
    if output_dir is not None or prefix is not None:
        written = write_outputs(result, output_dir, prefix, overwrite=overwrite,
                                figures=not no_figures)
    if as_json:
        click.echo(json.dumps(result, indent=1, allow_nan=False))
        return
    for line in summary_lines(result):
        click.echo(line)
    for name, path in written.items():
        click.echo(f"  {name}: {path}")
