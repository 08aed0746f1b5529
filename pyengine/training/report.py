"""What training reports: validation metrics, the PR-curve PNG and the progress bar.

``validation_metrics`` turns validation probabilities into the model file's
``metrics`` (all JSON-plain, see :mod:`pyengine.metrics` for the definitions) and
the decision threshold: the target-purity threshold when one was requested and
reached, else the F1-optimal one.

Thread safety: ``Progress`` writes to one stream and must be used from one thread;
the other functions are pure apart from the file they write.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pyengine import metrics as m
from pyengine.atomic import atomic_path
from pyengine.training.reliability import ece, reliability_bins

__all__ = ["Progress", "plot_pr_curve", "validation_metrics"]

CURVE_POINTS = 200  # points of the PR curve kept in the model file
# Zhang et al. (2025), ApJS 278, 16: their best model at threshold 0.669.
PAPER_POINT = {"precision": 0.8930, "recall": 0.7355, "threshold": 0.669}


def validation_metrics(probabilities: np.ndarray, labels: np.ndarray, plan,
                       target_purity: float | None) -> tuple[float, str, dict]:
    """(threshold, rule, metrics) for validation ``probabilities`` (n, K) and class ``labels``."""
    score = probabilities[:, list(plan.positive)].sum(axis=1)
    truth = np.isin(labels, plan.positive)
    curve = m.binary_curve(truth, score)
    f1_t = m.f1_optimal_threshold(truth, score)
    out = {
        "validation": {"n": int(truth.size), "n_cluster": int(truth.sum()),
                       "n_non_cluster": int((~truth).sum()),
                       "per_class": {name: int(np.sum(labels == k))
                                     for k, name in enumerate(plan.class_names)}},
        "roc_auc": m.roc_auc(truth, score),
        "pr_auc": m.average_precision(truth, score),
        "f1_optimal": m.operating_point(truth, score, f1_t).to_dict(),
    }
    # Calibration at the validation set's own class mix (pyengine calibrate fits the
    # temperature on a field at its real prevalence).
    out["reliability"] = {**reliability_bins(truth, score), "ece": ece(truth, score)}
    threshold, rule = f1_t, "f1_optimal"
    if target_purity is not None:
        t = m.purity_threshold(truth, score, target_purity)
        out["target_purity"] = {"target": float(target_purity), "reached": t is not None,
                                **(m.operating_point(truth, score, t).to_dict()
                                   if t is not None else {"threshold": None})}
        if t is not None:
            threshold, rule = t, "target_purity"
    point = m.operating_point(truth, score, threshold)
    out["threshold"] = {"value": float(threshold), "rule": rule, **point.to_dict()}
    out["confusion_matrix"] = {"labels": ["non-cluster", "cluster"],
                               "counts": [[point.tn, point.fp], [point.fn, point.tp]],
                               "rows": "true", "columns": "predicted at the threshold"}
    if len(plan.class_names) > 2:
        cm = m.confusion_matrix(labels, probabilities.argmax(axis=1), len(plan.class_names))
        out["class_confusion_matrix"] = {"labels": list(plan.class_names),
                                         "counts": cm.tolist(), "rows": "true",
                                         "columns": "predicted (most probable class)"}
    keep = np.unique(np.linspace(0, curve.thresholds.size - 1, CURVE_POINTS).round().astype(int))
    out["pr_curve"] = {"threshold": curve.thresholds[keep].tolist(),
                       "precision": curve.precision[keep].tolist(),
                       "recall": curve.recall[keep].tolist()}
    return float(threshold), rule, out


def plot_pr_curve(path: Path, probabilities: np.ndarray, labels: np.ndarray, plan,
                  metrics: dict, title: str) -> Path:
    """Write the validation precision-recall curve as a PNG (atomically)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    score = probabilities[:, list(plan.positive)].sum(axis=1)
    curve = m.binary_curve(np.isin(labels, plan.positive), score)
    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    ax = fig.add_subplot()
    ax.step(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision], where="post", color="C0",
            label=f"validation (PR AUC {metrics['pr_auc']:.3f}, ROC AUC {metrics['roc_auc']:.3f})")
    f1 = metrics["f1_optimal"]
    ax.plot(f1["recall"], f1["precision"], "o", color="C1",
            label=f"F1-optimal: t = {f1['threshold']:.3f}, F1 = {f1['f1']:.3f}")
    tp = metrics.get("target_purity")
    if tp is not None and tp["reached"]:
        ax.plot(tp["recall"], tp["precision"], "s", color="C2",
                label=f"purity >= {tp['target']:.3f}: t = {tp['threshold']:.3f}")
    if tp is not None:
        ax.axhline(tp["target"], color="C2", lw=0.8, ls="--")
    ax.plot(PAPER_POINT["recall"], PAPER_POINT["precision"], "*", color="0.4", ms=9,
            label="Zhang+2025 (t = 0.669, PHAT labels)")
    ax.set(xlabel="recall (completeness)", ylabel="precision (purity)", xlim=(0, 1.01),
           ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    # The hidden temporary name ends in .png like the old one did.
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


class Progress:
    """A one-line progress bar on a terminal, or one line per epoch otherwise."""

    def __init__(self, stream=None, *, enabled: bool = True, width: int = 24):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.done = self.samples = 0
        self.loss_sum = 0.0
        self.t0 = self._last = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / max(time.perf_counter() - self.t0, 1e-9)

    def step(self, samples: int, loss: float) -> None:
        self.done += 1
        self.samples += samples
        self.loss_sum += loss
        now = time.perf_counter()
        if self.tty and (now - self._last > 0.1 or self.done == self.steps):
            self._last = now
            filled = self.width * self.done // max(self.steps, 1)
            bar = "#" * filled + "." * (self.width - filled)
            eta = (self.steps - self.done) * (now - self.t0) / self.done
            self.stream.write(f"\repoch {self.epoch}/{self.epochs} [{bar}] {self.done}/"
                              f"{self.steps} loss {self.loss_sum / self.done:.4f} "
                              f"{self.rate:.1f} cutouts/s eta {eta:.0f} s ")
            self.stream.flush()

    def end(self, summary: str) -> None:
        if not self.enabled:
            return
        prefix = "\r\x1b[2K" if self.tty else ""
        self.stream.write(f"{prefix}epoch {self.epoch}/{self.epochs}: {summary}\n")
        self.stream.flush()
