"""Light profiles: the Moffat PSF, King clusters, Sersic galaxies, PSF-convolved stamps.

* PSF: a Moffat profile, ``(beta - 1) / (pi alpha^2) (1 + r^2/alpha^2)^-beta``
  (Moffat 1969), with ``FWHM = 2 alpha sqrt(2^(1/beta) - 1)``.  Point sources
  need the PSF integrated over a pixel at any sub-pixel offset; :class:`PSF`
  tabulates that integral once per band on a 1/8-pixel grid out to 32 px (the
  midpoint rule with 8 x 8 samples per pixel, summed with a separable running
  box) and the render kernel interpolates it bilinearly; beyond 32 px the PSF
  is smooth enough to sample at the pixel centre.
* Clusters: King (1962) surface density
  ``(1/sqrt(1 + (r/rc)^2) - 1/sqrt(1 + (rt/rc)^2))^2`` for r < rt, whose
  enclosed light has a closed form (used to find rc from the half-light radius
  and to place member stars).
* Galaxies: Sersic profiles ``exp(-b_n ((r/r_e)^(1/n) - 1))`` with b_n from the
  Ciotti & Bertin (1999) expansion.
* Extended objects are drawn once each, on their own stamp aligned with the
  image's pixel grid: the intrinsic light integrated over each pixel (5 x 5
  samples near the centre, where profiles are cusped), then convolved with
  the band's pixel-integrated PSF sampled at integer offsets (FFT, linear
  convolution).  Treating each pixel's light as sitting at its centre during
  the convolution errs by ~(1/12 px^2) times the PSF's curvature, below 0.5 %
  for the 3.5-5 px FWHM of PAndAS seeing.  A stamp depends only on its object,
  never on the tile it lands in.

Thread safety: the Numba kernel is compiled with ``nogil=True`` and is
re-entrant.  :class:`PSF` is immutable after construction except for its cache
of kernel FFTs, which is guarded by a lock, so one PSF may serve several
threads; NumPy's FFT holds the GIL for most of its work.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

__all__ = [
    "OVERSAMPLE",
    "PSF",
    "R_MAX",
    "TABLE_RADIUS",
    "convolve_bands",
    "intrinsic_stamp",
    "king_core_radius",
    "king_enclosed",
    "king_sample_radii",
    "object_stamps",
    "sersic_b",
]

#: Table steps per pixel and the table's half-width (px) for point sources.
OVERSAMPLE = 8
TABLE_RADIUS = 32
#: No object's light (PSF wings, stamp, bleed trail) reaches farther than this (px).
R_MAX = 256
#: Kernel radii (px) extended objects may use: a few sizes keep the FFT cache small.
KERNEL_RADII = (8, 12, 16, 24, 32)
#: Pixels whose centre lies this close (px) to an extended object's centre are
#: integrated with 5 x 5 samples, the rest sampled once.
SUBSAMPLE_RADIUS = 4.0
#: Kernel FFTs are cached up to this transform length: at most 7 lengths x 5
#: radii, under 2 MB per band, whatever the field.
_CACHE_LENGTH = 128


def _fast_length(n: int) -> int:
    """Smallest FFT length of the form 2^k or 3 * 2^k that is >= n.

    A coarse set of lengths keeps the kernel-FFT cache small and bounded.
    """
    k = max(n - 1, 1).bit_length()           # 2^(k-1) < n <= 2^k
    three = 3 << (k - 2) if k >= 2 else 0    # 0.75 * 2^k
    return three if three >= n else 1 << k


class PSF:
    """One band's Moffat PSF: the pixel-integrated table and convolution kernels."""

    def __init__(self, fwhm_px: float, beta: float):
        self.fwhm = float(fwhm_px)
        self.beta = float(beta)
        self.alpha = self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))
        self.peak = (self.beta - 1.0) / (math.pi * self.alpha**2)
        self.table = self._pixel_integrated_table()
        self._lock = threading.Lock()
        self._ffts: dict[tuple[int, int], np.ndarray] = {}

    def value(self, r):
        """Moffat surface density at radius ``r`` (px), per px^2 (unit total flux)."""
        r = np.asarray(r, dtype=np.float64)
        return self.peak * (1.0 + (r / self.alpha) ** 2) ** (-self.beta)

    def encircled(self, r):
        """Fraction of the flux within radius ``r`` (px)."""
        r = np.asarray(r, dtype=np.float64)
        return 1.0 - (1.0 + (r / self.alpha) ** 2) ** (1.0 - self.beta)

    def radius_for(self, flux, threshold: float):
        """Radius (px) beyond which ``flux`` times the PSF stays below ``threshold``,
        clipped to [2, R_MAX]."""
        flux = np.asarray(flux, dtype=np.float64)
        ratio = np.maximum(flux * self.peak / threshold, 1.0)
        r = self.alpha * np.sqrt(np.maximum(ratio ** (1.0 / self.beta) - 1.0, 0.0))
        return np.clip(r, 2.0, float(R_MAX))

    def _pixel_integrated_table(self) -> np.ndarray:
        """P(dx, dy) = integral of the PSF over the unit pixel centred at offset (dx, dy),
        for dx, dy = -R, -R + 1/8, ..., R (R = TABLE_RADIUS); indexed [dy, dx]."""
        h = 1.0 / OVERSAMPLE
        n_samples = (2 * TABLE_RADIUS + 1) * OVERSAMPLE
        s = -TABLE_RADIUS - 0.5 + (np.arange(n_samples) + 0.5) * h
        grid = self.value(np.hypot(s[:, None], s[None, :])) * (h * h)
        # Sum OVERSAMPLE x OVERSAMPLE blocks of samples around every table point
        # (a running box, separable).  Sample j covers [-R - 1/2 + j h, ... + h), so
        # table point i (offset -R + i h) collects samples i .. i + OVERSAMPLE - 1.
        for axis in (0, 1):
            c = np.cumsum(grid, axis=axis)
            c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
            hi = c.take(np.arange(OVERSAMPLE, n_samples + 1), axis=axis)
            lo = c.take(np.arange(0, n_samples - OVERSAMPLE + 1), axis=axis)
            grid = hi - lo
        return np.ascontiguousarray(grid)

    def pixel_grid(self, radius: int) -> np.ndarray:
        """Pixel-integrated PSF of a source centred on a pixel, at offsets
        -radius..radius (unit total flux; the part beyond radius is missing)."""
        if radius > TABLE_RADIUS:
            raise ValueError(f"radius {radius} exceeds the table ({TABLE_RADIUS})")
        c = TABLE_RADIUS * OVERSAMPLE
        idx = c + OVERSAMPLE * np.arange(-radius, radius + 1)
        return self.table[np.ix_(idx, idx)]

    def kernel(self, radius: int) -> np.ndarray:
        """:meth:`pixel_grid` normalised to sum 1: the convolution kernel of stamps."""
        k = self.pixel_grid(radius)
        return k / k.sum()

    def kernel_radius(self, flux: float, threshold: float) -> int:
        """The smallest allowed kernel radius whose edge is below ``threshold``."""
        r = float(self.radius_for(flux, threshold))
        for k in KERNEL_RADII:
            if k >= r:
                return k
        return KERNEL_RADII[-1]

    def kernel_fft(self, radius: int, length: int) -> np.ndarray:
        """rfft2 of ``kernel(radius)`` zero-padded to length x length (cached if small)."""
        key = (radius, length)
        with self._lock:
            kf = self._ffts.get(key)
        if kf is None:
            kf = np.fft.rfft2(self.kernel(radius), s=(length, length))
            if length <= _CACHE_LENGTH:   # the few large stamps are not worth the memory
                with self._lock:
                    self._ffts[key] = kf
        return kf

    def convolve(self, stamp: np.ndarray, radius: int) -> np.ndarray:
        """Full linear convolution of a square stamp with ``kernel(radius)``.

        The result has half-size ``stamp half-size + radius`` and the same centre.
        """
        return convolve_bands(stamp, [self], [radius])[0]


