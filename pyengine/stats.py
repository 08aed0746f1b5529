"""Robust noise: the one home of the 1.4826 x MAD estimate of a Gaussian sigma.

The median absolute deviation of Gaussian noise is sigma x Phi^-1(3/4); its
inverse, :data:`MAD_TO_SIGMA`, turns a MAD into a sigma estimate that a few
bright sources barely move (the usual astronomical background noise: SEP,
photutils ``mad_std``).  The tile statistics of the scan, SEP's background
fallback in detection, the training set's per-cutout noise, the demo's
display stretch and the model graph's border scale (torch ops, in
:mod:`pyengine.models.preprocess`, with this constant) all use it.

The functions compute exactly ``MAD_TO_SIGMA * median(|v - median(v)|)`` in
the input's dtype rules (a float32 array gives a float32 result), so moving a
caller here changes none of its numbers.

This is a leaf module (NumPy only).  Thread safety: pure functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAD_TO_SIGMA", "median_and_sigma", "nan_robust_sigma", "robust_sigma"]

#: 1 / Phi^-1(3/4): makes the MAD of Gaussian noise an estimate of its sigma.
MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray, centre=None):
    """``MAD_TO_SIGMA x median(|values - centre|)`` over all of ``values`` (finite values
    expected: NaN propagates); ``centre`` defaults to the median of ``values``."""
    if centre is None:
        centre = np.median(values)
    return MAD_TO_SIGMA * np.median(np.abs(values - centre))


def median_and_sigma(values: np.ndarray):
    """(median, robust sigma) of ``values`` (see :func:`robust_sigma`)."""
    centre = np.median(values)
    return centre, robust_sigma(values, centre)


def nan_robust_sigma(values: np.ndarray, axis) -> np.ndarray:
    """:func:`robust_sigma` along ``axis``, ignoring NaN; NaN where a slice has no finite
    value (NumPy warns "All-NaN slice" then: callers that expect it silence it)."""
    centre = np.nanmedian(values, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.nanmedian(np.abs(values - centre), axis=axis)
