"""Reliability of probabilities: equal-width bins and the expected calibration error
(Guo et al. 2017): what training's report and ``pyengine calibrate`` measure.

Thread safety: pure functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BINS", "ece", "reliability_bins"]

BINS = 10


def reliability_bins(truth, prob, bins: int = BINS) -> dict:
    """Equal-width bins of ``prob``: count, mean predicted, observed fraction per bin."""
    truth, prob = np.asarray(truth, bool), np.asarray(prob, np.float64)
    k = np.minimum((prob * bins).astype(int), bins - 1)
    count = np.bincount(k, minlength=bins)
    pred = np.bincount(k, prob, minlength=bins) / np.maximum(count, 1)
    obs = np.bincount(k, truth.astype(float), minlength=bins) / np.maximum(count, 1)
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count.tolist(),
            "mean_predicted": pred.tolist(), "observed": obs.tolist()}


def ece(truth, prob, bins: int = BINS) -> float:
    """Expected calibration error: count-weighted mean |observed - predicted| over bins."""
    r = reliability_bins(truth, prob, bins)
    c = np.asarray(r["count"], float)
    return float(np.sum(c * np.abs(np.asarray(r["observed"]) - r["mean_predicted"])) / c.sum())
