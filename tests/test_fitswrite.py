"""Tests of the streaming, atomic FITS image writer (pyengine.io.fitswrite)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits import Header

from pyengine.io.fitswrite import BLOCK, FitsWriter, ImageSpec, write_image


def _parts(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "int64", "float32", "float64"])
def test_round_trip_each_type(tmp_path, dtype):
    rng = np.random.default_rng(1)
    data = (rng.random((37, 19)) * 100).astype(dtype)
    path = write_image(tmp_path / "a.fits", data, rows_per_block=5)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[0].header["BITPIX"] == {"uint8": 8, "int16": 16, "int32": 32, "int64": 64,
                                            "float32": -32, "float64": -64}[dtype]
        np.testing.assert_array_equal(hdul[0].data, data)
    assert path.stat().st_size % BLOCK == 0
    assert _parts(tmp_path) == []


def test_mef_interleaved_rows_header_and_padding(tmp_path):
    rng = np.random.default_rng(2)
    g = rng.normal(size=(50, 33)).astype(np.float32)
    i = rng.normal(size=(50, 33)).astype(np.float32)
    primary = Header()
    primary["ORIGIN"] = "test"
    hg = Header()
    hg["EXTNAME"] = "G"
    hg["BITPIX"] = 16          # structural cards from the caller are ignored
    hg["NAXIS1"] = 5
    hg["COMMENT"] = "a comment survives"
    hi = Header()
    hi["EXTNAME"] = "I"
    specs = [ImageSpec((), header=primary), ImageSpec(g.shape, header=hg),
             ImageSpec(i.shape, "float64", header=hi)]
    with FitsWriter(tmp_path / "m.fits", specs) as w:
        for y0 in range(0, 50, 7):   # both bands, block by block
            w.write_rows(1, y0, g[y0:y0 + 7])
            w.write_rows(2, y0, i[y0:y0 + 7])
    with fits.open(tmp_path / "m.fits") as hdul:
        hdul.verify("exception")
        assert len(hdul) == 3
        assert hdul[0].header["NAXIS"] == 0
        assert hdul[0].header["ORIGIN"] == "test"
        assert [h.name for h in hdul[1:]] == ["G", "I"]
        assert hdul[1].header["BITPIX"] == -32
        assert hdul[1].header["NAXIS1"] == 33
        assert "a comment survives" in str(hdul[1].header["COMMENT"])
        assert hdul[2].header["BITPIX"] == -64
        np.testing.assert_array_equal(hdul["G"].data, g)
        np.testing.assert_array_equal(hdul["I"].data, i)
    assert (tmp_path / "m.fits").stat().st_size % BLOCK == 0


def test_scaled_int16_blank_and_clipping(tmp_path):
    data = np.array([[0.0, 1.0, np.nan, -5.0], [1e9, -1e9, 2.5, 3.25]])
    spec = ImageSpec(data.shape, "int16", bscale=0.1, bzero=10.0, blank=-32768)
    with FitsWriter(tmp_path / "s.fits", [spec]) as w:
        w.write_rows(0, 0, data)
    assert w.clipped == [2]
    with fits.open(tmp_path / "s.fits") as hdul:
        h = hdul[0].header
        assert (h["BSCALE"], h["BZERO"], h["BLANK"]) == (0.1, 10.0, -32768)
        raw = fits.getdata(tmp_path / "s.fits", do_not_scale_image_data=True)
        read = hdul[0].data
    assert raw[0, 2] == -32768
    assert np.isnan(read[0, 2])
    assert raw[1, 0] == 32767 and raw[1, 1] == -32767   # clipped, BLANK kept free
    finite = np.isfinite(data) & (np.abs(data) < 1e3)
    assert np.all(np.abs(read[finite] - data[finite]) <= 0.05 + 1e-6)


def test_exception_leaves_no_file_and_keeps_old(tmp_path):
    dest = tmp_path / "x.fits"
    dest.write_bytes(b"old")

    def fail_half_way():
        with FitsWriter(dest, [ImageSpec((4, 4))]) as w:
            w.write_rows(0, 0, np.zeros((2, 4)))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_half_way()
    assert dest.read_bytes() == b"old"
    assert _parts(tmp_path) == []


def test_missing_rows_refused(tmp_path):
    dest = tmp_path / "y.fits"
    w = FitsWriter(dest, [ImageSpec((4, 4))])
    w.write_rows(0, 0, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="3 of 4 rows"):
        w.close()
    assert not dest.exists()
    assert _parts(tmp_path) == []


def test_partial_file_is_hidden_while_writing(tmp_path):
    dest = tmp_path / "z.fits"
    w = FitsWriter(dest, [ImageSpec((4, 4))])
    w.write_rows(0, 0, np.zeros((2, 4)))
    assert not dest.exists()
    assert len(_parts(tmp_path)) == 1
    w.abort()
    assert _parts(tmp_path) == []


def test_row_order_and_shape_checked(tmp_path):
    w = FitsWriter(tmp_path / "o.fits", [ImageSpec((4, 4)), ImageSpec((2, 3), "int16")])
    with pytest.raises(ValueError, match="in order"):
        w.write_rows(0, 1, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="rows of shape"):
        w.write_rows(0, 0, np.zeros((1, 5)))
    with pytest.raises(ValueError, match="exceed"):
        w.write_rows(0, 0, np.zeros((5, 4)))
    with pytest.raises(TypeError, match="write integers"):
        w.write_rows(1, 0, np.zeros((1, 3)))
    w.abort()


def test_spec_checks():
    with pytest.raises(ValueError, match="dtype"):
        ImageSpec((2, 2), "uint16")
    with pytest.raises(ValueError, match="integer dtypes only"):
        ImageSpec((2, 2), "float32", bscale=2.0)
    with pytest.raises(ValueError, match="does not fit"):
        ImageSpec((2, 2), "uint8", blank=-1)
