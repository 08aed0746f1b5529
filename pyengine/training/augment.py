"""Augmentation and batch order: all randomness of an epoch from one seeded generator.

Each epoch draws its batch order and every augmentation from
``numpy.random.default_rng([seed, 1, epoch])``, consumed in a fixed order, so an
epoch is a pure function of (seed, epoch, data): a resumed run repeats an
uninterrupted one exactly without carrying NumPy generator state.

Cutouts are stored at S + 2 :data:`PAD` so that shifted views crop the image's
real neighbouring pixels (rolling would wrap the opposite edge in).  The
augmentations, in this order (labels are invariant under all of them), chosen
so that the model sees what a scan of *another* field sees:

* shift: the centre moves by (dx, dy), each uniform in [-``shift``, ``shift``] px.
  The integer part picks the crop; the fractional part (|f| <= 0.5) resamples
  it with the Keys (1981) cubic convolution kernel (a = -0.5), separable, 4 taps.
  Positions in a scan come from detection barycentres or catalogs, good to a
  pixel at best, and the cutout centre convention differs between tools by
  half a pixel to a pixel (astropy's ``Cutout2D`` for even sizes): a model
  trained on exact centres only changes its mind when moved by one pixel.
  Crops with blank pixels move by whole pixels only (no NaN is spread).
* the 8 dihedral transforms (4 rotations by 90 deg, each optionally transposed):
  the sky has no preferred orientation, and pixels stay on the grid.
* flux scaling (dimming): the cutout's light above its background (the border
  median of each band, the graph's own background) is scaled by a, uniform in
  [1 - ``dim``, 1], and noise of sigma ``sigma sqrt(1 - a^2)`` is added, so the
  noise level stays the cutout's own: the same object fainter, as in a
  shallower exposure or at a larger distance.
* seeing: with probability 1/2 the light above the background is convolved
  with a Gaussian of sigma uniform in [0, ``blur``] px (FWHM grows as
  ``sqrt(FWHM^2 + (2.355 sigma)^2)``), and white noise is added back to the
  noise level measured before (the blur smooths the noise too).  Blurring only
  widens; sharper seeing than the training fields' comes from training on
  several fields (``tools/train_demo_model.py`` uses 0.55-0.95" seeing).
* noise (depth): Gaussian with sigma = u x the cutout band's own robust noise
  (1.4826 MAD), u uniform in [0, ``noise``] per cutout; NaN pixels stay NaN.

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

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["PAD", "Augment", "augment_batch", "centre_crop", "class_weights", "cubic_weights",
           "epoch_batches", "epoch_rng"]

#: Pixels stored around the S x S cutout on each side: +-2 px shifts and the cubic
#: kernel's taps.
PAD = 3


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges (see the module doc); ``Augment.off()`` is the plain cutout."""

    shift: float = 2.0  # px, each axis
    dim: float = 0.4  # flux scale in [1 - dim, 1]
    blur: float = 1.5  # Gaussian sigma, px
    noise: float = 0.5  # times the cutout's own noise
    dihedral: bool = True

    @classmethod
    def off(cls) -> Augment:
        return cls(shift=0.0, dim=0.0, blur=0.0, noise=0.0, dihedral=False)


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
    """The scan's cutouts (offset PAD, PAD) from the stored S + 2 PAD cutouts."""
    return pixels[:, :, PAD:size + PAD, PAD:size + PAD]


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """Transform k in 0..7 of (..., S, S): rotate by 90 deg k % 4 times, transpose if k >= 4."""
    y = np.rot90(x, k % 4, axes=(-2, -1))
    return np.swapaxes(y, -1, -2) if k >= 4 else y


def cubic_weights(f: float) -> np.ndarray:
    """Keys (1981) cubic-convolution weights (a = -0.5) of the taps at -1, 0, 1, 2 for a
    sample at fractional offset ``f`` in [0, 1); they sum to 1."""
    d = np.abs(np.array([-1.0, 0.0, 1.0, 2.0]) - f)
    near = (1.5 * d - 2.5) * d * d + 1.0
    far = ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def _shifted(cut: np.ndarray, size: int, dx: float, dy: float) -> np.ndarray:
    """(C, S, S): the crop of a stored cutout whose centre is moved by (dx, dy) px."""
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy
    y0, x0 = PAD + iy, PAD + ix
    if (fx == 0 and fy == 0) or np.isnan(cut[:, y0 - 1:y0 + size + 2,
                                             x0 - 1:x0 + size + 2]).any():
        ry, rx = round(dy), round(dx)  # whole pixels only
        return cut[:, PAD + ry:PAD + ry + size, PAD + rx:PAD + rx + size]
    win = cut[:, y0 - 1:y0 + size + 2, x0 - 1:x0 + size + 2].astype(np.float64)
    wy, wx = cubic_weights(fy), cubic_weights(fx)
    rows = sum(wy[k] * win[:, k:k + size, :] for k in range(4))
    return sum(wx[k] * rows[:, :, k:k + size] for k in range(4)).astype(np.float32)


