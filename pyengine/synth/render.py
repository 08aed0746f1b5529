"""Numba kernels that turn a block of image rows into pixels.

Every pixel value is a pure function of (seed, band, global pixel): the sky and
M31's disk are evaluated at global coordinates, objects are added in one fixed
global order, each evaluated from its global position, and the noise comes
from a counter-based hash of (seed, band, y, x) (splitmix64 mixing, Steele et
al. 2014, then Box-Muller) rather than from a sequential random stream.  Rows
are always whole image rows and each row is computed by the same loop over x,
so a pixel sees the same floating-point operations in the same order whatever
block it falls in; no kernel uses fastmath, whose reassociation could make a
value depend on its position in a vectorised loop.

Noise: Poisson noise is drawn as a Gaussian of variance model / gain (counts),
plus read noise (read_noise / gain)^2.  At PAndAS sky levels (thousands of
electrons per pixel in the default effective gains) the Gaussian is an
excellent approximation; it would not be for photon-starved images.

Order of operations per pixel: sky + disk; extended objects (PSF-convolved
stamps, added by the caller in global order); point sources (here, in global
order per row); noise; bleed trails set to the saturation level; clipping at
the saturation level; sky subtraction (optional); NaN in CCD gaps.

Thread safety: all kernels are ``@njit(nogil=True, cache=True)`` and write only
to the arrays passed in.  The ``parallel=True`` kernels split rows over Numba's
threading layer; :mod:`pyengine.synth.field` calls each under the process-wide
:data:`pyengine.kernels.pool.POOL` lock (Numba's ``workqueue`` layer is not
thread-safe), so a field may be rendered while a scan reads in another thread.
Two calls must not share an output array.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from pyengine.synth.profiles import OVERSAMPLE, TABLE_RADIUS

__all__ = ["add_points", "fill_background", "finish_rows", "noise_key", "row_index",
           "standard_normal"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0


@njit(nogil=True, cache=True, inline="always")
def _mix(z):
    """splitmix64 finaliser: a bijective, well-mixing map of uint64."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(nogil=True, cache=True)
def noise_key(seed, band):
    """Per-(seed, band) key of the noise hash."""
    return _mix(_mix(np.uint64(seed)) ^ np.uint64(band + 1))


@njit(nogil=True, cache=True, inline="always")
def _normal(row_key, x):
    h1 = _mix(row_key ^ np.uint64(x))
    h2 = _mix(h1)
    u1 = (float(h1 >> _S11) + 0.5) * _TWO_M53    # (0, 1)
    u2 = float(h2 >> _S11) * _TWO_M53            # [0, 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(nogil=True, cache=True)
def standard_normal(key, y, x):
    """The N(0, 1) deviate of pixel (x, y) for a key from :func:`noise_key`."""
    return _normal(_mix(key ^ np.uint64(y)), x)


@njit(nogil=True, cache=True, parallel=True)
def fill_background(out, y0, coef, geom, sky, disk_amp):
    """out[b, r, x] = sky[b] + disk_amp[b] exp(-R/h) for image row y0 + r.

    ``coef`` is :func:`pyengine.synth.sky.disk_coefficients`, ``geom``
    :func:`pyengine.synth.sky.disk_geometry`.
    """
    nb, nrows, nx = out.shape
    for r in prange(nrows):
        y = float(y0 + r)
        for x in range(nx):
            xf = float(x)
            den = coef[2, 0] + coef[2, 1] * xf + coef[2, 2] * y
            xi = (coef[0, 0] + coef[0, 1] * xf + coef[0, 2] * y) / den
            eta = (coef[1, 0] + coef[1, 1] * xf + coef[1, 2] * y) / den
            major = xi * geom[0] + eta * geom[1]
            minor = (xi * geom[1] - eta * geom[0]) * geom[2]
            s = math.exp(-math.sqrt(major * major + minor * minor) * geom[3])
            for b in range(nb):
                out[b, r, x] = sky[b] + disk_amp[b] * s


