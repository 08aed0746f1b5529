"""Train the demo model shipped as pyengine/models/data/demo.safetensors (issue 14 recipe).

Reproducible end to end (synthetic data only; no real PAndAS image is used).  Stages
(each reuses what an earlier run left in --workdir):

1. ``train``: three training fields that differ in seed, centre (so in disk light and
   crowding) and seeing (x1.0, x1.2, x0.85 the synth's PAndAS-like 0.8"/0.7" g/i).
   ``pyengine train --positions detect``: the scan's own detections (i < 21 aperture
   magnitudes, as ``pyengine scan --mag-limit 21``), labelled by a one-to-one match
   within 1" to the truth objects brighter than i = 21.5 (fainter truth objects are
   not what a detection of i < 21 is; matched to them, clusters would be "stars");
   unmatched detections are negatives.  Six non-clusters are kept per cluster, the
   rest left out at random; shifts of +-2 px (sub-pixel), dimming, seeing blur,
   noise and the 8 flips/rotations; a spatial validation split.
2. ``calibrate``: the weights stored as int8 per output channel (the repository
   stays small), then ``pyengine calibrate`` on a fourth field (its own seed, centre
   and seeing): temperature scaling on its detections, and the threshold reaching
   the paper's purity 0.893 at that field's prevalence (every i < 21 detection: no
   enrichment).
3. ``evaluate``: held-out fields that differ from all of the above in seed and in
   centre (the inner crowded disk at RA 10.86, Dec 41.47; the outer disk; seeing
   x1.4), at their own prevalence, each scanned in catalog mode (every i < 21 truth
   source) and in detection mode (``--mag-limit 21``) and measured with
   ``pyengine evaluate``; the 99th percentile of the score change under 1 px shifts
   of held-out sources; an injection-recovery summary.  The figures go into the
   model file's ``metrics["held_out"]`` and are printed as JSON.

Usage: python tools/train_demo_model.py [--workdir DIR] [--stage all|train|calibrate|evaluate]
(cost on this machine's 2 cores is recorded in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from pyengine.models.checkpoint import DEMO_MODEL, load_model, save_model
from pyengine.synth import DEFAULT_BANDS, SynthConfig, make_field
from pyengine.train import TrainConfig, train

MAG_LIMIT = 21.0
LABEL_LIMIT = 21.5  # truth objects a detection of i < 21 can be matched to
DENSITY = 4e4  # clusters per deg^2 at i = 21 mag/arcsec^2 of disk light
TARGET_PURITY = 0.893  # Zhang et al. 2025

# name: (seed, ra, dec, seeing factor, size px)
TRAIN_FIELDS = {"train-a": (101, 11.013, 41.584, 1.0, 3072),
                "train-b": (111, 10.40, 40.98, 1.2, 3072),
                "train-c": (121, 10.95, 41.20, 0.85, 3072)}
CAL_FIELD = {"calibration": (303, 10.55, 41.10, 1.1, 2560)}
HELD_OUT = {"inner-disk": (202, 10.86, 41.47, 1.0, 2048),
            "outer-disk": (404, 11.30, 41.95, 1.0, 2048),
            "seeing-1.4x": (505, 11.10, 41.35, 1.4, 2048)}


def field(workdir: Path, name: str, spec) -> dict:
    """Render (once) a synthetic field; its images, truth and label catalogs."""
    seed, ra, dec, seeing, size = spec
    out = workdir / name
    truth = out / "truth.fits"
    if not truth.exists():
        bands = tuple(dataclasses.replace(b, seeing=round(b.seeing * seeing, 4))
                      for b in DEFAULT_BANDS)
        make_field(out, SynthConfig(width=size, height=size, seed=seed, ra=ra, dec=dec,
                                    bands=bands, cluster_density=DENSITY))
    labels = out / "labels.fits"
    if not labels.exists():
        t = Table.read(truth, mask_invalid=False)
        t["class"] = np.char.strip(np.asarray(t["class"]).astype(str))
        t[t["i_mag"] < LABEL_LIMIT]["id", "ra", "dec", "class", "g_mag", "i_mag", "r_h_pc"
                                    ].write(labels, overwrite=True)
        t[t["i_mag"] < MAG_LIMIT]["id", "ra", "dec", "class", "g_mag", "i_mag", "r_h_pc"
                                  ].write(out / "truth-i21.fits", overwrite=True)
    return {"name": name, "images": [str(out / "g.fits"), str(out / "i.fits")],
            "truth": str(truth), "labels": str(labels), "truth_i21": str(out / "truth-i21.fits"),
            "dir": out, "seed": seed, "ra": ra, "dec": dec, "seeing_factor": seeing,
            "size": size}


def stage_train(args) -> Path:
    fields = [field(args.workdir, n, s) for n, s in TRAIN_FIELDS.items()]
    manifest = args.workdir / "train-survey.ecsv"
    from pyengine.survey.manifest import Field, Survey

    Survey(tuple(Field(f["name"], tuple(f["images"])) for f in fields), ("g", "i")
           ).write(manifest)
    # One label catalog for the survey: the rows of every field (ids made unique).
    tables = [Table.read(f["labels"]) for f in fields]
    for k, t in enumerate(tables):
        t["id"] = t["id"] + k * 10**9
    vstack(tables, metadata_conflicts="silent").write(args.workdir / "train-labels.fits", overwrite=True)
    fp32 = args.workdir / "demo-fp32.safetensors"
    if fp32.exists():
        return fp32
    t0 = time.time()
    cfg = TrainConfig(images=(str(manifest),), catalog=str(args.workdir / "train-labels.fits"),
                      output=str(fp32), label_col="class", positive=("cluster",), binary=True,
                      positions="detect", match_radius=1.0, mag_limit=MAG_LIMIT,
                      negative_ratio=6.0, split="spatial", epochs=args.epochs, seed=args.seed,
                      threads=args.threads)
    train(cfg, command_line=" ".join(["python", *sys.argv]), log=print)
    print(f"trained in {time.time() - t0:.0f} s")
    return fp32


def stage_calibrate(args, fp32: Path) -> Path:
    from pyengine.training.calibrate import calibrate

    compact = args.workdir / "demo-int8.safetensors"
    save_model(load_model(fp32), compact, weights="int8-per-channel")
    cal = field(args.workdir, "calibration", CAL_FIELD["calibration"])
    t0 = time.time()
    r = calibrate(compact, cal["images"], cal["labels"], args.out, log=print,
                  positions="detect", match_radius=1.0, mag_limit=MAG_LIMIT, label_col="class",
                  positive=("cluster",), target_purity=TARGET_PURITY, threads=args.threads)
    print(f"calibrated in {time.time() - t0:.0f} s: {json.dumps(r, default=str)}")
    return args.out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("demo-model-work"))
    ap.add_argument("--out", type=Path, default=DEMO_MODEL)
    ap.add_argument("--stage", choices=("all", "train", "calibrate", "evaluate"), default="all")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fp32 = stage_train(args)
    if args.stage in ("all", "calibrate"):
        stage_calibrate(args, fp32)
    if args.stage in ("all", "evaluate"):
        from tools.evaluate_demo_model import evaluate_model  # the held-out measurements

        evaluate_model(args.out, args.workdir, field, HELD_OUT, threads=args.threads)
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
