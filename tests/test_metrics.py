"""pyengine.metrics against hand-computed cases and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pyengine import metrics as m
from pyengine.errors import ConfigError

# Scores descending; labels: P = 3, N = 3 (worked out by hand below).
Y = np.array([1, 0, 1, 1, 0, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def test_curve_by_hand():
    c = m.binary_curve(Y, S)
    np.testing.assert_array_equal(c.thresholds, S)
    np.testing.assert_array_equal(c.tp, [1, 1, 2, 3, 3, 3])
    np.testing.assert_array_equal(c.fp, [0, 1, 1, 1, 2, 3])
    np.testing.assert_allclose(c.precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 1 / 2])
    np.testing.assert_allclose(c.recall, [1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(c.f1, [1 / 2, 2 / 5, 2 / 3, 6 / 7, 3 / 4, 2 / 3])
    # positives 0.9, 0.7, 0.6 beat 3, 2, 2 of the negatives 0.8, 0.5, 0.4
    assert m.roc_auc(Y, S) == pytest.approx(7 / 9)
    assert m.average_precision(Y, S) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3) + (1 / 3) * 0.75)
    assert m.f1_optimal_threshold(Y, S) == 0.6
    assert m.purity_threshold(Y, S, 0.7) == 0.6  # 0.9 (P = 1) and 0.6 (P = 0.75): more recall
    assert m.purity_threshold(Y, S, 0.8) == 0.9
    assert m.purity_threshold(Y, S, 1.0) == 0.9


def test_tied_scores_enter_together():
    c = m.binary_curve([1, 0, 1, 0], [0.5, 0.5, 0.2, 0.2])
    np.testing.assert_array_equal(c.thresholds, [0.5, 0.2])
    np.testing.assert_array_equal(c.tp, [1, 2])
    np.testing.assert_array_equal(c.fp, [1, 2])
    assert m.roc_auc([1, 0, 1, 0], [0.5, 0.5, 0.2, 0.2]) == 0.5
    assert m.roc_auc([1, 0], [0.3, 0.3]) == 0.5


def test_threshold_tie_rules():
    # Purity 0.6 is reached at 0.9 (tp 1), 0.8 (tp 2) and 0.7 (tp 2, P 2/3): the highest of
    # the largest-recall ones is 0.8.
    assert m.purity_threshold([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6], 0.6) == 0.8
    # F1 is 2/3 at 0.9 and at 0.6: the highest threshold wins.
    y, s = [1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]
    f1 = m.binary_curve(y, s).f1
    assert f1[0] == f1[3] == pytest.approx(2 / 3) and f1.max() == f1[0]
    assert m.f1_optimal_threshold(y, s) == 0.9


def test_unreachable_purity_and_missing_classes():
    assert m.purity_threshold([0, 1], [0.9, 0.1], 0.6) is None
    assert m.purity_threshold([0, 0], [0.9, 0.1], 0.5) is None
    assert m.f1_optimal_threshold([0, 0], [0.9, 0.1]) is None
    assert np.isnan(m.roc_auc([1, 1], [0.9, 0.1]))
    assert np.isnan(m.roc_auc([0, 0], [0.9, 0.1]))
    assert np.isnan(m.average_precision([0, 0], [0.9, 0.1]))


def test_operating_point_and_confusion_matrix():
    p = m.operating_point(Y, S, 0.6)
    assert (p.tp, p.fp, p.fn, p.tn) == (3, 1, 0, 2)
    assert (p.precision, p.recall, p.f1) == (0.75, 1.0, pytest.approx(6 / 7))
    d = m.operating_point(Y, S, 2.0).to_dict()  # nothing predicted positive
    assert d["precision"] is None and d["recall"] == 0.0 and d["f1"] == 0.0
    cm = m.confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])


def _brute(y, s):
    """Every quantity from its definition, threshold by threshold."""
    pos, neg = s[y], s[~y]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    rows = []
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
        fn = int(y.sum()) - tp
        rows.append((t, tp, fp, tp / (tp + fp), tp / y.sum(), 2 * tp / (2 * tp + fp + fn)))
    return float(np.mean(pairs)), rows


@pytest.mark.parametrize("seed", range(6))
def test_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.random(n) < rng.uniform(0.2, 0.8)
    y[:2] = [True, False]
    # Scores on a coarse grid so ties are common; positives a little higher.
    s = np.round(rng.random(n) * 0.7 + 0.3 * y, 1 if seed % 2 else 3)
    auc, rows = _brute(y, s)
    assert m.roc_auc(y, s) == pytest.approx(auc, abs=1e-12)
    c = m.binary_curve(y, s)
    t, tp, fp, prec, rec, f1 = (np.array(col) for col in zip(*rows, strict=True))
    np.testing.assert_array_equal(c.thresholds, t)
    np.testing.assert_array_equal(c.tp, tp)
    np.testing.assert_array_equal(c.fp, fp)
    np.testing.assert_allclose(c.precision, prec)
    np.testing.assert_allclose(c.recall, rec)
    np.testing.assert_allclose(c.f1, f1)
    assert m.f1_optimal_threshold(y, s) == t[np.flatnonzero(f1 == f1.max())[0]]
    for target in (0.5, 0.7, 0.9, 1.0):
        ok = [r for r in rows if r[3] >= target]
        want = None
        if ok:
            best = max(r[1] for r in ok)
            want = max(r[0] for r in ok if r[1] == best)
        assert m.purity_threshold(y, s, target) == want
    for r in rows:
        p = m.operating_point(y, s, r[0])
        assert (p.tp, p.fp) == (r[1], r[2]) and p.tp + p.fp + p.fn + p.tn == n


def test_average_precision_without_ties_is_mean_precision_at_each_positive():
    rng = np.random.default_rng(7)
    y = rng.random(200) < 0.3
    s = rng.random(200) + 0.5 * y
    order = np.argsort(-s)
    hits = np.cumsum(y[order])
    at_pos = hits[y[order]] / (np.flatnonzero(y[order]) + 1)
    assert m.average_precision(y, s) == pytest.approx(at_pos.mean(), rel=1e-12)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="one length"):
        m.roc_auc([1, 0], [0.5])
    with pytest.raises(ConfigError, match="NaN or infinite"):
        m.binary_curve([1, 0], [0.5, np.nan])
    with pytest.raises(ConfigError, match="0/1"):
        m.binary_curve([2, 0], [0.5, 0.1])
    with pytest.raises(ConfigError, match=r"target purity 1\.5"):
        m.purity_threshold([1, 0], [0.5, 0.1], 1.5)
    with pytest.raises(ConfigError, match=r"0\.\.2"):
        m.confusion_matrix([0, 3], [0, 1], 3)


# -- calibration and binned fractions ------------------------------------------------------

def test_wilson_interval_known_values():
    # Published 95 % Wilson intervals (Newcombe 1998, Stat. Med. 17, 857, Table I):
    # 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0.0000-0.1611;
    # 1/29 -> 0.0061-0.1718.
    lo, hi = m.wilson_interval([81, 15, 0, 1], [263, 148, 20, 29])
    np.testing.assert_allclose(lo, [0.2553, 0.0624, 0.0, 0.0061], atol=6e-5)
    np.testing.assert_allclose(hi, [0.3662, 0.1605, 0.1611, 0.1718], atol=6e-5)
    # symmetric about 1/2, and k = n mirrors k = 0
    lo, hi = m.wilson_interval([5, 10], [10, 10])
    assert lo[0] == pytest.approx(1 - hi[0]) and hi[1] == 1.0
    assert lo[1] == pytest.approx(1 - m.wilson_interval(0, 10)[1])
    # z = 1 (68.27 %): 5 of 10 is 0.5 +- sqrt(0.025 + 1/400) / 1.1
    lo, hi = m.wilson_interval(5, 10, level=0.682689492)
    assert hi == pytest.approx(0.5 + np.sqrt(0.025 + 1 / 400) / 1.1, rel=1e-8)
    lo, hi = m.wilson_interval(0, 0)
    assert np.isnan(lo) and np.isnan(hi)


def test_binned_fraction_by_hand():
    values = [0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.5, np.nan, 7.0]
    hits = [1, 1, 0, 1, 0, 1, 0, 1, 1]
    b = m.binned_fraction(values, hits, [0.0, 1.0, 2.0, 3.0])
    # [0, 1): 0.0, 0.5 (2 hits); [1, 2): 1.0, 1.0, 1.5 (1 hit); [2, 3]: 2.0, 2.5 (1 hit)
    np.testing.assert_array_equal(b.count, [2, 3, 2])
    np.testing.assert_array_equal(b.hits, [2, 1, 1])
    np.testing.assert_allclose(b.fraction, [1.0, 1 / 3, 0.5])
    np.testing.assert_allclose(b.centres, [0.5, 1.5, 2.5])
    assert b.left_out == 2  # NaN and 7.0
    assert m.binned_fraction([3.0], [True], [0.0, 1.0, 3.0]).count.tolist() == [0, 1]
    d = m.binned_fraction([0.5], [True], [0.0, 1.0, 2.0]).to_dict()
    assert d["fraction"] == [1.0, None] and d["count"] == [1, 0]
    with pytest.raises(ConfigError, match="increasing edges"):
        m.binned_fraction([1.0], [True], [1.0, 1.0])


def test_reliability_and_ece_by_hand():
    # bin [0.1, 0.2): 0.1, 0.15 (labels 0, 0); [0.3, 0.4): 0.3 (1); [0.9, 1.0]: 0.9, 1.0 (1, 0)
    y = [0, 0, 1, 1, 0]
    p = [0.1, 0.15, 0.3, 0.9, 1.0]
    r = m.reliability(y, p, bins=10)
    np.testing.assert_array_equal(r.count, [0, 2, 0, 1, 0, 0, 0, 0, 0, 2])
    np.testing.assert_allclose(r.mean_predicted[[1, 3, 9]], [0.125, 0.3, 0.95])
    np.testing.assert_allclose(r.observed[[1, 3, 9]], [0.0, 1.0, 0.5])
    assert np.isnan(r.observed[0]) and np.isnan(r.mean_predicted[0])
    # ECE = (2 * 0.125 + 1 * 0.7 + 2 * 0.45) / 5
    want = (2 * 0.125 + 0.7 + 2 * 0.45) / 5
    assert r.ece == pytest.approx(want)
    assert m.expected_calibration_error(y, p) == pytest.approx(want)
    # 0.3 is in [0.3, 0.4) although 3 * 0.1 != 0.3 in floating point
    assert m.reliability([1], [0.3]).count[3] == 1 and m.reliability([1], [0.7]).count[7] == 1
    d = r.to_dict()
    assert d["ece"] == pytest.approx(want) and d["count"][9] == 2 and d["observed"][0] is None
    assert np.isnan(m.expected_calibration_error([], []))
    # perfectly calibrated in every bin: ECE 0
    assert m.expected_calibration_error([1, 0, 1, 1], [0.5, 0.5, 1.0, 1.0], bins=2) == 0.0
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        m.reliability([1], [1.5])
    with pytest.raises(ConfigError, match="bins 0"):
        m.reliability([1], [0.5], bins=0)


def test_fraction_limit_interpolates_between_bins():
    centres = [18.0, 19.0, 20.0, 21.0, 22.0]
    frac = [1.0, 0.95, 0.8, 0.4, 0.1]
    # 90 %: between 19 (0.95) and 20 (0.8): 19 + 0.05 / 0.15; 50 %: 20 + 0.3 / 0.4
    assert m.fraction_limit(centres, frac, 0.9) == pytest.approx(19 + 1 / 3)
    assert m.fraction_limit(centres, frac, 0.5) == pytest.approx(20.75)
    # empty bins (NaN) are skipped; the first crossing counts
    assert m.fraction_limit([1, 2, 3, 4], [1.0, np.nan, 0.0, 1.0], 0.5) == pytest.approx(2.0)
    # never below, or below from the start: no limit in the range
    assert m.fraction_limit(centres, [1.0] * 5, 0.5) is None
    assert m.fraction_limit(centres, [0.2] * 5, 0.5) is None
    # rising with the value (completeness against size): walked from the largest
    assert m.fraction_limit([1, 2, 3], [0.0, 0.5, 1.0], 0.75, falling=False) == pytest.approx(2.5)
