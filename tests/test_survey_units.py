"""A survey's units of work (field, tile), and the parts that scan them
(pyengine.survey.units): shares, grouping, resume across groupings, score maps."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pyengine.scan.engine import Engine
from pyengine.sources.catalog import CatalogSource
from pyengine.sources.grid import GridSource
from pyengine.survey import units as U
from pyengine.survey.geometry import SurveyGeometry
from pyengine.survey.scan import parts_folder, scan_survey


def _same(a_path, b_path):
    a, b = (Table.read(p, mask_invalid=False) for p in (a_path, b_path))
    assert a.colnames == b.colnames and len(a) == len(b) and len(a) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


def test_units_are_every_tile_of_every_touched_field_and_shares_split_them_exactly(survey_2x2):
    geo = SurveyGeometry(survey_2x2)
    units = U.unit_list(geo, [0, 1, 2, 3], core=64)
    assert len(units) == 4 * 16 and units[:2] == [(0, 0), (0, 1)] and units[-1] == (3, 15)
    assert U.field_tiles((200, 130), 64) == 4 * 3
    for n in range(1, 9):
        shares = [U.share(units, (i, n)) for i in range(n)]
        assert [u for s in shares for u in s] == units  # each unit once, in order
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    parts = U.runs([(0, 3), (0, 4), (0, 5), (1, 0), (1, 2)])
    assert parts == [U.Part(0, 3, 5), U.Part(1, 0, 0), U.Part(1, 2, 2)]
    assert U.split_runs([U.Part(0, 3, 9)], 3) == [U.Part(0, 3, 5), U.Part(0, 6, 8),
                                                  U.Part(0, 9, 9)]
    assert (0, 4) in parts[0] and (0, 6) not in parts[0] and (1, 4) not in parts[0]


def test_a_scan_cut_into_single_tile_parts_resumes_in_long_runs_and_equals_the_whole(
        survey_2x2, engine_64, tmp_path, monkeypatch):
    """The parts a cluster makes (one tile each, say) and those one process makes (one
    per field) are interchangeable: done units are read from the part files."""
    import pyengine.scan.run as run_module

    whole = tmp_path / "whole.fits"
    scan_survey(engine_64, survey_2x2, whole, make_source=lambda: GridSource(25))
    out = tmp_path / "cut.fits"
    real_runs, real_scan = U.runs, run_module.run_scan
    calls = []

    def failing(eng, mosaic, source, part, **kw):
        calls.append(part.name)
        if part.name.startswith("C@"):
            raise RuntimeError("killed")
        return real_scan(eng, mosaic, source, part, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(U, "runs", lambda units: U.split_runs(real_runs(units), 1))
        patch.setattr(run_module, "run_scan", failing)
        with pytest.raises(RuntimeError, match="killed"):
            scan_survey(engine_64, survey_2x2, out, make_source=lambda: GridSource(25))
    assert len(calls) == 33 and calls[0] == "A@000000-000000.fits"  # 32 tiles of A, B
    done = U.done_units(parts_folder(out), SurveyGeometry(survey_2x2), [0, 1, 2, 3])
    assert sorted(done) == [(k, t) for k in (0, 1) for t in range(16)]
    calls.clear()

    def counting(eng, mosaic, source, part, **kw):
        calls.append(part.name)
        return real_scan(eng, mosaic, source, part, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "run_scan", counting)
        summary = scan_survey(engine_64, survey_2x2, out, make_source=lambda: GridSource(25),
                              resume=True)
    assert calls == ["C@000000-000015.fits", "D@000000-000015.fits"]
    assert summary.fields["A"] == summary.fields["B"] == "done earlier"
    _same(whole, out)


def test_shards_cut_fields_and_merge_joins_their_score_maps(survey_2x2, engine_64, tmp_path):
    from pyengine.survey.merge import merge_shards

    whole = tmp_path / "whole.fits"
    summary = scan_survey(engine_64, survey_2x2, whole, make_source=lambda: GridSource(25))
    shards = [tmp_path / f"s{i}.fits" for i in range(3)]  # 64 units: fields cut in two
    for i, path in enumerate(shards):
        scan_survey(engine_64, survey_2x2, path, make_source=lambda: GridSource(25), shard=(i, 3))
    fields = [set(np.asarray(Table.read(p)["field"]).astype(str)) for p in shards]
    assert fields[0] & fields[1] and fields[1] & fields[2]  # a field in two shards
    got = merge_shards(shards, tmp_path / "m.fits")
    _same(whole, tmp_path / "m.fits")
    assert sorted(got["scoremaps"]) == list("ABCD")
    for fid, path in summary.scoremaps.items():
        want, have = fits.getdata(path), fits.getdata(got["scoremaps"][fid])
        np.testing.assert_array_equal(want, have)
        assert np.isfinite(have).sum() > 10  # the points the field owns
        assert fits.getheader(got["scoremaps"][fid])["CRVAL1"] == \
            fits.getheader(path)["CRVAL1"]
    # the merged score maps exist now: a second merge without --overwrite is refused
    from pyengine.errors import ConfigError

    (tmp_path / "m.fits").unlink()
    with pytest.raises(ConfigError, match=r"m_A_scoremap\.fits: the score map exists"):
        merge_shards(shards, tmp_path / "m.fits")
    assert not (tmp_path / "m.fits").exists()  # refused before the catalog is written


def test_catalog_parts_run_at_the_fields_batch_size_so_scores_match_bit_for_bit(
        survey_2x2, model, tmp_path, monkeypatch):
    """A part holding a few of a field's positions still runs batches of the field's size
    (scores depend on the batch size in the last bits)."""
    geo = SurveyGeometry(survey_2x2)
    rng = np.random.default_rng(2)
    corners = np.array([c for f in geo.survey.fields for c in f.corners])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    Table({"RA": rng.uniform(lo[0], hi[0], 90), "DEC": rng.uniform(lo[1], hi[1], 90)}).write(
        tmp_path / "c.fits")
    engine = Engine(model, runner="torch", device="cpu", batch_size=64, core=64)
    make = lambda: CatalogSource(str(tmp_path / "c.fits"))  # noqa: E731
    scan_survey(engine, survey_2x2, tmp_path / "whole.fits", make_source=make)
    real_runs = U.runs
    monkeypatch.setattr(U, "runs", lambda units: U.split_runs(real_runs(units), 1))
    scan_survey(engine, survey_2x2, tmp_path / "cut.fits", make_source=make)
    _same(tmp_path / "whole.fits", tmp_path / "cut.fits")


@pytest.mark.parametrize("where", ["journal", "join"])
def test_a_full_disk_in_a_survey_is_one_line_keeps_the_work_and_resumes(
        survey_2x2, model, tmp_path, monkeypatch, where):
    """A part's tile journal, or the joined catalog, hits a full disk: one line giving
    the resume command; what was scanned is kept; the resume equals a whole scan."""
    import errno
    import os
    import sys

    from click.testing import CliRunner

    import pyengine.output.catalog as catalog_module
    import pyengine.output.journal as journal_module
    from pyengine.cli import main

    manifest = survey_2x2.described().write(tmp_path / "s.ecsv")
    out = tmp_path / "o.fits"
    common = [str(manifest), "--grid", "25", "--model", str(model), "--runner", "torch",
              "--tile-size", "64", "-q"]

    def run(*more):
        return CliRunner().invoke(main, ["scan", *common, *more])

    assert run("--out", str(tmp_path / "whole.fits")).exit_code == 0
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "journal":
        real, calls = journal_module.publish, []

        def publish(pairs):
            pairs = list(pairs)
            target = pairs[0][1]
            if target.name.startswith("tile-") and target.parent.name.startswith("B@"):
                calls.append(target)
                if len(calls) == 3:  # field B's 3rd tile
                    raise full
            real(pairs)

        monkeypatch.setattr(journal_module, "publish", publish)
    else:
        real = catalog_module.write_catalog

        def write_catalog(table, path, *a, **k):
            if path == out:
                raise full
            return real(table, path, *a, **k)

        monkeypatch.setattr(catalog_module, "write_catalog", write_catalog)
    monkeypatch.setattr(sys, "argv", ["pyengine", "scan", *common, "--out", str(out)])
    got = run("--out", str(out))
    assert got.exit_code == 1 and got.output.count("\n") == 1, got.output
    assert got.output.startswith("Error: ") and "No space left on device" in got.output
    assert got.output.rstrip().endswith(f"--out {out} --resume"), got.output
    assert not out.exists()
    kept = U.done_units(parts_folder(out), SurveyGeometry(survey_2x2), [0, 1, 2, 3])
    assert len(kept) == (16 if where == "journal" else 64)  # A done (B: 2 tiles journalled)
    monkeypatch.undo()
    done = run("--out", str(out), "--resume")
    assert done.exit_code == 0, done.output
    _same(tmp_path / "whole.fits", out)
    assert not parts_folder(out).exists()


def test_a_resume_with_another_model_or_tile_size_is_refused(survey_2x2, model, engine_64,
                                                              tmp_path, monkeypatch):
    """Finished parts of one model (or tile plan) are never joined with another's."""
    from pyengine.errors import ResumeError
    from tests.test_survey_scan import _interrupted_at

    out = tmp_path / "r.fits"
    _interrupted_at("B", engine_64, survey_2x2, out, monkeypatch)
    other = Engine(model, runner="torch", device="cpu", batch_size=16, core=64,
                   max_nan_fraction=0.3)
    with pytest.raises(ResumeError, match=r"^--resume: the survey scan started with the "
                                          r"model .*'max_nan_fraction': 0\.5"):
        scan_survey(other, survey_2x2, out, make_source=lambda: GridSource(25), resume=True)
    bigger = Engine(model, runner="torch", device="cpu", batch_size=16, core=128)
    with pytest.raises(ResumeError, match=r"^--resume: the survey scan started with "
                                          r"--tile-size 64, now 128"):
        scan_survey(bigger, survey_2x2, out, make_source=lambda: GridSource(25), resume=True)
    summary = scan_survey(engine_64, survey_2x2, out, make_source=lambda: GridSource(25),
                          resume=True)
    assert summary.fields["A"] == "done earlier"


