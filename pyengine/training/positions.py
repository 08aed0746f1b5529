"""Training positions the way the scan sees them: the scan's own detections, labelled by
a match to the label catalog (``pyengine train --positions detect``).

A scan in detection mode (the default path) classifies SEP detections placed at their
peaks (:mod:`pyengine.sources.detect`), not the label catalog's positions: a model
trained on catalog centres meets, at scan time, positions off by a pixel, deblended
fragments of resolved clusters, and whole classes of detections (blends, bright-star
spikes, background galaxies) the label catalog never lists.  So ``--positions detect``
runs the scan's detection step (:class:`~pyengine.sources.detect.DetectSource`, the same
options as ``pyengine scan``) over the training images and labels each detection:

* a detection whose nearest label position lies within ``match_radius`` (arcsec) takes
  that label, when it is that label's nearest detection too (a one-to-one match);
* a detection with no label within the radius is a **negative**: it takes the
  ``unmatched`` label value (default: the catalog's first non-cluster value);
* **ambiguous** detections are left out and counted: a detection within the radius of
  a label that is matched to a nearer detection (a fragment, or a neighbour), or with
  labels of different classes within the radius;
* labels matched by no detection are counted (not detected at this threshold).

Pairs come from :func:`pyengine.matching.pairs_within` (exact, in pixels).

Thread safety: pure functions apart from the reads of the mosaic passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyengine.errors import CatalogError
from pyengine.matching import pairs_within

__all__ = ["LabelledDetections", "detect_positions", "label_detections"]


@dataclass(frozen=True)
class LabelledDetections:
    """Detections with labels: positions, label values, and what was left out."""

    x: np.ndarray
    y: np.ndarray
    values: np.ndarray  # label value (str) of each kept detection
    label_row: np.ndarray  # matched label row, -1 for negatives
    counts: dict  # detections, matched, negatives, ambiguous, labels_not_detected


def label_detections(det_x, det_y, lab_x, lab_y, lab_values, *, radius_px: float,
                     unmatched: str, where: str, radius_arcsec: float) -> LabelledDetections:
    """Label detections by the one-to-one match described in the module doc."""
    det_x, det_y = np.asarray(det_x, np.float64), np.asarray(det_y, np.float64)
    lab_values = np.asarray(lab_values, dtype=str)
    ok = np.isfinite(lab_x) & np.isfinite(lab_y)
    lab_idx = np.flatnonzero(ok)
    i, j, d = pairs_within(det_x, det_y, np.asarray(lab_x)[ok], np.asarray(lab_y)[ok],
                           radius_px)
    j = lab_idx[j]
    n = det_x.size
    if n and lab_idx.size and i.size == 0:
        # No pair: say how far the nearest label is (a coarse check of units or frames).
        near = _nearest_distance(det_x, det_y, np.asarray(lab_x)[ok], np.asarray(lab_y)[ok])
        raise CatalogError(f"{where}: no label lies within --match-radius {radius_arcsec:g}\" "
                           f"of any of the {n} detections; the nearest is "
                           f"{near * radius_arcsec / radius_px:.3g}\" away (check the label "
                           "positions' frame and columns, or widen --match-radius)")
    # Each detection's nearest label, and each label's nearest detection.
    by_d = np.lexsort((d, i))
    first = np.r_[True, i[by_d][1:] != i[by_d][:-1]]
    near_lab = np.full(n, -1, np.int64)
    near_lab[i[by_d][first]] = j[by_d][first]
    by_l = np.lexsort((d, j))
    first_l = np.r_[True, j[by_l][1:] != j[by_l][:-1]]
    near_det = {int(a): int(b) for a, b in zip(j[by_l][first_l], i[by_l][first_l], strict=True)}
    # Classes within the radius of each detection.
    mixed = np.zeros(n, bool)
    if i.size:
        cls = lab_values[j]
        for det in np.unique(i[~(cls == lab_values[near_lab[i]])]):
            mixed[det] = True
    matched = np.array([k >= 0 and near_det.get(int(k)) == det
                        for det, k in enumerate(near_lab)], dtype=bool) if n else np.zeros(0, bool)
    within = near_lab >= 0
    ambiguous = (within & ~matched) | (matched & mixed)
    negative = ~within
    keep = (matched & ~mixed) | negative
    values = np.where(negative, unmatched, lab_values[np.maximum(near_lab, 0)])
    label_row = np.where(negative, -1, near_lab)
    detected = set(near_lab[matched & ~mixed].tolist())
    counts = {"detections": int(n), "matched": int((matched & ~mixed).sum()),
              "negatives": int(negative.sum()), "ambiguous": int(ambiguous.sum()),
              "labels_not_detected": int(lab_idx.size - len(detected))}
    return LabelledDetections(det_x[keep], det_y[keep], values[keep], label_row[keep], counts)


def _nearest_distance(x1, y1, x2, y2, sample: int = 2000) -> float:
    a = np.linspace(0, x1.size - 1, min(x1.size, sample)).astype(int)
    best = np.inf
    for lo in range(0, x2.size, 4096):
        d = np.hypot(x1[a, None] - x2[None, lo:lo + 4096], y1[a, None] - y2[None, lo:lo + 4096])
        best = min(best, float(d.min()))
    return best


def detect_positions(mosaic, cutout: int, detect: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every detection the scan's detection step makes on ``mosaic``."""
    from pyengine.io.tiles import TilePlan
    from pyengine.sources.detect import DetectSource

    source = DetectSource(**detect)
    plan = TilePlan.for_cutout(mosaic.shape, cutout)
    source.bind(mosaic, plan)
    xs, ys = [], []
    for tile in plan:
        y0, y1, x0, x1 = tile.window
        pixels = np.empty((mosaic.nband, y1 - y0, x1 - x0), dtype=np.float32)
        mosaic.read(y0, y1, x0, x1, out=pixels)
        pos = source.positions(tile, pixels)
        xs.append(np.asarray(pos.x, np.float64))
        ys.append(np.asarray(pos.y, np.float64))
    return np.concatenate(xs), np.concatenate(ys)