@njit(nogil=True, cache=True)
def row_index(y0, nrows, ys, rads):
    """For each row y0 + r, the points whose disc of radius rads[k] reaches it,
    in increasing k, as CSR arrays (offsets of length nrows + 1, indices)."""
    n = len(ys)
    counts = np.zeros(nrows + 1, np.int64)
    for k in range(n):
        lo = max(math.ceil(ys[k] - rads[k]) - y0, 0)
        hi = min(math.floor(ys[k] + rads[k]) - y0, nrows - 1)
        for r in range(lo, hi + 1):
            counts[r + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    idx = np.empty(offsets[-1], np.int32)   # a block never holds 2^31 points
    for k in range(n):
        lo = max(math.ceil(ys[k] - rads[k]) - y0, 0)
        hi = min(math.floor(ys[k] + rads[k]) - y0, nrows - 1)
        for r in range(lo, hi + 1):
            idx[fill[r]] = k
            fill[r] += 1
    return offsets, idx


@njit(nogil=True, cache=True, inline="always")
def _psf_pixel(dx, dy, table, alpha2, beta, peak):
    """Pixel-integrated PSF at offset (dx, dy): bilinear in the table, or the
    Moffat at the pixel centre beyond it."""
    rt = float(TABLE_RADIUS)
    if abs(dx) < rt and abs(dy) < rt:
        fx = (dx + rt) * OVERSAMPLE
        fy = (dy + rt) * OVERSAMPLE
        ix = math.floor(fx)
        iy = math.floor(fy)
        tx = fx - ix
        ty = fy - iy
        return ((1.0 - ty) * ((1.0 - tx) * table[iy, ix] + tx * table[iy, ix + 1])
                + ty * ((1.0 - tx) * table[iy + 1, ix] + tx * table[iy + 1, ix + 1]))
    return peak * math.pow(1.0 + (dx * dx + dy * dy) / alpha2, -beta)


@njit(nogil=True, cache=True, parallel=True)
def add_points(plane, y0, offsets, idx, xs, ys, flux, rads, table, alpha, beta):
    """Add point sources to one band's rows: plane[r, x] += flux[k] PSF(x - xs, y - ys)
    over each source's disc of radius rads[k], sources in increasing k per pixel."""
    nrows, nx = plane.shape
    alpha2 = alpha * alpha
    peak = (beta - 1.0) / (math.pi * alpha2)
    for r in prange(nrows):
        y = float(y0 + r)
        for j in range(offsets[r], offsets[r + 1]):
            k = idx[j]
            dy = y - ys[k]
            w2 = rads[k] * rads[k] - dy * dy
            if w2 < 0.0:
                continue
            w = math.sqrt(w2)
            xlo = max(math.ceil(xs[k] - w), 0)
            xhi = min(math.floor(xs[k] + w), nx - 1)
            f = flux[k]
            for x in range(xlo, xhi + 1):
                plane[r, x] += f * _psf_pixel(float(x) - xs[k], dy, table, alpha2, beta, peak)


@njit(nogil=True, cache=True, inline="always")
def _in_gap(v, origin, period, chip):
    return (v - origin) % period >= chip


@njit(nogil=True, cache=True, parallel=True)
def finish_rows(out, y0, keys, inv_gain, read_var, saturate, sky_sub,
                trails, gaps, use_gaps):
    """Noise, bleed trails, saturation, sky subtraction and CCD gaps, in place.

    ``keys[b]`` from :func:`noise_key`; ``trails`` rows are (band, x_lo, x_hi,
    y_lo, y_hi), inclusive; ``gaps`` is :func:`pyengine.synth.sky.gap_pattern`.
    """
    nb, nrows, nx = out.shape
    for r in prange(nrows):
        y = y0 + r
        row_gap = use_gaps and _in_gap(y, gaps[3], gaps[4], gaps[5])
        for b in range(nb):
            row_key = _mix(keys[b] ^ np.uint64(y))
            for x in range(nx):
                m = out[b, r, x]
                var = max(m, 0.0) * inv_gain[b] + read_var[b]
                out[b, r, x] = m + math.sqrt(var) * _normal(row_key, x)
            for t in range(trails.shape[0]):
                if trails[t, 0] == b and trails[t, 3] <= y <= trails[t, 4]:
                    for x in range(max(trails[t, 1], 0), min(trails[t, 2], nx - 1) + 1):
                        out[b, r, x] = saturate[b]
            for x in range(nx):
                v = min(out[b, r, x], saturate[b]) - sky_sub[b]
                if use_gaps and (row_gap or _in_gap(x, gaps[0], gaps[1], gaps[2])):
                    v = np.nan
                out[b, r, x] = v
