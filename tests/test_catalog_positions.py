"""Unusable catalog positions and SExtractor FITS_LDAC catalogs, from the command line.

A row whose RA/Dec or x/y is NaN, infinite, null (ECSV/Parquet) or TNULL (FITS), or whose
Dec is outside [-90, 90] or RA outside [-360, 360], stays in the output catalog flagged
OFF_IMAGE | BLANK with score NaN, and the scan says how many there were; only a catalog
with no usable row is refused, in one line.  Messages name rows 1-based.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.flags import OFF_IMAGE_FLAGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


def _scan(field, model, catalog, out, cache, *extra):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    args = ["scan", *(str(p) for p in field["paths"]), "--catalog", str(catalog), "--model",
            str(model), "--out", str(out), "--tile-size", "64", "--batch-size", "16", "-q",
            *extra]
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _summary(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.splitlines()[-1])


def _error_line(res, *parts) -> str:
    """The one 'Error: ...' line of a refused scan, checked to name each of ``parts``."""
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"(?i)error: ", lines[0]), res.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def _xy(field, n):
    """The first ``n`` injected positions well inside the image and away from its blank
    block: scored, never flagged, whatever the cutout."""
    x, y = field["x"], field["y"]
    inside = ~((y > 180) & (x < 90)) & (x > 20) & (x < 280) & (y > 20) & (y < 240)
    take = np.flatnonzero(inside)[:n]
    return x[take].copy(), y[take].copy()


def _sky(field, n=12):
    ra, dec = field["wcs"].pixel_to_world_values(*_xy(field, n))
    return np.asarray(ra, float), np.asarray(dec, float)


def _check_flagged(table, bad, n):
    """Rows ``bad`` (0-based) flagged off the image and not scored; the rest of the ``n``
    rows on the image and scored; input columns passed through in input order."""
    assert len(table) == n
    flags, score = np.asarray(table["flags"]), np.asarray(table["score"])
    good = np.setdiff1d(np.arange(n), bad)
    np.testing.assert_array_equal(flags[bad], OFF_IMAGE_FLAGS)
    assert np.isnan(score[bad]).all() and not np.asarray(table["is_candidate"])[bad].any()
    np.testing.assert_array_equal(np.asarray(table["tile"])[bad], -1)
    assert np.isnan(np.asarray(table["x"])[bad]).all()
    assert np.isfinite(score[good]).all() and (flags[good] & OFF_IMAGE_FLAGS == 0).all()
    np.testing.assert_array_equal(table["name"], [f"s{i}" for i in range(n)])


def test_nan_ra_nan_dec_and_out_of_range_rows_are_flagged_and_counted(field, model, cache,
                                                                      tmp_path):
    ra, dec = _sky(field)
    bad = [1, 3, 4, 6, 8, 9]
    dec[1] = np.nan        # refused the whole catalog before
    ra[3] = np.nan
    ra[4] = np.inf
    dec[6] = 95.0          # refused the whole catalog before
    dec[8] = -90.5
    ra[9] = 400.0
    ra[10] -= 360.0        # RA -10 is RA 350: wrapped, a usable position
    path = tmp_path / "cat.fits"
    Table({"name": [f"s{i}" for i in range(ra.size)], "RA": ra, "DEC": dec}).write(path)
    res = _scan(field, model, path, tmp_path / "c.fits", cache)
    assert res.exit_code == 0, res.output
    assert ", 6 of them with unusable positions, " in res.stdout
    table = Table.read(tmp_path / "c.fits")
    _check_flagged(table, bad, ra.size)
    np.testing.assert_allclose(table["x"][10], _xy(field, 12)[0][10], atol=1e-6)
    assert "(6 of them with unusable positions)" in table.meta["SOURCE"]
    res = _scan(field, model, path, tmp_path / "c.ecsv", cache, "--log-json")
    summary = _summary(res)
    assert summary["bad_positions"] == 6 and summary["off_image"] == 6


@pytest.mark.parametrize("suffix", [".ecsv", ".parquet"])
def test_null_positions_are_flagged_and_counted(field, model, cache, tmp_path, suffix):
    ra, dec = _sky(field)
    bad = [0, 5, 7]
    table = Table({"name": [f"s{i}" for i in range(ra.size)],
                   "ra": MaskedColumn(ra, mask=np.isin(np.arange(ra.size), [0, 7])),
                   "dec": MaskedColumn(dec, mask=np.isin(np.arange(ra.size), [5]))})
    path = tmp_path / f"nulls{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: pa.array(np.ma.asarray(table[k]).tolist())
                                 for k in table.colnames}), path)
    else:
        table.write(path)
    res = _scan(field, model, path, tmp_path / "c.fits", cache, "--log-json")
    summary = _summary(res)
    assert summary["bad_positions"] == 3
    _check_flagged(Table.read(tmp_path / "c.fits"), bad, ra.size)


@pytest.mark.parametrize("kind", ["nan", "tnull"])
def test_pixel_positions_nan_or_tnull_are_flagged_and_counted(field, model, cache, tmp_path,
                                                              kind):
    n = 10
    x, y = _xy(field, n)
    bad = [2, 6]
    names = np.array([f"s{i}" for i in range(n)])
    if kind == "nan":
        x[2], y[6] = np.nan, -np.inf
        path = tmp_path / "pix.ecsv"
        Table({"name": names, "x": x, "y": y}).write(path)
    else:  # integer pixel columns with a FITS null value
        xi, yi = np.round(x).astype(np.int32), np.round(y).astype(np.int32)
        xi[2], yi[6] = -99, -99
        path = tmp_path / "pix.fits"
        fits.BinTableHDU.from_columns([
            fits.Column("name", "4A", array=names),
            fits.Column("x", "J", null=-99, array=xi),
            fits.Column("y", "J", null=-99, array=yi)]).writeto(path)
    res = _scan(field, model, path, tmp_path / "c.fits", cache, "--log-json")
    assert _summary(res)["bad_positions"] == 2
    _check_flagged(Table.read(tmp_path / "c.fits"), bad, n)


@pytest.mark.parametrize("form", ["sky", "pixel"])
def test_no_usable_position_is_refused_in_one_line(field, model, cache, tmp_path, form):
    n = 5
    nan = np.full(n, np.nan)
    cols = {"RA": nan, "DEC": np.full(n, 41.0)} if form == "sky" else {"x": nan, "y": nan}
    path = tmp_path / "allbad.ecsv"
    Table({"name": [f"s{i}" for i in range(n)], **cols}).write(path)
    res = _scan(field, model, path, tmp_path / "c.fits", cache)
    columns = "RA, DEC" if form == "sky" else "x, y"
    _error_line(res, "allbad.ecsv", f"no usable position in columns {columns}",
                "all 5 rows have non-finite or out-of-range positions")
    assert not (tmp_path / "c.fits").exists()


@pytest.mark.parametrize(("column", "extra"), [("ra", ()), ("mag", ("--mag-limit", "21"))])
def test_errors_name_rows_one_based(field, model, cache, tmp_path, column, extra):
    ra, dec = _sky(field, 4)
    values = {"ra": [f"{v:.8f}" for v in ra], "dec": [f"{v:.8f}" for v in dec],
              "mag": ["20.1", "19.5", "20.0", "20.3"]}
    values[column][2] = "n/a"   # the third data row: line 4 of the file
    path = tmp_path / "typo.csv"
    path.write_text("ra,dec,mag\n" + "".join(f"{a},{d},{m}\n" for a, d, m in
                                             zip(*values.values(), strict=True)))
    res = _scan(field, model, path, tmp_path / "c.fits", cache, *extra)
    _error_line(res, "typo.csv", f"column {column!r} is not numeric",
                "data row 3 (1-based) holds 'n/a'")


# -- SExtractor FITS_LDAC ----------------------------------------------------------------


def write_ldac(path: Path, field: dict, n: int = 20) -> Path:
    """A FITS_LDAC catalog laid out as SExtractor writes it (``-CATALOG_TYPE FITS_LDAC``):
    an empty primary HDU; LDAC_IMHEAD, one row holding the image header as 80-character
    cards in a ``Field Header Card`` column (TDIM (80, ncards)); LDAC_OBJECTS with
    SExtractor's columns, TUNITs and TDISPs.  X_IMAGE/Y_IMAGE are 1-based FITS pixels."""
    header = fits.getheader(field["paths"][0])
    cards = [card.image for card in header.cards] + ["END".ljust(80)]
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column("Field Header Card", f"{80 * len(cards)}A", dim=f"(80, {len(cards)})",
                     array=np.array([cards], dtype="S80"))], name="LDAC_IMHEAD")
    x, y = _xy(field, n)
    ra, dec = field["wcs"].pixel_to_world_values(x, y)
    rng = np.random.default_rng(7)
    mag = rng.uniform(18, 24, n)

    def col(name, fmt, array, unit=None, disp=None):
        return fits.Column(name, fmt, unit=unit, disp=disp, array=array)

    objects = fits.BinTableHDU.from_columns([
        col("NUMBER", "J", np.arange(1, n + 1), disp="I10"),
        col("FLUX_AUTO", "E", 10 ** (-0.4 * (mag - 30)), "count", "G12.7"),
        col("FLUXERR_AUTO", "E", np.full(n, 25.0), "count", "G12.7"),
        col("MAG_AUTO", "E", mag, "mag", "F8.4"),
        col("MAGERR_AUTO", "E", np.full(n, 0.02), "mag", "F8.4"),
        col("BACKGROUND", "E", np.full(n, 1000.0), "count", "G12.7"),
        col("MU_MAX", "E", mag - 2.0, "mag * arcsec**(-2)", "F8.4"),
        col("ISOAREA_IMAGE", "J", np.full(n, 30), "pixel**2", "I9"),
        col("X_IMAGE", "E", x + 1.0, "pixel", "F11.4"),
        col("Y_IMAGE", "E", y + 1.0, "pixel", "F11.4"),
        col("X_WORLD", "D", ra, "deg", "E18.10"),
        col("Y_WORLD", "D", dec, "deg", "E18.10"),
        col("ALPHA_J2000", "D", ra, "deg", "F11.7"),
        col("DELTA_J2000", "D", dec, "deg", "F11.7"),
        col("FWHM_IMAGE", "E", np.full(n, 2.5), "pixel", "F8.2"),
        col("FLUX_RADIUS", "E", np.full(n, 1.4), "pixel", "F10.3"),
        col("CLASS_STAR", "E", rng.uniform(0, 1, n), disp="F6.3"),
        col("FLAGS", "I", np.zeros(n, np.int16), disp="I3"),
    ], name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path)
    return path


