"""The outputs of ``pyengine evaluate``: the JSON and the PNG figures, written atomically.

Figures (made with :class:`matplotlib.figure.Figure` on the Agg canvas, never pyplot, so no
global state and no display are involved):

- ``pr_curve``: precision (purity) against recall, the catalog's operating point and the
  Zhang et al. 2025 point (recall 0.7355, purity 0.893) marked;
- ``completeness_mag`` / ``completeness_size`` (when the truth has the column): the share
  of counted clusters recovered (candidates) and detected (with a scored catalog row) per
  bin, Wilson intervals, the 50 % and 90 % levels and limits, the counts per bin below;
- ``purity_score``: the share of cluster rows per score bin, and the purity of all rows
  scoring at least s (the PR curve's precision against its threshold);
- ``reliability``: observed cluster fraction against mean score per bin (the diagonal is
  perfect calibration), ECE in the title, the counts per bin below.

Names: in ``output_dir``, ``evaluation.json`` and ``<figure>.png``; with ``prefix``,
``PREFIX.json`` and ``PREFIX_<figure>.png``. Every file goes to a hidden temporary name and
is renamed into place (:func:`pyengine.atomic.atomic_path`); existing files are refused
unless ``overwrite``.

Thread safety: each call makes its own figures; calls on different paths may run
concurrently.
"""

from __future__ import annotations

import json
from pathlib import Path

from pyengine.errors import OutputError

__all__ = ["FIGURES", "output_paths", "write_outputs"]

FIGURES = ("pr_curve", "completeness_mag", "completeness_size", "purity_score", "reliability")
_DPI = 110


def output_paths(output_dir=None, prefix=None) -> dict[str, Path]:
    """name -> path of the JSON (``json``) and of every figure."""
    if (output_dir is None) == (prefix is None):
        raise OutputError("give one of --output-dir DIR and -o PREFIX for the outputs")
    if output_dir is not None:
        base = Path(output_dir)
        return {"json": base / "evaluation.json", **{f: base / f"{f}.png" for f in FIGURES}}
    prefix = Path(prefix)
    return {"json": prefix.with_name(prefix.name + ".json"),
            **{f: prefix.with_name(f"{prefix.name}_{f}.png") for f in FIGURES}}


def _check(paths: dict[str, Path], overwrite: bool, output_dir) -> None:
    if output_dir is not None:
        try:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--output-dir {output_dir}: cannot create it "
                              f"({exc.strerror})") from None
    for path in paths.values():
        if not path.parent.is_dir():
            raise OutputError(f"{path}: its folder {path.parent} does not exist")
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: the file exists; add --overwrite to replace it")


def _save(fig, path: Path) -> None:
    from pyengine.atomic import atomic_path

    try:
        with atomic_path(path, suffix=".part.png") as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write the figure ({exc.strerror})") from None


def _figure(rows: int = 1, heights=None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8 if rows == 1 else 5.6), layout="constrained")
    if rows == 1:
        return fig, [fig.add_subplot()]
    grid = fig.add_gridspec(rows, 1, height_ratios=heights)
    first = fig.add_subplot(grid[0])
    return fig, [first] + [fig.add_subplot(grid[k], sharex=first) for k in range(1, rows)]


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _pr_figure(result: dict):
    import numpy as np

    fig, (ax,) = _figure()
    pr = result["pr_curve"]
    op = result["operating_point"]
    c = result["counts"]
    rec = np.array(pr["recall"], dtype=float)
    prec = np.array(pr["precision"], dtype=float)
    if rec.size:
        ax.step(np.r_[0.0, rec], np.r_[prec[0], prec], where="post", color="C0", lw=1.5,
                label=f"this catalog (AP {pr['average_precision'] or 0:.3f})")
    if op["precision"] is not None and op["recall"] is not None:
        ax.plot(op["recall"], op["precision"], "o", color="C3", ms=8, zorder=5,
                label=f"threshold {op['threshold']:.4g}: purity {_pct(op['precision'])}, "
                      f"recall {_pct(op['recall'])}")
    z = result["reference"]["zhang2025"]
    ax.plot(z["recall"], z["precision"], "*", color="k", ms=12, zorder=5,
            label=f"Zhang et al. 2025 ({_pct(z['precision'])}, {_pct(z['recall'])} at "
                  f"{z['threshold']})")
    missed = c["positives_without_row"] + c["positives_unscored"]
    if missed and c["truth_positives"]:
        ax.axvline(1 - missed / c["truth_positives"], color="0.5", ls=":", lw=1,
                   label=f"highest recall possible: {missed} of {c['truth_positives']} "
                         "clusters have no scored row")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"recall (of the {c['truth_positives']} clusters in the area)")
    ax.set_ylabel("purity (precision)")
    ax.set_title("Precision-recall over score")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _errorbar(ax, x, frac, lo, hi, **kw):
    import numpy as np

    x, f = np.asarray(x, float), np.array(frac, dtype=float)
    lo_, hi_ = np.array(lo, dtype=float), np.array(hi, dtype=float)
    ok = np.isfinite(f)
    yerr = np.clip([f[ok] - lo_[ok], hi_[ok] - f[ok]], 0.0, None)
    ax.errorbar(x[ok], f[ok], yerr=yerr, capsize=2, **kw)