def convolve_bands(stamp: np.ndarray, psfs, radii) -> list[np.ndarray]:
    """:meth:`PSF.convolve` of one stamp with several PSFs, sharing the stamp's FFT
    between those that need the same transform length."""
    out = []
    spectra: dict[int, np.ndarray] = {}
    for psf, radius in zip(psfs, radii, strict=True):
        n_out = stamp.shape[0] + 2 * radius
        length = _fast_length(n_out)
        if length not in spectra:
            spectra[length] = np.fft.rfft2(stamp, s=(length, length))
        full = np.fft.irfft2(spectra[length] * psf.kernel_fft(radius, length),
                             s=(length, length))
        out.append(full[:n_out, :n_out])
    return out


def object_stamps(kind, scale, shape_par, q, pa, dx, dy, half, fluxes, psfs, radii):
    """PSF-convolved stamps of one extended object, one per band: its intrinsic light
    (:func:`intrinsic_stamp`, centred (dx, dy) px from the stamp's central pixel) convolved
    with each band's PSF kernel of the given radius (:func:`convolve_bands`) and scaled to
    that band's total counts ``fluxes[b]``.  Stamp b has half-size ``half + radii[b]`` and
    the same central pixel.  The one renderer of extended objects: synthetic fields
    (:mod:`pyengine.synth.field`) and injected clusters (:mod:`pyengine.synth.cluster`)."""
    intrinsic = intrinsic_stamp(int(kind), scale, shape_par, q, pa, dx, dy, int(half))
    # A new compact array per band (the convolution's output is a view of a larger
    # padded transform).
    return [s * f for s, f in zip(convolve_bands(intrinsic, psfs, radii), fluxes, strict=True)]


