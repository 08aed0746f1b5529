"""``pyengine evaluate``: what a scan's catalog is worth against a truth catalog.

**Matching.** Every truth object is matched to its nearest catalog row within the match
radius, one to one, closest pairs first (:mod:`pyengine.evaluation.match`).

**Who counts.** A truth object *counts* when it has a label, lies in the scanned area
(:func:`pyengine.evaluation.inputs.scan_area`; and ``within``), and, with ``mag_limit``,
is brighter than it (``mag < mag_limit``); the counted clusters are recall's denominator.
A catalog row is *eligible* when it has a finite score, is neither OFF_IMAGE nor BLANK
(those are never candidates), lies in the area, and is not *left out*: matched to a
cluster that does not count (fainter than the limit, outside the area) or to an object
without a label, which is neither right nor wrong. An eligible row is a *cluster row*
when it is matched to a counted cluster; every other eligible row is a non-cluster:
unmatched, or matched to a labelled non-cluster of any magnitude (a candidate that is a
star is wrong however faint the star).

**At the threshold** (the catalog's ``THRESH``, or ``threshold``): a row is selected when
it is a candidate: at the catalog's own threshold its ``is_candidate`` column decides (the
scan's own comparison), else ``score >= threshold``. TP = selected cluster rows; FP =
selected other rows; FN = counted positives not recovered, *including those with no
catalog row at all or only an unscored one*, which are missed at every threshold; TN =
eligible non-cluster rows not selected. Purity (precision) = TP / (TP + FP), recall =
TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN).

**Curves.** The PR curve runs over the eligible rows' distinct scores, highest first
(:func:`pyengine.metrics.binary_curve`), with recall over *all* counted positives, so it
ends below 1 when positives have no row; average precision is its step-wise area.
At most :data:`CURVE_POINTS` points are listed (evenly spaced in index, the first and
last kept). Completeness against magnitude and size: per bin of the counted positives'
magnitude (``mag_bin`` wide) or size (``size_bins`` equal-width bins), the share
*recovered* (selected) and the share *detected* (with an eligible row, whatever its
score: what the positions alone allow), with Wilson intervals
(:func:`pyengine.metrics.binned_fraction`) and the 50 % and 90 % limits
(:func:`pyengine.metrics.fraction_limit`: magnitudes walked bright to faint, sizes large to
small). Purity against score: the share of cluster rows among the eligible rows in
``bins`` equal-width score bins. Reliability and ECE: the eligible rows' scores as the
probability of being a cluster row (:func:`pyengine.metrics.reliability`).

**The result** (``evaluate()``'s dict, written as JSON). Stable keys, ``schema``
``pyengine.evaluate/1``:

- ``catalog``, ``truth``: what was read; ``match_radius_arcsec``; ``threshold`` and
  ``threshold_source`` (``catalog`` or ``given``); ``mag_limit``; ``within``;
- ``labels``: ``column``, ``positive`` (the positive values), ``values`` (all present);
- ``area``: ``method`` (footprint | hull), ``description``, ``note``;
- ``counts``: ``catalog_rows``, ``eligible_rows``, ``left_out_rows``,
  ``unmatched_rows`` (eligible rows matched to nothing), ``truth_rows``,
  ``truth_counted``, ``truth_positives``, ``truth_negatives``, ``matched``,
  ``positives_matched``, ``positives_without_row``, ``positives_unscored``;
- ``operating_point``: ``threshold, tp, fp, fn, tn, precision, recall, f1``
  (:meth:`pyengine.metrics.OperatingPoint.to_dict`; null where undefined);
- ``pr_curve``: ``threshold``, ``precision``, ``recall`` (lists), ``average_precision``,
  ``points`` (the curve's full length);
- ``completeness_vs_mag`` / ``completeness_vs_size``: null without the column, else
  ``column``, ``unit``, ``recovered`` and ``detected``
  (:meth:`pyengine.metrics.BinnedFraction.to_dict`: edges, centres, count, hits,
  fraction, lower, upper, level, left_out), ``limit_50``, ``limit_90``,
  ``detected_limit_50``, ``detected_limit_90`` (null when the curve does not cross);
- ``purity_vs_score``: a BinnedFraction dict over score;
- ``reliability`` (:meth:`pyengine.metrics.Reliability.to_dict`, with ``ece``) and ``ece``;
- ``reference``: ``zhang2025`` (precision 0.893, recall 0.7355, threshold 0.669: Zhang
  et al. 2025, ApJS 278, 16);
- ``figures``: name -> path, when written (:func:`pyengine.evaluation.figures.write_outputs`).

Thread safety: pure functions of their inputs (they read files).
"""

