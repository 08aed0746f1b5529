"""Classifier metrics in plain NumPy: PR and ROC curves, AUCs, thresholds, confusion.

Conventions (used by training, the model file's metrics and every report):

* A source is predicted positive (a cluster candidate) when ``score >= threshold``.
* Curves are evaluated at every *distinct* score, from the highest down: the
  threshold ``t_k`` predicts positive every source with ``score >= t_k``, so the
  reported precision/recall at a threshold are exactly what that threshold gives
  on these data.  Precision at a threshold is always defined (the source whose
  score it is counts as predicted positive).  Recall is ``nan`` without positives.
* F1 = 2 TP / (2 TP + FP + FN), 0 when TP = 0.
* ``roc_auc`` is the probability that a random positive outscores a random
  negative, ties counting one half (the Mann-Whitney U statistic / (P N)); it
  equals the trapezoid area under the ROC curve.  ``nan`` if a class is absent.
* ``average_precision`` (the "PR AUC") is sum_k (R_k - R_{k-1}) P_k over the
  curve's points, R_0 = 0: the step-wise area, without interpolation (the same
  definition as scikit-learn's ``average_precision_score``).
* ``f1_optimal_threshold``: the threshold of largest F1; among equal F1, the
  highest threshold (fewest candidates).
* ``purity_threshold(target)``: among thresholds whose precision is >= target,
  the one with the largest recall; among those of equal recall, the highest
  threshold (it has the fewest false positives, hence the best precision).
  ``None`` when no threshold reaches the target; callers decide the fallback.

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyengine.errors import ConfigError

__all__ = [
    "Curve",
    "OperatingPoint",
    "average_precision",
    "binary_curve",
    "confusion_matrix",
    "f1_optimal_threshold",
    "operating_point",
    "purity_threshold",
    "roc_auc",
]


def _binary_inputs(y_true, score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ConfigError(f"labels {y.shape} and scores {s.shape} must be 1-D arrays of one length")
    if y.dtype != bool:
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ConfigError("binary labels must be booleans or 0/1")
        y = y.astype(bool)
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"{int(np.sum(~np.isfinite(s)))} scores are NaN or infinite; "
                          "finite scores are needed")
    return y, s


@dataclass(frozen=True)
class Curve:
    """Counts at every distinct score (descending): the PR and ROC curves in one."""

    thresholds: np.ndarray  # (m,) distinct scores, highest first
    tp: np.ndarray  # (m,) positives with score >= threshold
    fp: np.ndarray  # (m,) negatives with score >= threshold
    n_pos: int
    n_neg: int

    @property
    def precision(self) -> np.ndarray:
        return self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.tp / np.float64(self.n_pos)

    @property
    def fpr(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.fp / np.float64(self.n_neg)

    @property
    def f1(self) -> np.ndarray:
        fn = self.n_pos - self.tp
        denom = 2 * self.tp + self.fp + fn
        return np.where(self.tp > 0, 2.0 * self.tp / np.maximum(denom, 1), 0.0)


def binary_curve(y_true, score) -> Curve:
    """Cumulative true/false positive counts at each distinct score, highest first."""
    y, s = _binary_inputs(y_true, score)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # Last index of each run of equal scores: the threshold includes the whole run.
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, np.int64)
    tp = np.cumsum(y, dtype=np.int64)[ends]
    fp = (ends + 1) - tp
    n_pos = int(y.sum())
    return Curve(s[ends], tp, fp, n_pos, int(y.size) - n_pos)


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve (ties count 1/2); ``nan`` if a class is absent."""
    c = binary_curve(y_true, score)
    if c.n_pos == 0 or c.n_neg == 0:
        return float("nan")
    tpr = np.r_[0.0, c.tp / c.n_pos]
    fpr = np.r_[0.0, c.fp / c.n_neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(y_true, score) -> float:
    """Step-wise area under the precision-recall curve; ``nan`` without positives."""
    c = binary_curve(y_true, score)
    if c.n_pos == 0:
        return float("nan")
    recall = np.r_[0.0, c.recall]
    return float(np.sum(np.diff(recall) * c.precision))


@dataclass(frozen=True)
class OperatingPoint:
    """What ``score >= threshold`` gives on labelled data."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    def to_dict(self) -> dict:
        """Plain types for JSON: the counts, precision (purity), recall and F1."""
        return {"threshold": float(self.threshold), "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "tn": self.tn, "precision": _finite(self.precision),
                "recall": _finite(self.recall), "f1": float(self.f1)}


def _finite(v: float):
    return None if v != v else float(v)  # NaN -> None (JSON has no NaN)


def operating_point(y_true, score, threshold: float) -> OperatingPoint:
    """Counts of ``score >= threshold`` against the labels."""
    y, s = _binary_inputs(y_true, score)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    return OperatingPoint(float(threshold), tp, fp, fn, int(y.size) - tp - fp - fn)


def f1_optimal_threshold(y_true, score) -> float | None:
    """The distinct score of largest F1 (the highest such on ties); None without positives."""
    c = binary_curve(y_true, score)
    if c.n_pos == 0:
        return None
    return float(c.thresholds[int(np.argmax(c.f1))])  # argmax: first = highest threshold


def purity_threshold(y_true, score, target: float) -> float | None:
    """Highest-recall threshold with precision >= ``target`` (see the module docstring).

    ``None`` when no threshold reaches ``target`` (or there are no positives).
    """
    if not (isinstance(target, int | float) and 0.0 < target <= 1.0):
        raise ConfigError(f"target purity {target!r} is not accepted; a number in (0, 1] is needed")
    c = binary_curve(y_true, score)
    if c.n_pos == 0:
        return None
    # precision is tp / (tp + fp) rounded once, as is the decimal target: an exact tie
    # (e.g. 9 / 10 against 0.9) compares equal.
    ok = (c.precision >= target) & (c.tp > 0)
    if not np.any(ok):
        return None
    best = np.max(c.tp[ok])
    # tp grows as the threshold falls, so the first index with that tp is the highest threshold.
    return float(c.thresholds[int(np.flatnonzero(ok & (c.tp == best))[0])])


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts: rows are true classes, columns predicted."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ConfigError(f"{t.size} true and {p.size} predicted labels; one per source is needed")
    bad = (t < 0) | (t >= n_classes) | (p < 0) | (p >= n_classes)
    if np.any(bad):
        raise ConfigError(f"class indices must be 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)
