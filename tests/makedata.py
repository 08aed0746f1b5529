"""Test images made in code, in every encoding Mosaic must read.

Byte orders are mixed on purpose: writers receive big- and little-endian
arrays and must store the same big-endian FITS.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

PIXEL_SCALE_DEG = 0.187 / 3600


def make_wcs(shape, crval=(10.6847, 41.2690), crpix_shift=(0.0, 0.0)) -> WCS:
    """TAN WCS, 0.187"/px, north up, east left, reference pixel near the centre."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [nx / 2 + 0.5 + crpix_shift[0], ny / 2 + 0.5 + crpix_shift[1]]
    w.wcs.cd = np.array([[-PIXEL_SCALE_DEG, 0.0], [0.0, PIXEL_SCALE_DEG]])
    return w


# name -> (numpy dtype stored, BSCALE, BZERO, BLANK or None)
# Unsigned types are written as numpy unsigned arrays; astropy stores them
# with the BZERO offset convention.
ENCODINGS = {
    "u8": ("u1", 1.0, 0.0, None),
    "u8_scaled_blank": ("u1", 0.5, -20.0, 255),
    "i8_signed": ("i1", 1.0, 0.0, None),  # BITPIX 8, BZERO -128
    "i16": ("i2", 1.0, 0.0, None),
    "i16_scaled_blank": ("i2", 0.037, 1234.5, -32768),
    "u16": ("u2", 1.0, 0.0, None),
    "i32": ("i4", 1.0, 0.0, None),
    "i32_scaled_blank": ("i4", 1e-3, -5.0, -2147483648),
    "u32": ("u4", 1.0, 0.0, None),
    "i64": ("i8", 1.0, 0.0, None),
    "i64_blank": ("i8", 1.0, 0.0, -(2**63)),
    "u64": ("u8", 1.0, 0.0, None),
    "f32": ("f4", 1.0, 0.0, None),
    "f32_scaled": ("f4", 2.0, 10.0, None),
    "f64": ("f8", 1.0, 0.0, None),
}


def stored_values(dtype: str, shape, rng) -> np.ndarray:
    """Random stored values filling the dtype's range, with extremes and NaN for floats."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        data = (rng.standard_normal(shape) * 1e3).astype(dt)
        data.flat[::97] = np.nan
        data.flat[1] = np.inf
        data.flat[2] = -np.inf
        data.flat[3] = np.finfo(dt).max
        data.flat[4] = np.finfo(dt).tiny
        return data
    info = np.iinfo(dt)
    data = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    data.flat[0] = info.min
    data.flat[1] = info.max
    return data


def write_image(path, name: str, shape=(37, 53), *, seed=0, byteorder=">", ext=False,
                header_extra=None, wcs=None):
    """Write encoding ``name`` to ``path`` (primary HDU, or an IMAGE extension)."""
    dtype, bscale, bzero, blank = ENCODINGS[name]
    rng = np.random.default_rng(seed)
    data = stored_values(dtype, shape, rng)
    if blank is not None:
        data.flat[5::41] = blank
    data = data.astype(np.dtype(dtype).newbyteorder(byteorder))
    header = (wcs or make_wcs(shape)).to_header()
    for key, value in (header_extra or {}).items():
        header[key] = value
    cls = fits.ImageHDU if ext else fits.PrimaryHDU
    hdu = cls(data=data, header=header)
    if bscale != 1.0 or bzero != 0.0:
        hdu.header["BSCALE"] = bscale
        hdu.header["BZERO"] = bzero
    if blank is not None:
        hdu.header["BLANK"] = blank
    hdus = [fits.PrimaryHDU(), hdu] if ext else [hdu]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_compressed(path, data, compress, *, header=None, qlevel=None, tile_dims=None):
    """Tile-compress ``data`` with fitsio (cfitsio) into extension 1 of ``path``."""
    import fitsio

    if data.dtype.kind == "f" and not data.dtype.isnative:
        # fitsio 1.4.2 corrupts some big-endian float32 values when it
        # tile-compresses them losslessly (seen here: GZIP, qlevel 0); integer
        # data of either byte order is written correctly.
        data = data.astype(data.dtype.newbyteorder("="))
    hdr = [{"name": k, "value": v} for k, v in (header or {}).items()]
    with fitsio.FITS(str(path), "rw", clobber=True) as f:
        f.write(data, compress=compress, header=hdr, qlevel=qlevel, tile_dims=tile_dims,
                dither_seed=1)
    return path


def astropy_section(path, ext, window):
    """What astropy's lazy ``.section`` returns for ``window`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    # Stored extremes times BSCALE overflow to inf on purpose: both sides must agree.
    with fits.open(path) as hdul, np.errstate(over="ignore", invalid="ignore"):
        return np.array(hdul[ext].section[y0:y1, x0:x1])


def make_survey_2x2(root, size: int = 200, step: int = 160, seed: int = 3, dec0: float = 41.5):
    """Four synthetic fields A, B, C, D (size px square, 0.187"/px) on a 2 x 2 grid of
    centres ``step`` px apart, so neighbours overlap by ``size - step`` px: B east of A,
    C north of A, D north of B.  Returns (the Survey, {field: (ra, dec) of its centre})."""
    import math

    from pyengine.survey.manifest import Field, Survey
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.field import make_field

    step_dec = step * 0.187 / 3600.0
    step_ra = step_dec / math.cos(math.radians(dec0))
    fields, centres = [], {}
    for name, (i, j) in zip("ABCD", [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True):
        ra, dec = 11.0 + i * step_ra, dec0 + j * step_dec
        make_field(root / name, SynthConfig(width=size, height=size, seed=seed, ra=ra, dec=dec))
        fields.append(Field(name, (str(root / name / "g.fits"), str(root / name / "i.fits"))))
        centres[name] = (ra, dec)
    return Survey(tuple(fields), ("g", "i")), centres
