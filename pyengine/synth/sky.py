"""Geometry of a synthetic field: TAN WCS, headers, M31's disk, CCD gaps.

The WCS is a pure gnomonic (TAN) projection centred on the field centre, north
up and east left (CD1_1 < 0), 0-based pixel (x, y) following astropy: the
reference pixel is the middle of the image, CRPIX = ((width + 1) / 2,
(height + 1) / 2) in FITS's 1-based convention.  A field of a synthetic survey
may be rotated (``SynthConfig.rotation_deg``, CROTA2's convention written as a
CD matrix); an unrotated field's cards and pixels are those of before rotation
existed, bit for bit.

M31's disk is a thin exponential disk (scale length h) inclined by i with its
major axis at position angle PA (east of north).  A pixel's position in M31's
own tangent plane is a projective function of (x, y): the TAN projection
sends a pixel to the direction ``c + xi e_E + eta e_N`` (field centre c, east
and north unit vectors), and M31's standard coordinates are ratios of dot
products of that (unnormalised) vector with M31's centre, east and north
vectors.  So ``xi_m = (a0 + a1 x + a2 y) / (c0 + c1 x + c2 y)`` exactly, with
no trigonometry per pixel; :func:`disk_coefficients` returns the 3x3 matrix
and :func:`disk_shape` evaluates exp(-R/h) of the deprojected radius R
(a tested NumPy twin of the Numba kernel in :mod:`pyengine.synth.render`).

Thread safety: pure functions of their arguments; NumPy and astropy calls hold
the GIL.  Safe to call from several threads.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io.fits import Header
from astropy.wcs import WCS

from pyengine import __version__
from pyengine.synth.config import SynthConfig

__all__ = [
    "band_header",
    "cd_matrix",
    "disk_coefficients",
    "disk_geometry",
    "disk_shape",
    "field_wcs",
    "gap_pattern",
    "primary_header",
    "sky_counts",
    "wcs_header",
]


def _unit_vectors(ra_deg: float, dec_deg: float) -> tuple[np.ndarray, ...]:
    """Unit vectors of a sky position and of east and north there."""
    a, d = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    return centre, east, north


def _reference_pixel(config: SynthConfig) -> tuple[float, float]:
    """0-based pixel of the WCS reference point (the image centre)."""
    return (config.width - 1) / 2.0, (config.height - 1) / 2.0


def cd_matrix(config: SynthConfig) -> tuple[float, float, float, float]:
    """(CD1_1, CD1_2, CD2_1, CD2_2), deg/px: -s, 0, 0, s when unrotated, else CROTA2's
    ``CDELT1 cos r, -CDELT2 sin r, CDELT1 sin r, CDELT2 cos r`` (CDELT1 = -s, CDELT2 = s)."""
    s = config.pixel_scale / 3600.0
    if config.rotation_deg == 0.0:
        return -s, 0.0, 0.0, s
    r = math.radians(config.rotation_deg)
    return -s * math.cos(r), -s * math.sin(r), -s * math.sin(r), s * math.cos(r)


def wcs_header(config: SynthConfig) -> Header:
    """TAN WCS cards of the field (north up, east left, unless rotated)."""
    s = config.pixel_scale / 3600.0
    xc, yc = _reference_pixel(config)
    h = Header()
    h["WCSAXES"] = (2, "number of WCS axes")
    h["CTYPE1"] = ("RA---TAN", "gnomonic projection")
    h["CTYPE2"] = ("DEC--TAN", "gnomonic projection")
    h["CUNIT1"] = ("deg", "")
    h["CUNIT2"] = ("deg", "")
    h["CRVAL1"] = (float(config.ra), "[deg] RA of the reference pixel")
    h["CRVAL2"] = (float(config.dec), "[deg] Dec of the reference pixel")
    h["CRPIX1"] = (xc + 1.0, "reference pixel x (1-based)")
    h["CRPIX2"] = (yc + 1.0, "reference pixel y (1-based)")
    if config.rotation_deg == 0.0:
        h["CD1_1"] = (-s, "[deg/px] east is left")
        h["CD1_2"] = (0.0, "")
        h["CD2_1"] = (0.0, "")
        h["CD2_2"] = (s, "[deg/px] north is up")
    else:
        note = f"[deg/px] rotated {config.rotation_deg:.4f} deg"
        for key, value in zip(("CD1_1", "CD1_2", "CD2_1", "CD2_2"), cd_matrix(config),
                              strict=True):
            h[key] = (value, note)
    h["RADESYS"] = ("ICRS", "")
    return h


def field_wcs(config: SynthConfig) -> WCS:
    """The field's astropy WCS."""
    return WCS(wcs_header(config))


def sky_counts(config: SynthConfig, band: str) -> float:
    """Dark-sky level of one pixel, counts."""
    b = config.band(band)
    return float(b.flux(b.sky) * config.pixel_area_arcsec2)


