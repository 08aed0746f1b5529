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

Calibration and binned fractions (``pyengine evaluate``, the training report):

* ``wilson_interval(k, n, level)``: the Wilson (1927, JASA 22, 209) score interval of a
  binomial proportion k / n at confidence ``level`` (default 0.95, z = 1.95996):
  ``(p + z^2/2n +- z sqrt(p(1 - p)/n + z^2/4n^2)) / (1 + z^2/n)``.  Unlike the normal
  ("Wald") interval it stays inside [0, 1] and is not empty at k = 0 or k = n (Brown,
  Cai & DasGupta 2001, Stat. Sci. 16, 101, recommend it for small n).  NaN where n = 0.
* ``binned_fraction(values, hits, edges)``: per bin ``edges[k] <= v < edges[k+1]`` (the
  last bin closed), the count, the hits and their fraction with its Wilson interval;
  values outside the edges or NaN are left out (and counted).  Completeness against
  magnitude or size is this with ``hits`` = recovered.
* ``reliability(y_true, prob, bins=10)``: the reliability diagram (DeGroot & Fienberg
  1983; Niculescu-Mizil & Caruana 2005) of ``prob`` as the probability of the positive
  class, in ``bins`` equal-width bins of [0, 1]: bin k holds k/B <= p < (k+1)/B (p = 1
  in the last); per bin the count, the mean predicted probability, the observed fraction
  of positives and its Wilson interval (NaN in empty bins).
