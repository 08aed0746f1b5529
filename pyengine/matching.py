"""Pairs of positions within a radius, and friends-of-friends groups: the one matcher of
training labels (:mod:`pyengine.training.positions`) and candidate grouping
(:mod:`pyengine.output.grouping`).

Pairs are found on a grid of cells one radius wide: each position is compared with
the positions of its own cell and the eight around it, so the cost is linear in the
number of positions for a fixed density, and the result is exact (every pair within
the radius, none beyond).  Needs NumPy only (no SciPy KD-tree).

Thread safety: pure functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["friends_of_friends", "pairs_within"]


def pairs_within(x1, y1, x2, y2, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, distance) with |p1[i] - p2[j]| <= radius, in pixels."""
    x1, y1, x2, y2 = (np.asarray(v, np.float64) for v in (x1, y1, x2, y2))
    if x1.size == 0 or x2.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    r = float(radius)
    cx2, cy2 = np.floor(x2 / r).astype(np.int64), np.floor(y2 / r).astype(np.int64)
    key2 = cy2 * (1 << 32) + cx2
    order = np.argsort(key2, kind="stable")
    sorted_keys = key2[order]
    cx1, cy1 = np.floor(x1 / r).astype(np.int64), np.floor(y1 / r).astype(np.int64)
    out_i, out_j = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            k = (cy1 + dy) * (1 << 32) + (cx1 + dx)
            lo = np.searchsorted(sorted_keys, k, "left")
            hi = np.searchsorted(sorted_keys, k, "right")
            n = hi - lo
            if not n.any():
                continue
            i = np.repeat(np.arange(x1.size), n)
            offset = np.arange(i.size) - np.repeat(np.cumsum(n) - n, n)
            j = order[np.repeat(lo, n) + offset]
            out_i.append(i)
            out_j.append(j)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    d = np.hypot(x1[i] - x2[j], y1[i] - y2[j])
    keep = d <= r
    return i[keep], j[keep], d[keep]


def friends_of_friends(x, y, radius: float) -> np.ndarray:
    """(n,) int64 group label of each position: positions linked by chains of pairs within
    ``radius`` share a label (Davis et al. 1985's friends-of-friends); labels are the
    smallest member index of each group."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    parent = np.arange(x.size)

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    i, j, _ = pairs_within(x, y, x, y, radius)
    for a, b in zip(i[i < j].tolist(), j[i < j].tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(k) for k in range(x.size)], dtype=np.int64)
