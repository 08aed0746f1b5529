"""A small two-band field and a small model for scan tests, made in code.

The field is 300 x 260 px (g, i; TAN WCS at 0.187"/px) of sky plus noise, with
Gaussian sources at known positions, a blank (NaN) block and sources close to
the edges.  The model is a randomly initialised ResNet-50 on 32 px cutouts
with threshold 0.5: its scores mean nothing, but every code path of a scan
runs on it quickly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from tests.makedata import make_wcs

SHAPE = (260, 300)
CUTOUT = 32
BLANK_BOX = (slice(200, 260), slice(0, 70))  # rows, columns of NaN pixels


def source_positions(seed=3, n=60):
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    x = rng.uniform(3, nx - 3, n)
    y = rng.uniform(3, ny - 3, n)
    # Some exactly on tile-core borders (core 64), on edges, and in the blank block.
    x[:4] = [63.5, 64.0, 127.49, 0.2]
    y[:4] = [64.0, 63.5, 128.0, 0.0]
    x[4], y[4] = 20.0, 230.0  # inside the blank block
    return x, y


def make_field(directory: Path, *, seed: int = 3) -> dict:
    """Write g.fits and i.fits; returns paths, WCS and the injected positions."""
    directory.mkdir(parents=True, exist_ok=True)
    ny, nx = SHAPE
    wcs = make_wcs(SHAPE)
    rng = np.random.default_rng(seed)
    xs, ys = source_positions(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    paths = []
    for b, name in enumerate(("g", "i")):
        image = 1000.0 + rng.normal(0.0, 10.0, SHAPE)
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            sigma = 1.2 + 0.8 * ((k + b) % 3)
            image += (300.0 + 40 * k) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2)
                                               / (2 * sigma * sigma))
        image = image.astype(np.float32)
        image[BLANK_BOX] = np.nan
        header = wcs.to_header()
        header["FILTER"] = name
        path = directory / f"{name}.fits"
        fits.PrimaryHDU(image, header).writeto(path, overwrite=True)
        paths.append(path)
    return {"paths": paths, "wcs": wcs, "x": xs, "y": ys}


def write_catalog(path: Path, field: dict, *, form: str = "sky", extra_rows: bool = True):
    """A catalog of the injected sources (plus off-image rows) with pass-through columns."""
    x, y = field["x"].copy(), field["y"].copy()
    if extra_rows:
        x = np.append(x, [-50.0, 500.0, np.nan])
        y = np.append(y, [10.0, 100.0, 5.0])
    table = Table()
    table["name"] = [f"src{i:03d}" for i in range(x.size)]
    if form == "sky":
        ra, dec = field["wcs"].pixel_to_world_values(x, y)
        table["RA"], table["DEC"] = ra, dec
    else:
        table["x"], table["y"] = x, y
    table["mag"] = np.linspace(18.0, 23.0, x.size)
    table["id"] = np.arange(100, 100 + x.size)
    table.write(path, overwrite=True)
    return path


def make_model(path: Path, seed: int = 1) -> Path:
    import torch

    from pyengine.models.checkpoint import save_model
    from pyengine.models.classifier import ClusterClassifier
    from pyengine.models.spec import ModelSpec

    torch.manual_seed(seed)
    spec = ModelSpec(cutout_size=CUTOUT, threshold=0.5)
    return save_model(ClusterClassifier(spec).eval(), path)


def scan_in_fresh_process(cwd: Path, field: dict, catalog, model, out, runner: str,
                          then: str = "") -> list[str]:
    """Run ``pyengine scan`` of ``field`` (catalog positions, ``model``, ``runner``) in a new
    interpreter, then the Python lines ``then`` (e.g. printing what was imported); the
    lines it printed.  Fails the test when the scan or ``then`` fails."""
    args = ["scan", *[str(p) for p in field["paths"]], "--catalog", str(catalog), "--model",
            str(model), "--runner", runner, "-q", "-o", str(out)]
    code = ("import sys\nfrom pyengine.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            + then)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()