def sersic_b(n):
    """b_n such that r_e encloses half the light (Ciotti & Bertin 1999 expansion)."""
    n = np.asarray(n, dtype=np.float64)
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def king_enclosed(x, xt):
    """King (1962) light within radius x (units of rc), over the total (x <= xt)."""
    x = np.minimum(np.asarray(x, dtype=np.float64), xt)
    xt = np.asarray(xt, dtype=np.float64)
    ct = 1.0 / np.sqrt(1.0 + xt * xt)

    def light(u):
        return np.log1p(u * u) - 4.0 * ct * (np.sqrt(1.0 + u * u) - 1.0) + ct * ct * u * u

    return light(x) / light(xt)


def _king_invert(target, xt, iterations: int = 48):
    """x (units of rc) with king_enclosed(x, xt) = target, by bisection (vectorised)."""
    target = np.asarray(target, dtype=np.float64)
    lo = np.zeros(np.broadcast(target, xt).shape)
    hi = np.broadcast_to(np.asarray(xt, dtype=np.float64), lo.shape).copy()
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = king_enclosed(mid, xt) < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def king_core_radius(r_h, concentration):
    """(rc, rt) of King profiles with half-light radius ``r_h`` and c = log10(rt/rc)."""
    xt = 10.0 ** np.asarray(concentration, dtype=np.float64)
    rc = np.asarray(r_h, dtype=np.float64) / _king_invert(0.5, xt)
    return rc, rc * xt


def king_sample_radii(u, rc, xt):
    """Radii (px) with King-distributed light, from uniform deviates ``u`` in [0, 1)."""
    return np.asarray(rc) * _king_invert(u, xt)


@njit(nogil=True, cache=True)
def intrinsic_stamp(kind, scale, shape_par, q, pa, dx, dy, half):  # pragma: no cover - numba
    """Intrinsic light of one object integrated over the pixels of a (2 half + 1)^2
    stamp, normalised to sum 1.

    kind 0: King, scale = rc (px), shape_par = rt / rc; kind 1: Sersic, scale = r_e
    (px, semi-major), shape_par = n.  q is the axis ratio, pa the major axis's
    position angle (radians east of north; east is -x, north is +y).  The object's
    centre sits at (dx, dy) px from the stamp's central pixel.
    """
    n = 2 * half + 1
    out = np.zeros((n, n))
    # Major-axis unit vector in pixel coordinates: north (+y) rotated towards east (-x).
    ux = -math.sin(pa)
    uy = math.cos(pa)
    if kind == 0:
        ct = 1.0 / math.sqrt(1.0 + shape_par * shape_par)
        rt2 = (scale * shape_par) ** 2
        bn = 0.0
        inv_n = 0.0
    else:
        ct = 0.0
        rt2 = 0.0
        inv_n = 1.0 / shape_par
        bn = 2.0 * shape_par - 1.0 / 3.0 + 4.0 / (405.0 * shape_par) \
            + 46.0 / (25515.0 * shape_par * shape_par)
    total = 0.0
    for iy in range(n):
        for ix in range(n):
            cx = ix - half - dx
            cy = iy - half - dy
            nsub = 5 if cx * cx + cy * cy < SUBSAMPLE_RADIUS * SUBSAMPLE_RADIUS else 1
            acc = 0.0
            for sy in range(nsub):
                py = cy + (sy + 0.5) / nsub - 0.5
                for sx in range(nsub):
                    px = cx + (sx + 0.5) / nsub - 0.5
                    a = px * ux + py * uy
                    b = (px * uy - py * ux) / q
                    r2 = a * a + b * b
                    if kind == 0:
                        if r2 < rt2:
                            t = 1.0 / math.sqrt(1.0 + r2 / (scale * scale)) - ct
                            acc += t * t
                    else:
                        acc += math.exp(-bn * ((math.sqrt(r2) / scale) ** inv_n - 1.0))
            v = acc / (nsub * nsub)
            out[iy, ix] = v
            total += v
    if total > 0.0:
        for iy in range(n):
            for ix in range(n):
                out[iy, ix] /= total
    return out
