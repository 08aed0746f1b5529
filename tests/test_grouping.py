"""Candidate grouping (one object, one candidate), the matcher behind it, and labels of
detections (train --positions detect)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from pyengine.errors import CatalogError
from pyengine.flags import FRAGMENT
from pyengine.matching import friends_of_friends, pairs_within
from pyengine.output.grouping import group_candidates
from pyengine.training.positions import label_detections


def test_pairs_within_is_exact():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-50, 50, (700, 2)), rng.uniform(-50, 50, (500, 2))
    i, j, d = pairs_within(a[:, 0], a[:, 1], b[:, 0], b[:, 1], 2.5)
    full = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    ii, jj = np.nonzero(full <= 2.5)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(ii.tolist(), jj.tolist(),
                                                                strict=True))
    np.testing.assert_allclose(d, full[i, j])


def test_friends_of_friends_links_chains():
    x = np.array([0.0, 1.5, 3.0, 10.0, 20.0, 21.0])
    label = friends_of_friends(x, np.zeros_like(x), 1.6)
    assert label.tolist() == [0, 0, 0, 3, 4, 4]


def _table(x, y, score, cand, ra=None):
    t = Table()
    n = len(x)
    t["id"] = np.arange(1, n + 1)
    t["ra"] = np.full(n, np.nan) if ra is None else ra
    t["dec"] = np.full(n, np.nan) if ra is None else np.full(n, 41.0)
    t["x"], t["y"] = np.asarray(x, float), np.asarray(y, float)
    t["score"] = np.asarray(score, np.float32)
    t["is_candidate"] = np.asarray(cand, bool)
    t["flags"] = np.zeros(n, np.int32)
    return t


def test_fragments_of_one_cluster_become_one_candidate():
    # Three fragments of one cluster (within 2" = 10.7 px chains), a lone candidate, and a
    # non-candidate between them that must not link them.
    t = _table([100, 106, 111, 300, 103], [100, 101, 99, 300, 100],
               [0.8, 0.95, 0.7, 0.9, 0.1], [True, True, True, True, False])
    lost = group_candidates(t, 2.0, pixel_scale=0.187)
    assert lost == 2
    assert t["is_candidate"].tolist() == [False, True, False, True, False]
    assert (t["flags"] & FRAGMENT).astype(bool).tolist() == [True, False, True, False, False]
    assert t["group"].tolist() == [2, 2, 2, 4, -1]  # the primary's id
    assert t["group_size"].tolist() == [3, 3, 3, 1, 0]
    assert t.meta["GROUPRAD"] == 2.0
    # Grouping again (a survey's whole catalog after its parts) changes nothing, and a
    # raised threshold that drops the primary makes the next fragment the primary.
    before = [t[c].tolist() for c in ("is_candidate", "flags", "group", "group_size")]
    group_candidates(t, 2.0, pixel_scale=0.187)
    assert [t[c].tolist() for c in ("is_candidate", "flags", "group", "group_size")] == before
    group_candidates(t, 0.0)
    assert t["is_candidate"].tolist() == [True, True, True, True, False]
    assert not (t["flags"] & FRAGMENT).any()


def test_grouping_on_the_sky_uses_arcsec():
    # 1.5" apart in RA at Dec 41 (cos dec shrinks RA offsets): grouped at 2", not at 1".
    dra = 1.5 / 3600 / np.cos(np.deg2rad(41.0))
    t = _table([0, 0], [0, 500], [0.9, 0.8], [True, True], ra=np.array([10.0, 10.0 + dra]))
    group_candidates(t, 2.0)
    assert t["is_candidate"].tolist() == [True, False]
    group_candidates(t, 1.0)
    assert t["is_candidate"].tolist() == [True, True]


def test_detections_are_labelled_one_to_one():
    lab_x, lab_y = np.array([10.0, 50.0, 90.0]), np.array([10.0, 50.0, 90.0])
    values = np.array(["cluster", "star", "cluster"])
    # det 0 on label 0; det 1 a fragment near label 0 (nearer det 0 wins it); det 2 on
    # label 1; det 3 matches nothing (a negative); label 2 undetected.
    det_x, det_y = np.array([10.5, 13.0, 50.0, 200.0]), np.array([10.0, 10.0, 50.5, 5.0])
    got = label_detections(det_x, det_y, lab_x, lab_y, values, radius_px=5.0,
                           unmatched="star", where="labels.fits", radius_arcsec=1.0)
    assert got.values.tolist() == ["cluster", "star", "star"]
    assert got.label_row.tolist() == [0, 1, -1]
    assert got.counts == {"detections": 4, "matched": 2, "negatives": 1, "ambiguous": 1,
                          "labels_not_detected": 1}


def test_labels_matching_nothing_say_the_radius_and_the_nearest_distance():
    with pytest.raises(CatalogError, match=r"labels.fits: no label lies within --match-radius "
                                           r"1\" .*the nearest is 10\" away"):
        label_detections(np.array([0.0]), np.array([0.0]), np.array([53.5]), np.array([0.0]),
                         np.array(["cluster"]), radius_px=5.35, unmatched="star",
                         where="labels.fits", radius_arcsec=1.0)