def _ring_median(x: np.ndarray, border: int = 4) -> np.ndarray:
    """(C,) median of each band's finite pixels in the outer ring (the graph's background)."""
    ring = np.concatenate([x[:, :border, :].reshape(x.shape[0], -1),
                           x[:, -border:, :].reshape(x.shape[0], -1),
                           x[:, border:-border, :border].reshape(x.shape[0], -1),
                           x[:, border:-border, -border:].reshape(x.shape[0], -1)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.nanmedian(ring, axis=1))


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """(C, S, S) convolved with a normalised Gaussian (separable, edges repeated)."""
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    size = x.shape[-1]
    p = np.pad(x.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="edge")
    rows = sum(k[j] * p[:, j:j + size, :] for j in range(2 * r + 1))
    return sum(k[j] * rows[:, :, j:j + size] for j in range(2 * r + 1))


def augment_batch(pixels: np.ndarray, sigma: np.ndarray, index: np.ndarray, size: int,
                  rng: np.random.Generator, *, augment: Augment | bool = True,
                  noise: float | None = None) -> np.ndarray:
    """(B, C, S, S) float32 training cutouts for rows ``index`` of the S + 2 PAD store.

    ``augment`` is an :class:`Augment`, True (the defaults) or False (the centre crops);
    ``noise`` overrides its noise amplitude.
    """
    b = index.size
    if augment is False:
        return np.ascontiguousarray(centre_crop(pixels[index], size))
    aug = Augment() if augment is True else augment
    if noise is not None:
        aug = Augment(aug.shift, aug.dim, aug.blur, noise, aug.dihedral)
    # Every draw is made whatever the ranges, in one order: a run's stream of
    # random numbers does not depend on which augmentations are on.
    shifts = rng.uniform(-1.0, 1.0, size=(b, 2)) * aug.shift
    turns = rng.integers(0, 8, size=b)
    scale = 1.0 - rng.uniform(0.0, 1.0, size=b) * aug.dim
    blurred = rng.uniform(0.0, 1.0, size=b) < 0.5
    widths = rng.uniform(0.0, 1.0, size=b) * aug.blur
    amp = rng.uniform(0.0, 1.0, size=b) * aug.noise
    out = np.empty((b, pixels.shape[1], size, size), dtype=np.float32)
    for j in range(b):
        x = _shifted(pixels[index[j]], size, float(shifts[j, 0]), float(shifts[j, 1]))
        if aug.dihedral:
            x = _dihedral(x, int(turns[j]))
        s = sigma[index[j]].astype(np.float64)[:, None, None]
        x = x.astype(np.float64)
        extra = np.zeros_like(s)  # variance of the noise to add
        if scale[j] < 1.0 or (blurred[j] and widths[j] > 0.3):
            bkg = _ring_median(x)[:, None, None]
            light = (x - bkg) * scale[j]
            extra += s * s * (1.0 - scale[j] ** 2)
            if blurred[j] and widths[j] > 0.3:
                light = _gaussian_blur(np.nan_to_num(light), float(widths[j]))
                # White noise of sigma s is left with s / (2 sqrt(pi) w) by a Gaussian of
                # sigma w (>= 0.3 px; the discrete kernel keeps a little more).
                left = min(1.0, 1.0 / (2.0 * np.sqrt(np.pi) * widths[j]))
                extra += s * s * scale[j] ** 2 * (1.0 - left * left)
                light = np.where(np.isnan(x), np.nan, light)
            x = bkg + light
        extra += (amp[j] * s) ** 2
        out[j] = x
        if extra.max() > 0:
            out[j] += (rng.standard_normal(x.shape) * np.sqrt(extra)).astype(np.float32)
    return out
