"""Finding the injected clusters again: the scan's detections near them, and which are theirs.

Every round runs the scan's own detection (:class:`pyengine.sources.detect.DetectSource`
with the scan's options) on every tile that holds an injected cluster, on the injected
pixels; :class:`NearSource` then keeps only the detections within the match radius of an
injected cluster, so that only those are classified (a detection's score depends on its
cutout alone, so this changes no score; it saves classifying the thousands of other
detections of every round).  Tiles holding no injected cluster are not read.

Which detection is a cluster's (:func:`match`): a detection within the match radius of
where the cluster was injected (the larger of the radius asked for and the cluster's
half-light radius: the detection step places a resolved cluster at its brightest peak,
often a member star well off its centre) counts unless it was there before, i.e. a detection of the
field without injections (:func:`baseline`) lies within :data:`SAME_PX` of it with an
aperture magnitude within :data:`SAME_MAG` (artificial-star tests likewise demand that the
source found be the one added, e.g. by comparing input and output magnitudes; without
this, in a crowded disk, a star already there would "detect" clusters far below the
detection limit), and unless its aperture magnitude is brighter than the cluster's whole
injected magnitude by more than :data:`MAX_BRIGHTER` (a faint cluster pushing a star just
below the threshold over it; one-sided, since an aperture misses much of an extended
cluster's light).  A cluster is **detected** when it has such a detection, and
**recovered** when one of them is also a candidate (score at or above the threshold, not
flagged): fragments of one resolved cluster count once, as the cluster is counted, not its
detections.

Thread safety: a bound NearSource is read-only (as every Source); the functions are pure.
"""

from __future__ import annotations

import numpy as np

from pyengine.sources.base import Source, TilePositions

__all__ = ["MAX_BRIGHTER", "SAME_MAG", "SAME_PX", "Matches", "NearSource", "baseline", "match"]

#: A detection within this many pixels of a baseline one ...
SAME_PX = 1.0
#: ... and within this many magnitudes of it is the baseline object, not an injected one.
SAME_MAG = 0.2
#: A detection brighter than the whole injected cluster by more than this (aperture
#: magnitude against the injected total) carries light the cluster cannot have given it.
MAX_BRIGHTER = 0.75


def _nearest(ax, ay, bx, by):
    """(distance, index) of the nearest b to each a (brute force in blocks); inf, -1 if no b."""
    ax, ay = np.asarray(ax, float), np.asarray(ay, float)
    dist = np.full(ax.size, np.inf)
    index = np.full(ax.size, -1, np.int64)
    if len(bx) == 0:
        return dist, index
    bx, by = np.asarray(bx, float), np.asarray(by, float)
    for s in range(0, ax.size, 1024):
        d = np.hypot(ax[s:s + 1024, None] - bx[None, :], ay[s:s + 1024, None] - by[None, :])
        index[s:s + 1024] = np.argmin(d, axis=1)
        dist[s:s + 1024] = d[np.arange(d.shape[0]), index[s:s + 1024]]
    return dist, index


class NearSource(Source):
    """The positions of ``inner`` (a DetectSource, bound with this one) within ``radius``
    px (one for all, or one per site) of the sites (x, y), each position kept for its
    nearest site; tiles whose core lies farther than that from every site own none."""

    kind = "detect"
    needs_pixels = True

    def __init__(self, inner, x, y, radius: float):
        self.inner = inner
        self.sx, self.sy = np.asarray(x, float), np.asarray(y, float)
        self.radius = np.broadcast_to(np.asarray(radius, float), self.sx.shape).copy()
        self._plan = None
        self._near_tiles: frozenset[int] = frozenset()

    @property
    def column_dtypes(self):
        return self.inner.column_dtypes

    def bind(self, mosaic, plan) -> None:
        self.inner.bind(mosaic, plan)
        near = set()
        for tile in plan:
            # The core's pixels are [x0 - 0.5, x1 - 0.5) in position: a site within
            # radius of that box may own a detection in it.
            dx = np.maximum(np.maximum(tile.x0 - 0.5 - self.sx, self.sx - (tile.x1 - 0.5)), 0)
            dy = np.maximum(np.maximum(tile.y0 - 0.5 - self.sy, self.sy - (tile.y1 - 0.5)), 0)
            if np.any(np.hypot(dx, dy) <= self.radius):
                near.add(tile.index)
        self._near_tiles = frozenset(near)
        self._plan = plan

    def count(self, tile) -> int | None:
        return None if tile.index in self._near_tiles else 0

    def positions(self, tile, pixels) -> TilePositions:
        self._check_tile(tile)
        if tile.index not in self._near_tiles:
            return TilePositions.empty(self.column_dtypes)
        pos = self.inner.positions(tile, pixels)
        dist, site = _nearest(pos.x, pos.y, self.sx, self.sy)
        keep = (site >= 0) & (dist <= self.radius[np.maximum(site, 0)])
        return TilePositions(pos.x[keep], pos.y[keep], pos.row[keep],
                             {k: v[keep] for k, v in pos.columns.items()})

    def fingerprint(self) -> dict:
        return {**self.inner.fingerprint(), "near_sites": int(self.sx.size),
                "near_radius_max": float(self.radius.max(initial=0.0))}

    def describe(self) -> str:
        return (f"{self.inner.describe()}; only detections within the match radius of "
                f"{self.sx.size} injected clusters are scored")


