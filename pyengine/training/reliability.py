"""Reliability of probabilities as the training report and ``pyengine calibrate`` store
them: JSON-plain bins and the expected calibration error, from
:func:`pyengine.metrics.reliability` (the one implementation).

Thread safety: pure functions.
"""

from __future__ import annotations

import numpy as np

from pyengine.metrics import expected_calibration_error, reliability

__all__ = ["BINS", "ece", "reliability_bins"]

BINS = 10


def reliability_bins(truth, prob, bins: int = BINS) -> dict:
    """Equal-width bins of ``prob``: edges, count, mean predicted, observed fraction (JSON:
    empty bins' means and fractions are 0)."""
    r = reliability(np.asarray(truth, bool), np.clip(np.asarray(prob, np.float64), 0, 1), bins)
    return {"edges": r.edges.tolist(), "count": r.count.tolist(),
            "mean_predicted": np.nan_to_num(r.mean_predicted).tolist(),
            "observed": np.nan_to_num(r.observed).tolist()}


def ece(truth, prob, bins: int = BINS) -> float:
    """Expected calibration error (Guo et al. 2017) of the cluster probability."""
    return float(expected_calibration_error(np.asarray(truth, bool),
                                            np.clip(np.asarray(prob, np.float64), 0, 1), bins))
