"""Figures of an injection-recovery report (:mod:`pyengine.injection.report`): completeness
against magnitude, against half-light radius, and over both.

Matplotlib's object API only (``matplotlib.figure.Figure``, no pyplot: no global backend
state); the caller saves them.

Thread safety: each call makes its own Figure; pure functions of the report.
"""

from __future__ import annotations

import numpy as np

__all__ = ["grid_figure", "mag_figure", "rh_figure"]

_STYLE = {"detected": ("C0", "o", "detected"), "recovered": ("C3", "s", "recovered (candidate)")}


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _title(report: dict) -> str:
    t, s = report["totals"], report["settings"]
    fields = len(report["fields"])
    where = f"{fields} fields" if fields > 1 else report["fields"][0]["images"][-1].split("/")[-1]
    return (f"{t['injected']} injected King clusters ({where}); threshold "
            f"{s['threshold']:.4g}, match {s['match_radius_arcsec']:g}\"")


def _curve(ax, binned: dict, kind: str, offset: float = 0.0) -> None:
    colour, marker, label = _STYLE[kind]
    x = _arr(binned["centres"]) + offset
    f = _arr(binned["fraction"])
    lo, hi = _arr(binned["lower"]), _arr(binned["upper"])
    ax.errorbar(x, f, yerr=[np.clip(f - lo, 0, None), np.clip(hi - f, 0, None)], color=colour, marker=marker, ms=4, lw=1.2,
                capsize=2, label=label)


def _levels(ax) -> None:
    for level in (0.5, 0.9):
        ax.axhline(level, color="0.6", lw=0.8, ls=":")


def mag_figure(report: dict):
    """Completeness against the injected magnitude, with the 50 % and 90 % limits."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot()
    comp = report["completeness"]["mag"]
    step = np.diff(comp["detected"]["edges"])[0] if len(comp["detected"]["edges"]) > 1 else 0
    for j, kind in enumerate(("detected", "recovered")):
        _curve(ax, comp[kind], kind, offset=(j - 0.5) * 0.08 * step)
        colour = _STYLE[kind][0]
        for level, ls in ((0.5, "--"), (0.9, "-.")):
            m = report["limits"][kind][f"m{round(100 * level)}"]
            if m is not None:
                ax.axvline(m, color=colour, lw=0.9, ls=ls,
                           label=f"{kind} {round(100 * level)} %: {m:.2f}")
    _levels(ax)
    band = report["settings"]["mag_band"]
    ax.set(xlabel=f"injected total magnitude ({band})", ylabel="completeness",
           ylim=(-0.03, 1.05), title=_title(report))
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


def rh_figure(report: dict):
    """Completeness against the injected half-light radius (log axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot()
    comp = report["completeness"]["rh"]
    for kind in ("detected", "recovered"):
        _curve(ax, comp[kind], kind)
    _levels(ax)
    ax.set_xscale("log")
    edges = comp["detected"]["edges"]
    ax.set_xticks(edges, [f"{e:.2g}" for e in edges])
    ax.minorticks_off()
    s = report["settings"]
    ax.set(xlabel="injected half-light radius (arcsec)", ylabel="completeness",
           ylim=(-0.03, 1.05),
           title=f"{_title(report)}\nall magnitudes {s['mag_band']} {s['mag'][0]:g}-{s['mag'][1]:g}")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return fig


def grid_figure(report: dict):
    """Detected and recovered fractions over magnitude x half-light radius."""
    from matplotlib.figure import Figure

    grid = report["completeness"]["grid"]
    me, re = np.asarray(grid["mag_edges"]), np.asarray(grid["rh_edges"])
    fig = Figure(figsize=(10.0, 4.4), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    mesh = None
    for ax, kind in zip(axes, ("detected", "recovered"), strict=True):
        n = np.asarray(grid[kind]["count"], dtype=np.float64)
        k = np.asarray(grid[kind]["hits"], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, k / np.maximum(n, 1), np.nan)
        mesh = ax.pcolormesh(me, re, frac.T, cmap="viridis", vmin=0.0, vmax=1.0)
        for i in range(frac.shape[0]):
            for j in range(frac.shape[1]):
                if n[i, j] > 0:
                    ax.text(0.5 * (me[i] + me[i + 1]), np.sqrt(re[j] * re[j + 1]),
                            f"{int(k[i, j])}/{int(n[i, j])}", ha="center", va="center",
                            fontsize=6, color="w" if frac[i, j] < 0.6 else "k")
        ax.set_yscale("log")
        ax.set_yticks(re, [f"{e:.2g}" for e in re])
        ax.minorticks_off()
        ax.set(xlabel=f"injected magnitude ({report['settings']['mag_band']})", title=kind)
    axes[0].set_ylabel("half-light radius (arcsec)")
    fig.colorbar(mesh, ax=list(axes), label="completeness", shrink=0.9)
    fig.suptitle(_title(report), fontsize=8)
    return fig