def primary_header(config: SynthConfig) -> Header:
    """Cards common to every file: provenance and the synthetic-data warning."""
    h = Header()
    h["ORIGIN"] = ("pyengine synth", f"pyengine {__version__}")
    h["OBJECT"] = ("M31 (synthetic)", "")
    h["TELESCOP"] = ("CFHT (simulated)", "")
    h["INSTRUME"] = ("MegaCam (simulated)", "")
    h["SYNTHETC"] = (True, "synthetic data, not an observation")
    h["SEED"] = (config.seed, "pyengine synth random seed")
    h["FIELDW"] = (config.width, "[px] field width")
    h["FIELDH"] = (config.height, "[px] field height")
    h["M31DIST"] = (config.distance_kpc, "[kpc] distance of M31 assumed")
    h["COMMENT"] = "Synthetic PAndAS-like data of M31 from pyengine synth: not real."
    h["COMMENT"] = "Truth catalog of every object: truth.fits beside the images."
    return h


def band_header(config: SynthConfig, band: str, *, extname: str | None = None) -> Header:
    """Full header of one band's image: WCS, photometry, detector and provenance."""
    b = config.band(band)
    sky = sky_counts(config, band)
    h = primary_header(config)
    if extname is not None:
        h.insert(0, ("EXTNAME", extname, "band"))
    h["FILTER"] = (b.name, "MegaCam-like filter")
    h["BUNIT"] = ("adu", "counts; mag = MAGZPT - 2.5 log10(counts)")
    h["MAGZPT"] = (b.zeropoint, "[mag] photometric zero point")
    h["GAIN"] = (b.gain, "[e-/adu] effective gain")
    h["RDNOISE"] = (b.read_noise, "[e-] read noise")
    h["SATURATE"] = (b.saturate - (sky if config.sky_subtracted else 0.0),
                     "[adu] saturation level")
    h["SEEING"] = (b.seeing, "[arcsec] PSF FWHM (Moffat)")
    h["PSFBETA"] = (b.moffat_beta, "Moffat index of the PSF")
    h["PIXSCALE"] = (config.pixel_scale, "[arcsec/px] pixel scale")
    h["SKYLEVEL"] = (sky, "[adu] dark-sky level per pixel")
    h["SKYSUB"] = (config.sky_subtracted, "sky level subtracted")
    h.extend(wcs_header(config), end=True)
    return h


def disk_coefficients(config: SynthConfig) -> np.ndarray:
    """3x3 matrix M: M31 standard coordinates (radians) of 0-based pixel (x, y) are
    ``(M[0] @ v / (M[2] @ v), M[1] @ v / (M[2] @ v))`` with ``v = (1, x, y)``."""
    s = math.radians(config.pixel_scale / 3600.0)
    xc, yc = _reference_pixel(config)
    c, e, n = _unit_vectors(config.ra, config.dec)
    if config.rotation_deg == 0.0:
        # Tangent-plane point of pixel (x, y): p = c + xi e + eta n with
        # xi = -s (x - xc) (east is left), eta = s (y - yc).
        p0 = c + s * xc * e - s * yc * n
        px = -s * e
        py = s * n
    else:
        # (xi, eta) = CD (x - xc, y - yc), in radians.
        cd11, cd12, cd21, cd22 = (math.radians(v) for v in cd_matrix(config))
        px = cd11 * e + cd21 * n
        py = cd12 * e + cd22 * n
        p0 = c - xc * px - yc * py
    cm, em, nm = _unit_vectors(config.m31_ra, config.m31_dec)
    rows = (em, nm, cm)
    return np.array([[r @ p0, r @ px, r @ py] for r in rows], dtype=np.float64)


def disk_geometry(config: SynthConfig) -> np.ndarray:
    """(sin PA, cos PA, 1 / cos i, 1 / h) with h the scale length in radians."""
    pa = math.radians(config.position_angle_deg)
    h = config.scale_length_kpc / config.distance_kpc
    return np.array([math.sin(pa), math.cos(pa),
                     1.0 / math.cos(math.radians(config.inclination_deg)), 1.0 / h])


def disk_shape(config: SynthConfig, x, y) -> np.ndarray:
    """exp(-R / h) of M31's deprojected disk radius R at 0-based pixels (x, y).

    Equals 1 at M31's centre; multiply by the central surface brightness.
    """
    m = disk_coefficients(config)
    sin_pa, cos_pa, inv_cos_i, inv_h = disk_geometry(config)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    den = m[2, 0] + m[2, 1] * x + m[2, 2] * y
    xi = (m[0, 0] + m[0, 1] * x + m[0, 2] * y) / den
    eta = (m[1, 0] + m[1, 1] * x + m[1, 2] * y) / den
    major = xi * sin_pa + eta * cos_pa
    minor = (xi * cos_pa - eta * sin_pa) * inv_cos_i
    return np.exp(-np.sqrt(major * major + minor * minor) * inv_h)


def gap_pattern(config: SynthConfig) -> np.ndarray:
    """(origin x, period x, chip width, origin y, period y, chip height) of the CCD gaps.

    Pixel (x, y) is in a gap when ``(x - ox) mod px >= chip width`` (same for y).
    The pattern is anchored so that one column gap and one row gap cross at the
    image centre, so that even a small field shows both.  MegaCam's CCDs are
    2048 x 4612 px with gaps of tens of pixels between them.
    """
    cw, chh = config.chip_size
    g = config.chip_gap
    ox = config.width // 2 - g // 2 - cw
    oy = config.height // 2 - g // 2 - chh
    return np.array([ox, cw + g, cw, oy, chh + g, chh], dtype=np.int64)
