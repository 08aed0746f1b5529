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


def test_both_forms_or_neither_are_refused():
    table, _, _ = _sky_table()
    table["x"] = 1.0
    table["y"] = 2.0
    with pytest.raises(CatalogError, match="both as RA/Dec"):
        catalog_positions(table, WCS_, where="c")
    with pytest.raises(CatalogError, match="not both"):
        catalog_positions(table, WCS_, where="c", ra_col="RA", x_col="x")
    pos = catalog_positions(table, WCS_, where="c", x_col="x", y_col="y")
    assert pos.columns == ("x", "y")


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
