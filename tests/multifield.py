"""A five-band field of four kinds of object, PHANGS-style, for the multi-class and
ensemble tests (tests/test_multiclass.py, tests/test_ensemble.py), made in code.

Five HST-like bands (F275W, F336W, F438W, F555W, F814W, as PHANGS-HST observes), each a
float32 FITS image of sky plus Gaussian noise, with objects on a regular grid 40 px
apart (a 32 px cutout around one holds no neighbour), each of one class of Hannon et
al. 2023's four, drawn so that a few hundred cutouts and two epochs teach a ResNet-50
something about them:

1. ``symmetric``: one round Gaussian (sigma 1.6 px);
2. ``asymmetric``: one elongated Gaussian (sigma 3.2 x 1.0 px, any position angle);
3. ``multi-peaked``: two round Gaussians 7 px apart (any angle);
4. ``non-cluster``: nothing but sky and noise.

Fluxes and colours vary from object to object; centres have sub-pixel offsets.  The
label catalog (FITS) holds x, y (0-based), ra, dec and ``label``; the scan catalog the
same positions plus two rows off the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from tests.makedata import make_wcs

BANDS = ("F275W", "F336W", "F438W", "F555W", "F814W")
CLASSES = ("symmetric", "asymmetric", "multi-peaked", "non-cluster")
POSITIVE = ("symmetric", "asymmetric")  # PHANGS' class 1 and 2 clusters
SPACING = 40
SKY, NOISE = 100.0, 3.0


def _gauss(xx, yy, x0, y0, sx, sy, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - x0) * c + (yy - y0) * s
    v = -(xx - x0) * s + (yy - y0) * c
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def _stamp(kind: int, dx: float, dy: float, angle: float, size: int = 24):
    """(size, size) unit-peak profile of class ``kind`` centred at (size/2 + dx, ...)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2
    if kind == 0:
        return _gauss(xx, yy, c + dx, c + dy, 1.6, 1.6, 0.0)
    if kind == 1:
        return _gauss(xx, yy, c + dx, c + dy, 3.2, 1.0, angle)
    if kind == 2:
        ox, oy = 3.5 * np.cos(angle), 3.5 * np.sin(angle)
        return (_gauss(xx, yy, c + dx + ox, c + dy + oy, 1.3, 1.3, 0.0)
                + 0.8 * _gauss(xx, yy, c + dx - ox, c + dy - oy, 1.3, 1.3, 0.0))
    return np.zeros((size, size))


def make_field(directory: Path, *, per_side: int = 18, seed: int = 5) -> dict:
    """Write the five band images, ``labels.fits`` and ``positions.fits`` in
    ``directory``; returns their paths, the WCS and the objects' x, y and class index."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = per_side * per_side
    side = SPACING * (per_side + 1)
    shape = (side, side)
    wcs = make_wcs(shape)
    grid = (np.arange(per_side) + 1) * SPACING
    gx, gy = np.meshgrid(grid, grid)
    kinds = np.tile(np.arange(len(CLASSES)), n // len(CLASSES) + 1)[:n]
    rng.shuffle(kinds)
    dx, dy = rng.uniform(-0.5, 0.5, (2, n))
    angle = rng.uniform(0, np.pi, n)
    flux = rng.uniform(150.0, 400.0, n)
    colour = rng.uniform(0.5, 1.5, (len(BANDS), n))
    x = gx.ravel() + dx
    y = gy.ravel() + dy
    paths = []
    half = 12
    for b, name in enumerate(BANDS):
        image = SKY + rng.normal(0.0, NOISE, shape)
        for k in range(n):
            cx, cy = int(gx.flat[k]), int(gy.flat[k])
            image[cy - half: cy + half, cx - half: cx + half] += (
                flux[k] * colour[b, k] * _stamp(int(kinds[k]), dx[k], dy[k], angle[k]))
        header = wcs.to_header()
        header["FILTER"] = name
        path = directory / f"{name.lower()}.fits"
        fits.PrimaryHDU(image.astype(np.float32), header).writeto(path, overwrite=True)
        paths.append(str(path))
    ra, dec = wcs.pixel_to_world_values(x, y)
    labels = Table({"x": x, "y": y, "ra": ra, "dec": dec,
                    "label": np.array([CLASSES[k] for k in kinds])})
    labels.write(directory / "labels.fits", overwrite=True)
    scan = Table({"name": [f"obj{k:04d}" for k in range(n + 2)],
                  "x": np.append(x, [-80.0, side + 50.0]),
                  "y": np.append(y, [30.0, 60.0])})
    scan.write(directory / "positions.fits", overwrite=True)
    return {"images": paths, "labels": str(directory / "labels.fits"),
            "positions": str(directory / "positions.fits"), "wcs": wcs, "x": x, "y": y,
            "kinds": kinds, "shape": shape}


def train_options(field: dict, output, **more) -> dict:
    """TrainConfig options for a short training on ``field`` at 32 px cutouts."""
    return {"images": tuple(field["images"]), "catalog": field["labels"], "output": str(output),
            "x_col": "x", "y_col": "y", "classes": CLASSES, "positive": POSITIVE,
            "cutout_size": 32, "epochs": 2, "batch_size": 32, "threads": 2, **more}


def make_model(path, *, seed: int = 0, threshold: float = 0.5, centre_on=None,
               gain: float = 3.0, **spec) -> Path:
    """A randomly initialised four-class model of the field's bands at 32 px: every scan
    path runs on it quickly, and its probabilities differ from seed to seed.

    A random ResNet's pooled features (after a ReLU) share one large positive direction,
    so its head alone gives every cutout the same class.  With ``centre_on`` (cutouts,
    (n, nband, 32, 32)) the head is re-centred on their mean feature and its weights
    multiplied by ``gain``: the classes then follow how the cutouts differ (still
    meaning nothing).  ``spec``: ModelSpec fields to change (bands, class_names, ...)."""
    import torch

    from pyengine.models.checkpoint import save_model
    from pyengine.models.classifier import ClusterClassifier
    from pyengine.models.spec import ModelSpec

    torch.manual_seed(seed)
    options = {"bands": BANDS, "cutout_size": 32, "class_names": CLASSES,
               "positive_classes": (0, 1), "threshold": threshold, **spec}
    model = ClusterClassifier(ModelSpec(**options)).eval()
    if centre_on is not None:
        net = model.backbone
        with torch.no_grad():
            x = model.preprocess(torch.from_numpy(np.asarray(centre_on, np.float32)))
            features = torch.flatten(net.avgpool(net.forward_features(x)), 1)
            mean = features.mean(dim=0)
            scale = features.std(dim=0).mean().clamp_min(1e-6)
            net.fc.weight.mul_(gain / scale)
            net.fc.bias.copy_(-net.fc.weight @ mean)
    return save_model(model, path)


def field_cutouts(field: dict):
    """The field's objects' cutouts (n, 5, 32, 32), as a scan sees them."""
    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.cutouts import extract_cutouts

    with Mosaic.open(field["images"]) as mosaic:
        return extract_cutouts(mosaic, field["x"], field["y"], 32).pixels
