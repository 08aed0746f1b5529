"""The options of a training run (:class:`TrainConfig`, checked on construction), what
it returns (:class:`TrainResult`) and the fingerprint a resumed run must match.

Thread safety: immutable values and pure functions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from pyengine.validate import is_int, is_number, need

__all__ = ["BALANCES", "POSITIONS", "SPLITS", "TrainConfig", "TrainResult", "config_hash", "describe_changes"]

POSITIONS = ("catalog", "detect")  # training positions: the label catalog's, or detections
SPLITS = ("random", "spatial")  # validation split: stratified random, or spatial blocks
BALANCES = ("sampler", "loss", "none")  # class balancing (see pyengine.training.augment)

# Options that do not change the result (resume may change them).
_RUN_ONLY = ("output", "threads", "resume", "keep_checkpoint")


def _strings(v):
    return None if v is None else tuple(str(s) for s in v)


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (CLI option names in the error messages)."""

    images: tuple[str, ...]
    catalog: str
    output: str
    bands: tuple[str, ...] | None = None
    label_col: str | None = None
    positive: tuple[str, ...] | None = None  # label values that count as cluster
    classes: tuple[str, ...] | None = None  # label values to train on, in order
    binary: bool = False  # merge into non-cluster / cluster
    ra_col: str | None = None
    dec_col: str | None = None
    x_col: str | None = None
    y_col: str | None = None
    positions: str = "catalog"
    match_radius: float = 1.0  # arcsec, for positions="detect"
    unmatched_label: str | None = None  # label of unmatched detections
    detect_threshold: float = 3.0  # the scan's detection options (positions="detect")
    min_area: int = 5
    detect_band: str = "sum"
    negative_ratio: float | None = None  # keep at most this many non-clusters per cluster
    mag_col: str | None = None
    mag_limit: float | None = None  # keep rows with mag < mag_limit
    cutout_size: int = 64
    max_nan: float = 0.5  # drop cutouts more blank than this
    split: str = "random"
    val_fraction: float = 0.2
    block_size: int = 512  # pixels, for split="spatial"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of the steps with a linear warm-up
    balance: str = "sampler"
    augment: bool = True
    noise: float = 0.5  # added noise up to this times the cutout's own
    shift: float = 2.0  # px: centre shifts up to this on each axis
    dim: float = 0.4  # flux scaled by [1 - dim, 1] at constant noise
    blur: float = 1.5  # px: Gaussian seeing widening up to this sigma
    target_purity: float | None = None
    init_weights: str | None = None
    seed: int = 0
    threads: int | None = None
    resume: bool = False
    keep_checkpoint: bool = False
    #: Seed of the validation split alone (None: ``seed``); ensemble members
    #: (:mod:`pyengine.training.members`) differ in ``seed`` and share this one.
    split_seed: int | None = None

    def __post_init__(self):
        for name in ("images", "bands", "positive", "classes"):
            value = getattr(self, name)
            object.__setattr__(self, name, (str(value),) if isinstance(value, str | os.PathLike)
                               else _strings(value))
        for name in ("catalog", "output", "init_weights"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        need(bool(self.images), "images", self.images, "one band image per band is needed")
        need(self.positions in POSITIONS, "--positions", self.positions,
             f"accepted: {', '.join(POSITIONS)}")
        need(is_number(self.match_radius) and 0 < self.match_radius <= 60, "--match-radius",
             self.match_radius, "a radius in arcsec in (0, 60] is needed")
        need(is_number(self.detect_threshold) and self.detect_threshold > 0,
             "--detect-threshold", self.detect_threshold, "a number of sigma > 0 is needed")
        need(is_int(self.min_area) and self.min_area >= 1, "--min-area", self.min_area,
             "a number of pixels >= 1 is needed")
        need(self.mag_col is None or self.positions == "catalog", "--mag-col", self.mag_col,
             "with --positions detect the cut applies to the detections' magnitudes")
        need(self.negative_ratio is None or (is_number(self.negative_ratio)
                                             and self.negative_ratio > 0), "--negative-ratio",
             self.negative_ratio, "a number of non-clusters per cluster > 0 is needed")
        need(is_int(self.cutout_size) and 16 <= self.cutout_size <= 256, "--size",
             self.cutout_size, "an integer from 16 to 256 pixels is needed")
        need(is_number(self.max_nan) and 0 <= self.max_nan < 1, "--max-nan", self.max_nan,
             "a fraction in [0, 1) is needed")
        need(self.split in SPLITS, "--split", self.split, f"accepted: {', '.join(SPLITS)}")
        need(is_number(self.val_fraction) and 0 < self.val_fraction <= 0.5, "--val-fraction",
             self.val_fraction, "a fraction in (0, 0.5] is needed")
        need(is_int(self.block_size) and self.block_size >= 1, "--block-size",
             self.block_size, "a positive number of pixels is needed")
        need(is_int(self.epochs) and 1 <= self.epochs <= 100_000, "--epochs", self.epochs,
             "an integer from 1 to 100000 is needed")
        need(is_int(self.batch_size) and self.batch_size >= 2, "--batch-size",
             self.batch_size, "an integer >= 2 is needed (BatchNorm needs two samples)")
        need(is_number(self.lr) and self.lr > 0, "--lr", self.lr, "a number > 0 is needed")
        need(is_number(self.weight_decay) and self.weight_decay >= 0, "--weight-decay",
             self.weight_decay, "a number >= 0 is needed")
        need(is_number(self.warmup) and 0 <= self.warmup < 1, "--warmup", self.warmup,
             "a share of the steps in [0, 1) is needed")
        need(self.balance in BALANCES, "--balance", self.balance,
             f"accepted: {', '.join(BALANCES)}")
        need(is_number(self.noise) and 0 <= self.noise <= 10, "--noise", self.noise,
             "a number from 0 to 10 (times the cutout's own noise) is needed")
        need(is_number(self.shift) and 0 <= self.shift <= 2, "--shift", self.shift,
             "a number of pixels from 0 to 2 is needed")
        need(is_number(self.dim) and 0 <= self.dim < 1, "--dim", self.dim,
             "a fraction in [0, 1) is needed")
        need(is_number(self.blur) and 0 <= self.blur <= 5, "--blur", self.blur,
             "a Gaussian sigma from 0 to 5 pixels is needed")
        need(self.target_purity is None or (is_number(self.target_purity)
                                           and 0 < self.target_purity <= 1),
             "--target-purity", self.target_purity, "a precision in (0, 1] is needed")
        need(self.mag_limit is None or is_number(self.mag_limit), "--mag-limit", self.mag_limit,
             "a finite magnitude is needed")
        need(self.mag_col is None or self.mag_limit is not None, "--mag-col", self.mag_col,
             "it needs --mag-limit (the cut it applies)")
        need(is_int(self.seed) and 0 <= self.seed < 2**63, "--seed", self.seed,
             "an integer from 0 to 2**63 - 1 is needed")
        need(self.split_seed is None or (is_int(self.split_seed) and 0 <= self.split_seed < 2**63),
             "split_seed", self.split_seed, "None or an integer from 0 to 2**63 - 1 is needed")
        need(self.threads is None or (is_int(self.threads) and self.threads >= 1),
             "--threads", self.threads, "an integer >= 1 is needed")

    @property
    def augmentation(self):
        """The :class:`pyengine.training.augment.Augment` of these options (False: none)."""
        from pyengine.training.augment import Augment

        if not self.augment:
            return False
        return Augment(shift=self.shift, dim=self.dim, blur=self.blur, noise=self.noise)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.output).with_suffix(".train-state.pt")

    @property
    def plot_path(self) -> Path:
        return Path(self.output).with_suffix(".pr.png")

    @property
    def is_survey(self) -> bool:
        """Whether ``images`` is one survey manifest (training across its fields)."""
        from pyengine.survey.manifest import is_manifest

        return len(self.images) == 1 and is_manifest(self.images[0])

    def image_files(self) -> list[str]:
        """Every image file of the run (a manifest's fields' images, or ``images``)."""
        if not self.is_survey:
            return list(self.images)
        from pyengine.survey.manifest import read_manifest

        return [img for f in read_manifest(self.images[0]).fields for img in f.images]

    def fingerprint(self) -> dict:
        """What determines the result: the options and the input files' identities."""
        from pyengine.hashing import file_sha256
        from pyengine.io.fitsfile import parse_spec

        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUN_ONLY}
        files = []
        for spec in self.image_files():
            path = parse_spec(spec)[0]
            st = path.stat() if path.exists() else None
            files.append([os.fspath(path.resolve()), st and st.st_size, st and st.st_mtime_ns])
        out["image_files"] = files
        if self.is_survey:
            out["manifest_sha256"] = file_sha256(self.images[0])
        out["catalog_sha256"] = file_sha256(parse_spec(self.catalog)[0])
        if self.init_weights is not None:
            out["init_weights_sha256"] = file_sha256(self.init_weights)
        return json.loads(json.dumps(out))  # tuples -> lists, as in the checkpoint


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` wrote and measured."""

    model_path: Path
    plot_path: Path
    spec: object  # ModelSpec
    history: list
    cutouts_per_second: float  # training throughput of this run (nan if no epoch ran)




def config_hash(fingerprint: dict) -> tuple[str, str]:
    """(canonical JSON, its SHA-256) of a fingerprint."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def describe_changes(old_json: str, new: dict) -> str:
    """Which fingerprint keys differ between a checkpoint and this run."""
    try:
        old = json.loads(old_json)
    except (TypeError, json.JSONDecodeError):
        return "unreadable stored options"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in keys[:4]) or "none"

