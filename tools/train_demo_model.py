"""Train the demo model shipped as pyengine/models/data/demo.safetensors.

Reproducible end to end (synthetic data only; no real PAndAS image is used):

1. A training field: `pyengine synth` seed 101 with a dense cluster population.
2. Its truth catalog cut to i < 21 mag (Zhang et al. 2025 found that cut best),
   all clusters plus ten times as many stars and galaxies drawn at random (with
   three times as many, recall at purity 0.893 on the calibration field was 0.48
   instead of 0.66: the rarer confusers need examples).
3. `pyengine train` on it: cluster vs everything else, a spatial validation
   split, threshold at the paper's purity (0.893) where reachable.
4. The weights stored as int8 per output channel (the repository stays small).
5. The decision threshold calibrated on a third field (seed 303) holding every
   source with i < 21, so clusters are as rare as in a real scan (~1.5 %).
   Training balanced 1:3 and the validation split shares that ratio, so its
   threshold would be far too low for a real population (purity ~0.28 at the
   validation threshold on the test field, measured).  The threshold is the
   highest-recall one reaching the paper's purity 0.893, else the F1-optimal one.
6. Measured *after* the int8 round trip on a separate test field (seed 202):
   every truth source with i < 21, scored through the scan's own cutout path.
   The calibration and test metrics go into the file's spec (metrics).

Usage: python tools/train_demo_model.py [--workdir DIR] [--epochs 8] [--out PATH]
(about 20 minutes on 2 CPU cores; the shipped model is this command's output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from pyengine import Mosaic
from pyengine.metrics import f1_optimal_threshold, operating_point, purity_threshold
from pyengine.models.checkpoint import DEMO_MODEL, load_model, save_model
from pyengine.runners.torch import TorchRunner
from pyengine.scan.cutouts import extract_cutouts
from pyengine.synth import SynthConfig, make_field
from pyengine.train import TrainConfig, train

MAG_LIMIT = 21.0


def field(workdir: Path, seed: int, size: int, density: float):
    out = workdir / f"field-{seed}"
    if not (out / "truth.fits").exists():
        make_field(out, SynthConfig(width=size, height=size, seed=seed, cluster_density=density))
    return [str(out / "g.fits"), str(out / "i.fits")], out / "truth.fits"


def is_cluster_column(table) -> np.ndarray:
    """The truth table's class column ('cluster', 'star', 'galaxy'; stored as bytes) as booleans."""
    return np.char.strip(np.asarray(table["class"]).astype(str)) == "cluster"


def training_catalog(truth_path: Path, out: Path, seed: int, ratio: float) -> tuple[int, int]:
    truth = Table.read(truth_path, mask_invalid=False)
    truth = truth[truth["i_mag"] < MAG_LIMIT]
    is_cluster = is_cluster_column(truth)
    others = np.flatnonzero(~is_cluster)
    rng = np.random.default_rng(seed)
    pick = rng.choice(others, size=min(len(others), int(ratio * is_cluster.sum())), replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(is_cluster), pick]))
    sub = truth[rows]["id", "x", "y", "class", "g_mag", "i_mag"]
    sub.write(out, overwrite=True)
    return int(is_cluster.sum()), len(pick)


def score_field(model_path: Path, images, truth_path, batch: int = 256):
    """Scores (torch runner, fp32 graph) and cluster labels of every i < 21 truth source."""
    truth = Table.read(truth_path, mask_invalid=False)
    truth = truth[truth["i_mag"] < MAG_LIMIT]
    with TorchRunner(model_path, device="cpu", channels_last=False) as runner, \
            Mosaic.open(images) as mosaic:
        cut = extract_cutouts(mosaic, truth["x"], truth["y"], runner.spec.cutout_size)
        keep = cut.on_image & (cut.nan_fraction < 0.5)
        pixels = cut.pixels[keep]
        scores = [runner.infer(pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    return np.concatenate(scores), is_cluster_column(truth)[keep]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("demo-model-work"))
    ap.add_argument("--out", type=Path, default=DEMO_MODEL)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=4096)
    ap.add_argument("--test-size", type=int, default=2048)
    ap.add_argument("--density", type=float, default=4e4, help="clusters per deg^2 at i = 21 "
                    "mag/arcsec^2 of disk light (synth's --cluster-density)")
    ap.add_argument("--ratio", type=float, default=10.0, help="non-clusters per cluster")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    train_images, train_truth = field(args.workdir, 101, args.train_size, args.density)
    catalog = args.workdir / "train.ecsv"
    n_cl, n_other = training_catalog(train_truth, catalog, args.seed, args.ratio)
    print(f"training catalog: {n_cl} clusters, {n_other} stars/galaxies, i < {MAG_LIMIT}")
    fp32_path = args.workdir / "demo-fp32.safetensors"
    config = TrainConfig(images=tuple(train_images), catalog=str(catalog), output=str(fp32_path),
                         bands=("g", "i"), label_col="class", positive=("cluster",), binary=True,
                         x_col="x", y_col="y", split="spatial", epochs=args.epochs,
                         target_purity=0.893, seed=args.seed)
    if not fp32_path.exists():  # a rerun measures the model already trained
        train(config, command_line=" ".join(["python", *sys.argv]), log=print)
        print(f"trained in {time.time() - t0:.0f} s")
    model = load_model(fp32_path)
    print(f"validation: {json.dumps(model.spec.metrics, default=str)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, args.out, weights="int8-per-channel")
    compact = load_model(args.out)  # measured after the int8 round trip
    cal_images, cal_truth = field(args.workdir, 303, args.test_size, args.density)
    cal_scores, cal_labels = score_field(args.out, cal_images, cal_truth)
    chosen = purity_threshold(cal_labels, cal_scores, 0.893)
    rule = "target_purity 0.893"
    if chosen is None:
        chosen, rule = f1_optimal_threshold(cal_labels, cal_scores), "f1_optimal"
    calibration = {"field": f"synthetic, seed 303, {args.test_size} px, i < {MAG_LIMIT}",
                   "rule": rule, "validation_threshold": compact.spec.threshold,
                   **operating_point(cal_labels, cal_scores, chosen).to_dict()}
    compact.spec = compact.spec.replace(threshold=float(chosen))
    print(f"threshold calibrated on a realistic field: {json.dumps(calibration)}")
    test_images, test_truth = field(args.workdir, 202, args.test_size, args.density)
    scores, labels = score_field(args.out, test_images, test_truth)
    t = compact.spec.threshold
    point = operating_point(labels, scores, t).to_dict()
    fp32_scores, _ = score_field(fp32_path, test_images, test_truth)
    test = {"field": f"synthetic, seed 202, {args.test_size} px, i < {MAG_LIMIT}",
            "sources": len(labels), "clusters": int(labels.sum()), "threshold": t,
            **point,
            "int8_vs_fp32_decision_agreement": float(np.mean((scores >= t) == (fp32_scores >= t))),
            "int8_vs_fp32_max_score_difference": float(np.max(np.abs(scores - fp32_scores)))}
    metrics = {**compact.spec.metrics, "threshold_calibration": calibration, "test_field": test}
    compact.spec = compact.spec.replace(metrics=metrics)
    save_model(compact, args.out, weights="int8-per-channel")
    print(json.dumps(test, indent=2, default=str))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
