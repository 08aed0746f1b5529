"""The bits of the catalog's ``flags`` column: the one definition the engine (which sets
them), the catalog assembly (which derives ``is_candidate`` from them) and the writers
(which describe them in the ``FLAGS`` header key) share.  A leaf: imports nothing of
pyengine.
"""

from __future__ import annotations

__all__ = ["BLANK", "EDGE", "FLAG_BITS", "FRAGMENT", "NOT_CANDIDATE", "OFF_IMAGE", "OFF_IMAGE_FLAGS",
           "cutout_flags", "describe_flags"]

#: Centre pixel off the image, or position not finite: not scored (score NaN).
OFF_IMAGE = 1
#: In some band, more than the allowed share of the cutout is NaN, or no pixel has data:
#: scored, but never a candidate.
BLANK = 2
#: Some cutout pixels are NaN (the image edge or blank pixels).
EDGE = 4

#: A candidate by its score, grouped with a higher-scoring candidate within the group
#: radius (a deblended fragment of one object, pyengine.output.grouping): not a candidate
#: itself; its group's primary row is.
FRAGMENT = 8

#: Flag name -> (bit, meaning).
FLAG_BITS = {
    "OFF_IMAGE": (OFF_IMAGE, "centre pixel off the image or position not finite; not scored"),
    "BLANK": (BLANK, "too much of the cutout is NaN in some band; scored but never a "
                      "candidate"),
    "EDGE": (EDGE, "some cutout pixels are NaN (image edge or blank pixels)"),
    "FRAGMENT": (FRAGMENT, "grouped with a higher-scoring candidate within the group radius "
                           "(one object's fragment); not a candidate itself"),
}

#: Rows with any of these bits are never candidates, whatever their score.
NOT_CANDIDATE = OFF_IMAGE | BLANK

#: The flags of a position off the image: not scored, and no pixel of its cutout is
#: on the image (so it is BLANK too, whatever the NaN limit).
OFF_IMAGE_FLAGS = OFF_IMAGE | BLANK


def cutout_flags(nan_fraction, max_nan: float):
    """int32 flags of scored cutouts from their per-band NaN shares.

    ``nan_fraction``: (n, nband) shares of NaN pixels of each cutout in each band (an (n,)
    array is one band).  Blankness is judged per band, never pooled over bands, so one
    band with no data cannot hide behind another that has some:

    * BLANK where any band's share exceeds ``max_nan``, and where any band has no data at
      all in the cutout (share 1), whatever ``max_nan`` (a limit of 1.0 included);
    * EDGE where any pixel of any band is NaN.

    ``is_candidate`` relies on BLANK (:data:`NOT_CANDIDATE`).
    """
    import numpy as np  # here, not at import: the flag bits stay importable without NumPy

    frac = np.asarray(nan_fraction)
    if frac.ndim < 2:
        frac = frac.reshape(-1, 1)
    flags = np.zeros(frac.shape[0], np.int32)
    flags[np.any(frac > 0, axis=1)] |= EDGE
    flags[np.any((frac > max_nan) | (frac >= 1), axis=1)] |= BLANK
    return flags


def describe_flags() -> str:
    """One line describing the bits of the ``flags`` column (the ``FLAGS`` keyword)."""
    return "; ".join(f"{bit} {name}: {text}" for name, (bit, text) in FLAG_BITS.items())
