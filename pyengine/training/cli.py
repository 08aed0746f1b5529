"""``pyengine train``: train or fine-tune the cluster classifier from a labelled catalog.

Importing this module is cheap (click and the option defaults of
:class:`pyengine.train.TrainConfig`); torch, NumPy and astropy load when the command
runs.  Defaults shown in the help come from ``TrainConfig`` itself.

Thread safety: a click command; run one per process.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import fields

import click

from pyengine.bands import parse_band_list
from pyengine.training.config import BALANCES, POSITIONS, SPLITS, TrainConfig

__all__ = ["train"]

_DEFAULT = {f.name: f.default for f in fields(TrainConfig)}


def _list(value):
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _bands(value):
    names = parse_band_list(value)  # the one --bands syntax (pyengine.bands)
    return None if names is None else tuple(names)


def _command_line(ctx) -> str:
    """The command as given (options at their defaults left out), for provenance."""
    parts = ["pyengine", "train", *ctx.params["images"]]
    for p in ctx.command.params:
        if not isinstance(p, click.Option):
            continue
        value = ctx.params[p.name]
        if value is None or value == p.default:
            continue
        flag = max(p.opts, key=len)
        parts += [flag] if p.is_flag else [flag, str(value)]
    return shlex.join(parts)


@click.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-c", "--catalog", required=True,
              help="Labelled catalog: FITS (path[ext] allowed), ECSV, CSV or Parquet.")
@click.option("-o", "--output", required=True,
              help="Model file to write (.safetensors); the PR curve goes beside it as "
                   "<stem>.pr.png, the checkpoint as <stem>.train-state.pt.")
@click.option("--bands", help="Band names, comma-separated, one per image "
                              "[default: FILTER/BAND header keys, else file names].")
@click.option("--label-col", help="Label column [default: label, class, labels or type].")
@click.option("--positive", help="Label values that count as cluster, comma-separated "
                                 "[default: the value cluster, 1 or True, first found].")
@click.option("--classes", help="Label values to train on, comma-separated, in class order; "
                                "rows with other values are left out [default: every value].")
@click.option("--binary", is_flag=True,
              help="Merge the classes into two: non-cluster and cluster (--positive).")
@click.option("--ra-col", help="RA column, degrees (with --dec-col).")
@click.option("--dec-col", help="Dec column, degrees.")
@click.option("--x-col", help="x column, 0-based pixels (X_IMAGE-style: 1-based); with --y-col.")
@click.option("--y-col", help="y column, pixels.")
@click.option("--positions", type=click.Choice(POSITIONS), default=_DEFAULT["positions"],
              show_default=True,
              help="Train at the label catalog's positions, or at the scan's own detections "
                   "labelled by a sky match to it (unmatched detections are negatives).")
@click.option("--match-radius", type=float, default=_DEFAULT["match_radius"], show_default=True,
              help="--positions detect: match radius, arcsec.")
@click.option("--unmatched-label", help="--positions detect: label value of unmatched "
                                        "detections [default: the first non-cluster value].")
@click.option("--detect-threshold", type=float, default=_DEFAULT["detect_threshold"],
              show_default=True, help="--positions detect: detection threshold, sigma.")
@click.option("--min-area", type=int, default=_DEFAULT["min_area"], show_default=True,
              help="--positions detect: minimum detection area, pixels.")
@click.option("--detect-band", default=_DEFAULT["detect_band"], show_default=True,
              help="--positions detect: detection band, or 'sum'.")
@click.option("--negative-ratio", type=float,
              help="Keep at most this many non-cluster positions per cluster (a seeded random "
                   "subset; detections are mostly stars) [default: all].")
@click.option("--mag-col", help="Magnitude column for --mag-limit [default: mag, i_mag, mag_i "
                                "or imag].")
@click.option("--mag-limit", type=float,
              help="Keep only sources brighter than this (mag < limit; with --positions "
                   "detect, the detections' aperture magnitudes, as scan --mag-limit); "
                   "Zhang+2025 used 21.")
@click.option("--size", "cutout_size", type=int, default=_DEFAULT["cutout_size"],
              show_default=True, help="Cutout size, pixels.")
@click.option("--max-nan", type=float, default=_DEFAULT["max_nan"], show_default=True,
              help="Drop cutouts with more than this fraction of blank (NaN) pixels.")
@click.option("--split", type=click.Choice(SPLITS), default=_DEFAULT["split"],
              show_default=True,
              help="Validation split: stratified random rows, or whole spatial blocks.")
@click.option("--val-fraction", type=float, default=_DEFAULT["val_fraction"],
              show_default=True, help="Share of the rows held out for validation.")
@click.option("--block-size", type=int, default=_DEFAULT["block_size"], show_default=True,
              help="Block side for --split spatial, pixels.")
@click.option("--epochs", type=int, default=_DEFAULT["epochs"], show_default=True)
@click.option("--batch-size", type=int, default=_DEFAULT["batch_size"], show_default=True)
@click.option("--lr", type=float, default=_DEFAULT["lr"], show_default=True,
              help="Peak AdamW learning rate (warm-up, then cosine to 0).")
@click.option("--weight-decay", type=float, default=_DEFAULT["weight_decay"],
              show_default=True, help="AdamW weight decay (convolution and linear weights).")
@click.option("--warmup", type=float, default=_DEFAULT["warmup"], show_default=True,
              help="Share of the steps with a linear learning-rate warm-up.")
@click.option("--balance", type=click.Choice(BALANCES), default=_DEFAULT["balance"],
              show_default=True, help="Class balancing: balanced sampling, a class-weighted "
                                      "loss, or none.")
@click.option("--no-augment", is_flag=True,
              help="No shifts, flips/rotations, dimming, blur or noise.")
@click.option("--noise", type=float, default=_DEFAULT["noise"], show_default=True,
              help="Augmentation noise: up to this times the cutout's own noise level.")
@click.option("--shift", type=float, default=_DEFAULT["shift"], show_default=True,
              help="Augmentation: centre shifts up to this many pixels per axis (sub-pixel, "
                   "cubic resampling).")
@click.option("--dim", type=float, default=_DEFAULT["dim"], show_default=True,
              help="Augmentation: flux scaled by a factor in [1 - dim, 1] at the same noise.")
@click.option("--blur", type=float, default=_DEFAULT["blur"], show_default=True,
              help="Augmentation: seeing widened by a Gaussian of sigma up to this (px).")
@click.option("--target-purity", type=float,
              help="Set the model's threshold to the highest-recall one with at least this "
                   "validation precision (0.893 mirrors Zhang+2025) [default: F1-optimal].")
@click.option("--init-weights", help="Start from a torchvision ResNet-50 .pth or a pyengine "
                                     "model file (fine-tuning).")
@click.option("--seed", type=int, default=_DEFAULT["seed"], show_default=True,
              help="Seed of initialisation, split, order and augmentation.")
@click.option("--members", type=int, default=1, show_default=True,
              help="Train an ensemble of N members with seeds SEED, SEED+1, ... (one split, "
                   "drawn with SEED), written as STEM.m0.safetensors ... beside --output; scan "
                   "them with one --model per member.")
@click.option("--threads", type=int, help="CPU threads for torch [default: torch's].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint beside --output.")
@click.option("--keep-checkpoint", is_flag=True,
              help="Keep the checkpoint after the model is written.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-epoch lines.")
@click.pass_context
def train(ctx, images, catalog, output, members, bands, label_col, positive, classes, binary, ra_col,
          dec_col, x_col, y_col, positions, match_radius, unmatched_label, detect_threshold,
          min_area, detect_band, negative_ratio, mag_col, mag_limit, cutout_size, max_nan, split,
          val_fraction, block_size, epochs, batch_size, lr, weight_decay, warmup, balance,
          no_augment, noise, shift, dim, blur, target_purity, init_weights, seed, threads, resume,
          keep_checkpoint, quiet):
    """Train a ResNet-50 cluster classifier on IMAGES (one FITS image per band, or one
    survey manifest: training across its fields).

    Labels come from the catalog's label column: each value is a class; --positive
    names the values that count as cluster.  Writes the model file with the
    validation metrics (ROC AUC, PR curve, confusion matrix, F1-optimal and
    target-purity thresholds) and a PNG of the precision-recall curve.
    """
    from pyengine.training.report import Progress
    from pyengine.training.run import train as run_training

    config = TrainConfig(
        images=images, catalog=catalog, output=output, bands=_bands(bands),
        label_col=label_col, positive=_list(positive), classes=_list(classes), binary=binary,
        ra_col=ra_col, dec_col=dec_col, x_col=x_col, y_col=y_col, positions=positions,
        match_radius=match_radius, unmatched_label=unmatched_label,
        detect_threshold=detect_threshold, min_area=min_area, detect_band=detect_band,
        negative_ratio=negative_ratio,
        mag_col=mag_col,
        mag_limit=mag_limit, cutout_size=cutout_size, max_nan=max_nan, split=split,
        val_fraction=val_fraction, block_size=block_size, epochs=epochs,
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
        balance=balance, augment=not no_augment, noise=noise, shift=shift, dim=dim, blur=blur,
        target_purity=target_purity,
        init_weights=init_weights, seed=seed, threads=threads, resume=resume,
        keep_checkpoint=keep_checkpoint)
    if members != 1:
        return _train_members(ctx, config, members, quiet)
    result = run_training(config, log=lambda msg: click.echo(msg, err=True),
                          progress=Progress(sys.stderr, enabled=not quiet),
                          command_line=_command_line(ctx))
    m = result.spec.metrics
    t = m["threshold"]
    rule = ("target purity" if t["rule"] == "target_purity" else "F1-optimal")
    click.echo(f"wrote {result.model_path}: threshold {t['value']:.4f} ({rule}): purity "
               f"{t['precision']:.4f}, recall {t['recall']:.4f}, F1 {t['f1']:.4f}; "
               f"ROC AUC {m['roc_auc']:.4f}, PR AUC {m['pr_auc']:.4f} on "
               f"{m['validation']['n']} validation cutouts")
    click.echo(f"wrote {result.plot_path}")


def _train_members(ctx, config, members: int, quiet: bool) -> None:
    """``--members N``: the ensemble's members (:mod:`pyengine.training.members`)."""
    from pyengine.training.members import train_members
    from pyengine.training.report import Progress

    done = train_members(config, members, log=lambda msg: click.echo(msg, err=True),
                         progress=Progress(sys.stderr, enabled=not quiet),
                         command_line=_command_line(ctx))
    paths = []
    for result in done:
        if not hasattr(result, "spec"):  # kept from an earlier run (--resume)
            paths.append(str(result))
            continue
        t = result.spec.metrics["threshold"]
        click.echo(f"wrote {result.model_path}: threshold {t['value']:.4f}, purity "
                   f"{t['precision']:.4f}, recall {t['recall']:.4f} on "
                   f"{result.spec.metrics['validation']['n']} validation cutouts")
        paths.append(str(result.model_path))
    models = " ".join(f"--model {shlex.quote(p)}" for p in paths)
    click.echo(f"ensemble of {len(paths)} members; scan it with: pyengine scan "
               f"{' '.join(shlex.quote(i) for i in config.images)} {models} --out ...")
