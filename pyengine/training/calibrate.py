"""``pyengine calibrate``: temperature scaling on a labelled calibration field, and the
threshold for a target purity at a prevalence.

A network trained with cross-entropy on balanced batches is over-confident and
calibrated to the training mix, not to any field: the old demo model's scores were
squeezed against 1 (threshold 0.9955).  Temperature scaling (Guo et al. 2017, "On
Calibration of Modern Neural Networks", ICML) divides the logits by one number T,
fitted by minimising the negative log-likelihood of the labels of a held-out field;
it changes no ranking (so no ROC or PR curve), only what a score means.  T is stored
in the model file (:attr:`ModelSpec.temperature`) and applied inside the graph
(:func:`pyengine.models.classifier.calibrated`), so torch, ONNX Runtime and TensorRT
all report calibrated probabilities.  T is found by golden-section search on log T in
[1/20, 20] (the NLL is convex in 1/T).

Temperature alone cannot move probabilities to another prior: a model trained on
balanced batches (the default sampler) predicts clusters as if half the positions were
clusters, while a scan's field has ~1 %, so its probabilities are far too high even when
well ranked (temperature scaling alone made the demo model's ECE worse, 0.206 -> 0.228).
So the default ``--method temperature+prior`` fits T and one offset per class
(``ModelSpec.logit_bias``, the first class's 0): softmax(logits / T + b), by Newton's
method on the convex NLL (:func:`fit_scaling`); for two classes this is Platt (1999)
scaling of the logit difference.  ``--method temperature`` fits T alone.  Both keep the
ranking, so the thresholds and rates below do not depend on the choice.

Recorded in ``metrics["calibration"]``: the field (images, catalog, positions), the
number of positions and clusters, the field's prevalence, T, the NLL and expected
calibration error (ECE, 10 equal-width bins of the cluster score) before and after,
the reliability curve after, and the TPR/FPR curve of the calibrated score
(:func:`pyengine.models.operating.rates_curve`), from which a threshold for a target
purity is chosen at any field's prevalence (``scan --prevalence``).  The model's own
threshold becomes the one at ``--prevalence`` (default: the calibration field's own),
recorded in ``metrics["threshold"]`` with its rule.  A reliability diagram is written
beside the output (``<stem>.reliability.png``).

Calibrate on positions the way the scan sees them (``--positions detect`` for a
detection-mode scan) and on a field the model was not trained on.

Thread safety: one calibration per process (torch's global thread count).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.training.reliability import ece, reliability_bins

__all__ = ["METHODS", "calibrate", "fit_scaling", "fit_temperature"]

#: Calibration maps: T alone (Guo et al. 2017), or T and per-class offsets (the field's
#: prior; Platt 1999 scaling for two classes).
METHODS = ("temperature+prior", "temperature")



def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(labels.size), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` under softmax(logits / T)."""
    lo, hi = math.log(1 / 20), math.log(20)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(logits, labels, math.exp(a)), _nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def _probabilities(logits, t, bias=None):
    z = logits / t + (0.0 if bias is None or len(bias) == 0 else np.asarray(bias))
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_scaling(logits: np.ndarray, labels: np.ndarray, iterations: int = 100):
    """(T, bias): softmax(logits / T + bias) fitted by maximum likelihood, bias[0] = 0.

    The NLL is convex in (1/T, bias) (a log-sum-exp of functions linear in them), so a
    damped Newton method from (1/T, bias) = (1, 0) with step halving finds the optimum.
    The bias is the calibration field's class prior that balanced training removed."""
    n, k = logits.shape
    onehot = np.eye(k)[labels]
    theta = np.zeros(k)  # [1/T - 1, b_1 .. b_{k-1}]

    def unpack(th):
        return 1.0 + th[0], np.r_[0.0, th[1:]]

    def nll(th):
        s_, b_ = unpack(th)
        if s_ <= 0.01:
            return np.inf
        return _nll(logits * s_ + b_, labels, 1.0)

    current = nll(theta)
    for _ in range(iterations):
        s_, b_ = unpack(theta)
        p = _probabilities(logits * s_ + b_, 1.0)
        r = p - onehot  # d NLL / d logit_k, per sample
        feats_s = (r * logits).sum(axis=1)
        grad = np.r_[feats_s.mean(), r[:, 1:].mean(axis=0)]
        # Hessian of the mean NLL: E[J^T (diag p - p p^T) J], J = d logits / d theta.
        jac = np.zeros((n, k, k))
        jac[:, :, 0] = logits
        jac[:, 1:, 1:] = np.eye(k)[1:, 1:]
        cov = p[:, :, None] * np.eye(k)[None] - p[:, :, None] * p[:, None, :]
        hess = np.einsum("nki,nkl,nlj->ij", jac, cov, jac) / n + 1e-9 * np.eye(k)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = theta - scale * step
            value = nll(trial)
            if value <= current:
                break
            scale /= 2
        else:
            break
        theta, gain, current = trial, current - value, value
        if gain < 1e-12:
            break
    s_, b_ = unpack(theta)
    return float(1.0 / s_), tuple(float(v) for v in b_)


