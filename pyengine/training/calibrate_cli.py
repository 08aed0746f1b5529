"""``pyengine calibrate``: the click command of :mod:`pyengine.training.calibrate`.

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import click

__all__ = ["calibrate"]


@click.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("-c", "--catalog", required=True, help="Labelled catalog of the calibration field.")
@click.option("-o", "--output", required=True, help="Calibrated model file to write.")
@click.option("--positions", type=click.Choice(("detect", "catalog")), default="detect",
              show_default=True, help="Calibrate at the scan's detections (labelled by a sky "
                                      "match) or at the catalog's positions.")
@click.option("--match-radius", type=float, default=1.0, show_default=True,
              help="--positions detect: match radius, arcsec.")
@click.option("--mag-limit", type=float, help="Magnitude cut (as scan --mag-limit).")
@click.option("--label-col", help="Label column [default: label, class, labels or type].")
@click.option("--positive", help="Label values that count as cluster, comma-separated.")
@click.option("--x-col", help="x column (pixels).")
@click.option("--y-col", help="y column (pixels).")
@click.option("--ra-col", help="RA column (deg).")
@click.option("--dec-col", help="Dec column (deg).")
@click.option("--target-purity", type=float, default=0.893, show_default=True,
              help="Purity the stored threshold aims for (Zhang+2025: 0.893).")
@click.option("--prevalence", type=float,
              help="Share of clusters among the positions of the fields to be scanned, for the "
                   "stored threshold [default: the calibration field's own].")
@click.option("--method", type=click.Choice(("temperature+prior", "temperature")),
              default="temperature+prior", show_default=True,
              help="Fit a temperature and the field's class prior (per-class logit offsets), "
                   "or a temperature alone.")
@click.option("--threads", type=int, help="CPU threads for torch.")
def calibrate(model, images, catalog, output, positions, match_radius, mag_limit, label_col,
              positive, x_col, y_col, ra_col, dec_col, target_purity, prevalence, method,
              threads):
    """Calibrate MODEL's probabilities on IMAGES (one per band, or a survey manifest) with
    the labels of --catalog: temperature scaling, stored in the model file and applied in
    the graph, and the threshold for --target-purity at --prevalence."""
    from pyengine.training.calibrate import calibrate as run

    pos = None if positive is None else tuple(v.strip() for v in positive.split(",") if v.strip())
    r = run(model, images, catalog, output, log=lambda m: click.echo(m, err=True),
            positions=positions, match_radius=match_radius, mag_limit=mag_limit,
            label_col=label_col, positive=pos, x_col=x_col, y_col=y_col, ra_col=ra_col,
            dec_col=dec_col, target_purity=target_purity, prevalence=prevalence,
            threads=threads, method=method)
    t = r["threshold"]
    bias = ", offsets " + ", ".join(f"{b:+.3f}" for b in r["logit_bias"]) if r["logit_bias"] \
        else ""
    click.echo(f"wrote {r['output']}: temperature {r['temperature']:.3f}{bias}; ECE "
               f"{r['ece_before']:.3f} -> {r['ece_after']:.3f} on {r['n']} positions "
               f"({r['n_cluster']} clusters, prevalence {r['prevalence']:.4f}); threshold "
               f"{t['value']:.4f} ({t['rule'].replace('_', ' ')} {t['prevalence']:.4f}): "
               f"expected purity {t['purity']:.3f}, recall {t['recall']:.3f}")
    click.echo(f"wrote {r['reliability_png']}")
