"""One row per object where fields measured it separately: detections, and per-field
catalogs, of an object near a field boundary.

Two fields measure one object at slightly different positions (noise, each field's own
astrometry). Deciding each detection by the ownership rule alone could keep both, or
neither, of an object within a few hundredths of an arcsec of a boundary. So sources of
measured positions keep, in each field, the positions within ``margin`` arcsec of being
owned (:class:`pyengine.survey.sources.OwnedSource`). Then :func:`reconcile` matches the
rows of different fields within ``radius`` arcsec on the sky:

- a group of matched rows keeps the rows of one field: the field that owns the group's
  mean position if it has one of them, else the field of the row deepest inside its own
  field (all of that field's rows in the group stay: it may have split what another
  field blended);
- a row that matches nothing is kept, wherever it lies in the margin: only that field
  saw the object (its owner has a chip gap, an edge or a blank band there), and this is
  how a chip gap in the owner is covered by a neighbour with data;
- rows outside every margin never need matching.

Matching runs on the rows inside the margin bands widened by twice the radius (a row
``radius`` away from a margin row has edge distances at most that much further apart),
in the gnomonic plane at their mean position, by a sweep over one sorted coordinate.

Thread safety: a pure function of its arguments.
"""

from __future__ import annotations

import numpy as np

from pyengine.survey.geometry import gnomonic

__all__ = ["in_margin", "reconcile"]


def in_margin(distances: np.ndarray, margin: float) -> np.ndarray:
    """Rows (columns of ``distances``, (nfield, n) arcsec) where a second field's edge
    distance comes within ``margin`` of the best one's: near a boundary."""
    if distances.shape[0] < 2:
        return np.zeros(distances.shape[1], bool)
    top2 = np.sort(distances, axis=0)[-2:]
    return (top2[0] > 0) & (top2[1] - top2[0] <= margin)


def _pairs(xs, ys, radius):
    """Index pairs (i, j), i < j, of points within ``radius`` (same units)."""
    order = np.argsort(ys, kind="stable")
    ys_sorted = ys[order]
    out = []
    for a in range(order.size):
        b = a + 1
        while b < order.size and ys_sorted[b] - ys_sorted[a] <= radius:
            i, j = order[a], order[b]
            if (xs[i] - xs[j]) ** 2 + (ys[i] - ys[j]) ** 2 <= radius * radius:
                out.append((min(i, j), max(i, j)))
            b += 1
    return out


def reconcile(ra, dec, field_index, geometry, *, radius: float = 1.0,
              margin: float = 2.0) -> np.ndarray:
    """Which rows to keep (bool), each row a position (deg) measured in field
    ``field_index``: one per object, as the module docstring says."""
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    field_index = np.asarray(field_index, np.int64)
    keep = np.ones(ra.size, bool)
    if ra.size == 0 or len(geometry) < 2:
        return keep
    d = geometry.edge_distances(ra, dec)
    # rows a margin row can match: their edge distances differ by at most 2 x radius more,
    # also where the second field's edge is just beyond them (a row just off its image);
    # rows with no position (a catalog's unusable rows: NaN) match nothing
    top2 = np.sort(d, axis=0)[-2:]
    with np.errstate(invalid="ignore"):
        near = np.flatnonzero((top2[1] - top2[0] <= margin + 2 * radius) & np.isfinite(ra) &
                              np.isfinite(dec))
    if near.size < 2:
        return keep
    ra0, dec0 = float(np.mean(ra[near])), float(np.mean(dec[near]))
    xi, eta = gnomonic(ra0, dec0, ra[near], dec[near])
    xs, ys = np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0  # arcsec
    parent = np.arange(near.size)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in _pairs(xs, ys, radius):
        if field_index[near[i]] != field_index[near[j]]:
            parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(near.size):
        groups.setdefault(root(i), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue  # seen in one field only: kept
        rows = near[members]
        owner = int(geometry.owner([np.mean(ra[rows])], [np.mean(dec[rows])])[0])
        if not np.any(field_index[rows] == owner):
            deepest = max(rows, key=lambda r: (d[field_index[r], r], -r))
            owner = int(field_index[deepest])
        # every row of the chosen field stays (it may have split what another field blended)
        keep[rows] = field_index[rows] == owner
    return keep