def _plot(path: Path, before: dict, after: dict, title: str) -> None:
    from matplotlib.figure import Figure

    from pyengine.atomic import atomic_path

    fig = Figure(figsize=(5.5, 5.0), dpi=120)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="perfectly calibrated")
    for r, name, colour in ((before, "before", "C3"), (after, "after", "C0")):
        c = np.asarray(r["count"])
        m = c > 0
        x, y = np.asarray(r["mean_predicted"])[m], np.asarray(r["observed"])[m]
        ax.plot(x, y, "o-", color=colour, label=f"{name}: ECE {r['ece']:.3f}")
        if name == "after":  # few positions per bin make a bin's fraction uncertain
            for xi, yi, ci in zip(x, y, c[m], strict=True):
                ax.annotate(f"{ci}", (xi, yi), textcoords="offset points", xytext=(4, -10),
                            fontsize=6, color=colour)
    ax.set(xlabel="predicted cluster probability (bin mean; numbers: positions per bin)",
           ylabel="observed cluster fraction", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def calibrate(model_path, images, catalog, output, *, log=print, positions: str = "detect",
              match_radius: float = 1.0, mag_limit: float | None = None,
              label_col: str | None = None, positive=None, x_col=None, y_col=None,
              ra_col=None, dec_col=None, target_purity: float = 0.893,
              prevalence: float | None = None, threads: int | None = None,
              method: str = "temperature+prior") -> dict:
    """Fit the temperature on a labelled field, choose the threshold, write ``output``."""
    import torch

    from pyengine.models.checkpoint import load_model, read_spec, save_model
    from pyengine.models.operating import rates_curve, threshold_at_prevalence
    from pyengine.training.config import TrainConfig
    from pyengine.training.fields import training_data
    from pyengine.training.loop import centre_crop

    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not accepted; accepted: {', '.join(METHODS)}")
    model = load_model(model_path)
    spec = model.spec
    binary = spec.class_names == ("non-cluster", "cluster")
    if not (0 < target_purity <= 1):
        raise ConfigError(f"--target-purity {target_purity!r} is not accepted; a purity in "
                          "(0, 1] is needed")
    cfg = TrainConfig(images=tuple(images), catalog=catalog, output=str(output),
                      bands=tuple(spec.bands) if len(images) > 1 else None,
                      label_col=label_col, positive=positive, binary=binary,
                      classes=None if binary else spec.class_names, x_col=x_col, y_col=y_col,
                      ra_col=ra_col, dec_col=dec_col, positions=positions,
                      match_radius=match_radius, mag_limit=mag_limit,
                      cutout_size=spec.cutout_size, threads=threads)
    data, _, _ = training_data(cfg, log)
    if tuple(data.plan.class_names) != tuple(spec.class_names):
        raise ConfigError(f"{catalog}: its classes {list(data.plan.class_names)} are not the "
                          f"model's {list(spec.class_names)}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model.eval()
        chunks = []
        with torch.inference_mode():
            for lo in range(0, data.labels.size, 256):
                x = np.ascontiguousarray(centre_crop(data.pixels[lo:lo + 256], spec.cutout_size))
                chunks.append(model.logits(torch.from_numpy(x)).double().numpy())
    finally:
        torch.set_num_threads(old_threads)
    logits = np.concatenate(chunks)
    labels = data.labels
    truth = np.isin(labels, spec.positive_classes)
    t0, b0 = float(spec.temperature), spec.logit_bias
    if method == "temperature":
        t, bias = fit_temperature(logits, labels), ()
    else:
        t, bias = fit_scaling(logits, labels)
    before = _probabilities(logits, t0, b0)[:, list(spec.positive_classes)].sum(axis=1)
    after = _probabilities(logits, t, bias)[:, list(spec.positive_classes)].sum(axis=1)
    rel_before = {**reliability_bins(truth, before), "ece": ece(truth, before)}
    rel_after = {**reliability_bins(truth, after), "ece": ece(truth, after)}
    field_prevalence = float(truth.mean())
    rates = rates_curve(truth, after)
    chosen = threshold_at_prevalence(rates, prevalence if prevalence is not None
                                     else field_prevalence, target_purity)
    record = {
        "method": method, "temperature": t, "logit_bias": list(bias),
        "previous_temperature": t0, "previous_logit_bias": list(b0),
        "images": [os.path.abspath(p) for p in images], "catalog": os.path.abspath(catalog),
        "positions": positions, "match_radius_arcsec": match_radius, "mag_limit": mag_limit,
        "n": int(labels.size), "n_cluster": int(truth.sum()), "prevalence": field_prevalence,
        "target_purity": float(target_purity),
        "nll_before": _nll(logits / t0 + (np.asarray(b0) if b0 else 0.0), labels, 1.0),
        "nll_after": _nll(logits / t + (np.asarray(bias) if bias else 0.0), labels, 1.0),
        "ece_before": rel_before["ece"], "ece_after": rel_after["ece"],
        "reliability_after": rel_after, "rates": rates, "counts": data.counts,
    }
    metrics = {**spec.metrics, "calibration": record,
               "threshold": {**chosen, "how": "expected purity pi TPR / (pi TPR + (1 - pi) FPR) "
                             "on the calibration field's rates (pyengine.models.operating)"}}
    model.spec = spec.replace(temperature=t, logit_bias=tuple(bias), threshold=chosen["value"],
                              metrics=metrics)
    save_model(model, output, weights=read_spec(model_path)[1])  # int8 weights stay int8
    png = Path(output).with_suffix(".reliability.png")
    _plot(png, rel_before, rel_after, f"{Path(output).name}: T = {t:.3f}, {labels.size} positions")
    return {"output": str(output), "reliability_png": str(png), "temperature": t,
            "logit_bias": list(bias), "method": method,
            "ece_before": rel_before["ece"], "ece_after": rel_after["ece"],
            "prevalence": field_prevalence, "threshold": chosen, "n": int(labels.size),
            "n_cluster": int(truth.sum())}
