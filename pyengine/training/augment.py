"""Augmentation and batch order: all randomness of an epoch from one seeded generator.

Each epoch draws its batch order and every augmentation from
``numpy.random.default_rng([seed, 1, epoch])``, consumed in a fixed order, so an
epoch is a pure function of (seed, epoch, data): a resumed run repeats an
uninterrupted one exactly without carrying NumPy generator state.

Augmentations (labels are invariant under all of them):

* jitter: cutouts are stored at S + 2; a crop at offsets (0..2, 0..2) moves the
  centre by -1, 0 or +1 px with the image's real neighbouring pixels (rolling
  would wrap the opposite edge in).  Offset (1, 1) is the scan's own cutout.
* the 8 dihedral transforms (4 rotations by 90 deg, each optionally transposed):
  the sky has no preferred orientation, and pixels stay on the grid.
* noise: Gaussian with sigma = u x the cutout band's own robust noise (1.4826 MAD),
  u uniform in [0, ``noise``] per cutout; NaN pixels stay NaN.

Class balancing (``balance="sampler"``, the default): each class is drawn with equal
probability, with replacement, one epoch = as many draws as training rows.  It is
chosen over a class-weighted loss because clusters are rare (a few per cent of
sources): balanced batches keep BatchNorm's batch statistics representative of both
classes and the gradient of the rare class low-variance, and augmentation turns the
repeats into distinct views.  ``balance="loss"`` weights the cross-entropy by
n / (K n_k) instead; ``"none"`` does neither.  Both keep one pass over the shuffled
rows per epoch.

Thread safety: pure functions of their arguments and the generator passed in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["augment_batch", "centre_crop", "class_weights", "epoch_batches",
           "epoch_rng"]


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch`` (0-based): batch order, then augmentations."""
    return np.random.default_rng([seed, 1, epoch])


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (K n_k) per class (float64): 1 for every class when balanced."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, labels.size / (n_classes * np.maximum(counts, 1)), 0.0)


def epoch_batches(labels: np.ndarray, n_classes: int, batch: int, balance: str,
                  rng: np.random.Generator) -> np.ndarray:
    """(steps, batch) indices into ``labels`` for one epoch; steps = n // batch (>= 1)."""
    n = labels.size
    batch = min(batch, n)
    steps = n // batch
    if balance == "sampler":
        w = class_weights(labels, n_classes)[labels]
        draws = rng.choice(n, size=steps * batch, replace=True, p=w / w.sum())
    else:  # one pass over a permutation; the remainder falls to the next epoch's shuffle
        draws = rng.permutation(n)[: steps * batch]
    return draws.reshape(steps, batch)


def centre_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """The scan's cutouts (offset 1, 1) from the stored S + 2 cutouts."""
    return pixels[:, :, 1:size + 1, 1:size + 1]


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Transform k in 0..7 of (..., S, S): rotate by 90 deg k % 4 times, transpose if k >= 4."""
    y = np.rot90(x, k % 4, axes=(-2, -1))
    return np.swapaxes(y, -1, -2) if k >= 4 else y


def augment_batch(pixels: np.ndarray, sigma: np.ndarray, index: np.ndarray, size: int,
                  rng: np.random.Generator, *, augment: bool = True,
                  noise: float = 0.5) -> np.ndarray:
    """(B, C, S, S) float32 training cutouts for rows ``index`` of the S + 2 store."""
    b = index.size
    if not augment:
        return np.ascontiguousarray(centre_crop(pixels[index], size))
    offsets = rng.integers(0, 3, size=(b, 2))
    turns = rng.integers(0, 8, size=b)
    out = np.empty((b, pixels.shape[1], size, size), dtype=np.float32)
    for j in range(b):
        oy, ox = offsets[j]
        out[j] = _dihedral(pixels[index[j], :, oy:oy + size, ox:ox + size], int(turns[j]))
    if noise > 0:
        amp = (rng.uniform(0.0, noise, size=b)[:, None] * sigma[index]).astype(np.float32)
        out += rng.standard_normal(out.shape, dtype=np.float32) * amp[:, :, None, None]
    return out
