"""Surveys whose fields bring their own catalogs (MegaPipe-style SExtractor output): the
manifest's ``catalog`` column, ``survey init`` finding them, survey scans of each field's
own rows (each object once, in its owner, as with one region catalog), refusals naming
the field and the file, and resume over a changed catalog."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.sources.catalog import CatalogSource
from pyengine.survey.geometry import SurveyGeometry
from pyengine.survey.manifest import Survey, SurveyError
from pyengine.survey.scan import parts_folder, scan_survey
from pyengine.survey.sources import FieldCatalogs
from pyengine.synth.writers import write_sextractor_catalog

SIZE, STEP = 200, 160  # the fields of tests.conftest's survey_2x2, and their spacing


@pytest.fixture
def survey(survey_2x2):
    return survey_2x2


@pytest.fixture
def engine(engine_64):  # tiles of 64 px: 16 per field
    return engine_64


@pytest.fixture(scope="module")
def objects(survey_2x2):
    """Sky positions on the survey's fields, at least 2" apart: a jittered grid, the
    point half-way between A's and B's centres (their boundary) and the middle of the
    four fields (a 4-way overlap)."""
    geo = SurveyGeometry(survey_2x2)
    centres = np.array([f.wcs.pixel_to_world_values((SIZE - 1) / 2, (SIZE - 1) / 2)
                        for f in geo.frames], float)
    special = np.array([(centres[0] + centres[1]) / 2, centres.mean(axis=0)])
    a = geo.frames[0].wcs
    rng = np.random.default_rng(11)
    step = 20  # px of A's grid: 3.7"
    gx, gy = np.meshgrid(np.arange(-20, SIZE + STEP + 20, step, dtype=float),
                         np.arange(-20, SIZE + STEP + 20, step, dtype=float))
    gx = gx.ravel() + rng.uniform(-4, 4, gx.size)
    gy = gy.ravel() + rng.uniform(-4, 4, gy.size)
    ra, dec = (np.asarray(v, float) for v in a.pixel_to_world_values(gx, gy))
    far = np.all([np.hypot((ra - r) * np.cos(np.radians(d)), dec - d) * 3600 > 2.0
                  for r, d in special], axis=0)
    ra, dec = np.concatenate([special[:, 0], ra[far]]), np.concatenate([special[:, 1], dec[far]])
    on = geo.owner(ra, dec) >= 0
    return ra[on], dec[on]


def _with_catalogs(survey, folder: Path, ra, dec, *, jitter: float = 0.0, seed: int = 0,
                   unusable=()) -> Survey:
    """``survey`` with a SExtractor FITS_LDAC catalog per field (``<field>.cat`` in
    ``folder``): the objects on its image, in object order, TRUTH_ID the object's 1-based
    number; ``jitter`` (arcsec, per field and object) makes each field's RA/Dec its own
    measurement; the fields ``unusable`` names get a last row with no position (TRUTH_ID
    -1)."""
    geo = SurveyGeometry(survey)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fields = []
    for f, frame in zip(survey.fields, geo.frames, strict=True):
        fra = ra + rng.normal(0, jitter, ra.size) / 3600 / np.cos(np.radians(dec))
        fdec = dec + rng.normal(0, jitter, ra.size) / 3600
        x, y = (np.asarray(v, float) for v in frame.wcs.world_to_pixel_values(fra, fdec))
        on = (x >= -0.5) & (x < SIZE - 0.5) & (y >= -0.5) & (y < SIZE - 0.5)
        ids, rows = np.flatnonzero(on) + 1, [fra[on], fdec[on], x[on], y[on]]
        if f.id in unusable:
            ids, rows = np.append(ids, -1), [np.append(v, np.nan) for v in rows]
        truth = folder / f"{f.id}_truth.fits"
        Table({"id": ids, "ra": rows[0], "dec": rows[1], "x": rows[2], "y": rows[3],
               "class": ["cluster"] * ids.size,
               "i_mag": np.linspace(18, 22, ids.size, dtype=np.float32)}).write(truth,
                                                                                 overwrite=True)
        path = write_sextractor_catalog(folder / f"{f.id}.cat", truth,
                                        fits.getheader(f.images[0]))
        fields.append(replace(f, catalog=str(path)))
    return Survey(tuple(fields), survey.bands)


def _manifest(survey, path: Path) -> Path:
    return survey.described().write(path)


def test_per_field_catalogs_give_each_object_once_as_one_region_catalog_does(
        survey, engine, objects, tmp_path):
    """Each field's own catalog holds every object on its image (an object in an overlap
    is in two, three or four of them); the survey's catalog has each object once, in its
    owner, with the scores and fields of a scan of one region catalog of the same
    objects; rows in field order, then each catalog's order."""
    ra, dec = objects
    manifest = _manifest(_with_catalogs(survey, tmp_path / "cats", ra, dec), tmp_path / "s.ecsv")
    read = Survey.read(manifest)
    assert [Path(f.catalog).name for f in read.fields] == ["A.cat", "B.cat", "C.cat", "D.cat"]
    assert "A/A.cat" not in manifest.read_text() and "cats/A.cat" in manifest.read_text()
    per = scan_survey(engine, read, tmp_path / "per.fits",
                      make_source=FieldCatalogs(manifest=manifest))
    Table({"TRUTH_ID": np.arange(1, ra.size + 1), "RA": ra, "DEC": dec}).write(
        tmp_path / "region.fits")
    scan_survey(engine, read, tmp_path / "region_out.fits",
                make_source=lambda: CatalogSource(tmp_path / "region.fits"))
    a = Table.read(tmp_path / "per.fits", mask_invalid=False)
    b = Table.read(tmp_path / "region_out.fits", mask_invalid=False)
    listed = sum(len(Table.read(f.catalog, hdu=2)) for f in read.fields)
    assert listed > ra.size + 20  # the overlaps hold many objects twice or more
    ids = np.asarray(a["TRUTH_ID"])
    assert np.unique(ids).size == ids.size == ra.size == len(b) == per.positions
    assert {1, 2} <= set(ids.tolist())  # the A/B boundary and the 4-way overlap, once each
    by_id = {int(i): k for k, i in enumerate(b["TRUTH_ID"])}
    rows = [by_id[int(i)] for i in ids]
    np.testing.assert_array_equal(np.asarray(a["field"]).astype(str),
                                  np.asarray(b["field"]).astype(str)[rows])
    np.testing.assert_allclose(np.asarray(a["score"]), np.asarray(b["score"])[rows], atol=1e-6)
    np.testing.assert_allclose(np.asarray(a["x"]), np.asarray(b["x"])[rows], atol=1e-6)
    np.testing.assert_array_equal(a["id"], np.arange(1, len(a) + 1))
    field = np.array(["ABCD".index(f) for f in np.asarray(a["field"]).astype(str)])
    assert np.all(np.diff(field) >= 0)  # field order ...
    for k in range(4):  # ... then each catalog's row order
        assert np.all(np.diff(np.asarray(a["NUMBER"])[field == k]) > 0)
    assert per.merged_duplicates > 0  # objects near boundaries came from two catalogs
    assert ("RA/Dec columns ALPHA_J2000, DELTA_J2000; X_IMAGE, Y_IMAGE not used"
            in a.meta["SOURCE"])
    assert not parts_folder(tmp_path / "per.fits").exists()