def baseline(mosaic, make_detect, plan, x, y, radius) -> dict:
    """Detections (x, y, mag arrays) of the field as it is, within ``radius`` px (one,
    or one per site) of the sites (x, y): what was there before any cluster was injected."""
    source = NearSource(make_detect(), x, y, radius)
    source.bind(mosaic, plan)
    parts = []
    for tile in plan:
        if source.count(tile) == 0:
            continue
        pos = source.positions(tile, mosaic.read(*tile.window))
        mag = pos.columns.get("mag", np.full(len(pos), np.nan, np.float32))
        parts.append((pos.x, pos.y, np.asarray(mag, float)))
    if not parts:
        return {"x": np.zeros(0), "y": np.zeros(0), "mag": np.zeros(0)}
    return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(("x", "y", "mag"))}


class Matches:
    """Per injected cluster: detected, recovered, and its detection's measurements."""

    def __init__(self, n: int):
        self.detected = np.zeros(n, bool)
        self.recovered = np.zeros(n, bool)
        self.distance = np.full(n, np.nan)     # px, to the nearest detection of its own
        self.det_mag = np.full(n, np.nan)      # that detection's aperture magnitude
        self.score = np.full(n, np.nan)        # the best score among its detections
        self.n_det = np.zeros(n, np.int64)     # its detections (fragments)
        self.pre_existing = np.zeros(n, np.int64)   # detections near it not its own


def match(sx, sy, mag_in, catalog, base: dict, radius, out: Matches, index) -> None:
    """Fill ``out`` at ``index`` for the clusters at (sx, sy) of one round (module
    docstring), injected with total magnitudes ``mag_in`` and with match radii ``radius``
    (px, one per cluster), from the round's catalog (x, y, mag, score, is_candidate)."""
    radius = np.broadcast_to(np.asarray(radius, float), np.shape(sx))
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    n = len(x)
    mag = (np.asarray(catalog["mag"], float) if "mag" in catalog.colnames
           else np.full(n, np.nan))
    score = np.asarray(catalog["score"], float)
    cand = np.asarray(catalog["is_candidate"], bool)
    # Detections that were there before: a baseline one within SAME_PX, of the same
    # magnitude (or either magnitude unknown).
    d, j = _nearest(x, y, base["x"], base["y"])
    same = d <= SAME_PX
    if same.any():
        bm = base["mag"][j[same]]
        dm = np.abs(mag[same] - bm)
        same[same] = ~(np.isfinite(dm) & (dm > SAME_MAG))
    owner_d, owner = _nearest(x, y, sx, sy)   # each detection's nearest injected cluster
    mine = (owner >= 0) & (owner_d <= radius[np.maximum(owner, 0)])
    for k in range(len(sx)):
        at = np.flatnonzero(mine & (owner == k))
        with np.errstate(invalid="ignore"):
            too_bright = mag[at] < mag_in[k] - MAX_BRIGHTER   # NaN magnitudes: not judged
        own = at[~same[at] & ~too_bright]
        i = index[k]
        out.pre_existing[i] = int(np.count_nonzero(same[at] | too_bright))
        out.n_det[i] = own.size
        if own.size == 0:
            continue
        out.detected[i] = True
        near = own[np.argmin(owner_d[own])]
        out.distance[i] = owner_d[near]
        out.det_mag[i] = mag[near]
        out.score[i] = np.nanmax(score[own]) if np.isfinite(score[own]).any() else np.nan
        out.recovered[i] = bool(cand[own].any())
