"""The bits of the catalog's ``flags`` column: the one definition the engine (which sets
them), the catalog assembly (which derives ``is_candidate`` from them) and the writers
(which describe them in the ``FLAGS`` header key) share.  A leaf: imports nothing of
pyengine.
"""

from __future__ import annotations

__all__ = ["BLANK", "EDGE", "FLAG_BITS", "NOT_CANDIDATE", "OFF_IMAGE", "OFF_IMAGE_FLAGS",
           "cutout_flags", "describe_flags"]

#: Centre pixel off the image, or position not finite: not scored (score NaN).
OFF_IMAGE = 1
#: More than the allowed share of the cutout is NaN: scored, but never a candidate.
BLANK = 2
#: Some cutout pixels are NaN (the image edge or blank pixels).
EDGE = 4

#: Flag name -> (bit, meaning).
FLAG_BITS = {
    "OFF_IMAGE": (OFF_IMAGE, "centre pixel off the image or position not finite; not scored"),
    "BLANK": (BLANK, "too much of the cutout is NaN; scored but never a candidate"),
    "EDGE": (EDGE, "some cutout pixels are NaN (image edge or blank pixels)"),
}

#: Rows with any of these bits are never candidates, whatever their score.
NOT_CANDIDATE = OFF_IMAGE | BLANK

#: The flags of a position off the image: not scored, and no pixel of its cutout is
#: on the image (so it is BLANK too, whatever the NaN limit).
OFF_IMAGE_FLAGS = OFF_IMAGE | BLANK


def cutout_flags(nan_fraction, max_nan: float):
    """int32 flags of scored cutouts from their NaN fraction: EDGE where any pixel is NaN,
    BLANK where the fraction exceeds ``max_nan`` (the rule ``is_candidate`` relies on)."""
    import numpy as np  # here, not at import: the flag bits stay importable without NumPy

    frac = np.asarray(nan_fraction)
    flags = np.zeros(frac.shape, np.int32)
    flags[frac > 0] |= EDGE
    flags[frac > max_nan] |= BLANK
    return flags


def describe_flags() -> str:
    """One line describing the bits of the ``flags`` column (the ``FLAGS`` keyword)."""
    return "; ".join(f"{bit} {name}: {text}" for name, (bit, text) in FLAG_BITS.items())