* ``expected_calibration_error(y_true, prob, bins=10)``: ECE (Naeini, Cooper & Hauskrecht
  2015; Guo, Pleiss, Sun & Weinberger 2017, ICML, eq. 3) = sum_k (n_k / N) |observed_k -
  mean predicted_k| over those bins.  It is computed on the positive class's probability
  (the binary form used in astronomy's calibration checks), not on Guo's top-label
  confidence max(p, 1 - p); the two differ when p < 0.5.  NaN without samples.
* ``fraction_limit(centres, fraction, level)``: where a binned fraction falls below
  ``level`` (0.5, 0.9: the 50 % and 90 % completeness limits), walking the bins in order
  of ``centres`` (``falling=False``: from the last bin back, for a fraction that rises
  with the value, as completeness against size): linear interpolation between the
  centres of the last bin at or above ``level`` and the first one below it; empty bins
  are skipped.  ``None`` when the first bin is already below ``level`` or no bin is.

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyengine.errors import ConfigError

__all__ = [
    "BinnedFraction",
    "Curve",
    "OperatingPoint",
    "Reliability",
    "average_precision",
    "binary_curve",
    "binned_fraction",
    "confusion_matrix",
    "expected_calibration_error",
    "f1_optimal_threshold",
    "fraction_limit",
    "operating_point",
    "purity_threshold",
    "reliability",
    "roc_auc",
    "wilson_interval",
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


# -- calibration and binned fractions -------------------------------------------------------

def _z(level: float) -> float:
    if not (isinstance(level, int | float) and 0.0 < level < 1.0):
        raise ConfigError(f"confidence level {level!r} is not accepted; a number in (0, 1) "
                          "is needed (0.95 for 95 %)")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson_interval(k, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) Wilson score interval of k successes in n trials (arrays or
    scalars, as float64 arrays); NaN where n = 0.  See the module docstring."""
    z = _z(level)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ConfigError("binomial counts need 0 <= k <= n")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        z2n = z * z / n
        centre = (p + z2n / 2.0) / (1.0 + z2n)
        half = z * np.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    # the interval holds p; rounding must not put p a hair outside it
    lo = np.where(n > 0, np.clip(np.minimum(centre - half, p), 0.0, 1.0), np.nan)
    hi = np.where(n > 0, np.clip(np.maximum(centre + half, p), 0.0, 1.0), np.nan)
    return lo, hi


def _listed(a) -> list:
    """A float array as a JSON list, NaN -> None."""
    return [None if v != v else float(v) for v in np.asarray(a, dtype=np.float64)]


@dataclass(frozen=True)
class BinnedFraction:
    """Hits among the values in each bin, with Wilson intervals (see the module docstring)."""

    edges: np.ndarray  # (B + 1,) increasing
    count: np.ndarray  # (B,) int64 values in each bin
    hits: np.ndarray  # (B,) int64 hits among them
    lower: np.ndarray  # (B,) Wilson interval of the fraction; NaN in empty bins
    upper: np.ndarray
    level: float
    left_out: int  # values outside the edges or NaN

    @property
    def fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.hits / np.maximum(self.count, 1), np.nan)

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[1:] + self.edges[:-1]) / 2.0

    def to_dict(self) -> dict:
        """Plain lists for JSON (NaN -> None)."""
        return {"edges": _listed(self.edges), "centres": _listed(self.centres),
                "count": self.count.tolist(), "hits": self.hits.tolist(),
                "fraction": _listed(self.fraction), "lower": _listed(self.lower),
                "upper": _listed(self.upper), "level": float(self.level),
                "left_out": int(self.left_out)}


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value (edges[k] <= v < edges[k+1], the last bin closed); -1 outside."""
    idx = np.searchsorted(edges, values, side="right") - 1
    idx = np.where(values == edges[-1], edges.size - 2, idx)
    bad = ~np.isfinite(values) | (idx < 0) | (idx > edges.size - 2)
    return np.where(bad, -1, idx)


def binned_fraction(values, hits, edges, level: float = 0.95) -> BinnedFraction:
    """Per bin of ``values`` (``edges``: increasing, at least two), how many of them are
    ``hits`` (booleans), with a Wilson interval."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    h = np.asarray(hits).reshape(-1)
    e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if v.shape != h.shape:
        raise ConfigError(f"{v.size} values and {h.size} hits; one per value is needed")
    if e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ConfigError(f"bin edges {e.tolist()} are not accepted; two or more finite, "
                          "increasing edges are needed")
    if h.dtype != bool:
        if h.size and not np.all((h == 0) | (h == 1)):
            raise ConfigError("hits must be booleans or 0/1")
        h = h.astype(bool)
    idx = _bin_index(v, e)
    inside = idx >= 0
    nb = e.size - 1
    count = np.bincount(idx[inside], minlength=nb).astype(np.int64)
    got = np.bincount(idx[inside & h], minlength=nb).astype(np.int64)
    lo, hi = wilson_interval(got, count, level)
    return BinnedFraction(e, count, got, lo, hi, float(level), int(np.sum(~inside)))


@dataclass(frozen=True)
class Reliability:
    """The reliability diagram of probabilities (see the module docstring)."""

    bins: BinnedFraction  # over prob: count, positives (hits), observed fraction, interval
    mean_predicted: np.ndarray  # (B,) mean probability in each bin; NaN in empty bins

    @property
    def edges(self) -> np.ndarray:
        return self.bins.edges

    @property
    def count(self) -> np.ndarray:
        return self.bins.count

    @property
    def observed(self) -> np.ndarray:
        return self.bins.fraction

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean |observed - mean predicted|."""
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        full = self.count > 0
        gap = np.abs(self.observed[full] - self.mean_predicted[full])
        return float(np.sum(self.count[full] * gap) / n)

    def to_dict(self) -> dict:
        """JSON: edges, count, positives, mean_predicted, observed, lower, upper, level,
        ece (NaN -> None)."""
        b = self.bins
        return {"edges": _listed(b.edges), "count": b.count.tolist(),
                "positives": b.hits.tolist(), "mean_predicted": _listed(self.mean_predicted),
                "observed": _listed(b.fraction), "lower": _listed(b.lower),
                "upper": _listed(b.upper), "level": b.level, "ece": _finite(self.ece)}


def reliability(y_true, prob, bins: int = 10, *, level: float = 0.95) -> Reliability:
    """Reliability diagram of ``prob`` (probabilities of the positive class, in [0, 1])
    against binary labels ``y_true``, in ``bins`` equal-width bins of [0, 1]."""
    y, p = _binary_inputs(y_true, prob)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or not 1 <= bins <= 1000:
        raise ConfigError(f"reliability bins {bins!r} is not accepted; an integer 1..1000 "
                          "is needed")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ConfigError(f"probabilities must lie in [0, 1]; got {p.min():g} .. {p.max():g}")
    edges = np.arange(int(bins) + 1, dtype=np.float64) / int(bins)  # k / B exactly rounded
    binned = binned_fraction(p, y, edges, level)
    idx = _bin_index(p, edges)
    total = np.bincount(idx, weights=p, minlength=int(bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(binned.count > 0, total / np.maximum(binned.count, 1), np.nan)
    return Reliability(binned, mean)


def expected_calibration_error(y_true, prob, bins: int = 10) -> float:
    """ECE of ``prob`` against ``y_true`` in ``bins`` equal-width bins (module docstring)."""
    return reliability(y_true, prob, bins).ece


def fraction_limit(centres, fraction, level: float, *, falling: bool = True) -> float | None:
    """Where a binned fraction first falls below ``level`` (see the module docstring)."""
    if not (isinstance(level, int | float) and 0.0 < level <= 1.0):
        raise ConfigError(f"fraction level {level!r} is not accepted; a number in (0, 1] "
                          "is needed")
    x = np.asarray(centres, dtype=np.float64).reshape(-1)
    f = np.asarray(fraction, dtype=np.float64).reshape(-1)
    if x.shape != f.shape:
        raise ConfigError(f"{x.size} bin centres and {f.size} fractions; one per bin is needed")
    keep = np.isfinite(x) & np.isfinite(f)
    x, f = x[keep], f[keep]
    order = np.argsort(x, kind="stable")
    if not falling:
        order = order[::-1]
    x, f = x[order], f[order]
    below = np.flatnonzero(f < level)
    if below.size == 0 or below[0] == 0:
        return None
    i = int(below[0])
    x0, x1, f0, f1 = x[i - 1], x[i], f[i - 1], f[i]
    return float(x0 + (level - f0) * (x1 - x0) / (f1 - f0))
