"""Input catalogs: every format, both position forms, refusals by message."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from pyengine.errors import CatalogError
from pyengine.io.catalog import catalog_positions, read_catalog
from tests.makedata import make_wcs

WCS_ = make_wcs((400, 500))


def _sky_table(n=20, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 499, n), rng.uniform(0, 399, n)
    ra, dec = WCS_.pixel_to_world_values(x, y)
    return Table({"RA": ra, "Dec": dec, "mag": rng.uniform(16, 24, n), "name": [f"s{i}" for i in
                                                                            range(n)]}), x, y


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".csv", ".parquet"])
def test_every_format_gives_the_wcs_positions(tmp_path, suffix):
    table, x, y = _sky_table()
    path = tmp_path / f"cat{suffix}"
    table.write(path)
    got = read_catalog(path)
    assert got.colnames == ["RA", "Dec", "mag", "name"]
    pos = catalog_positions(got, WCS_, where=str(path))
    assert pos.form == "sky"
    assert pos.columns == ("RA", "Dec")
    np.testing.assert_allclose(pos.x, x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pos.y, y, rtol=0, atol=1e-6)


def test_pixel_columns_zero_based_and_sextractor_one_based():
    table = Table({"x": [0.0, 10.5], "y": [3.0, 4.0]})
    pos = catalog_positions(table, WCS_, where="c")
    np.testing.assert_array_equal(pos.x, [0.0, 10.5])
    sex = Table({"X_IMAGE": [1.0, 11.5], "Y_IMAGE": [4.0, 5.0]})
    pos = catalog_positions(sex, WCS_, where="c")
    np.testing.assert_array_equal(pos.x, [0.0, 10.5])
    np.testing.assert_array_equal(pos.y, [3.0, 4.0])
    assert pos.form == "pixel"


def test_named_columns_and_fits_extension(tmp_path):
    table, x, _ = _sky_table()
    table.rename_columns(["RA", "Dec"], ["alpha", "delta"])
    table.write(tmp_path / "c.fits")
    with pytest.raises(CatalogError, match="no usable position columns"):
        catalog_positions(read_catalog(f"{tmp_path}/c.fits[1]"), WCS_, where="c.fits")
    pos = catalog_positions(read_catalog(tmp_path / "c.fits"), WCS_, where="c.fits",
                            ra_col="ALPHA", dec_col="delta")
    np.testing.assert_allclose(pos.x, x, atol=1e-6)
    with pytest.raises(CatalogError, match="no column 'ra_x' for RA"):
        catalog_positions(table, WCS_, where="c.fits", ra_col="ra_x", dec_col="delta")


def test_both_forms_found_use_the_sky_naming_both_is_refused():
    """Both forms found, none named: RA/Dec where the image has a celestial WCS (the
    catalog's pixels may be another image's), the pixels without one; the columns not
    used are named.  Naming both forms is refused; naming one chooses it."""
    table, x, _ = _sky_table()
    table["x"] = 1.0
    table["y"] = 2.0
    pos = catalog_positions(table, WCS_, where="c")
    assert (pos.form, pos.columns, pos.unused) == ("sky", ("RA", "Dec"), ("x", "y"))
    np.testing.assert_allclose(pos.x, x, atol=1e-6)
    assert pos.describe() == "RA/Dec columns RA, Dec; x, y not used"
    pix = catalog_positions(table, None, where="c")
    assert (pix.form, pix.unused) == ("pixel", ("RA", "Dec"))
    np.testing.assert_array_equal(pix.x, 1.0)
    with pytest.raises(CatalogError, match="not both"):
        catalog_positions(table, WCS_, where="c", ra_col="RA", x_col="x")
    pos = catalog_positions(table, WCS_, where="c", x_col="x", y_col="y")
    assert pos.columns == ("x", "y") and pos.unused == ()


def test_bad_values_and_files(tmp_path):
    with pytest.raises(CatalogError, match=r"column 'ra' is not numeric \(<U8; data row 1 "
                                           r"\(1-based\) holds '00:42:44'\); numbers in degrees"):
        catalog_positions(Table({"ra": ["00:42:44"], "dec": ["+41:16:09"]}), WCS_, where="c")
    Table({"ra": np.zeros(0), "dec": np.zeros(0)}).write(tmp_path / "empty.ecsv")
    with pytest.raises(CatalogError, match="the catalog is empty"):
        read_catalog(tmp_path / "empty.ecsv")
    (tmp_path / "c.txt").write_text("ra dec\n1 2\n")
    with pytest.raises(CatalogError, match="unknown catalog format"):
        read_catalog(tmp_path / "c.txt")
    (tmp_path / "bad.fits").write_text("not fits at all")
    with pytest.raises(CatalogError, match=r"bad\.fits: cannot read it as fits"):
        read_catalog(tmp_path / "bad.fits")
    with pytest.raises(CatalogError, match="no such catalog file"):
        read_catalog(tmp_path / "none.csv")


def test_masked_values_become_nan(tmp_path):
    (tmp_path / "m.csv").write_text("ra,dec\n10.68,41.27\n,41.2\n")
    pos = catalog_positions(read_catalog(tmp_path / "m.csv"), WCS_, where="m.csv")
    assert np.isfinite(pos.x[0])
    assert np.isnan(pos.x[1])


@pytest.mark.parametrize("name", ["sources.cat", "field.ldac", "sources", "looks.csv"])
def test_fits_tables_are_recognised_by_content_whatever_the_name(tmp_path, name):
    table, _, _ = _sky_table(n=5)
    table.write(tmp_path / "t.fits")
    (tmp_path / "t.fits").rename(tmp_path / name)
    got = read_catalog(tmp_path / name)
    assert got.colnames == table.colnames and len(got) == 5
    from pyengine.io.catalog import read_catalog_head

    assert len(read_catalog_head(tmp_path / name)) == 1


SEXTRACTOR_ASCII = """\
#   1 NUMBER                 Running object number
#   2 X_IMAGE                Object position along x                                    [pixel]
#   3 Y_IMAGE                Object position along y                                    [pixel]
#   4 ALPHA_J2000            Right ascension of barycenter (J2000)                      [deg]
#   5 DELTA_J2000            Declination of barycenter (J2000)                          [deg]
#   6 MAG_APER               Fixed aperture magnitude vector                            [mag]
#   8 MU_MAX                 Peak surface brightness above background      [mag * arcsec**(-2)]
#   9 XPEAK_IMAGE            x-coordinate of the brightest pixel                        [pixel]
#  10 YPEAK_IMAGE            y-coordinate of the brightest pixel                        [pixel]
"""


def test_sextractor_ascii_catalogs_are_recognised_by_their_header(tmp_path):
    """SExtractor's ASCII_HEAD output, in a .cat (or any name): its columns (a vector
    MAG_APER as MAG_APER, MAG_APER_1), RA/Dec used, X_IMAGE and XPEAK_IMAGE 1-based."""
    from pyengine.io.catalog import read_catalog_head

    _, x, y = _sky_table(n=3)
    ra, dec = WCS_.pixel_to_world_values(x, y)
    rows = "".join(f"{k + 1:7d} {x[k] + 1:10.4f} {y[k] + 1:10.4f} {ra[k]:12.7f} {dec[k]:12.7f} "
                   f"20.1 20.3 19.0 {round(x[k]) + 1} {round(y[k]) + 1}\n" for k in range(3))
    for name in ("sources.cat", "sextractor_output"):
        (tmp_path / name).write_text(SEXTRACTOR_ASCII + rows)
        table = read_catalog(tmp_path / name)
        assert table.colnames == ["NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000",
                                  "MAG_APER", "MAG_APER_1", "MU_MAX", "XPEAK_IMAGE",
                                  "YPEAK_IMAGE"]
        assert len(table) == 3 and len(read_catalog_head(tmp_path / name)) == 1
    pos = catalog_positions(table, WCS_, where="c")
    assert pos.describe() == "RA/Dec columns ALPHA_J2000, DELTA_J2000; X_IMAGE, Y_IMAGE not used"
    np.testing.assert_allclose(pos.x, x, atol=1e-3)
    pix = catalog_positions(table, WCS_, where="c", x_col="X_IMAGE", y_col="Y_IMAGE")
    np.testing.assert_allclose(pix.x, x, atol=1e-3)
    np.testing.assert_allclose(pix.y, y, atol=1e-3)
    assert pix.describe() == "pixel columns X_IMAGE, Y_IMAGE (FITS 1-based)"
    peak = catalog_positions(table, WCS_, where="c", x_col="xpeak_image", y_col="YPEAK_IMAGE")
    np.testing.assert_array_equal(peak.x, np.round(x))


def test_a_file_of_no_known_format_names_the_formats_accepted(tmp_path):
    for name, text in (("sources.cat", "NUMBER X Y\n1 2 3\n"), ("c.dat", "1 2\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(CatalogError) as err:
            read_catalog(tmp_path / name)
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"{tmp_path / name}: unknown catalog format")
        for fmt in ("FITS binary tables and FITS_LDAC", "SExtractor ASCII", ".ecsv", ".csv",
                    ".parquet"):
            assert fmt in line
    (tmp_path / "bad.ecsv").write_text("# %ECSV 1.0\n# ---\n# garbage: [\n")
    with pytest.raises(CatalogError, match=r"bad\.ecsv: cannot read it as ascii\.ecsv .*; "
                                           r"accepted: FITS binary tables"):
        read_catalog(tmp_path / "bad.ecsv")