from __future__ import annotations

import numpy as np

from pyengine.errors import CatalogError, ConfigError

__all__ = ["CURVE_POINTS", "SCHEMA", "ZHANG2025", "evaluate"]

SCHEMA = "pyengine.evaluate/1"
CURVE_POINTS = 512
#: Zhang et al. 2025 (ApJS 278, 16): the paper's operating point.
ZHANG2025 = {"precision": 0.893, "recall": 0.7355, "threshold": 0.669}
SIZE_NAMES = ("r_h_pc", "r_h", "rh", "rh_pc", "r_h_arcsec", "reff", "r_eff", "size")


def _number(value, what: str, lo=None, hi=None, accepted: str = "", allow_none=True):
    from pyengine.validate import number

    return number(value, what, lo, hi, allow_none=allow_none, accepted=accepted or None)


def _optional_column(table, given, names, where, what):
    from pyengine.io.catalog import find_column, numeric_column

    name = find_column(table, names, given=given, where=where, what=what)
    if name is None:
        return None, None, ""
    unit = getattr(table[name], "unit", None)
    return name, numeric_column(table, name, where, need="numbers are needed"), \
        (str(unit) if unit is not None else "")


def _threshold(cat, threshold):
    if threshold is not None:
        return float(_number(threshold, "--threshold", 0.0, 1.0,
                             "a probability in [0, 1] is needed")), "given"
    value = cat.meta.get("THRESH")
    try:
        return float(value), "catalog"
    except (TypeError, ValueError):
        raise ConfigError(f"{cat.where}: the catalog records no threshold (THRESH); give "
                          "--threshold") from None


def _thin(n: int) -> np.ndarray:
    if n <= CURVE_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(np.int64))


def _lists(a) -> list:
    return [None if v != v else float(v) for v in np.asarray(a, np.float64)]


def _edges_step(values: np.ndarray, step: float) -> np.ndarray:
    lo = np.floor(values.min() / step) * step
    hi = np.ceil(values.max() / step) * step
    if hi <= lo:
        hi = lo + step
    return lo + step * np.arange(round((hi - lo) / step) + 1)


def _edges_count(values: np.ndarray, bins: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1)


def _completeness(name, unit, values, counted_pos, recovered, detected, edges, *, falling,
                  level):
    from pyengine.metrics import binned_fraction, fraction_limit

    v = values[counted_pos]
    rec = binned_fraction(v, recovered[counted_pos], edges, level)
    det = binned_fraction(v, detected[counted_pos], edges, level)
    out = {"column": name, "unit": unit, "recovered": rec.to_dict(), "detected": det.to_dict()}
    for key, curve in (("", rec), ("detected_", det)):
        for frac in (0.5, 0.9):
            out[f"{key}limit_{int(frac * 100)}"] = fraction_limit(
                curve.centres, curve.fraction, frac, falling=falling)
    return out


