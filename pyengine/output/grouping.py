"""One object, one candidate: deblended fragments of a resolved cluster grouped.

SEP (like SExtractor) deblends a resolved star cluster into several detections: its
brightest members, or its core and a few knots.  Each is scored, and a good model
scores every fragment of a cluster high, so one cluster would be several candidates
and every purity figure counted against its fragments.  So in detection mode
candidates are grouped: candidates linked by chains of separations within the group
radius (friends-of-friends, :func:`pyengine.matching.friends_of_friends`) are one
object.  Its **primary** is the member with the highest score (ties: the first row);
it stays the candidate, at its own position.  The other members keep their rows and
scores, lose ``is_candidate`` and get the ``FRAGMENT`` flag.  Columns:

* ``group`` (int64): the ``id`` of the group's primary row, for candidates and
  fragments; -1 for rows that are neither;
* ``group_size`` (int32): the number of members (1 for a lone candidate, 0 otherwise).

The radius (``--group-radius``, arcsec; default :data:`DEFAULT_GROUP_RADIUS`, about the
half-light diameter of a large M31 cluster, 6 pc at 785 kpc is 1.6", plus the PSF) is
kept in the catalog's ``GROUPRAD`` key.  Separations are on the sky (a local tangent
plane) where RA/Dec are finite, else in pixels through the pixel scale.  Grouping is
recomputed from the rows' candidacy before grouping (``is_candidate`` or
``FRAGMENT``), so a survey's catalog, joined from parts grouped on their own, is
grouped again as a whole with the same result as one pass.  Catalog and grid scans
are not grouped: their rows are the user's objects or a sampling of the sky.

Thread safety: pure functions of the table passed in (which they modify).
"""

from __future__ import annotations

import numpy as np

from pyengine.flags import FRAGMENT
from pyengine.matching import friends_of_friends

__all__ = ["DEFAULT_GROUP_RADIUS", "group_candidates", "regroup"]

DEFAULT_GROUP_RADIUS = 2.0  # arcsec


def group_candidates(table, radius: float, pixel_scale: float | None = None) -> int:
    """Group the candidates of ``table`` in place (see the module doc); returns how many
    fragments lost their candidacy.  ``radius`` 0 ungroups (every candidate alone)."""
    n = len(table)
    flags = np.asarray(table["flags"], np.int32).copy() if n else np.zeros(0, np.int32)
    was = (np.asarray(table["is_candidate"], bool) | ((flags & FRAGMENT) != 0)) if n \
        else np.zeros(0, bool)
    flags &= ~np.int32(FRAGMENT)
    group = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int32)
    ids = np.asarray(table["id"], np.int64) if n else np.zeros(0, np.int64)
    cand = np.flatnonzero(was)
    primary = np.ones(cand.size, bool)
    if cand.size and radius > 0:
        ra, dec = (np.asarray(table[c], np.float64)[cand] for c in ("ra", "dec"))
        if np.isfinite(ra).all() and np.isfinite(dec).all():
            from pyengine.survey.geometry import gnomonic  # the one tangent plane

            ra0 = float(np.rad2deg(np.angle(np.mean(np.exp(1j * np.deg2rad(ra))))) % 360)
            xi, eta = gnomonic(ra0, float(np.median(dec)), ra, dec)
            u, v = np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0  # arcsec
            label = friends_of_friends(u, v, radius)
        else:
            scale = float(pixel_scale) if pixel_scale else 1.0
            label = friends_of_friends(np.asarray(table["x"], np.float64)[cand],
                                       np.asarray(table["y"], np.float64)[cand], radius / scale)
        score = np.nan_to_num(np.asarray(table["score"], np.float64)[cand], nan=-1.0)
        # Primary of each group: highest score, then the first row.
        order = np.lexsort((np.arange(cand.size), -score, label))
        first = np.r_[True, label[order][1:] != label[order][:-1]]
        head = {int(label[order][k]): int(order[k]) for k in np.flatnonzero(first)}
        primary = np.array([head[int(g)] == k for k, g in enumerate(label)], dtype=bool)
        counts = np.bincount(np.searchsorted(np.unique(label), label))
        members = counts[np.searchsorted(np.unique(label), label)]
        group[cand] = ids[cand][[head[int(g)] for g in label]]
        size[cand] = members
    elif cand.size:
        group[cand], size[cand] = ids[cand], 1
    flags[cand[~primary]] |= FRAGMENT
    is_cand = was.copy()
    is_cand[cand[~primary]] = False
    table["is_candidate"] = is_cand
    table["flags"] = flags
    table["group"] = group
    table["group_size"] = size
    table.meta["GROUPRAD"] = float(radius)
    return int((~primary).sum())


def regroup(table, kind: str) -> None:
    """A survey's joined catalog grouped again as a whole (detection mode only), with the
    radius its parts were grouped with."""
    if kind == "detect" and "GROUPRAD" in table.meta and "is_candidate" in table.colnames:
        group_candidates(table, float(table.meta["GROUPRAD"]))
