"""The demo's work: field, scan, evaluation against the truth, overview PNG
(see :mod:`pyengine.demo`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.stats import robust_sigma

__all__ = ["DemoResult", "evaluate", "overview_png", "run_demo"]


@dataclass
class DemoResult:
    clusters: int  # truth clusters on the image
    detected: int  # truth clusters with a detection within the match radius
    candidates: int
    true_candidates: int  # candidates within the radius of a truth cluster
    found: int  # truth clusters with a candidate within the radius

    @property
    def completeness(self) -> float:
        return self.found / self.clusters if self.clusters else float("nan")

    @property
    def purity(self) -> float:
        return self.true_candidates / self.candidates if self.candidates else float("nan")


def _nearest(ax, ay, bx, by):
    """Distance from each point a to the nearest point b (brute force in blocks)."""
    out = np.full(ax.size, np.inf)
    if bx.size == 0:
        return out
    for s in range(0, ax.size, 2048):
        dx = ax[s : s + 2048, None] - bx[None, :]
        dy = ay[s : s + 2048, None] - by[None, :]
        out[s : s + 2048] = np.sqrt(dx * dx + dy * dy).min(axis=1)
    return out


def evaluate(catalog, truth, shape, match_radius: float = 4.0) -> DemoResult:
    """Completeness and purity of a scan's candidates against a synth truth table."""
    cls = np.char.strip(np.asarray(truth["class"]).astype(str))
    tx, ty = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    ny, nx = shape
    on = (cls == "cluster") & (tx >= 0) & (tx < nx) & (ty >= 0) & (ty < ny)
    tx, ty = tx[on], ty[on]
    x, y = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    cand = np.asarray(catalog["is_candidate"], bool)
    detected = int(np.count_nonzero(_nearest(tx, ty, x, y) <= match_radius))
    found = int(np.count_nonzero(_nearest(tx, ty, x[cand], y[cand]) <= match_radius))
    true_cand = int(np.count_nonzero(_nearest(x[cand], y[cand], tx, ty) <= match_radius))
    return DemoResult(int(tx.size), detected, int(cand.sum()), true_cand, found)


def overview_png(path: Path, mosaic, catalog, truth, *, band: int = -1, max_px: int = 1600):
    """PNG of one band (asinh stretch) with candidates circled and truth clusters boxed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ny, nx = mosaic.shape
    step = max(1, int(np.ceil(max(ny, nx) / max_px)))
    image = mosaic.read(0, ny, 0, nx)[band][::step, ::step]
    finite = image[np.isfinite(image)]
    sky = np.median(finite) if finite.size else 0.0
    noise = robust_sigma(finite, sky) if finite.size else 1.0
    stretched = np.arcsinh((image - sky) / (3 * max(noise, 1e-12)))
    fig, ax = plt.subplots(figsize=(9, 9 * ny / nx), dpi=110)
    ax.imshow(stretched, origin="lower", cmap="gray_r", vmin=-1, vmax=6,
              extent=(-0.5, nx - 0.5, -0.5, ny - 0.5), interpolation="nearest")
    cls = np.char.strip(np.asarray(truth["class"]).astype(str))
    t = cls == "cluster"
    ax.scatter(np.asarray(truth["x"])[t], np.asarray(truth["y"])[t], s=140, marker="s",
               facecolors="none", edgecolors="tab:blue", linewidths=1.0,
               label=f"true clusters ({int(t.sum())})")
    cand = np.asarray(catalog["is_candidate"], bool)
    ax.scatter(np.asarray(catalog["x"])[cand], np.asarray(catalog["y"])[cand], s=60,
               marker="o", facecolors="none", edgecolors="tab:red", linewidths=1.2,
               label=f"candidates ({int(cand.sum())})")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_title(f"pyengine demo: {mosaic.bands[band]} band, {len(catalog):,} sources scored")
    ax.legend(loc="upper right", framealpha=0.85)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def run_demo(out_dir, *, size: int = 1536, seed: int = 1, runner: str = "auto",
             threads: int | None = None, mag_limit: float | None = 21.0,
             echo=print) -> DemoResult:
    """Synthesise, scan, write and evaluate; returns the evaluation."""
    from astropy.table import Table

    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.engine import Engine
    from pyengine.scan.run import run_scan
    from pyengine.sources.detect import DetectSource
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.field import make_field

    out = Path(out_dir)
    t0 = time.perf_counter()
    field = make_field(out, SynthConfig(width=size, height=size, seed=seed))
    echo(f"synthetic field: {size} x {size} px, seed {seed}, "
         f"{field.counts.get('cluster', 0)} clusters ({time.perf_counter() - t0:.1f} s) -> {out}")
    bands = [str(field.images[b][0]) for b in ("g", "i")]
    catalog_path, regions_path = out / "candidates.fits", out / "candidates.reg"
    stale = catalog_path.with_name(catalog_path.name + ".journal")
    if stale.exists():  # a previous demo killed mid-scan: start over
        import shutil

        shutil.rmtree(stale)
    with Mosaic.open(bands) as mosaic, Engine(None, runner=runner, threads=threads) as engine:
        # The demo model was trained on sources with i < 21 (Zhang et al.'s cut), so the
        # detections are cut the same way (aperture magnitudes, MAGZPT from the header).
        source = DetectSource(mag_limit=mag_limit, mag_band="i")
        summary = run_scan(engine, mosaic, source, catalog_path, regions=regions_path,
                           overwrite=True)  # a rerun into the same folder replaces it
        echo("scan: " + summary.line())
        catalog = Table.read(catalog_path)
        truth = Table.read(field.truth)
        png = overview_png(out / "overview.png", mosaic, catalog, truth)
        result = evaluate(catalog, truth, mosaic.shape)
    echo(f"wrote {catalog_path}, {regions_path}, {png}")
    echo(f"truth: {result.clusters} clusters on the image, {result.detected} detected")
    echo(f"candidates: {result.candidates} at threshold {engine.threshold:g}; "
         f"completeness {100 * result.completeness:.1f}% ({result.found}/{result.clusters}), "
         f"purity {100 * result.purity:.1f}% ({result.true_candidates}/{result.candidates})")
    echo(f"total {time.perf_counter() - t0:.1f} s")
    return result
