"""DS9 region file of the scan's candidates.

``write_regions(path, ra, dec, score)`` writes one ICRS circle per candidate,
labelled with its score, through the ``regions`` package (astropy-affiliated)
in its DS9 serialisation: a ``# Region file format: DS9`` line, a ``global``
line carrying the colour, the ``icrs`` frame line and one
``circle(ra,dec,radius) # text={0.987}`` line per candidate (the package writes
the centre and radius in degrees with 8 decimals: 0.04 mas).  With no
candidates the file holds just those header lines, which DS9 and
``regions.Regions.read(path, format="ds9")`` read as an empty list.

The file is written atomically (temporary file in the same folder, fsync,
rename), like every pyengine output.

Thread safety: no shared state; calls on different paths may run concurrently.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pyengine.atomic import atomic_write_bytes
from pyengine.errors import ConfigError, OutputError

__all__ = ["write_regions"]


def _header(color: str) -> str:
    # What the regions package writes before its first shape; used verbatim for
    # an empty file so that empty and non-empty files start alike.
    return f"# Region file format: DS9 astropy/regions\nglobal color={color}\nicrs\n"


def write_regions(path, ra, dec, score, *, radius_arcsec: float = 2.0, color: str = "green",
                  label_format: str = "{:.3f}") -> Path:
    """Write a DS9 region file: an ICRS circle labelled with its score per position.

    ``ra``, ``dec`` (degrees, ICRS) and ``score`` are 1-D sequences of equal
    length, normally the candidates only.  Returns the path.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from regions import CircleSkyRegion, Regions

    path = Path(path)
    ra = np.asarray(ra, dtype=np.float64).reshape(-1)
    dec = np.asarray(dec, dtype=np.float64).reshape(-1)
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if not (ra.shape == dec.shape == score.shape):
        raise ValueError(f"ra, dec and score differ in length: {ra.size}, {dec.size}, "
                         f"{score.size}")
    if not (np.all(np.isfinite(ra)) and np.all(np.abs(dec) <= 90)):
        raise ValueError("ra and dec must be finite degrees with |dec| <= 90")
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise ConfigError(f"region radius {radius_arcsec!r} arcsec: a positive number is needed")
    if not color or any(c.isspace() or c in "#{}" for c in color):
        raise ConfigError(f"region colour {color!r}: a DS9 colour name such as green, red "
                          "or cyan is needed")
    try:
        labels = [label_format.format(s) for s in score]
    except (ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"region label format {label_format!r} cannot format a score "
                          f"({exc}); use e.g. '{{:.3f}}'") from None
    if any(("{" in s or "}" in s or "\n" in s) for s in labels):
        raise ConfigError(f"region label format {label_format!r} makes labels with braces or "
                          "line breaks, which DS9 text cannot hold")

    if ra.size:
        centres = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
        radius = radius_arcsec * u.arcsec
        shapes = Regions([CircleSkyRegion(centres[i], radius, meta={"text": labels[i]},
                                          visual={"color": color})
                          for i in range(ra.size)])
        text = shapes.serialize(format="ds9")
    else:
        text = _header(color)
    try:
        atomic_write_bytes(path, text.encode("ascii"))
    except OSError as exc:
        raise OutputError(f"{path}: writing the region file failed "
                          f"({exc.strerror or exc})") from None
    return path