def evaluate(catalog, truth, *, match_radius="0.5arcsec", threshold=None, label_col=None,
             positive=None, truth_ra_col=None, truth_dec_col=None, mag_col=None,
             size_col=None, mag_limit=None, within=None, area: str = "auto", bins: int = 10,
             mag_bin: float = 0.5, size_bins: int = 10, level: float = 0.95) -> dict:
    """Purity, recall, F1, the PR curve, completeness, purity against score and calibration
    of scan ``catalog`` against ``truth`` (paths or astropy Tables): the dict the module
    docstring describes.  ``match_radius``: arcsec, or text (``"0.5arcsec"``, ``'1.2"'``,
    ``"2px"``); ``within``: a Cone or ``"RA,DEC,RADIUS"`` (deg)."""
    from pyengine.evaluation.inputs import read_scan_catalog, read_truth, scan_area
    from pyengine.evaluation.match import match_one_to_one, nearest_separation, parse_radius
    from pyengine.flags import NOT_CANDIDATE
    from pyengine.metrics import OperatingPoint, binary_curve, binned_fraction, reliability
    from pyengine.survey.geometry import parse_within
    from pyengine.training.data import MAG_NAMES
    from pyengine.validate import integer

    radius, unit = parse_radius(match_radius)
    integer(bins, "--bins", 1, 1000)
    integer(size_bins, "--size-bins", 1, 1000)
    _number(mag_bin, "--mag-bin", 1e-3, 10.0, "a bin width in magnitudes, 0.001..10",
            allow_none=False)
    _number(mag_limit, "--mag-limit", accepted="a magnitude is needed")
    _number(level, "confidence level", 0.5, 0.999999, "a number in [0.5, 1) is needed",
            allow_none=False)
    cone = parse_within(within) if isinstance(within, str) else within
    cat = read_scan_catalog(catalog)
    tru = read_truth(truth, label_col=label_col, positive=positive, ra_col=truth_ra_col,
                     dec_col=truth_dec_col)
    t, t_source = _threshold(cat, threshold)
    region = scan_area(cat, mode=area, radius=radius if unit == "arcsec" else 0.0, within=cone)
    if unit == "px":
        scale = region.pixel_scale
        if scale is None:
            raise ConfigError(f"--match-radius {match_radius!r}: pixels need the catalog's "
                              f"images, and {region.note.removeprefix('footprint not used: ')}"
                              "; give the radius in arcsec (e.g. 0.5arcsec)")
        radius = radius * scale
        if region.method == "hull":
            region.radius = radius

    # -- who counts -------------------------------------------------------------------
    t_inside = region.inside(tru.ra, tru.dec)
    if not t_inside.any():
        finite = np.isfinite(tru.ra) & np.isfinite(tru.dec)
        span = (f"its positions span RA {np.nanmin(tru.ra[finite]):.5f} .. "
                f"{np.nanmax(tru.ra[finite]):.5f}, Dec {np.nanmin(tru.dec[finite]):.5f} .. "
                f"{np.nanmax(tru.dec[finite]):.5f}" if finite.any() else "it has no finite "
                "RA/Dec")
        raise CatalogError(f"{tru.where}: no truth object lies in the scanned area "
                           f"({region.description}{', within the --within circle' if cone else ''}"
                           f"); {span}; a truth catalog of the scanned field is needed")
    mag_name, mag, mag_unit = _optional_column(tru.table, mag_col, MAG_NAMES, tru.where,
                                               "magnitudes (--mag-col)")
    size_name, size, size_unit = _optional_column(tru.table, size_col, SIZE_NAMES, tru.where,
                                                  "sizes (--size-col)")
    counted = tru.labelled & t_inside
    if mag_limit is not None:
        if mag is None:
            raise CatalogError(f"{tru.where}: --mag-limit needs a magnitude column; none of "
                               f"{', '.join(MAG_NAMES)}; name it with --mag-col")
        with np.errstate(invalid="ignore"):
            counted &= mag < float(mag_limit)
    counted_pos = counted & tru.positive
    counted_neg = counted & ~tru.positive

    ti, ci, _ = match_one_to_one(tru.ra, tru.dec, cat.ra, cat.dec, radius)
    if not np.any(counted[ti]):
        near = nearest_separation(tru.ra[counted], tru.dec[counted], cat.ra, cat.dec, radius)
        nearest = "none" if near is None else f'{near:.3g}" apart'
        raise CatalogError(f"{tru.where}: none of its {int(counted.sum()):,} objects in the "
                           f"scanned area matches a row of {cat.where} within the match "
                           f'radius {radius:g}"; the nearest pair is {nearest}; check both '
                           "catalogs' RA/Dec (degrees, ICRS) or widen --match-radius")
    row_truth = np.full(len(cat), -1, np.int64)
    row_truth[ci] = ti
    truth_row = np.full(tru.ra.size, -1, np.int64)
    truth_row[ti] = ci

    scored = np.isfinite(cat.score) & ((cat.flags & NOT_CANDIDATE) == 0)
    matched = row_truth >= 0
    t_of = np.maximum(row_truth, 0)
    cluster_row = matched & counted_pos[t_of]
    # a cluster that does not count, or an object without a label: neither right nor wrong;
    # a labelled non-cluster is wrong whatever its magnitude
    left_out = matched & ~cluster_row & (tru.positive[t_of] | ~tru.labelled[t_of])
    in_area = region.inside(cat.ra, cat.dec) | cluster_row
    eligible = scored & in_area & ~left_out
    if cat.is_candidate is not None and t_source == "catalog":
        selected = cat.is_candidate & eligible
    else:
        with np.errstate(invalid="ignore"):
            selected = (cat.score >= t) & eligible

    # -- at the threshold ---------------------------------------------------------------
    tp = int(np.sum(selected & cluster_row))
    fp = int(np.sum(selected & ~cluster_row))
    n_pos = int(counted_pos.sum())
    tn = int(np.sum(eligible & ~cluster_row & ~selected))
    op = OperatingPoint(t, tp, fp, n_pos - tp, tn)
    has_row = truth_row >= 0
    detected = has_row & eligible[np.maximum(truth_row, 0)]
    recovered = has_row & selected[np.maximum(truth_row, 0)]

    # -- curves -----------------------------------------------------------------------
    y, s = cluster_row[eligible], np.asarray(cat.score[eligible], np.float64)
    curve = binary_curve(y, s)
    recall = curve.tp / n_pos if n_pos else np.full(curve.tp.size, np.nan)
    ap = (float(np.sum(np.diff(np.r_[0.0, recall]) * curve.precision)) if n_pos and
          curve.tp.size else None)
    keep = _thin(curve.thresholds.size)
    score_edges = np.arange(bins + 1, dtype=np.float64) / bins
    result = {
        "schema": SCHEMA,
        "catalog": cat.where, "truth": tru.where, "match_radius_arcsec": float(radius),
        "threshold": t, "threshold_source": t_source,
        "mag_limit": None if mag_limit is None else float(mag_limit),
        "within": None if cone is None else [cone.ra, cone.dec, cone.radius],
        "labels": {"column": tru.label_col, "positive": list(tru.positive_values),
                   "values": list(tru.values)},
        "area": {"method": region.method, "description": region.description,
                 "note": region.note},
        "counts": {
            "catalog_rows": len(cat), "eligible_rows": int(eligible.sum()),
            "left_out_rows": int(np.sum(left_out)),
            "unmatched_rows": int(np.sum(eligible & ~matched)),
            "truth_rows": int(tru.ra.size), "truth_counted": int(counted.sum()),
            "truth_positives": n_pos, "truth_negatives": int(counted_neg.sum()),
            "matched": int(np.sum(counted[ti])),
            "positives_matched": int(np.sum(counted_pos & has_row)),
            "positives_without_row": int(np.sum(counted_pos & ~has_row)),
            "positives_unscored": int(np.sum(counted_pos & has_row & ~detected)),
        },
        "operating_point": op.to_dict(),
        "pr_curve": {"threshold": _lists(curve.thresholds[keep]),
                     "precision": _lists(curve.precision[keep]), "recall": _lists(recall[keep]),
                     "average_precision": ap, "points": int(curve.thresholds.size)},
        "completeness_vs_mag": None, "completeness_vs_size": None,
        "purity_vs_score": binned_fraction(s, y, score_edges, level).to_dict(),
        "reference": {"zhang2025": dict(ZHANG2025)},
        "figures": {},
    }
    rel = reliability(y, np.clip(s, 0.0, 1.0), bins, level=level)
    result["reliability"] = rel.to_dict()
    result["ece"] = result["reliability"]["ece"]
    for key, name, unit_, values, falling, make in (
            ("completeness_vs_mag", mag_name, mag_unit, mag, True,
             lambda v: _edges_step(v, float(mag_bin))),
            ("completeness_vs_size", size_name, size_unit, size, False,
             lambda v: _edges_count(v, int(size_bins)))):
        if values is None:
            continue
        v = values[counted_pos]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        result[key] = _completeness(name, unit_, values, counted_pos, recovered, detected,
                                    make(v), falling=falling, level=level)
    return result
