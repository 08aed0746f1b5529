"""The body of :func:`pyengine.train.train`: data, model, epochs, checkpoint, model file.

``train`` sets torch's thread count, determinism and a forked RNG around :func:`run`.

Fine-tuning (``--init-weights``): a torchvision-format ResNet-50 ``.pth`` (a zip or
pickle of tensors, loaded with ``weights_only=True``; conv1 adapted to the bands, a
new head), or a pyengine model file, whose weights, preprocessing and (for the same
class names) head are continued.

Thread safety: one run per process (see :mod:`pyengine.train`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pyengine import __version__
from pyengine.bands import match_order
from pyengine.errors import ConfigError, ModelFileError
from pyengine.metrics import roc_auc
from pyengine.models.checkpoint import file_sha256, load_model, read_spec, save_model
from pyengine.models.classifier import ClusterClassifier
from pyengine.models.resnet import load_torchvision_weights
from pyengine.models.spec import ModelSpec, PreprocessSpec
from pyengine.training.config import TrainConfig, TrainResult, config_hash, describe_changes
from pyengine.training.data import split_indices
from pyengine.training.fields import fewer_negatives, training_data
from pyengine.training.loop import (
    build_optimizer,
    build_scheduler,
    load_state,
    predict,
    restore,
    save_state,
    train_epoch,
)
from pyengine.training.report import plot_pr_curve, validation_metrics

__all__ = ["run", "train"]

_log = logging.getLogger("pyengine.train")


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # the reproducible-builds convention
    when = (datetime.fromtimestamp(int(epoch), tz=timezone.utc) if epoch and epoch.isdigit()
            else datetime.now(timezone.utc))
    return when.isoformat(timespec="seconds")


def init_kind(path: str) -> str:
    """'torchvision' for a torch.save file, else 'pyengine' (a safetensors model file)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file (--init-weights)")
    with open(p, "rb") as fh:
        head = fh.read(9)
    # A safetensors file: an 8-byte little-endian header length, then the JSON header
    # ("{"); its first byte may be anything, 0x80 included.  torch.save writes a zip
    # archive (PK); older torch a bare pickle (0x80 PROTO).
    if len(head) == 9 and head[8:9] == b"{":
        return "pyengine"
    return "torchvision" if head.startswith(b"PK") or head[:1] == b"\x80" else "pyengine"


def apply_init(model, path: str, kind: str, log) -> list[str]:
    """Load --init-weights into ``model``; returns the keys left freshly initialised."""
    if kind == "torchvision":
        fresh = load_torchvision_weights(model.backbone, path)
        log(f"--init-weights {path}: torchvision ResNet-50 weights, conv1 adapted to "
            f"{model.spec.nband} bands{', new head' if fresh else ''}")
        return fresh
    src = load_model(path)
    if src.spec.nband != model.spec.nband:
        raise ModelFileError(f"{path}: a model of {src.spec.nband} bands {list(src.spec.bands)};"
                             f" these images have {model.spec.nband} ({list(model.spec.bands)})")
    order = match_order(model.spec.bands, src.spec.bands)
    if order is not None and order != list(range(len(order))):
        # Same bands in another order: conv1's channels would be swapped silently.
        raise ModelFileError(f"{path}: a model of bands {list(src.spec.bands)}; these images "
                             f"are {list(model.spec.bands)}: give the images in the model's "
                             "band order")
    state = src.backbone.state_dict()
    fresh = []
    if src.spec.class_names != model.spec.class_names:
        fresh = ["fc.weight", "fc.bias"]
        own = model.backbone.state_dict()
        state.update({k: own[k] for k in fresh})
    model.backbone.load_state_dict(state, strict=True)
    log(f"--init-weights {path}: continuing pyengine model of classes "
        f"{list(src.spec.class_names)}{'; new head' if fresh else ''}")
    return fresh


def _val_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = probabilities[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.maximum(p, 1e-12))))


