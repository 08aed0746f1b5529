"""``pyengine evaluate``: a field of known answers built in code, every catalog format, the
figures, an end-to-end run on a real scan, and the bad-input messages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import CatalogError, ConfigError
from pyengine.evaluation import evaluate
from pyengine.evaluation.match import match_one_to_one, nearest_separation, parse_radius
from pyengine.output.catalog import write_catalog

RA0, DEC0 = 10.7, 41.3
PNG = b"\x89PNG\r\n\x1a\n"

# Truth: (dx, dy) arcsec from the centre, class, i_mag, r_h_pc.
TRUTH = [
    ((-20, -20), "cluster", 18.0, 6.0),  # 0: recovered (row 0.1" away, 0.90625)
    ((20, -20), "cluster", 18.5, 5.0),   # 1: recovered (row 0.1" away; a second row 0.3")
    ((20, 20), "cluster", 19.0, 4.0),    # 2: recovered (0.71875)
    ((-20, 20), "cluster", 20.0, 3.0),   # 3: detected, missed (0.28125)
    ((0, -10), "cluster", 21.0, 2.0),    # 4: its row is off the image (not scored)
    ((0, 10), "cluster", 22.0, 1.0),     # 5: no catalog row at all
    ((10, 0), "star", 17.0, np.nan),     # 6: a false positive (0.9375)
    ((-10, 0), "star", 18.0, np.nan),    # 7: a true negative (0.21875)
    ((5, 5), "star", 19.0, np.nan),      # 8: its row is BLANK (0.65625, never a candidate)
    ((-5, -5), "star", 20.0, np.nan),    # 9: no catalog row
    ((3600, 0), "cluster", 18.0, 3.0),   # 10: an hour of arc east: outside the scanned area
]
# Catalog rows: (dx, dy) arcsec, score, flags.  Scores are exact in float32.
ROWS = [
    ((-20, -19.9), 0.90625, 0),    # -> truth 0
    ((20.1, -20), 0.78125, 0),     # -> truth 1 (the nearer row)
    ((20, 20), 0.71875, 0),        # -> truth 2
    ((-20, 20), 0.28125, 0),       # -> truth 3
    ((0, -10), np.nan, 3),         # -> truth 4, OFF_IMAGE | BLANK
    ((10, 0), 0.9375, 0),          # -> truth 6
    ((-10, 0), 0.21875, 0),        # -> truth 7
    ((5, 5), 0.65625, 2),          # -> truth 8, BLANK
    ((-15, 5), 0.84375, 0),        # unmatched: a false positive
    ((15, 5), 0.09375, 4),         # unmatched: a true negative (EDGE is no bar)
    ((20, -19.7), 0.984375, 0),    # 0.3" from truth 1, which row 1 took: a false positive
]


def _sky(offsets):
    dx, dy = np.array(offsets, float).T
    return RA0 + dx / 3600 / math.cos(math.radians(DEC0)), DEC0 + dy / 3600


def truth_table() -> Table:
    ra, dec = _sky([t[0] for t in TRUTH])
    return Table({"RA": ra, "DEC": dec, "class": [t[1] for t in TRUTH],
                  "i_mag": [t[2] for t in TRUTH], "r_h_pc": [t[3] for t in TRUTH]})


def catalog_table(threshold: float = 0.5) -> Table:
    ra, dec = _sky([r[0] for r in ROWS])
    score = np.array([r[1] for r in ROWS], np.float32)
    flags = np.array([r[2] for r in ROWS], np.int32)
    t = Table({"id": np.arange(len(ROWS)), "ra": ra, "dec": dec, "score": score,
               "is_candidate": (score >= threshold) & ((flags & 3) == 0), "flags": flags})
    t.meta.update(THRESH=threshold, MODEL="test", NPOS=len(ROWS))
    return t


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    truth = d / "truth.fits"
    truth_table().write(truth)
    return d, truth


def test_known_answers_at_the_catalogs_threshold():
    r = evaluate(catalog_table(), truth_table(), size_col="r_h_pc", size_bins=5)
    assert r["schema"] == "pyengine.evaluate/1"
    assert r["threshold"] == 0.5 and r["threshold_source"] == "catalog"
    assert r["labels"] == {"column": "class", "positive": ["cluster"],
                           "values": ["cluster", "star"]}
    assert r["area"]["method"] == "hull"  # a table without band files
    assert r["counts"] == {
        "catalog_rows": 11, "eligible_rows": 9, "left_out_rows": 0, "unmatched_rows": 3,
        "truth_rows": 11, "truth_counted": 10, "truth_positives": 6, "truth_negatives": 4,
        "matched": 8, "positives_matched": 5, "positives_without_row": 1,
        "positives_unscored": 1}
    # selected: rows 0, 1, 2 (clusters), 5, 8, 10 (not): TP 3, FP 3; FN 3 (truth 3, 4, 5)
    assert r["operating_point"] == {"threshold": 0.5, "tp": 3, "fp": 3, "fn": 3, "tn": 2,
                                    "precision": 0.5, "recall": 0.5, "f1": 0.5}
    pr = r["pr_curve"]
    # eligible rows by score: N N P N P P P N N; recall over all 6 clusters
    assert pr["points"] == 9
    np.testing.assert_allclose(pr["precision"], [0, 0, 1 / 3, 1 / 4, 2 / 5, 1 / 2, 4 / 7,
                                                 4 / 8, 4 / 9])
    np.testing.assert_allclose(pr["recall"], np.array([0, 0, 1, 1, 2, 3, 4, 4, 4]) / 6)
    assert pr["average_precision"] == pytest.approx((1 / 3 + 2 / 5 + 1 / 2 + 4 / 7) / 6)
    # completeness against i_mag, 0.5 mag bins 18 .. 22: recovered 18, 18.5, 19; not 20,
    # 21 (unscored), 22 (no row)
    mag = r["completeness_vs_mag"]
    assert mag["column"] == "i_mag"
    rec = mag["recovered"]
    assert rec["edges"] == [18.0, 18.5, 19.0, 19.5, 20.0, 20.5, 21.0, 21.5, 22.0]
    assert rec["count"] == [1, 1, 1, 0, 1, 0, 1, 1] and rec["hits"] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert mag["limit_90"] == pytest.approx(19.35) and mag["limit_50"] == pytest.approx(19.75)
    assert mag["detected"]["hits"] == [1, 1, 1, 0, 1, 0, 0, 0]
    assert mag["detected_limit_50"] == pytest.approx(20.75)
    # against size, 5 bins 1 .. 6 pc, walked from the large end
    size = r["completeness_vs_size"]
    assert size["recovered"]["count"] == [1, 1, 1, 1, 2]
    assert size["recovered"]["hits"] == [0, 0, 0, 1, 2]
    assert size["limit_50"] == pytest.approx(4.0) and size["limit_90"] == pytest.approx(4.4)
    # purity per score bin and the reliability diagram (10 bins)
    ps = r["purity_vs_score"]
    assert ps["count"] == [1, 0, 2, 0, 0, 0, 0, 2, 1, 3]
    assert ps["hits"] == [0, 0, 1, 0, 0, 0, 0, 2, 0, 1]
    groups = [([0.09375], 0), ([0.28125, 0.21875], 1), ([0.78125, 0.71875], 2),
              ([0.84375], 0), ([0.984375, 0.9375, 0.90625], 1)]
    ece = sum(abs(k / len(s) - np.mean(s)) * len(s) for s, k in groups) / 9
    assert r["ece"] == pytest.approx(ece) and r["reliability"]["ece"] == r["ece"]
    assert r["reference"]["zhang2025"] == {"precision": 0.893, "recall": 0.7355,
                                           "threshold": 0.669}
    json.dumps(r, allow_nan=False)  # JSON as it is


def test_given_threshold_mag_limit_and_within():
    r = evaluate(catalog_table(), truth_table(), threshold=0.75)
    assert r["threshold_source"] == "given"
    # selected: rows 10, 5, 0, 8, 1: TP 2 (truth 0, 1), FP 3
    op = r["operating_point"]
    assert (op["tp"], op["fp"], op["fn"]) == (2, 3, 4)
    # i < 21.5: cluster 5 (22 mag) no longer counts; the stars all do
    r = evaluate(catalog_table(), truth_table(), mag_limit=21.5)
    assert r["counts"]["truth_positives"] == 5 and r["counts"]["positives_without_row"] == 0
    assert r["operating_point"]["recall"] == pytest.approx(3 / 5)
    # i < 18.75: clusters 2, 3, 4 are fainter: their rows are left out, not wrong; the
    # row of star 8 (19 mag) would be wrong, but it is BLANK
    r = evaluate(catalog_table(), truth_table(), mag_limit=18.75)
    assert r["counts"]["left_out_rows"] == 3  # rows of truth 2, 3, 4 (unscored)
    assert r["counts"]["eligible_rows"] == 7  # the 9 scored rows but those of truth 2, 3
    assert r["operating_point"]["tp"] == 2 and r["operating_point"]["recall"] == 1.0
    # i < 17.5: only star 6 (17 mag) counts, yet the rows of the other stars stay wrong
    r = evaluate(catalog_table(), truth_table(), mag_limit=17.5)
    assert r["counts"]["truth_positives"] == 0 and r["counts"]["left_out_rows"] == 5
    assert r["operating_point"]["fp"] == 3 and r["operating_point"]["tn"] == 2
    # within a circle of 15" about the centre: truth 4, 5, 6, 7, 8, 9 and rows near them
    r = evaluate(catalog_table(), truth_table(), within=f"{RA0},{DEC0},{15 / 3600}")
    assert r["counts"]["truth_positives"] == 2 and r["counts"]["truth_negatives"] == 4
    assert r["within"] == [RA0, DEC0, pytest.approx(15 / 3600)]


def test_one_class_truth_and_positive_values():
    truth = truth_table()
    clusters = truth[truth["class"] == "cluster"]
    r = evaluate(catalog_table(), clusters)  # a cluster catalog: rows of stars unmatched
    assert r["counts"]["truth_negatives"] == 0 and r["counts"]["unmatched_rows"] == 5
    assert r["operating_point"]["tp"] == 3 and r["operating_point"]["fp"] == 3
    truth["class"] = np.where(truth["class"] == "cluster", "GC", "MWstar")
    r = evaluate(catalog_table(), truth, positive=["gc"])  # case-insensitive, as training
    assert r["labels"]["positive"] == ["GC"] and r["operating_point"]["tp"] == 3


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".csv", ".parquet"])
def test_every_catalog_format_gives_the_same_answer(tmp_path, files, suffix):
    _, truth = files
    path = write_catalog(catalog_table(), tmp_path / f"cands{suffix}")
    r = evaluate(path, truth)
    assert r["threshold_source"] == "catalog" and r["threshold"] == 0.5  # meta read back
    assert r["operating_point"]["precision"] == 0.5 and r["operating_point"]["recall"] == 0.5


def test_footprint_from_the_catalogs_band_files(tmp_path, monkeypatch):
    """The area from BANDFIL1..n (relative paths found beside the catalog), and a radius
    in pixels of those images."""
    from astropy.io import fits

    from tests.makedata import make_wcs

    header = make_wcs((400, 400), crval=(RA0, DEC0)).to_header()  # 74.8" square
    for band in ("g", "i"):
        fits.PrimaryHDU(np.zeros((400, 400), np.float32), header).writeto(
            tmp_path / f"{band}.fits")
    cat = catalog_table()
    cat.meta.update(BANDS="g,i", BANDFIL1="g.fits", BANDFIL2="i.fits")
    path = write_catalog(cat, tmp_path / "cands.fits")
    monkeypatch.chdir(tmp_path.parent)  # the band paths are relative to the catalog's folder
    r = evaluate(path, truth_table(), match_radius=f"{0.5 / 0.187}px")
    assert r["area"]["method"] == "footprint" and "g.fits" in r["area"]["description"]
    assert r["match_radius_arcsec"] == pytest.approx(0.5)
    assert r["counts"]["truth_counted"] == 10  # truth 10 is off the image
    assert r["operating_point"]["precision"] == 0.5 and r["operating_point"]["recall"] == 0.5
    cat.meta["BANDFIL2"] = "nowhere.fits"
    other = write_catalog(cat, tmp_path / "other.fits")
    with pytest.raises(ConfigError, match="--area footprint: its band files"):
        evaluate(other, truth_table(), area="footprint")
    assert evaluate(other, truth_table())["area"]["note"].startswith("footprint not used")


def test_matching_is_one_to_one_closest_first():
    ra, dec = _sky([(0, 0), (0.2, 0), (5, 0)])
    cra, cdec = _sky([(0.1, 0), (0.15, 0), (5.4, 0), (20, 0)])
    ti, ci, sep = match_one_to_one(ra, dec, cra, cdec, 0.5)
    # the closest pair (truth 1, row 1: 0.05") first; truth 0 then takes row 0 (0.1")
    assert sorted(zip(ti.tolist(), ci.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 2)]
    np.testing.assert_allclose(sorted(sep), [0.05, 0.1, 0.4], rtol=1e-6)
    # closest first, not in index order: truth 1 takes row 0 (0.05"), so truth 0 takes
    # row 1 (0.3"); in index order truth 0 would take row 0 (0.15") and truth 1 nothing
    ra2, dec2 = _sky([(0, 0), (0.2, 0)])
    cra2, cdec2 = _sky([(0.15, 0), (-0.3, 0)])
    ti, ci, _ = match_one_to_one(ra2, dec2, cra2, cdec2, 0.45)
    assert sorted(zip(ti.tolist(), ci.tolist(), strict=True)) == [(0, 1), (1, 0)]
    # a wrap in RA: 359.99999 and 0.00001 are 0.072" apart at the equator
    ti, ci, sep = match_one_to_one([359.99999], [0.0], [0.00001], [0.0], 0.1)
    assert ci.tolist() == [0] and sep[0] == pytest.approx(0.072, rel=1e-4)
    assert nearest_separation(ra, dec, cra[3:], cdec[3:]) == pytest.approx(15.0, rel=1e-6)
    # far apart: beyond the growing search, by brute force
    assert nearest_separation([0.0], [0.0], [3.0], [0.0]) == pytest.approx(3 * 3600, rel=1e-9)


def _pairs_by_brute_force(ra1, dec1, ra2, dec2, radius):
    from pyengine.evaluation.match import unit_vectors

    v1, v2 = unit_vectors(ra1, dec1), unit_vectors(ra2, dec2)
    sep = np.degrees(np.arccos(np.clip(v1 @ v2.T, -1, 1))) * 3600
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(sep <= radius), strict=True)}


@pytest.mark.parametrize("radius", [0.5, 3.0, 40.0])
def test_pairs_within_agree_with_brute_force(radius):
    from pyengine.evaluation.match import pairs_within

    rng = np.random.default_rng(int(radius * 10))
    ra1 = RA0 + rng.uniform(-0.01, 0.01, 300)
    dec1 = DEC0 + rng.uniform(-0.01, 0.01, 300)
    ra2 = RA0 + rng.uniform(-0.01, 0.01, 400)
    dec2 = DEC0 + rng.uniform(-0.01, 0.01, 400)
    i, j, _ = pairs_within(ra1, dec1, ra2, dec2, radius)
    got = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(got) == i.size  # no pair twice
    assert got == _pairs_by_brute_force(ra1, dec1, ra2, dec2, radius)


@pytest.mark.parametrize(("text", "want"), [
    ("0.5arcsec", 0.5), ("0.5 arcsec", 0.5), ('1.2"', 1.2), ("0.75", 0.75), (2, 2.0),
    ("500mas", 0.5), ("0.01arcmin", 0.6), ("1e-4deg", 0.36), ("0.5'", 30.0)])
def test_match_radius_forms(text, want):
    value, unit = parse_radius(text)
    assert unit == "arcsec" and value == pytest.approx(want)
    assert parse_radius("2px") == (2.0, "px")


@pytest.mark.parametrize(("text", "message"), [
    ("0arcsec", "'0arcsec' is not accepted; accepted: a positive number"),
    ("-1", "'-1' is not accepted"),
    ("abc", "'abc' is not accepted"),
    ("2furlongs", "unknown unit 'furlongs'"),
    ("2deg", "at most 1 deg"),
])
def test_bad_match_radius_is_one_line(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_radius(text)


def _cli(args):
    return CliRunner().invoke(main, ["evaluate", *(str(a) for a in args)])


def test_cli_writes_json_and_figures(tmp_path, files):
    _, truth = files
    cat = write_catalog(catalog_table(), tmp_path / "cands.fits")
    out = tmp_path / "eval"
    res = _cli([cat, "--truth", truth, "--output-dir", out, "--size-col", "r_h_pc"])
    assert res.exit_code == 0, res.output
    assert "purity 50.0 % (3 of 6 candidates), recall 50.0 % (3 of 6; 1 with no catalog " \
           "row, 1 unscored), F1 0.500" in res.output
    assert "completeness i_mag: 90 % at 19.35 mag" not in res.output  # no unit in a Table
    assert "completeness i_mag: 90 % at 19.35, 50 % at 19.75" in res.output
    data = json.loads((out / "evaluation.json").read_text())
    assert set(data) >= {"schema", "catalog", "truth", "match_radius_arcsec", "threshold",
                         "threshold_source", "labels", "area", "counts", "operating_point",
                         "pr_curve", "completeness_vs_mag", "completeness_vs_size",
                         "purity_vs_score", "reliability", "ece", "reference", "figures"}
    assert set(data["figures"]) == {"pr_curve", "completeness_mag", "completeness_size",
                                    "purity_score", "reliability"}
    for path in data["figures"].values():
        blob = Path(path).read_bytes()
        assert blob.startswith(PNG) and len(blob) > 5000
    assert not list(out.glob(".*"))  # no temporary file left
    # again: the outputs exist
    res = _cli([cat, "--truth", truth, "--output-dir", out])
    assert res.exit_code == 1 and "the file exists; add --overwrite" in res.output
    # -o PREFIX and --json
    res = _cli([cat, "--truth", truth, "-o", tmp_path / "run1", "--json", "--no-figures"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["operating_point"]["f1"] == 0.5
    assert (tmp_path / "run1.json").exists() and not (tmp_path / "run1_pr_curve.png").exists()


def _one_line_error(args, message):
    res = _cli(args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert message in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line(tmp_path, files):
    _, truth = files
    cat = write_catalog(catalog_table(), tmp_path / "cands.fits")
    no_score = catalog_table()
    no_score.remove_column("score")
    no_score.write(tmp_path / "noscore.fits")
    _one_line_error([tmp_path / "noscore.fits", "--truth", truth],
                    f"{tmp_path / 'noscore.fits'}: no 'score' column (the model's scores)")
    no_pos = catalog_table()
    no_pos.remove_columns(["ra", "dec"])
    no_pos.write(tmp_path / "nopos.fits")
    _one_line_error([tmp_path / "nopos.fits", "--truth", truth], "no 'ra' column (positions)")
    _one_line_error([cat, "--truth", truth, "--positive", "globular"],
                    f"{truth}: --positive value 'globular' is not a value of label column "
                    "'class'; accepted: cluster, star")
    _one_line_error([cat, "--truth", truth, "--match-radius", "0"], "--match-radius '0' is "
                    "not accepted")
    _one_line_error([cat, "--truth", truth, "--match-radius", "2px"],
                    "pixels need the catalog's images")
    # a truth catalog of another field: one hour of arc away
    far = truth_table()
    far["RA"] += 1.0
    far.write(tmp_path / "far.fits")
    _one_line_error([cat, "--truth", tmp_path / "far.fits"],
                    f"{tmp_path / 'far.fits'}: no truth object lies in the scanned area (the "
                    "convex hull of the 11 catalog positions")
    # labels 3" north of every row: inside the area, matching nothing within 0.5"
    off = truth_table()[:10]
    off["DEC"] += 3.0 / 3600
    off.write(tmp_path / "off.fits")
    line = _one_line_error([cat, "--truth", tmp_path / "off.fits"],
                           "within the match radius 0.5\"; the nearest pair is ")
    got = float(re.search(r"nearest pair is ([0-9.]+)\"", line).group(1))
    cat_t = catalog_table()
    from pyengine.evaluation.match import unit_vectors

    sep = np.degrees(np.arccos(np.clip(unit_vectors(off["RA"], off["DEC"]) @ unit_vectors(
        cat_t["ra"], cat_t["dec"]).T, -1, 1))).min() * 3600
    assert got == pytest.approx(sep, rel=2e-3) and 2.0 < got < 3.1
    nolabel = truth_table()
    nolabel.remove_column("class")
    nolabel.write(tmp_path / "nolabel.fits")
    _one_line_error([cat, "--truth", tmp_path / "nolabel.fits"],
                    "no label column (label, class, labels, type); name it with --label-col")
    _one_line_error([cat, "--truth", truth, "--mag-col", "V"], "no column 'V' for magnitudes")
    with pytest.raises(CatalogError, match="no RA/Dec columns"):
        evaluate(catalog_table(), Table({"x": [1.0], "class": ["cluster"]}))


def test_end_to_end_on_a_real_scan(field, model, catalog, tmp_path):
    """pyengine scan of the test field, then pyengine evaluate against its truth (the
    positions the field was made with), the area from the scan's own images."""
    from click.testing import CliRunner

    out = tmp_path / "scan.fits"
    res = CliRunner().invoke(main, ["scan", *map(str, field["paths"]), "--catalog",
                                    str(catalog), "--model", str(model), "--runner", "torch",
                                    "-q", "-o", str(out), "--tile-size", "64"])
    assert res.exit_code == 0, res.output
    scan = Table.read(out, mask_invalid=False)
    scores = np.asarray(scan["score"], np.float64)
    threshold = float(np.median(scores[np.isfinite(scores)]))
    ra, dec = field["wcs"].pixel_to_world_values(field["x"], field["y"])
    n = ra.size
    truth = Table({"ra": ra, "dec": dec, "type": np.where(np.arange(n) % 3 == 0, 1, 0),
                   "mag": np.linspace(17, 23, n), "rh": np.linspace(1, 6, n)})
    truth.write(tmp_path / "truth.ecsv")
    res = _cli([out, "--truth", tmp_path / "truth.ecsv", "--output-dir", tmp_path / "ev",
                "--threshold", threshold, "--match-radius", "1px"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert r["area"]["method"] == "footprint" and "g.fits" in r["area"]["description"]
    assert r["match_radius_arcsec"] == pytest.approx(0.187, rel=1e-4)
    assert r["labels"] == {"column": "type", "positive": ["1"], "values": ["0", "1"]}
    # every source has its row (same positions); the three extra rows lie off the image
    assert r["counts"]["truth_counted"] == n and r["counts"]["positives_without_row"] == 0
    # the answer from the scan catalog itself: its rows are the truth's, in order
    rows = scan[:n]
    ok = np.isfinite(rows["score"]) & ((np.asarray(rows["flags"]) & 3) == 0)
    sel = ok & (np.asarray(rows["score"]) >= threshold)
    pos = np.asarray(truth["type"]) == 1
    op = r["operating_point"]
    assert (op["tp"], op["fp"], op["fn"]) == (int(np.sum(sel & pos)), int(np.sum(sel & ~pos)),
                                              int(np.sum(pos & ~sel)))
    assert r["counts"]["positives_unscored"] == int(np.sum(pos & ~ok))
    assert set(r["figures"]) == {"pr_curve", "completeness_mag", "completeness_size",
                                 "purity_score", "reliability"}
    for path in r["figures"].values():
        assert Path(path).read_bytes()[:8] == PNG
