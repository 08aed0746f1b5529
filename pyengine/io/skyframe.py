"""ICRS in and out: sky positions of pixels, and pixels of sky positions.

pyengine's catalogs give RA/Dec in ICRS (DESIGN.md §4), and input catalogs'
RA/Dec are read as ICRS.  A mosaic's WCS may be in another celestial frame:
RADESYS = 'FK5' (EQUINOX 2000), 'FK4' (B1950, old photographic surveys),
Galactic axes.  ``pixel_to_world_values`` gives coordinates in *that* frame,
which for FK4 B1950 are off by about half a degree.  So every conversion
between pixels and RA/Dec goes through these two functions: the WCS's frame
is read with astropy's ``wcs_to_celestial_frame`` (the FITS standard's
defaults: no RADESYS and no EQUINOX is ICRS, EQUINOX before 1984 is FK4,
else FK5), and positions are transformed with ``SkyCoord``, vectorised.
When the frame is ICRS the transformation is skipped: the common case costs
only the WCS evaluation.

Thread safety: pure functions of their arguments (astropy's WCS evaluation
may run in several threads).
"""

from __future__ import annotations

import warnings

import numpy as np

from pyengine.errors import WCSError

__all__ = ["icrs_to_pixel", "pixel_to_icrs", "wcs_frame"]


def _plainly_icrs(wcs) -> bool:
    """RA/Dec axes in ICRS by the header alone (RADESYS = 'ICRS', or neither RADESYS nor
    EQUINOX, which the FITS standard reads as ICRS): decided without importing
    astropy.coordinates (0.2 s), which a scan of an ICRS mosaic never needs."""
    import math

    lon = str(wcs.wcs.ctype[wcs.wcs.lng] if wcs.wcs.lng >= 0 else "")
    radesys = str(wcs.wcs.radesys).strip().upper()
    no_equinox = not math.isfinite(float(wcs.wcs.equinox))
    return lon.startswith("RA--") and (radesys == "ICRS" or (radesys == "" and no_equinox))


def wcs_frame(wcs):
    """The WCS's celestial frame (an astropy frame), or None when it is ICRS."""
    if _plainly_icrs(wcs):
        return None
    from astropy.coordinates import ICRS
    from astropy.wcs.utils import wcs_to_celestial_frame

    try:
        frame = wcs_to_celestial_frame(wcs)
    except ValueError:
        raise WCSError(f"the WCS's celestial frame (RADESYS = {wcs.wcs.radesys!r}, CTYPE "
                       f"{', '.join(wcs.wcs.ctype)}) is not one astropy converts to ICRS; "
                       "accepted: ICRS, FK5, FK4, FK4-NO-E, Galactic") from None
    return None if isinstance(frame, ICRS) else frame


def pixel_to_icrs(wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (ra, dec) in degrees of 0-based pixels (x, y); ra in [0, 360); NaN where the
    WCS gives no position."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return np.zeros(x.shape), np.zeros(x.shape)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")  # NaN positions and off-projection pixels
        lon, lat = wcs.pixel_to_world_values(x, y)
        frame = wcs_frame(wcs)
        if frame is not None:
            from astropy import units as u
            from astropy.coordinates import ICRS, SkyCoord

            sky = SkyCoord(np.asarray(lon) * u.deg, np.asarray(lat) * u.deg,
                           frame=frame).transform_to(ICRS())
            lon, lat = sky.ra.deg, sky.dec.deg
    return np.asarray(lon, np.float64) % 360.0, np.asarray(lat, np.float64)


def icrs_to_pixel(wcs, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixels (x, y) of ICRS (ra, dec) in degrees; NaN where the WCS has none."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")  # NaN rows and positions behind the projection
        frame = wcs_frame(wcs) if ra.size else None
        if frame is not None:
            from astropy import units as u
            from astropy.coordinates import ICRS, SkyCoord

            sky = SkyCoord(ra * u.deg, dec * u.deg, frame=ICRS()).transform_to(frame)
            ra, dec = sky.spherical.lon.deg, sky.spherical.lat.deg
        px, py = wcs.world_to_pixel_values(ra, dec)
    return np.asarray(px, np.float64), np.asarray(py, np.float64)