def _completeness_figure(block: dict, what: str):
    import numpy as np

    fig, (ax, low) = _figure(2, [3, 1])
    rec, det = block["recovered"], block["detected"]
    x = np.array(rec["centres"], float)
    edges = np.array(rec["edges"], float)
    _errorbar(ax, x, det["fraction"], det["lower"], det["upper"], fmt="s-", color="0.55",
              ms=4, lw=1, label="detected (a scored catalog row)")
    _errorbar(ax, x, rec["fraction"], rec["lower"], rec["upper"], fmt="o-", color="C0",
              ms=5, lw=1.5, label="recovered (candidate)")
    for level, style in ((0.9, "--"), (0.5, ":")):
        ax.axhline(level, color="0.4", ls=style, lw=0.8)
        limit = block[f"limit_{int(level * 100)}"]
        if limit is not None:
            ax.axvline(limit, color="C3", ls=style, lw=1)
            ax.text(limit, level + 0.02, f" {int(level * 100)} %: {limit:.2f}", color="C3",
                    fontsize=8)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("completeness")
    unit = f" ({block['unit']})" if block["unit"] else ""
    ax.set_title(f"Completeness against {what}: {block['column']}{unit}, "
                 f"{int(sum(rec['count']))} clusters")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _counts(low, edges, rec["count"], "clusters")
    low.set_xlabel(f"{block['column']}{unit}")
    ax.tick_params(labelbottom=False)
    return fig


def _purity_figure(result: dict):
    fig, (ax, low) = _figure(2, [3, 1])
    b = result["purity_vs_score"]
    _errorbar(ax, b["centres"], b["fraction"], b["lower"], b["upper"], fmt="o", color="C0",
              ms=5, label="cluster share per score bin (Wilson 95 %)")
    pr = result["pr_curve"]
    if pr["threshold"]:
        ax.plot(pr["threshold"], pr["precision"], color="C1", lw=1.5,
                label="purity of rows scoring >= s")
    t = result["threshold"]
    ax.axvline(t, color="C3", ls="--", lw=1, label=f"threshold {t:.4g}")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("purity")
    ax.set_title("Purity against score")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _counts(low, b["edges"], b["count"], "rows")
    low.set_xlabel("score s")
    ax.tick_params(labelbottom=False)
    return fig


def _counts(ax, edges, count, what: str) -> None:
    """Counts per bin as grey bars, on integer ticks."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    edges = np.asarray(edges, float)
    ax.bar((edges[1:] + edges[:-1]) / 2, count, width=np.diff(edges) * 0.9, color="0.75")
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    ax.set_ylabel(what)


def _reliability_figure(result: dict):
    import numpy as np

    fig, (ax, low) = _figure(2, [3, 1])
    r = result["reliability"]
    edges = np.array(r["edges"], float)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    mean = np.array(r["mean_predicted"], dtype=float)
    _errorbar(ax, mean, r["observed"], r["lower"], r["upper"], fmt="o-", color="C0", ms=5,
              label="observed cluster fraction (Wilson 95 %)")
    ece = r["ece"]
    ax.set_title(f"Reliability of the score: ECE {'n/a' if ece is None else f'{ece:.3f}'} "
                 f"({edges.size - 1} bins)")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("observed fraction of clusters")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    _counts(low, edges, r["count"], "rows")
    low.set_xlabel("score (points at each bin's mean score)")
    ax.tick_params(labelbottom=False)
    return fig


def write_outputs(result: dict, output_dir=None, prefix=None, *, overwrite: bool = False,
                  figures: bool = True) -> dict[str, str]:
    """Write the figures (those the result has data for) and the JSON (with its
    ``figures`` key filled in); returns name -> path of what was written."""
    paths = output_paths(output_dir, prefix)
    _check(paths, overwrite, output_dir)
    written = {}
    if figures:
        makers = {"pr_curve": lambda: _pr_figure(result),
                  "purity_score": lambda: _purity_figure(result),
                  "reliability": lambda: _reliability_figure(result)}
        if result.get("completeness_vs_mag"):
            makers["completeness_mag"] = lambda: _completeness_figure(
                result["completeness_vs_mag"], "magnitude")
        if result.get("completeness_vs_size"):
            makers["completeness_size"] = lambda: _completeness_figure(
                result["completeness_vs_size"], "size")
        for name in FIGURES:
            if name in makers:
                _save(makers[name](), paths[name])
                written[name] = str(paths[name])
    result["figures"] = dict(written)
    from pyengine.atomic import atomic_write_text

    try:
        atomic_write_text(paths["json"], json.dumps(result, indent=1, allow_nan=False) + "\n")
    except OSError as exc:
        raise OutputError(f"{paths['json']}: cannot write the JSON ({exc.strerror})") from None
    written["json"] = str(paths["json"])
    return written