def test_ldac_catalog_is_read_from_ldac_objects_without_warnings(field, model, cache,
                                                                 tmp_path):
    """`pyengine scan g.fits i.fits --catalog cat.ldac --out c.fits`: LDAC_OBJECTS found by
    EXTNAME, ALPHA_J2000/DELTA_J2000 used (X_IMAGE is on SExtractor's image), nothing on
    stderr but the progress, in a fresh interpreter as a user runs it."""
    catalog = write_ldac(tmp_path / "cat.ldac", field)
    out = tmp_path / "c.fits"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    args = ["scan", *(str(p) for p in field["paths"]), "--catalog", str(catalog), "--model",
            str(model), "--out", str(out), "--tile-size", "64", "-q"]
    res = subprocess.run([sys.executable, "-c", f"from pyengine.cli import main; main({args!r})"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr.lower(), res.stderr
    assert res.stderr.strip() == "", res.stderr
    table = Table.read(out)
    assert len(table) == 20
    assert "RA/Dec columns ALPHA_J2000, DELTA_J2000" in table.meta["SOURCE"]
    np.testing.assert_allclose(table["x"], np.asarray(table["X_IMAGE"]) - 1.0, atol=1e-3)
    np.testing.assert_array_equal(table["NUMBER"], np.arange(1, 21))
    assert np.isfinite(np.asarray(table["score"])).all()


@pytest.mark.parametrize("name", ["cat.ldac.fits", "test.cat"])
def test_ldac_objects_found_by_extname_and_ext_kept(field, tmp_path, name):
    """No [2] needed, whatever the name (SExtractor's default is test.cat); [2] and
    [LDAC_OBJECTS] still work; [1] says where the sources are; no warning (the test
    run turns warnings into errors)."""
    from pyengine.errors import CatalogError
    from pyengine.io.catalog import catalog_positions, read_catalog

    path = write_ldac(tmp_path / name, field, n=6)
    table = read_catalog(path)
    assert table.colnames[:2] == ["NUMBER", "FLUX_AUTO"] and len(table) == 6
    for ext in ("2", "LDAC_OBJECTS", "ldac_objects"):
        assert read_catalog(f"{path}[{ext}]").colnames == table.colnames
    with pytest.raises(CatalogError, match=r"LDAC_IMHEAD \(the image header\); the sources "
                                           r"are in LDAC_OBJECTS"):
        read_catalog(f"{path}[1]")
    pos = catalog_positions(table, field["wcs"], where=name)
    assert pos.form == "sky" and pos.columns == ("ALPHA_J2000", "DELTA_J2000")
    x, y = _xy(field, 6)
    np.testing.assert_allclose(pos.x, x, atol=1e-6)
    pix = catalog_positions(table, field["wcs"], where=name, x_col="X_IMAGE", y_col="Y_IMAGE")
    np.testing.assert_allclose(pix.x, x, atol=1e-3)   # 1-based FITS pixels, shifted
    np.testing.assert_allclose(pix.y, y, atol=1e-3)


def test_ldac_with_several_object_tables_is_refused(field, tmp_path):
    from pyengine.errors import CatalogError
    from pyengine.io.catalog import read_catalog

    one = write_ldac(tmp_path / "one.ldac", field, n=3)
    with fits.open(one) as hdul:
        fits.HDUList([h.copy() for h in (*hdul, hdul[1], hdul[2])]).writeto(tmp_path / "two.ldac")
    with pytest.raises(CatalogError, match=r"two\.ldac: a FITS_LDAC catalog with 2 LDAC_OBJECTS "
                                           r"HDUs \(2, 4, one per image extension\); choose one "
                                           r"as two\.ldac\[2\]"):
        read_catalog(tmp_path / "two.ldac")
    assert len(read_catalog(f"{tmp_path / 'two.ldac'}[4]")) == 3


def test_a_sextractor_cat_with_pixels_and_sky_is_scanned_from_its_sky_columns(field, model,
                                                                              cache, tmp_path):
    """MegaPipe-style SExtractor output: FITS_LDAC in a ``.cat`` with X_IMAGE, Y_IMAGE
    (1-based) and ALPHA_J2000, DELTA_J2000.  Accepted (not refused for having both), its
    RA/Dec used and the start line and SOURCE key say so; the positions are the injected
    ones.  With --x-col/--y-col the pixels are used, shifted from 1-based to the same
    positions, and the scores agree."""
    catalog = write_ldac(tmp_path / "sources.cat", field)
    truth_x, truth_y = _xy(field, 20)
    res = _scan(field, model, catalog, tmp_path / "sky.fits", cache)
    assert res.exit_code == 0, res.output
    said = ("catalog sources.cat: 20 positions (RA/Dec columns ALPHA_J2000, DELTA_J2000; "
            "X_IMAGE, Y_IMAGE not used)")
    sky = Table.read(tmp_path / "sky.fits")
    assert sky.meta["SOURCE"].startswith(said)
    np.testing.assert_allclose(sky["x"], truth_x, atol=1e-6)
    np.testing.assert_allclose(sky["y"], truth_y, atol=1e-6)
    args = ["scan", *(str(p) for p in field["paths"]), "--catalog", str(catalog), "--model",
            str(model), "--out", str(tmp_path / "start.fits"), "--tile-size", "64"]
    loud = CliRunner().invoke(main, args, env={**os.environ, "XDG_CACHE_HOME": str(cache)},
                              catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    assert said in loud.stderr.splitlines()[0]
    res = _scan(field, model, catalog, tmp_path / "pix.fits", cache, "--x-col", "X_IMAGE",
                "--y-col", "Y_IMAGE")
    assert res.exit_code == 0, res.output
    pix = Table.read(tmp_path / "pix.fits")
    assert pix.meta["SOURCE"].startswith("catalog sources.cat: 20 positions (pixel columns "
                                         "X_IMAGE, Y_IMAGE (FITS 1-based))")
    np.testing.assert_allclose(pix["x"], truth_x, atol=1e-4)  # float32 X_IMAGE - 1
    np.testing.assert_allclose(pix["y"], truth_y, atol=1e-4)
    np.testing.assert_array_equal(pix["X_IMAGE"], sky["X_IMAGE"])
    # the same cutouts where both ways give the same centre pixel (a few injected
    # positions lie exactly on half pixels, where the last bits choose)
    same = ((np.floor(pix["x"] + 0.5) == np.floor(sky["x"] + 0.5))
            & (np.floor(pix["y"] + 0.5) == np.floor(sky["y"] + 0.5)))
    assert same.sum() >= 16
    np.testing.assert_allclose(pix["score"][same], sky["score"][same], atol=1e-5)