def _counts(labels, names) -> str:
    return ", ".join(f"{int(np.sum(labels == k))} {n}" for k, n in enumerate(names))


def run(cfg, *, log, progress=None, command_line=None, on_epoch_end=None) -> TrainResult:
    kind = init_kind(cfg.init_weights) if cfg.init_weights is not None else None
    preprocess = (read_spec(cfg.init_weights)[0].preprocess if kind == "pyengine"
                  else PreprocessSpec())
    data, bands, pixel_scale = training_data(cfg, log)
    if cfg.negative_ratio is not None:
        data = fewer_negatives(data, cfg.negative_ratio, cfg.seed, log)
    plan = data.plan
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    train_idx, val_idx = split_indices(data, method=cfg.split, fraction=cfg.val_fraction,
                                       block=cfg.block_size, seed=split_seed)
    log(f"training on {train_idx.size} cutouts "
        f"({_counts(data.labels[train_idx], plan.class_names)}), validating on {val_idx.size} "
        f"({_counts(data.labels[val_idx], plan.class_names)}), {cfg.split} split; "
        f"cluster classes: {', '.join(plan.positive_values)}")
    try:
        spec = ModelSpec(bands=tuple(bands), cutout_size=cfg.cutout_size,
                         pixel_scale=round(pixel_scale, 6), preprocess=preprocess,
                         class_names=plan.class_names, positive_classes=plan.positive).validate()
    except ModelFileError as exc:
        raise ConfigError(f"these options make no valid model: {exc}") from None
    torch.manual_seed(cfg.seed)
    model = ClusterClassifier(spec)
    fresh = apply_init(model, cfg.init_weights, kind, log) if kind is not None else []
    steps = train_idx.size // min(cfg.batch_size, train_idx.size)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.epochs * steps, cfg.warmup)

    fingerprint = cfg.fingerprint()
    config_json, digest = config_hash(fingerprint)
    ckpt = cfg.checkpoint_path
    start, history = 0, []
    if cfg.resume and ckpt.exists():
        state = load_state(ckpt)
        if state["config_hash"] != digest:
            raise ConfigError(f"{ckpt}: the checkpoint was made with other options or data "
                              f"({describe_changes(state['config'], fingerprint)}); rerun "
                              "without --resume to start again")
        restore(state, model=model, optimizer=optimizer, scheduler=scheduler)
        start, history = int(state["epoch"]), list(state["history"])
        log(f"resuming from {ckpt} after epoch {start} of {cfg.epochs}")
    elif cfg.resume:
        log(f"--resume: no checkpoint {ckpt}; starting at epoch 1")
    elif ckpt.exists():
        log(f"replacing the checkpoint {ckpt} of an earlier run (--resume continues one)")

    probabilities, rates = None, []
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        if progress is not None:
            progress.start(epoch + 1, cfg.epochs, steps)
        loss = train_epoch(model, optimizer, scheduler, data, train_idx, epoch, cfg, progress)
        seconds = time.perf_counter() - t0
        rates.append(steps * min(cfg.batch_size, train_idx.size) / seconds)
        probabilities = predict(model, data.pixels[val_idx], cfg.cutout_size)
        score = probabilities[:, list(plan.positive)].sum(axis=1)
        auc = roc_auc(data.is_positive[val_idx], score)
        entry = {"epoch": epoch + 1, "loss": loss,
                 "val_loss": _val_loss(probabilities, data.labels[val_idx]),
                 "val_roc_auc": auc, "lr_end": float(scheduler.get_last_lr()[0])}
        history.append(entry)
        save_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                   epoch=epoch + 1, config_json=config_json, config_hash=digest,
                   history=history)
        line = (f"loss {loss:.4f}, val loss {entry['val_loss']:.4f}, val ROC AUC {auc:.4f}, "
                f"{rates[-1]:.1f} cutouts/s, {seconds:.1f} s")
        if progress is not None:
            progress.end(line)
        else:
            log(f"epoch {epoch + 1}/{cfg.epochs}: {line}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    if probabilities is None:
        probabilities = predict(model, data.pixels[val_idx], cfg.cutout_size)

    threshold, rule, metrics = validation_metrics(probabilities, data.labels[val_idx], plan,
                                                  cfg.target_purity)
    if cfg.target_purity is not None and rule != "target_purity":
        log(f"no threshold reaches purity {cfg.target_purity:g} on the validation set; the model "
            f"uses the F1-optimal threshold {threshold:.4f} instead")
    metrics["training"] = {"n": int(train_idx.size),
                           "per_class": {n: int(np.sum(data.labels[train_idx] == k))
                                         for k, n in enumerate(plan.class_names)},
                           "final_loss": history[-1]["loss"] if history else None}
    provenance = {
        "pyengine_version": __version__, "torch_version": torch.__version__, "date": _date(),
        "command_line": command_line, "images": [os.path.abspath(p) for p in cfg.images],
        "positions": cfg.positions, "negative_ratio": cfg.negative_ratio,
        **({"match_radius_arcsec": cfg.match_radius,
            "detection": {"threshold": cfg.detect_threshold, "min_area": cfg.min_area,
                          "band": cfg.detect_band}} if cfg.positions == "detect" else {}),
        "catalog": os.path.abspath(cfg.catalog), "catalog_sha256": fingerprint["catalog_sha256"],
        "label_column": data.label_col, "label_values": list(plan.label_values),
        "positive_values": list(plan.positive_values), "binary": cfg.binary,
        "position_columns": list(data.position_columns), "magnitude_column": data.mag_col,
        "mag_limit": cfg.mag_limit, "max_nan": cfg.max_nan, "rows": data.counts,
        "split": {"method": cfg.split, "val_fraction": cfg.val_fraction, "seed": split_seed,
                  **({"block_size": cfg.block_size} if cfg.split == "spatial" else {})},
        "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "weight_decay": cfg.weight_decay, "warmup": cfg.warmup, "schedule": "warmup+cosine",
        "optimizer": "AdamW", "balance": cfg.balance, "augment": cfg.augment,
        "noise": cfg.noise, "shift": cfg.shift, "dim": cfg.dim, "blur": cfg.blur, "threads": torch.get_num_threads(),
        "init_weights": None if kind is None else {
            "path": os.path.abspath(cfg.init_weights), "kind": kind,
            "sha256": file_sha256(cfg.init_weights), "fresh": fresh},
        "history": history,
    }
    model.spec = spec.replace(threshold=threshold, provenance=provenance, metrics=metrics)
    save_model(model, cfg.output)
    title = f"{Path(cfg.output).name}: {metrics['validation']['n']} validation cutouts"
    plot = plot_pr_curve(cfg.plot_path, probabilities, data.labels[val_idx], plan, metrics, title)
    if not cfg.keep_checkpoint:
        ckpt.unlink(missing_ok=True)
    rate = float(np.mean(rates)) if rates else math.nan
    return TrainResult(Path(cfg.output), plot, model.spec, history, rate)


def train(config: TrainConfig, *, log: Callable[[str], None] | None = None, progress=None,
          command_line: str | None = None,
          on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Run ``config``; write the model file and its PR-curve PNG (see :mod:`pyengine.train`).

    ``log`` receives one-line notes (default: the ``pyengine.train`` logger);
    ``progress`` is a :class:`pyengine.training.report.Progress` (default: one log
    line per epoch); ``on_epoch_end(epoch)`` runs after each epoch's checkpoint.
    """
    import torch

    log = log or _log.info
    out = Path(config.output)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise ConfigError(f"--output {config.output!r}: directory {str(out.parent)!r} does not "
                          "exist or is not writable")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            return run(config, log=log, progress=progress, command_line=command_line,
                       on_epoch_end=on_epoch_end)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
