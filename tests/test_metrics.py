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
