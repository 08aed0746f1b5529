"""Operating points that transfer between fields: thresholds chosen at a field's prevalence.

Purity (precision) is not a property of a classifier alone: at a threshold t with
true-positive rate TPR(t) and false-positive rate FPR(t), a field whose share of
clusters among the scanned positions is pi (its prevalence) gets

    purity(t) = pi TPR(t) / (pi TPR(t) + (1 - pi) FPR(t)).

A threshold picked for a purity on a validation set of balanced or enriched labels
(1:3 in the old demo recipe) is far too low for a real scan (~1.5 % clusters among
i < 21 sources), and a threshold picked on one field is wrong for a field of other
crowding.  So ``pyengine calibrate`` stores the calibration field's TPR/FPR curve in
the model file (``metrics["calibration"]["rates"]``), and the threshold for a target
purity is chosen for the prevalence of the field being scanned (``scan --prevalence``),
by the formula above; the model file's own threshold is the one at the calibration
field's prevalence, and its ``metrics["threshold"]`` says so.

The prevalence of a scanned field can be estimated from its scores alone by the EM
of Saerens, Latinne & Decaestecker (2002, Neural Computation 14, 21): calibrated
probabilities p at the calibration prevalence pi0 are re-weighted to a prior pi,
p' = (pi/pi0) p / ((pi/pi0) p + ((1-pi)/(1-pi0)) (1-p)), and pi <- mean(p') until it
settles (:func:`estimate_prevalence`).  It is only as good as the calibration.

This module needs no torch.  Thread safety: pure functions.
"""

from __future__ import annotations

import numpy as np

from pyengine.errors import ConfigError

__all__ = ["CURVE_POINTS", "estimate_prevalence", "purity_at", "rates_curve", "shift_prior",
           "threshold_at_prevalence", "threshold_for_spec"]

CURVE_POINTS = 400


def rates_curve(truth, score, points: int = CURVE_POINTS) -> dict:
    """{"threshold", "tpr", "fpr"} at up to ``points`` thresholds (score quantiles), plus the
    counts, JSON-plain: what a model file stores to choose thresholds later."""
    truth = np.asarray(truth, bool)
    score = np.asarray(score, np.float64)
    ok = np.isfinite(score)
    truth, score = truth[ok], score[ok]
    npos, nneg = int(truth.sum()), int((~truth).sum())
    if npos == 0 or nneg == 0:
        raise ConfigError(f"the calibration positions hold {npos} clusters and {nneg} "
                          "non-clusters; both are needed to measure rates")
    grid = np.unique(np.r_[np.quantile(score, np.linspace(0, 1, points)),
                           np.quantile(score[truth], np.linspace(0, 1, points // 2))])
    pos, neg = np.sort(score[truth]), np.sort(score[~truth])
    tpr = 1.0 - np.searchsorted(pos, grid, "left") / npos  # share with score >= t
    fpr = 1.0 - np.searchsorted(neg, grid, "left") / nneg
    return {"threshold": grid.tolist(), "tpr": tpr.tolist(), "fpr": fpr.tolist(),
            "n_cluster": npos, "n_non_cluster": nneg}


def purity_at(tpr, fpr, prevalence: float) -> np.ndarray:
    """Expected purity at a prevalence from TPR and FPR (the module doc's formula)."""
    tpr, fpr = np.asarray(tpr, np.float64), np.asarray(fpr, np.float64)
    num = prevalence * tpr
    den = num + (1.0 - prevalence) * fpr
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def _check_prevalence(prevalence, where: str = "--prevalence") -> float:
    try:
        p = float(prevalence)
    except (TypeError, ValueError):
        p = float("nan")
    if not (0.0 < p < 1.0):
        raise ConfigError(f"{where} {prevalence!r} is not accepted; the share of clusters among "
                          "the scanned positions, a number in (0, 1), e.g. 0.015, is needed")
    return p


def threshold_at_prevalence(rates: dict, prevalence: float, target: float) -> dict:
    """The highest-recall threshold whose expected purity at ``prevalence`` is >= ``target``,
    else the F1-optimal one at that prevalence: {"value", "rule", "purity", "recall",
    "prevalence", "target"}."""
    p = _check_prevalence(prevalence)
    t = np.asarray(rates["threshold"], np.float64)
    tpr, fpr = np.asarray(rates["tpr"]), np.asarray(rates["fpr"])
    purity = purity_at(tpr, fpr, p)
    ok = (purity >= target) & (tpr > 0)
    if ok.any():
        k = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
        rule = "target_purity_at_prevalence"
    else:
        f1 = np.where(purity + tpr > 0, 2 * purity * tpr / np.maximum(purity + tpr, 1e-300), 0)
        k, rule = int(np.argmax(f1)), "f1_optimal_at_prevalence"
    return {"value": float(t[k]), "rule": rule, "purity": float(purity[k]),
            "recall": float(tpr[k]), "prevalence": p, "target": float(target)}


def threshold_for_spec(spec, prevalence: float, target: float | None = None) -> dict:
    """:func:`threshold_at_prevalence` from a model file's calibration record."""
    cal = (spec.metrics or {}).get("calibration")
    if not cal or "rates" not in cal:
        raise ConfigError("--prevalence needs a calibrated model (its file records the rates "
                          "of a calibration field); this model has none: run pyengine calibrate "
                          "on a labelled field first, or give --threshold")
    if target is None:
        target = float(cal.get("target_purity", 0.893))
    if not (0.0 < float(target) <= 1.0):
        raise ConfigError(f"--target-purity {target!r} is not accepted; a purity in (0, 1] "
                          "is needed")
    return threshold_at_prevalence(cal["rates"], prevalence, float(target))


def shift_prior(p, prevalence: float, base: float) -> np.ndarray:
    """Probabilities calibrated at prior ``base`` re-weighted to prior ``prevalence``."""
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    a = p * prevalence / base
    b = (1.0 - p) * (1.0 - prevalence) / (1.0 - base)
    return a / (a + b)


def estimate_prevalence(scores, base: float, iterations: int = 200, tol: float = 1e-7) -> float:
    """The prevalence of a field from its calibrated scores (Saerens et al. 2002 EM)."""
    base = _check_prevalence(base, "calibration prevalence")
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan")
    pi = base
    for _ in range(iterations):
        new = float(np.mean(shift_prior(s, pi, base)))
        new = min(max(new, 1e-6), 1 - 1e-6)
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi
