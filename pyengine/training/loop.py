"""The optimisation loop: AdamW, a warm-up + cosine schedule, epochs, prediction, checkpoints.

Optimiser: AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on the
convolution and linear weights only; BatchNorm parameters and biases are not
decayed (decay would only shrink their scale, which BatchNorm undoes).  Schedule:
the learning rate rises linearly over the first ``warmup`` share of the steps
(at least one step), then follows a cosine to 0 at the last step, stepped per batch.

Checkpoint (``<output stem>.train-state.pt``), written atomically after every
epoch: the backbone's state dict, the optimiser and scheduler states, torch's
RNG state (a ByteTensor), the epoch count, per-epoch history and the JSON config
with its hash.  Every value is a tensor or a plain type, so it loads with
``torch.load(weights_only=True)``.  NumPy generators need no state: each epoch's
generator is derived from (seed, epoch) (see :mod:`pyengine.training.augment`).

Thread safety: training mutates the model, optimiser and torch's global RNG; run
one training per process.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pyengine.atomic import atomic_path
from pyengine.errors import ConfigError
from pyengine.training.augment import (
    augment_batch,
    centre_crop,
    class_weights,
    epoch_batches,
    epoch_rng,
)

__all__ = ["STATE_FORMAT", "build_optimizer", "build_scheduler", "load_state", "predict",
           "save_state", "train_epoch"]

STATE_FORMAT = "pyengine-train-state"
STATE_VERSION = 1


def build_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.backbone.named_parameters():
        (decay if p.ndim > 1 and name.endswith("weight") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer, total_steps: int, warmup: float):
    warm = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(model, optimizer, scheduler, data, train_idx: np.ndarray, epoch: int, cfg,
                progress=None) -> float:
    """One epoch over ``train_idx``; returns the mean training loss."""
    model.train()
    rng = epoch_rng(cfg.seed, epoch)
    n_classes = len(data.plan.class_names)
    labels = data.labels[train_idx]
    batches = epoch_batches(labels, n_classes, cfg.batch_size, cfg.balance, rng)
    weight = None
    if cfg.balance == "loss":
        weight = torch.from_numpy(class_weights(labels, n_classes).astype(np.float32))
    total = 0.0
    for step, local in enumerate(batches):
        rows = train_idx[local]
        x = augment_batch(data.pixels, data.sigma, rows, cfg.cutout_size, rng,
                          augment=cfg.augmentation)
        y = torch.from_numpy(data.labels[rows])
        loss = F.cross_entropy(model.logits(torch.from_numpy(x)), y, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"the training loss became {value} at epoch {epoch + 1}, step "
                              f"{step + 1}; lower --lr (now {cfg.lr:g})")
        total += value
        if progress is not None:
            progress.step(rows.size, value)
    return total / len(batches)


@torch.inference_mode()
def predict(model, pixels: np.ndarray, size: int, batch: int = 256) -> np.ndarray:
    """(n, K) float64 class probabilities of the scan's cutouts (centre crops)."""
    model.eval()
    out = np.empty((pixels.shape[0], model.spec.num_classes), dtype=np.float64)
    for lo in range(0, pixels.shape[0], batch):
        x = np.ascontiguousarray(centre_crop(pixels[lo:lo + batch], size))
        probabilities, _ = model(torch.from_numpy(x))
        out[lo:lo + batch] = probabilities.double().numpy()
    return out


def save_state(path: Path, *, model, optimizer, scheduler, epoch: int, config_json: str,
               config_hash: str, history: list) -> None:
    """Write the checkpoint atomically (temporary file + rename)."""
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(epoch),
        "config": config_json, "config_hash": config_hash, "history": history,
        "model": model.backbone.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the training checkpoint "
                          f"({exc.strerror})") from None


def load_state(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_state` (plain tensors only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ConfigError(f"{path}: not a readable pyengine training checkpoint "
                          f"({exc.__class__.__name__}); delete it to start again") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: not a pyengine training checkpoint; delete it or choose "
                          "another --output")
    if state.get("version") != STATE_VERSION:
        raise ConfigError(f"{path}: checkpoint version {state.get('version')!r}; this pyengine "
                          f"resumes version {STATE_VERSION}")
    return state


def restore(state: dict, *, model, optimizer, scheduler) -> None:
    """Put a loaded checkpoint's states back into fresh objects."""
    model.backbone.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