def test_measured_positions_keep_each_object_once_near_boundaries(survey, engine, objects,
                                                                   tmp_path):
    """Each field's catalog measures its own RA/Dec (0.15" scatter): an object on a
    boundary may look owned by A in B's catalog and by B in A's; it is still there once."""
    ra, dec = objects
    cats = _with_catalogs(survey, tmp_path / "cats", ra, dec, jitter=0.15, seed=4)
    manifest = _manifest(cats, tmp_path / "s.ecsv")
    summary = scan_survey(engine, Survey.read(manifest), tmp_path / "m.fits",
                          make_source=FieldCatalogs(manifest=manifest))
    ids = np.asarray(Table.read(tmp_path / "m.fits")["TRUTH_ID"])
    listed = set().union(*(Table.read(f.catalog, hdu=2)["TRUTH_ID"].tolist()
                           for f in cats.fields))  # those measured off every image are not
    assert len(listed) > ra.size - 10
    assert sorted(ids.tolist()) == sorted(listed)
    assert summary.merged_duplicates > 0


def test_shards_of_per_field_catalogs_merge_into_the_single_process_catalog(
        survey, engine, objects, tmp_path):
    """3 shards of the 64 units (field, tile): B and C are cut between two shards.  The
    merged catalog is the single-process one row for row: field order, then each
    catalog's rows; B's row with no position is there once, flagged, in no field."""
    from pyengine.flags import OFF_IMAGE_FLAGS
    from pyengine.survey.merge import merge_shards

    ra, dec = objects
    manifest = _manifest(_with_catalogs(survey, tmp_path / "c", ra[::3], dec[::3], jitter=0.1,
                                        unusable=("B",)), tmp_path / "s.ecsv")
    read, make = Survey.read(manifest), FieldCatalogs(manifest=manifest)
    summary = scan_survey(engine, read, tmp_path / "whole.fits", make_source=make)
    parts = [tmp_path / f"p{i}.fits" for i in range(3)]
    for i, part in enumerate(parts):
        scan_survey(engine, read, part, make_source=make, shard=(i, 3))
    assert Table.read(parts[0]).meta["SRCKIND"] == "field-catalogs"
    merge_shards(parts, tmp_path / "merged.fits")
    a, b = (Table.read(tmp_path / n, mask_invalid=False) for n in ("whole.fits", "merged.fits"))
    assert a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    nowhere = np.flatnonzero(np.asarray(a["TRUTH_ID"]) == -1)
    assert nowhere.size == 1 and a["field"][nowhere[0]] == "" and summary.off_image == 1
    assert a["flags"][nowhere[0]] == OFF_IMAGE_FLAGS and np.isnan(a["score"][nowhere[0]])
    field = np.array(["ABCD".index(f) for f in np.asarray(a["field"]).astype(str) if f])
    assert np.all(np.diff(field) >= 0)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(res, *parts):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def test_pyengine_scan_of_a_manifest_with_catalogs_and_its_refusals(survey, model, objects,
                                                                   tmp_path):
    ra, dec = objects
    cats = _with_catalogs(survey, tmp_path / "cats", ra[::4], dec[::4])
    manifest = _manifest(cats, tmp_path / "s.ecsv")
    common = ["--model", model, "--runner", "torch", "--tile-size", "64"]
    done = _cli("scan", manifest, *common, "--out", tmp_path / "o.fits")
    assert done.exit_code == 0, done.output
    assert done.stderr.splitlines()[0] == ("sources: each field's own catalog (manifest "
                                           "column catalog)")
    assert "catalog A.cat: " in done.stderr and "X_IMAGE, Y_IMAGE not used" in done.stderr
    assert done.stdout.startswith("survey: 4 field(s) scanned, ")
    shown = _cli("survey", "show", manifest)
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^B +200 +200 .* cats/B\.cat$", shown.output, re.M), shown.output
    # one region catalog still means one catalog for the whole region
    Table({"RA": ra[:5], "DEC": dec[:5]}).write(tmp_path / "region.fits")
    region = _cli("scan", manifest, *common, "-q", "--catalog", tmp_path / "region.fits",
                  "--out", tmp_path / "r.fits")
    assert region.exit_code == 0, region.output
    assert len(Table.read(tmp_path / "r.fits")) == 5
    refused = _cli("scan", manifest, *common, "--x-col", "X_IMAGE", "--y-col", "Y_IMAGE",
                   "--out", tmp_path / "x.fits")
    _one_error_line(refused, "--x-col/--y-col do not apply to a survey's per-field catalogs")
    fits_cat = shutil.copy(cats.fields[1].catalog, tmp_path / "B_cat.fits")
    other = _manifest(Survey(tuple(replace(f, catalog=str(fits_cat)) if f.id == "B" else f
                                   for f in cats.fields), cats.bands), tmp_path / "o.ecsv")
    refused = _cli("scan", other, *common, "--out", fits_cat, "--overwrite")
    _one_error_line(refused, f"--out {fits_cat} is field B's catalog (an input)")
    # field B's catalog missing: survey show and scan name the field and the file
    b_cat = Path(cats.fields[1].catalog)
    b_cat.rename(b_cat.with_suffix(".moved"))
    for res in (_cli("scan", manifest, *common, "--out", tmp_path / "m.fits"),
                _cli("survey", "show", manifest)):
        _one_error_line(res, f"{manifest}: field 'B': {b_cat}: no such catalog file")
    # unreadable, or pixels only: one line naming the field, the file and what is accepted
    b_cat.write_text("not a catalog\n")
    _one_error_line(_cli("scan", manifest, *common, "--out", tmp_path / "m.fits"),
                    f"{manifest}: field 'B': {b_cat}: unknown catalog format; accepted: FITS")
    Table({"X_IMAGE": [10.0], "Y_IMAGE": [12.0]}).write(b_cat, format="fits", overwrite=True)
    _one_error_line(_cli("scan", manifest, *common, "--out", tmp_path / "m.fits"),
                    f"{manifest}: field 'B': {b_cat}: a survey's catalogs need RA/Dec columns")
    # a field with no catalog, in a manifest with a catalog column
    bare = Survey(tuple(replace(f, catalog={"B": str(fits_cat), "C": None}.get(f.id, f.catalog))
                        for f in cats.fields), cats.bands)
    bare_manifest = _manifest(bare, tmp_path / "bare.ecsv")
    with pytest.raises(SurveyError, match=r"field 'C' has no catalog \(its catalog column is "
                                          r"empty\)"):
        scan_survey(None, Survey.read(bare_manifest), tmp_path / "n.fits",
                    make_source=FieldCatalogs(manifest=bare_manifest))


