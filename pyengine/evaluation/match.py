"""Sky matching for ``pyengine evaluate``: match radii as users write them, pairs within a
radius, one-to-one matches, and the nearest separation between two sets.

**Radii** (:func:`parse_radius`): a number and a unit: ``0.5arcsec``, ``0.5 arcsec``,
``0.5"``, ``0.5asec``, ``500mas``, ``0.01arcmin``, ``0.5'`` (arcmin), ``1e-4deg``, or
pixels ``2px`` / ``2pix`` (converted with the image's pixel scale, so only where the
catalog's images are known); a bare number is arcsec. Accepted: more than 0 and at most
1 degree.

**Pairs** (:func:`pairs_within`): positions become unit vectors; the catalog's vectors
are hashed into cubic cells whose side is at least the radius's chord, so every pair
within the radius lies in one of the 27 cells around a truth position. The cells are
sorted keys searched with ``np.searchsorted``: memory and time grow with the number of
positions and of candidate pairs, not with their product (no KD-tree: scipy is not a
dependency, and astropy's ``search_around_sky`` needs it). Separations are exact
angles from the chord, ``2 asin(c / 2)``.

**One-to-one** (:func:`match_one_to_one`): every pair within the radius, taken greedily
from the closest (ties: the lower truth index, then the lower catalog index); a pair is
kept when neither side is taken yet. Each truth object gets at most one catalog row and
each row at most one truth object: the usual greedy sky cross-match (e.g. TOPCAT's
"best match, symmetric", which is optimal where pairs do not compete).

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

import math
import re

import numpy as np

from pyengine.errors import ConfigError

__all__ = ["RADIUS_ACCEPTED", "match_one_to_one", "nearest_separation", "pairs_within",
           "parse_radius", "unit_vectors"]

RADIUS_ACCEPTED = ('a positive number and a unit: 0.5arcsec, 0.5", 500mas, 0.01arcmin, '
                   "1e-4deg, or 2px (pixels of the catalog's images); a bare number is arcsec; "
                   "at most 1 deg")
_UNITS = {"": 1.0, "arcsec": 1.0, "asec": 1.0, '"': 1.0, "''": 1.0, "mas": 1e-3,
          "arcmin": 60.0, "amin": 60.0, "'": 60.0, "deg": 3600.0, "d": 3600.0}
_PIXELS = ("px", "pix", "pixel", "pixels")
_RADIUS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z\"']*)\s*$")
_MAX_ARCSEC = 3600.0
#: Smallest cell side (radians of chord): keeps the cell keys within int64.
_MIN_CELL = 4e-6


def parse_radius(text, option: str = "--match-radius") -> tuple[float, str]:
    """(value, unit) of a radius: unit ``arcsec`` (converted) or ``px`` (to convert with
    a pixel scale); one ConfigError line otherwise."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _RADIUS.match(str(text))
        if m is None:
            raise ConfigError(f"{option} {text!r} is not accepted; accepted: {RADIUS_ACCEPTED}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if unit in _PIXELS:
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} {text!r} is not accepted; accepted: {RADIUS_ACCEPTED}")
        return value, "px"
    if unit not in _UNITS:
        raise ConfigError(f"{option} {text!r}: unknown unit {unit!r}; accepted: "
                          f"{RADIUS_ACCEPTED}")
    arcsec = value * _UNITS[unit]
    if not (math.isfinite(arcsec) and 0.0 < arcsec <= _MAX_ARCSEC):
        raise ConfigError(f"{option} {text!r} is not accepted; accepted: {RADIUS_ACCEPTED}")
    return arcsec, "arcsec"


def unit_vectors(ra, dec) -> np.ndarray:
    """(n, 3) unit vectors of positions in degrees."""
    r = np.radians(np.asarray(ra, dtype=np.float64))
    d = np.radians(np.asarray(dec, dtype=np.float64))
    cd = np.cos(d)
    return np.stack([cd * np.cos(r), cd * np.sin(r), np.sin(d)], axis=-1).reshape(-1, 3)


def _chord(arcsec: float) -> float:
    return 2.0 * math.sin(math.radians(arcsec / 3600.0) / 2.0)