def test_engine_iter_scan_of_a_survey_streams_each_field(survey_2x2, engine_64):
    from astropy.table import vstack

    whole = engine_64.scan(survey_2x2, GridSource(25))
    pieces = list(engine_64.iter_scan(survey_2x2, GridSource(25)))
    assert [set(np.asarray(p["field"]).astype(str)) for p in pieces] == [{"A"}, {"B"}, {"C"},
                                                                         {"D"}]
    joined = vstack(pieces, metadata_conflicts="silent")  # each field its own SOURCE
    assert joined.colnames == [c for c in whole.colnames if c != "id"]
    for name in joined.colnames:
        np.testing.assert_array_equal(np.asarray(joined[name]), np.asarray(whole[name]),
                                      err_msg=name)


def test_survey_scan_log_json_is_json_lines_to_the_summary(survey_2x2, model, tmp_path):
    import json

    from click.testing import CliRunner

    from pyengine.cli import main

    manifest = survey_2x2.described().write(tmp_path / "s.ecsv")
    got = CliRunner().invoke(main, [
        "scan", str(manifest), "--grid", "50", "--model", str(model), "--runner", "torch",
        "--tile-size", "64", "--log-json", "--out", str(tmp_path / "o.fits")])
    assert got.exit_code == 0, got.output
    events = [json.loads(line) for line in got.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary"
    assert events[-1]["positions"] == len(Table.read(tmp_path / "o.fits"))
    assert sorted(events[-1]["fields"]) == list("ABCD")


def test_detection_skips_only_tiles_that_cannot_hold_a_kept_position(
        survey_2x2, engine_64, tmp_path, monkeypatch):
    """Detection tiles wholly in other fields' sky, or outside the cone, are not read; the
    catalog is the one that reads every tile."""
    from pyengine.sources.detect import DetectSource
    from pyengine.survey.geometry import Cone
    from pyengine.survey.sources import OwnedSource

    geo = SurveyGeometry(survey_2x2)
    ra0, dec0 = np.mean(np.array([c for f in geo.frames for c in f.corners]), axis=0)
    cone = Cone(float(ra0), float(dec0), 0.008)
    real = OwnedSource._surely_empty
    skipped = []

    def counting(self, tile):
        empty = real(self, tile)
        if empty:
            skipped.append((self.index, tile.index))
        return empty

    make = lambda: DetectSource(threshold=3.0)  # noqa: E731
    counts = []
    for area in (None, cone):
        with monkeypatch.context() as patch:
            patch.setattr(OwnedSource, "_surely_empty", lambda self, tile: False)
            scan_survey(engine_64, survey_2x2, tmp_path / "all.fits", make_source=make,
                        cone=area, overwrite=True)
        skipped.clear()
        with monkeypatch.context() as patch:
            patch.setattr(OwnedSource, "_surely_empty", counting)
            scan_survey(engine_64, survey_2x2, tmp_path / "skip.fits", make_source=make,
                        cone=area, overwrite=True)
        counts.append(len(set(skipped)))
        _same(tmp_path / "all.fits", tmp_path / "skip.fits")
    # overlaps 40 px wide: a few 64 px tiles lie wholly in a neighbour's sky; the cone
    # (29" of a 37" x 37" survey) leaves out more
    assert 3 <= counts[0] < counts[1], counts