def _sextractor_ascii(path: Path, ra, dec) -> Path:
    lines = ["#   1 NUMBER                 Running object number",
             "#   2 ALPHA_J2000            Right ascension of barycenter (J2000)   [deg]",
             "#   3 DELTA_J2000            Declination of barycenter (J2000)       [deg]"]
    lines += [f"{k + 1:10d} {r:11.7f} {d:11.7f}" for k, (r, d) in enumerate(zip(ra, dec,
                                                                                strict=True))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_survey_init_fills_the_catalog_column_from_catalogs_named_after_the_pointing(
        survey, objects, tmp_path):
    """Folders A..D (ids from the folder names): A/A.cat FITS_LDAC, B/B.cat SExtractor
    ASCII, C/C.cat not a catalog (not taken), D/D.cat and D/D.ldac (two: none taken, a
    note says so); truth.fits and A_truth.fits beside them are tables of other names.
    MegaPipe names in one folder: P1.G.fits, P1.I.fits and P1.cat."""
    ra, dec = objects
    root = tmp_path / "stacks"
    for f in survey.fields:
        shutil.copytree(Path(f.images[0]).parent, root / f.id)
    _with_catalogs(survey, root / "A", ra, dec)  # A.cat .. D.cat (and *_truth.fits) in A/
    for f in "BCD":  # only A's stays there: the others are made again below
        (root / "A" / f"{f}.cat").unlink()
    _sextractor_ascii(root / "B" / "B.cat", ra[:3], dec[:3])
    (root / "C" / "C.cat").write_text("NUMBER RA DEC\n1 2 3\n")
    shutil.copy(root / "A" / "A.cat", root / "D" / "D.cat")
    shutil.copy(root / "A" / "A.cat", root / "D" / "D.ldac")
    out = tmp_path / "m.ecsv"
    res = _cli("survey", "init", *(root / f for f in "ABCD"), "-o", out)
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().endswith(f"4 field(s), bands g, i, 0.2 Mpx per band, 2 with their "
                                       f"own catalog -> {out}")
    assert res.stderr.strip() == ("note: field D: 2 catalogs beside its images (D.cat, D.ldac); "
                                  "none taken: fill its catalog column by hand")
    table = Table.read(out, format="ascii.ecsv")
    assert list(table["catalog"].filled("")) == ["stacks/A/A.cat", "stacks/B/B.cat", "", ""]
    got = Survey.read(out)
    assert got.fields[0].catalog == str(root / "A" / "A.cat")
    flat = tmp_path / "flat"
    flat.mkdir()
    for band in ("g", "i"):
        shutil.copy(root / "A" / f"{band}.fits", flat / f"P1.{band.upper()}.fits")
    _sextractor_ascii(flat / "P1.cat", ra[:3], dec[:3])
    res = _cli("survey", "init", flat, "-o", tmp_path / "p.ecsv")
    assert res.exit_code == 0, res.output
    one = Survey.read(tmp_path / "p.ecsv").fields[0]
    assert (one.id, one.catalog) == ("P1", str(flat / "P1.cat"))


def test_a_resume_refuses_a_changed_per_field_catalog_naming_the_field(
        survey, engine, objects, tmp_path, monkeypatch):
    import pyengine.scan.run as run_module
    from pyengine.errors import ResumeError

    ra, dec = objects
    cats = _with_catalogs(survey, tmp_path / "cats", ra[::4], dec[::4])
    manifest = _manifest(cats, tmp_path / "s.ecsv")
    read, make = Survey.read(manifest), FieldCatalogs(manifest=manifest)
    out = tmp_path / "r.fits"
    real = run_module.run_scan

    def failing(engine, mosaic, source, part, **kw):
        if part.name.startswith("C@"):
            raise RuntimeError("killed")
        return real(engine, mosaic, source, part, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "run_scan", failing)
        with pytest.raises(RuntimeError, match="killed"):
            scan_survey(engine, read, out, make_source=make)
    assert list(parts_folder(out).glob("A@*[0-9].fits"))
    # field A is finished; its catalog changes (same size, other bytes: a magnitude)
    a_cat = Path(cats.fields[0].catalog)
    with fits.open(a_cat, mode="update") as hdul:
        hdul["LDAC_OBJECTS"].data["MAG_AUTO"][0] += 0.5
    with pytest.raises(ResumeError, match=rf"^--resume: field 'A': its catalog {re.escape(str(a_cat))}"
                                          r" changed since the scan started; scan again "
                                          r"without --resume$"):
        scan_survey(engine, read, out, make_source=make, resume=True)
    summary = scan_survey(engine, read, out, make_source=make)
    assert "done earlier" not in summary.fields.values()