def _arcsec(chord: np.ndarray) -> np.ndarray:
    return np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))) * 3600.0


def pairs_within(ra1, dec1, ra2, dec2, radius_arcsec: float):
    """(i, j, separation in arcsec) of every pair of set-1 position i and set-2 position j
    within ``radius_arcsec``; non-finite positions match nothing."""
    v1, v2 = unit_vectors(ra1, dec1), unit_vectors(ra2, dec2)
    ok1 = np.flatnonzero(np.all(np.isfinite(v1), axis=1))
    ok2 = np.flatnonzero(np.all(np.isfinite(v2), axis=1))
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if ok1.size == 0 or ok2.size == 0:
        return empty
    limit = _chord(radius_arcsec)
    cell = max(limit, _MIN_CELL)
    shift = math.ceil(1.0 / cell) + 2
    side = 2 * shift + 1

    def cells(v):
        return np.floor(v / cell).astype(np.int64) + shift

    def keys(q):
        return (q[:, 0] * side + q[:, 1]) * side + q[:, 2]

    q1 = cells(v1[ok1])
    k2 = keys(cells(v2[ok2]))
    order = np.argsort(k2, kind="stable")
    sorted_keys = k2[order]
    found_i, found_j = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                k = keys(q1 + np.array([dx, dy, dz], dtype=np.int64))
                lo = np.searchsorted(sorted_keys, k, side="left")
                hi = np.searchsorted(sorted_keys, k, side="right")
                n = hi - lo
                total = int(n.sum())
                if total == 0:
                    continue
                i = np.repeat(np.arange(ok1.size), n)
                start = np.repeat(lo - (np.cumsum(n) - n), n)
                found_i.append(i)
                found_j.append(order[start + np.arange(total)])
    if not found_i:
        return empty
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    chord = np.linalg.norm(v1[ok1[i]] - v2[ok2[j]], axis=1)
    keep = chord <= limit
    return ok1[i[keep]], ok2[j[keep]], _arcsec(chord[keep])


def match_one_to_one(ra_truth, dec_truth, ra_cat, dec_cat, radius_arcsec: float):
    """(truth index, catalog index, separation arcsec) of the one-to-one matches within
    ``radius_arcsec``, closest pairs first (module docstring)."""
    i, j, sep = pairs_within(ra_truth, dec_truth, ra_cat, dec_cat, radius_arcsec)
    order = np.lexsort((j, i, sep))
    used_t, used_c = set(), set()
    keep = []
    for k in order.tolist():
        a, b = int(i[k]), int(j[k])
        if a in used_t or b in used_c:
            continue
        used_t.add(a)
        used_c.add(b)
        keep.append(k)
    keep = np.asarray(keep, dtype=np.int64)
    return i[keep], j[keep], sep[keep]


def nearest_separation(ra1, dec1, ra2, dec2, start_arcsec: float = 1.0) -> float | None:
    """The smallest separation (arcsec) between any position of set 1 and any of set 2;
    None when either set has no finite position.  Searched within radii growing by 4x from
    ``start_arcsec`` up to 1 deg, then by brute force in chunks."""
    v1, v2 = unit_vectors(ra1, dec1), unit_vectors(ra2, dec2)
    v1 = v1[np.all(np.isfinite(v1), axis=1)]
    v2 = v2[np.all(np.isfinite(v2), axis=1)]
    if v1.size == 0 or v2.size == 0:
        return None
    radius = max(float(start_arcsec), 1e-3)
    while radius <= _MAX_ARCSEC:
        got = pairs_within(*_radec(v1), *_radec(v2), radius)[2]
        if got.size:
            return float(got.min())
        radius *= 4.0
    step = max(1, 4_000_000 // max(1, v2.shape[0]))
    # the largest dot product is the smallest angle
    best = max(float(np.max(v1[s : s + step] @ v2.T)) for s in range(0, v1.shape[0], step))
    return float(np.degrees(np.arccos(np.clip(best, -1.0, 1.0))) * 3600.0)


def _radec(v: np.ndarray):
    """Degrees (ra, dec) of unit vectors."""
    return (np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0,
            np.degrees(np.arcsin(np.clip(v[:, 2], -1.0, 1.0))))
