"""One star cluster rendered on its own stamp, in every band: the synth's cluster model
for clusters added to other images (``pyengine inject``, :mod:`pyengine.injection`).

The model is the synthetic field's (:mod:`pyengine.synth.catalog`, whose module docstring
gives the numbers): a King (1962) profile of half-light radius r_h and concentration
c = log10(rt/rc) (lowered, r_h kept, where the tidal radius would not fit the largest
stamp: :func:`~pyengine.synth.catalog.king_on_stamp`), axis ratio q and position angle,
carrying the light its resolved members (:func:`~pyengine.synth.catalog.cluster_members`)
do not.  The smooth part is drawn by the same renderer as a field's extended objects
(:func:`~pyengine.synth.profiles.object_stamps`: pixel-integrated intrinsic light, FFT
convolution with each band's pixel-integrated Moffat kernel), the members by the same
point-source kernel as a field's stars (:func:`pyengine.synth.render.add_points`, the
PSF table interpolated at each member's sub-pixel offset).  A pixel skips a source's
light below ``threshold`` (the field renderer uses 1 % of the sky noise,
:data:`pyengine.synth.field.EPSILON`); light beyond the stamp is not drawn.

Only counts are drawn: no sky, no noise (the caller adds what its image lacks).

Thread safety: :func:`cluster_stamp` is a pure function of its arguments (a PSF's kernel
cache is locked); its point-source kernel runs on Numba's thread pool under the
process-wide :data:`pyengine.kernels.pool.POOL` lock, so several threads may call it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.kernels.pool import POOL
from pyengine.synth import render
from pyengine.synth.catalog import king_on_stamp
from pyengine.synth.profiles import PSF, object_stamps

__all__ = ["ClusterStamp", "cluster_stamp"]


@dataclass(frozen=True)
class ClusterStamp:
    """A cluster's counts per band on a stamp: ``pixels[b, j, i]`` is image pixel
    (x0 + i, y0 + j) of band b (0-based pixels, arrays (band, y, x))."""

    x0: int
    y0: int
    pixels: np.ndarray  # (nband, h, w) float64

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[1:]

    def add_to(self, out: np.ndarray, y0: int, x0: int) -> None:
        """Add the stamp's overlap with ``out`` (nband, h, w), which holds the image window
        whose first pixel is (x0, y0); NaN pixels of ``out`` stay NaN."""
        h, w = self.shape
        ya, yb = max(self.y0, y0), min(self.y0 + h, y0 + out.shape[1])
        xa, xb = max(self.x0, x0), min(self.x0 + w, x0 + out.shape[2])
        if ya >= yb or xa >= xb:
            return
        out[:, ya - y0:yb - y0, xa - x0:xb - x0] += self.pixels[
            :, ya - self.y0:yb - self.y0, xa - self.x0:xb - self.x0].astype(out.dtype)


def cluster_stamp(psfs: list[PSF], thresholds, *, x: float, y: float, flux, rh_px: float,
                  concentration: float, q: float = 1.0, pa: float = 0.0,
                  members=None) -> ClusterStamp:
    """One King cluster centred at pixel (x, y), PSF-convolved in every band.

    ``psfs`` and ``thresholds`` (counts) are per band; ``flux`` (nband,) is the smooth
    profile's total counts per band (the cluster's light less its members'), ``rh_px``
    its half-light radius and ``concentration`` c = log10(rt/rc), ``q`` and ``pa``
    (radians east of north) its shape.  ``members`` is ``(dx, dy, flux)``: offsets (px)
    from the centre and (nband, m) counts of resolved member stars, or None.
    """
    nband = len(psfs)
    flux = np.asarray(flux, dtype=np.float64).reshape(nband)
    rc, rt = king_on_stamp(np.array([float(rh_px)]), np.array([float(concentration)]))
    rc, rt = float(rc[0]), float(rt[0])
    half = math.ceil(rt + 1.0)   # as a field's clusters (pyengine.synth.catalog)
    radii = [psf.kernel_radius(f, t) for psf, f, t in zip(psfs, flux, thresholds, strict=True)]
    cx, cy = int(centre_pixel(x)), int(centre_pixel(y))
    smooth = object_stamps(0, rc, rt / rc, q, pa, x - cx, y - cy, half, flux, psfs, radii)
    if members is not None:
        mdx, mdy, mflux = (np.asarray(v, dtype=np.float64) for v in members)
        mflux = mflux.reshape(nband, -1)
        rads = np.vstack([psf.radius_for(mflux[b], thresholds[b]) for b, psf in enumerate(psfs)])
        reach = np.maximum(np.abs(mdx + (x - cx)), np.abs(mdy + (y - cy))) + rads.max(axis=0)
        size = max(half + max(radii), math.ceil(float(reach.max(initial=0.0))))
    else:
        size = half + max(radii)
    n = 2 * size + 1
    pixels = np.zeros((nband, n, n))
    for b, stamp in enumerate(smooth):
        o = size - stamp.shape[0] // 2
        pixels[b, o:o + stamp.shape[0], o:o + stamp.shape[1]] += stamp
    if members is not None and mdx.size:
        # Member k at stamp coordinates (size + dx + x - cx, ...): the stamp's central
        # pixel is the cluster's centre pixel (cx, cy).
        xs = np.ascontiguousarray(size + (x - cx) + mdx)
        ys = np.ascontiguousarray(size + (y - cy) + mdy)
        for b, psf in enumerate(psfs):
            offsets, idx = render.row_index(0, n, ys, rads[b])
            with POOL:
                render.add_points(pixels[b], 0, offsets, idx, xs, ys,
                                  np.ascontiguousarray(mflux[b]), np.ascontiguousarray(rads[b]),
                                  psf.table, psf.alpha, psf.beta)
    return ClusterStamp(cx - size, cy - size, pixels)
