"""Artificial clusters for one field: where they go, what they are, their pixels, and the
mosaic that shows them.

* **Where.** Each round puts at most one cluster in each cell of a grid laid over the
  image with a random origin, jittered within the central 30 % of its cell, so that two
  clusters of a round are at least :func:`separation` apart (a cutout plus the match
  radius, and 6 half-light radii of the largest, so neither's light nor cutout reaches
  the other's match); centres keep half a cutout from the edges and no cutout around one
  holds a blank pixel (such sites are skipped).  A field too small for one cell, or rh
  too large for one, is refused.
* **What** (per cluster, from the seeded generator): total magnitude uniform in
  ``mag`` (in the magnitude band), half-light radius log-uniform in ``rh`` (arcsec, as
  the synth draws sizes), young with the synth's disk share (70 %) or old, and then as
  the synth's clusters (:mod:`pyengine.synth.catalog`): concentration 0.5-1.2 (young)
  or 1.0-1.8 (old) unless ``concentration`` is given, g - i 0-0.5 or 0.8-1.3 unless a
  colour is given (then young below g - i = 0.8, as ``placed_objects``), axis ratio
  0.8-1, any position angle.  Every band other than the magnitude band needs a colour
  (band - magnitude band): given, or the synth's g - i for g with magnitudes in i.
* **Pixels.** The synth's one cluster model (:func:`pyengine.synth.cluster.cluster_stamp`)
  with the field's measured PSFs and zero points: resolved members from the synth's M31
  populations (:func:`pyengine.synth.catalog.cluster_members`; their g - i where the
  image has g and magnitudes are in i, elsewhere the cluster's colours), each source's
  light drawn out to 1 % of the band's background noise.  Photon noise of the added
  light is added where the band's header gives an effective gain (``GAIN``, e-/count).
* **The mosaic.** :class:`InjectedMosaic` is the opened mosaic whose every read returns
  the file's pixels plus the stamps that overlap the window: the images on disk are
  never written, and the scan sees injected pixels wherever it reads them (tiles,
  detection noise samples, cutouts).

Thread safety: drawing and rendering are pure functions of their arguments; an
InjectedMosaic reads as its Mosaic does (any number of threads) and adds read-only stamps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyengine.errors import ConfigError
from pyengine.io.mosaic import Mosaic

__all__ = [
    "YOUNG_FRACTION",
    "InjectedMosaic",
    "Injections",
    "cell_size",
    "cells_per_round",
    "check_ranges",
    "draw_injections",
    "needs_colour",
    "render_round",
    "separation",
    "site_grid",
]

#: Share of injected clusters drawn young (the synth's disk clusters: SynthConfig).
YOUNG_FRACTION = 0.7
_JITTER = 0.3            # a site lies within this share of its cell around the centre
_YOUNG_CONC, _OLD_CONC = (0.5, 1.2), (1.0, 1.8)
_YOUNG_GI, _OLD_GI = (0.0, 0.5), (0.8, 1.3)
_YOUNG_BELOW_GI = 0.8    # a given g - i below this is a young cluster (placed_objects)


@dataclass
class Injections:
    """The clusters injected into one field, one entry per cluster."""

    x: np.ndarray
    y: np.ndarray
    round: np.ndarray
    mag: np.ndarray           # total magnitude in the magnitude band
    rh_arcsec: np.ndarray
    rh_px: np.ndarray
    concentration: np.ndarray
    q: np.ndarray
    pa: np.ndarray            # radians east of north
    young: np.ndarray
    colours: np.ndarray       # (n, nband): band - magnitude band, 0 for the magnitude band

    def __len__(self) -> int:
        return len(self.x)

    def take(self, keep) -> Injections:
        return Injections(**{k: v[keep] for k, v in vars(self).items()})


def separation(cutout: int, match_px: float, rh_max_px: float) -> float:
    """Smallest distance (px) between two clusters of one round: a cutout plus two match
    radii (a cluster's match radius is the larger of ``match_px`` and its r_h), and 6 r_h
    of the largest."""
    return max(cutout + 2.0 * max(match_px, rh_max_px), 6.0 * rh_max_px)


def cell_size(spacing: float) -> float:
    """Side (px) of a grid cell whose jittered sites stay ``spacing`` apart."""
    return spacing / (1.0 - _JITTER)


def site_grid(shape, cutout: int, spacing: float, rng, blank=None):
    """One round's sites: (x, y) of one point per grid cell (module docstring); ``blank(x,
    y)`` says whether a site's cutout holds blank pixels (those are skipped)."""
    ny, nx = shape
    margin = cutout / 2.0 + 1.0
    cell = cell_size(spacing)
    width, height = nx - 2 * margin, ny - 2 * margin
    if width < cell or height < cell:
        return np.zeros(0), np.zeros(0)
    nxc, nyc = int(width // cell), int(height // cell)
    # The grid's origin moves from round to round, within the room the cells leave.
    ox = margin + rng.uniform(0.0, width - nxc * cell)
    oy = margin + rng.uniform(0.0, height - nyc * cell)
    gx, gy = np.meshgrid(np.arange(nxc), np.arange(nyc))
    jx = rng.uniform(-0.5, 0.5, gx.size) * _JITTER
    jy = rng.uniform(-0.5, 0.5, gy.size) * _JITTER
    x = ox + (gx.ravel() + 0.5 + jx) * cell
    y = oy + (gy.ravel() + 0.5 + jy) * cell
    if blank is not None and x.size:
        ok = np.array([not blank(a, b) for a, b in zip(x, y, strict=True)], dtype=bool)
        x, y = x[ok], y[ok]
    return x, y


def cells_per_round(shape, cutout: int, spacing: float) -> int:
    """Grid cells of one round (before blank sites are skipped)."""
    ny, nx = shape
    margin = cutout / 2.0 + 1.0
    cell = cell_size(spacing)
    return int((nx - 2 * margin) // cell) * int((ny - 2 * margin) // cell)


def draw_injections(rng, x, y, rounds, *, mag, rh, pixel_scale: float, bands, mag_index: int,
                    colours: dict, concentration=None) -> Injections:
    """The clusters at sites (x, y) of rounds ``rounds`` (module docstring).  ``colours``
    maps band index -> a fixed colour (band - magnitude band); the g band of an image
    with magnitudes in i may be absent from it (then the synth's colours)."""
    n = len(x)
    m = rng.uniform(mag[0], mag[1], n)
    rh_arcsec = np.exp(rng.uniform(math.log(rh[0]), math.log(rh[1]), n))
    young = rng.random(n) < YOUNG_FRACTION
    cols = np.zeros((n, len(bands)))
    g = _synth_colour_band(bands, mag_index)
    for b in range(len(bands)):
        if b == mag_index:
            continue
        if b in colours:
            cols[:, b] = colours[b]
        elif b == g:
            cols[:, b] = np.where(young, rng.uniform(*_YOUNG_GI, n), rng.uniform(*_OLD_GI, n))
        else:  # checked by the caller; a bug if it gets here
            raise ValueError(f"band {bands[b]} has no colour")
    if g is not None and g in colours:
        young = cols[:, g] < _YOUNG_BELOW_GI
    if concentration is None:
        conc = np.where(young, rng.uniform(*_YOUNG_CONC, n), rng.uniform(*_OLD_CONC, n))
    else:
        conc = rng.uniform(concentration[0], concentration[1], n)
    q = rng.uniform(0.8, 1.0, n)
    pa = rng.uniform(0.0, math.pi, n)
    return Injections(np.asarray(x, float), np.asarray(y, float), np.asarray(rounds, np.int64),
                      m, rh_arcsec, rh_arcsec / pixel_scale, conc, q, pa, young, cols)


def _synth_colour_band(bands, mag_index: int) -> int | None:
    """Index of the band whose colour the synth draws (g, with magnitudes in i), or None."""
    from pyengine.bands import band_index

    g = band_index("g", bands)
    return g if g is not None and band_index("i", bands) == mag_index else None


def needs_colour(bands, mag_index: int, colours: dict) -> list[str]:
    """Bands without a colour (neither given nor drawn by the synth)."""
    g = _synth_colour_band(bands, mag_index)
    return [bands[b] for b in range(len(bands)) if b not in (mag_index, g) and b not in colours]


class _Zero:
    """A band's counts of a magnitude: ``flux(mag)`` as the synth's BandSpec."""

    def __init__(self, zero_point: float):
        self.zeropoint = float(zero_point)

    def flux(self, mag):
        return 10.0 ** (0.4 * (self.zeropoint - np.asarray(mag, dtype=np.float64)))


def render_round(inj: Injections, psfs, thresholds, zero_points, gains, *, mag_index: int,
                 bands, rng, members: bool = True) -> list:
    """The :class:`~pyengine.synth.cluster.ClusterStamp` of every cluster of ``inj``."""
    from pyengine.synth.catalog import cluster_members, king_on_stamp
    from pyengine.synth.cluster import cluster_stamp
    from pyengine.synth.config import SynthConfig

    nband = len(bands)
    zps = np.asarray(zero_points, dtype=np.float64)
    total = 10.0 ** (0.4 * (zps[None, :] - (inj.mag[:, None] + inj.colours)))   # (n, nband)
    g = _synth_colour_band(bands, mag_index)
    roles = (_Zero(zps[g] if g is not None else zps[mag_index]), _Zero(zps[mag_index]))
    role_flux = np.vstack([total[:, g] if g is not None else total[:, mag_index],
                           total[:, mag_index]])
    n = len(inj)
    if members and n:
        rc, rt = king_on_stamp(inj.rh_px.copy(), inj.concentration.copy())
        owner, mdx, mdy, mflux, _ = cluster_members(
            rng, SynthConfig(), roles, inj.young, role_flux, rc, rt, inj.q, inj.pa)
        # Members in every band: the synth's own fluxes in g and the magnitude band, the
        # cluster's colour elsewhere (scaled from the magnitude band's counts).
        per_band = np.empty((nband, len(owner)))
        for b in range(nband):
            if b == mag_index:
                per_band[b] = mflux[1]
            elif b == g:
                per_band[b] = mflux[0]
            else:
                per_band[b] = mflux[1] * total[owner, b] / total[owner, mag_index]
        smooth = total.T - np.vstack([np.bincount(owner, per_band[b], minlength=n)
                                      for b in range(nband)])
    else:
        owner = np.zeros(0, np.int64)
        smooth = total.T
    stamps = []
    for k in range(n):
        mine = owner == k
        mem = ((mdx[mine], mdy[mine], per_band[:, mine]) if members and mine.any() else None)
        stamp = cluster_stamp(psfs, thresholds, x=inj.x[k], y=inj.y[k], flux=smooth[:, k],
                              rh_px=inj.rh_px[k], concentration=inj.concentration[k],
                              q=inj.q[k], pa=inj.pa[k], members=mem)
        for b, gain in enumerate(gains):
            if gain is not None and gain > 0:
                light = stamp.pixels[b]
                light += np.sqrt(np.maximum(light, 0.0) / gain) * rng.standard_normal(light.shape)
        stamps.append(stamp)
    return stamps


class InjectedMosaic(Mosaic):
    """A mosaic whose reads return its files' pixels plus the given stamps.

    It shares the files of ``base`` (which stays open and owns them: closing this one
    closes nothing), and cannot be pickled (its stamps exist only in this process)."""

    def __init__(self, base: Mosaic, stamps):
        super().__init__(base.paths, base.bands, base._readers, base.headers, base.wcs)
        self._stamps = list(stamps)
        self._boxes = np.array([(s.y0, s.y0 + s.shape[0], s.x0, s.x0 + s.shape[1])
                                for s in self._stamps], dtype=np.int64).reshape(-1, 4)

    def read(self, y0, y1, x0, x1, out=None, *, parallel: bool = True):
        out = super().read(y0, y1, x0, x1, out, parallel=parallel)
        b = self._boxes
        hit = np.flatnonzero((b[:, 0] < y1) & (b[:, 1] > y0) & (b[:, 2] < x1) & (b[:, 3] > x0))
        for k in hit:
            self._stamps[k].add_to(out, int(y0), int(x0))
        return out

    def close(self) -> None:
        self._readers = None   # the base mosaic owns the files

    def __reduce__(self):
        raise TypeError("an InjectedMosaic holds its clusters in memory and cannot be "
                        "pickled; scan it in this process")


def check_ranges(mag, rh, concentration=None) -> None:
    """ConfigError for empty or impossible ranges (``--mag 23:16``, ``--rh 0:0``)."""
    lo, hi = mag
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"--mag {lo:g}:{hi:g} is an empty range; give LO:HI with LO < HI "
                          "(bright to faint, e.g. 16:23)")
    lo, hi = rh
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ConfigError(f"--rh {lo:g}:{hi:g} is not a range of half-light radii; give "
                          "LO:HI arcsec with 0 < LO < HI (e.g. 1:6)")
    if concentration is not None:
        lo, hi = concentration
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.3 <= lo <= hi <= 2.5):
            raise ConfigError(f"--concentration {lo:g}:{hi:g} is not accepted; give LO:HI "
                              "with 0.3 <= LO <= HI <= 2.5 (King c = log10 rt/rc)")
