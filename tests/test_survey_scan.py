"""Scanning a survey of overlapping fields into one catalog (pyengine.survey.scan)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from pyengine.flags import OFF_IMAGE
from pyengine.io.mosaic import Mosaic
from pyengine.scan.engine import Engine
from pyengine.sources.catalog import CatalogSource
from pyengine.sources.grid import GridSource
from pyengine.survey.geometry import Cone, SurveyGeometry
from pyengine.survey.manifest import Field, Survey
from pyengine.survey.scan import parts_folder, scan_survey

SIZE, STEP, SCALE = 200, 160, 0.187


@pytest.fixture
def survey(survey_2x2):
    return survey_2x2


@pytest.fixture
def engine(engine_64):
    return engine_64


def _catalog(path, survey):
    """Random sky positions over the survey and around it, the exact boundary between
    A and B, a 4-way overlap, and a row with no position."""
    geo = SurveyGeometry(survey)
    rng = np.random.default_rng(5)
    corners = np.array([c for f in geo.survey.fields for c in f.corners])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    ra = rng.uniform(lo[0] - 0.002, hi[0] + 0.002, 120)
    dec = rng.uniform(lo[1] - 0.002, hi[1] + 0.002, 120)
    centres = [f.wcs.pixel_to_world_values((SIZE - 1) / 2, (SIZE - 1) / 2) for f in geo.frames]
    mid_ab = [(centres[0][0] + centres[1][0]) / 2, centres[0][1]]
    middle = np.mean(np.array(centres, float), axis=0)
    ra = np.concatenate([ra, [mid_ab[0], middle[0], np.nan]])
    dec = np.concatenate([dec, [mid_ab[1], middle[1], np.nan]])
    table = Table({"RA": ra, "DEC": dec, "name": [f"s{k}" for k in range(ra.size)]})
    table.write(path)
    return path, ra, dec


def test_a_catalog_survey_scores_every_row_once_in_its_owner(survey, engine, tmp_path):
    cat, ra, dec = _catalog(tmp_path / "cat.fits", survey)
    out = tmp_path / "s.fits"
    summary = scan_survey(engine, survey, out, make_source=lambda: CatalogSource(cat))
    table = Table.read(out, mask_invalid=False)
    assert len(table) == ra.size  # one row per input row, in input order
    assert list(table["name"]) == [f"s{k}" for k in range(ra.size)]
    np.testing.assert_array_equal(table["id"], np.arange(1, ra.size + 1))
    geo = SurveyGeometry(survey)
    finite = np.isfinite(ra)
    owner = np.full(ra.size, -1)
    owner[finite] = geo.owner(ra[finite], dec[finite])
    want = np.array(["" if o < 0 else geo.frames[o].id for o in owner])
    np.testing.assert_array_equal(np.asarray(table["field"]).astype(str), want)
    inside = owner >= 0
    assert inside.sum() > 60 and (~inside).sum() > 10
    assert np.all(np.isfinite(table["score"][inside]))
    assert np.all(np.isnan(table["score"][~inside]))
    assert np.all((np.asarray(table["flags"])[~inside] & OFF_IMAGE) != 0)
    # the rows on the A/B boundary and in the 4-way overlap are there once, in one field
    assert table["field"][-3] in ("A", "B") and table["field"][-2] in tuple("ABCD")
    # every field took part; the parts folder is gone
    assert set(summary.fields) == set("ABCD") and not parts_folder(out).exists()
    assert summary.positions == ra.size and summary.off_image == int((~inside).sum())
    # a field's scores are those of a scan of that field alone
    a = table[np.asarray(table["field"]).astype(str) == "A"]
    with Mosaic.open(list(survey.fields[0].images)) as mosaic:
        alone = engine.scan(mosaic, CatalogSource(cat))
    by_name = dict(zip(alone["name"], alone["score"], strict=True))
    np.testing.assert_array_equal(np.asarray(a["score"]),
                                  np.array([by_name[n] for n in a["name"]]))


def test_a_grid_survey_keeps_each_fields_own_points_in_the_sky_it_owns(survey, engine,
                                                                       tmp_path):
    out = tmp_path / "g.fits"
    scan_survey(engine, survey, out, make_source=lambda: GridSource(25))
    table = Table.read(out, mask_invalid=False)
    geo = SurveyGeometry(survey)
    owner = geo.owner(np.asarray(table["ra"]), np.asarray(table["dec"]))
    got = np.asarray(table["field"]).astype(str)
    assert set(got) == set("ABCD")
    np.testing.assert_array_equal(got, np.array([geo.frames[o].id for o in owner]))
    # field order, then each field's own order
    order = {f: k for k, f in enumerate("ABCD")}
    assert np.all(np.diff([order[f] for f in got]) >= 0)
    # fewer points than four whole grids: the overlaps are not scanned twice
    assert len(table) < 4 * 8 * 8


def test_within_scans_only_the_fields_it_touches_and_the_rows_inside(survey, engine, tmp_path):
    cat, ra, dec = _catalog(tmp_path / "cat.fits", survey)
    geo = SurveyGeometry(survey)
    ra_d, dec_d = geo.frames[3].wcs.pixel_to_world_values(180, 150)  # D, near C
    cone = Cone(float(ra_d), float(dec_d), 6.0 / 3600)
    out = tmp_path / "w.fits"
    summary = scan_survey(engine, survey, out, make_source=lambda: CatalogSource(cat),
                          cone=cone)
    table = Table.read(out, mask_invalid=False)
    assert summary.skipped_fields == ["A", "B"]  # C and D touch the 6" circle
    finite = np.isfinite(ra)
    inside = np.zeros(ra.size, bool)
    inside[finite] = cone.contains(ra[finite], dec[finite])
    assert inside.sum() >= 2
    inside |= ~finite  # a row with no usable position is kept, flagged, wherever the area
    assert len(table) == inside.sum()
    assert summary.outside_area == int((finite & ~inside).sum())
    np.testing.assert_array_equal(np.asarray(table["name"]).astype(str),
                                  np.array([f"s{k}" for k in np.flatnonzero(inside)]))


def _interrupted_at(field_id, engine, survey, out, monkeypatch):
    """A grid survey scan that fails when it reaches field ``field_id``."""
    import pyengine.scan.run as run_module

    real = run_module.run_scan

    def failing(engine, mosaic, source, part, **kw):
        if part.name.startswith(f"{field_id}@"):
            raise RuntimeError("killed")
        return real(engine, mosaic, source, part, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "run_scan", failing)
        with pytest.raises(RuntimeError, match="killed"):
            scan_survey(engine, survey, out, make_source=lambda: GridSource(25))


def test_a_resumed_survey_skips_finished_fields_and_equals_an_uninterrupted_one(
        survey, engine, tmp_path, monkeypatch):

    whole = tmp_path / "whole.fits"
    scan_survey(engine, survey, whole, make_source=lambda: GridSource(25))
    out = tmp_path / "r.fits"
    _interrupted_at("C", engine, survey, out, monkeypatch)
    assert sorted(p.name.split("@")[0] for p in parts_folder(out).glob("*@*[0-9].fits")) == ["A", "B"]
    summary = scan_survey(engine, survey, out, make_source=lambda: GridSource(25), resume=True)
    assert summary.fields["A"] == summary.fields["B"] == "done earlier"
    a, b = (Table.read(p, mask_invalid=False) for p in (whole, out))
    assert a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    # each field's score map lies beside the catalog, on the field's own grid
    assert sorted(summary.scoremaps) == list("ABCD")
    assert all(p.endswith(f"r_{f}_scoremap.fits") for f, p in summary.scoremaps.items())
    from astropy.io import fits
    from astropy.wcs import WCS

    header = fits.getheader(summary.scoremaps["C"])
    assert WCS(header).has_celestial


def test_pyengine_scan_takes_a_manifest_and_refuses_in_one_line(survey, model, tmp_path):
    from click.testing import CliRunner

    from pyengine.cli import main

    manifest = survey.described().write(tmp_path / "s.ecsv")
    cat, ra, _ = _catalog(tmp_path / "cat.fits", survey)

    def run(*args):
        return CliRunner().invoke(main, ["scan", *map(str, args), "--model", str(model),
                                         "--runner", "torch", "--tile-size", "64", "-q"])

    out = tmp_path / "m.fits"
    done = run(manifest, "--catalog", cat, "--out", out)
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"survey: 4 field(s) scanned, {ra.size} positions")
    table = Table.read(out, mask_invalid=False)
    assert len(table) == ra.size and "field" in table.colnames
    refusals = {
        ("--grid", "25", "--out", tmp_path / "g.fits", "--regions", tmp_path / "g.reg"):
            "Error: --regions and --scoremap are not written by survey scans yet",
        ("--grid", "25", "--out", tmp_path / "w.fits", "--within", "200,-30,0.5"):
            "Error: --within 200,-30,0.5 touches none of the survey's 4 fields",
        ("--grid", "25", "--out", tmp_path / "w.fits", "--within", "200,-30"):
            "Error: --within '200,-30' is not accepted",
        ("--catalog", cat, "--out", out): f"Error: {out}: already exists; pass --overwrite",
    }
    for args, message in refusals.items():
        got = run(manifest, *args)
        assert got.exit_code == 1 and got.output.startswith(message), got.output
        assert got.output.count("\n") == 1, got.output
    mixed = run(manifest, survey.fields[0].images[0], "--grid", "25", "--out", tmp_path / "x.fits")
    assert mixed.exit_code == 1 and "a survey manifest is scanned alone" in mixed.output


def test_a_resume_over_changed_files_or_options_is_refused_naming_the_field(
        survey, engine, tmp_path, monkeypatch):
    import shutil

    from pyengine.errors import ResumeError

    root = tmp_path / "copy"
    fields = []
    for f in survey.fields:
        shutil.copytree(Path(f.images[0]).parent, root / f.id)
        fields.append(Field(f.id, tuple(str(root / f.id / Path(p).name) for p in f.images)))
    copy = Survey(tuple(fields), survey.bands)
    out = tmp_path / "r.fits"
    _interrupted_at("B", engine, copy, out, monkeypatch)
    with pytest.raises(ResumeError, match=r"^--resume: the survey scan started with options "):
        scan_survey(engine, copy, out, make_source=lambda: GridSource(20), resume=True)
    # field A is finished; its g image changes (same size, other bytes)
    g = Path(copy.fields[0].images[0])
    data = bytearray(g.read_bytes())
    data[-2880 * 2 : -2880] = bytes(2880)
    g.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match=r"^--resume: field 'A': its band files changed"):
        scan_survey(engine, copy, out, make_source=lambda: GridSource(25), resume=True)
    # without --resume it starts again and finishes
    summary = scan_survey(engine, copy, out, make_source=lambda: GridSource(25))
    assert "done earlier" not in summary.fields.values()


def test_detections_near_boundaries_are_one_row_per_object(survey):
    from pyengine.survey.reconcile import reconcile

    geo = SurveyGeometry(survey)
    a, b = geo.frames[0], geo.frames[1]
    # the A/B boundary: half-way between their centres (y in the lower half: no C or D)
    ra_a, dec_a = a.wcs.pixel_to_world_values(99.5, 50.0)
    ra_b, _ = b.wcs.pixel_to_world_values(99.5, 50.0)
    mid = (ra_a + ra_b) / 2
    px = 0.187 / 3600 / math.cos(math.radians(dec_a))  # one pixel in RA, deg
    rows = [  # (ra, dec, field measured in)
        (mid + 0.2 * px, dec_a, 0), (mid - 0.3 * px, dec_a, 1),     # one object, A and B
        (mid + 2 * px, dec_a + 10 * px, 1),                          # B only (A: a gap)
        (mid - 1 * px, dec_a + 30 * px, 0), (mid - 1 * px, dec_a + 33 * px, 0),
        (mid - 1.2 * px, dec_a + 31.5 * px, 1),                      # A split, B blended
        (ra_a, dec_a - 20 * px, 0),                                  # deep inside A
    ]
    ra, dec, f = (np.array(v) for v in zip(*rows, strict=True))
    keep = reconcile(ra, dec, f, geo, radius=1.0, margin=2.0)
    d = geo.edge_distances(ra[:2], dec[:2])
    owner_of_pair = geo.owner([ra[:2].mean()], [dec[:2].mean()])[0]
    assert keep[:2].tolist() == [owner_of_pair == 0, owner_of_pair == 1]
    assert d.shape == (4, 2)
    assert keep[2]  # seen in one field only: kept wherever it lies in the margin
    group_owner = geo.owner([ra[3:6].mean()], [dec[3:6].mean()])[0]
    assert keep[3:6].tolist() == ([True, True, False] if group_owner == 0 else
                                  [False, False, True])
    assert keep[6]
    one_field = SurveyGeometry(Survey(survey.fields[:1], survey.bands))
    assert reconcile(ra, dec, np.zeros(ra.size, int), one_field).all()


def test_a_detection_survey_keeps_each_detection_in_its_owner_or_unmatched_in_a_margin(
        survey, engine, tmp_path):
    """The fields of this test survey are independent synthetic skies (one sky over many
    fields is the synthetic survey's job), so a detection in an overlap is a different
    object in each field; what must hold is the rule: a row is in the field that owns its
    position, or it lies in a margin band and no row of its owner is within 1"."""
    from pyengine.sources.detect import DetectSource
    from pyengine.survey.reconcile import in_margin

    out = tmp_path / "d.fits"
    scan_survey(engine, survey, out, make_source=lambda: DetectSource())
    table = Table.read(out, mask_invalid=False)
    geo = SurveyGeometry(survey)
    index = {f.id: k for k, f in enumerate(geo.survey.fields)}
    ra, dec = np.asarray(table["ra"]), np.asarray(table["dec"])
    fields = np.array([index[f] for f in np.asarray(table["field"]).astype(str)])
    assert len(table) > 20 and set(fields.tolist()) == {0, 1, 2, 3}
    owner = geo.owner(ra, dec)
    margin = in_margin(geo.edge_distances(ra, dec), 2.0)
    guests = np.flatnonzero(fields != owner)
    assert np.all(margin[guests])
    for g in guests:
        hosts = np.flatnonzero(fields == owner[g])
        sep = np.hypot((ra[hosts] - ra[g]) * np.cos(np.radians(dec[g])), dec[hosts] - dec[g])
        assert not np.any(sep * 3600 <= 1.0), "a guest row kept beside its owner's row"


@pytest.mark.parametrize("kind", ["catalog", "grid", "detect"])
def test_shards_and_merge_equal_a_single_process_scan_row_for_row(survey, engine, tmp_path,
                                                                 kind):
    from pyengine.sources.detect import DetectSource
    from pyengine.survey.merge import merge_shards

    manifest = survey.described().write(tmp_path / "s.ecsv")
    described = Survey.read(manifest)
    cat, _, _ = _catalog(tmp_path / "cat.fits", survey)
    make = {"catalog": lambda: CatalogSource(cat), "grid": lambda: GridSource(25),
            "detect": lambda: DetectSource()}[kind]
    whole = tmp_path / "whole.fits"
    scan_survey(engine, described, whole, make_source=make)
    parts = []
    for i in range(3):  # 4 fields in 3 shards: one shard holds two
        parts.append(tmp_path / f"part{i}.fits")
        scan_survey(engine, described, parts[-1], make_source=make, shard=(i, 3))
    got = merge_shards(parts[::-1], tmp_path / "merged.fits")  # any order
    a, b = (Table.read(p, mask_invalid=False) for p in (whole, tmp_path / "merged.fits"))
    assert got["rows"] == len(a) == len(b) and a.colnames == b.colnames
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_merge_refuses_incomplete_or_foreign_shards_in_one_line(survey, engine, tmp_path):
    from pyengine.errors import ConfigError
    from pyengine.survey.merge import merge_shards

    p0, p1, other = (tmp_path / n for n in ("p0.fits", "p1.fits", "o1.fits"))
    scan_survey(engine, survey, p0, make_source=lambda: GridSource(25), shard=(0, 2))
    scan_survey(engine, survey, p1, make_source=lambda: GridSource(25), shard=(1, 2))
    scan_survey(engine, survey, other, make_source=lambda: GridSource(20), shard=(1, 2))
    whole = tmp_path / "w.fits"
    scan_survey(engine, survey, whole, make_source=lambda: GridSource(25))
    cases = [
        ([p0], r"^merge: shard\(s\) 1/2 missing \(have 1 of 2\)"),
        ([p0, p0], r"p0.fits: shard 0/2 again"),
        ([p0, other], r"o1.fits: a shard of another survey scan"),
        ([p0, whole], r"w.fits: not the output of pyengine scan SURVEY --shard I/N"),
    ]
    for parts, message in cases:
        with pytest.raises(ConfigError, match=message):
            merge_shards(parts, tmp_path / "m.fits")
    from pyengine.survey.scan import parse_shard

    for bad in ("3/3", "1/0", "a/b", "-1/2", "1"):
        with pytest.raises(ConfigError, match=r"^--shard .* is not accepted; accepted: I/N"):
            parse_shard(bad)


def test_shard_and_merge_from_the_command_line(survey, model, tmp_path):
    from click.testing import CliRunner

    from pyengine.cli import main

    manifest = survey.described().write(tmp_path / "s.ecsv")
    common = ["--grid", "25", "--model", str(model), "--runner", "torch", "--tile-size", "64",
              "-q"]
    for i in range(2):
        got = CliRunner().invoke(main, ["scan", str(manifest), *common, "--shard", f"{i}/2",
                                        "--out", str(tmp_path / f"p{i}.fits")])
        assert got.exit_code == 0, got.output
    merged = CliRunner().invoke(main, ["merge", str(tmp_path / "p0.fits"),
                                       str(tmp_path / "p1.fits"), "--out",
                                       str(tmp_path / "m.fits")])
    assert merged.exit_code == 0, merged.output
    assert merged.output.startswith("merged 2 shard(s): ")
    bad = CliRunner().invoke(main, ["scan", str(manifest), *common, "--shard", "2/2",
                                    "--out", str(tmp_path / "x.fits")])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --shard '2/2' is not accepted")
    again = CliRunner().invoke(main, ["merge", str(tmp_path / "p0.fits"), "--out",
                                      str(tmp_path / "m2.fits")])
    assert again.exit_code == 1
    assert again.output == "Error: merge: shard(s) 1/2 missing (have 1 of 2); every shard's " \
                           "output is needed\n"


def test_more_shards_than_units_leave_empty_shards_that_merge(survey, model, tmp_path):
    from pyengine.survey.merge import merge_shards

    # one tile per field: 4 units (field, tile), so one shard of 5 holds none
    engine = Engine(model, runner="torch", device="cpu", batch_size=16, core=256)
    parts = [tmp_path / f"p{i}.fits" for i in range(5)]
    for i, part in enumerate(parts):
        scan_survey(engine, survey, part, make_source=lambda: GridSource(25), shard=(i, 5))
    assert sorted(len(Table.read(p)) > 0 for p in parts) == [False, True, True, True, True]
    merge_shards(parts, tmp_path / "m.fits")
    whole = tmp_path / "w.fits"
    scan_survey(engine, survey, whole, make_source=lambda: GridSource(25))
    a, b = (Table.read(p, mask_invalid=False) for p in (whole, tmp_path / "m.fits"))
    assert a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
