"""Mosaic: every encoding read equals astropy's ``.section``; refusals name the problem."""

from __future__ import annotations

import gzip
import pickle
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from pyengine import Mosaic
from pyengine.errors import (
    BandWarning,
    ConfigError,
    FitsFormatError,
    InputFileError,
    MosaicMismatchError,
    PyEngineError,
    WCSError,
)
from tests.makedata import ENCODINGS, astropy_section, make_wcs, write_compressed, write_image

SHAPE = (37, 53)
# Windows (y0, y1, x0, x1): whole, interior, across each edge, corners, outside.
WINDOWS = [
    (0, 37, 0, 53), (5, 20, 7, 40), (-4, 10, 10, 20), (30, 45, 10, 20), (10, 20, -6, 5),
    (10, 20, 50, 60), (-3, 40, -3, 56), (40, 50, 0, 10), (0, 0, 0, 5), (36, 37, 52, 53),
]
# astropy scales BITPIX 8/16 (and floats) in float32 arithmetic; pyengine rounds
# once from float64.  These may differ by a rounding step of the largest term.
FLOAT32_ARITHMETIC = {"u8_scaled_blank", "i16_scaled_blank", "f32_scaled"}


def expected(path, ext, name, window):
    """astropy's section for ``window``, with NaN outside the image and at BLANK."""
    blank = ENCODINGS[name][3]
    y0, y1, x0, x1 = window
    ny, nx = SHAPE
    out = np.full((y1 - y0, x1 - x0), np.nan, dtype=np.float32)
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
    if cy1 > cy0 and cx1 > cx0:
        ref = astropy_section(path, ext, (cy0, cy1, cx0, cx1))
        with fits.open(path, do_not_scale_image_data=True) as hdul:
            stored = np.array(hdul[ext].section[cy0:cy1, cx0:cx1])
        with np.errstate(over="ignore"):  # float64 extremes become inf, as they should
            ref = ref.astype(np.float32)
        if blank is not None:
            ref[stored == blank] = np.nan
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = ref
    return out


def assert_same(ours, ref, name):
    if name in FLOAT32_ARITHMETIC:
        bzero = ENCODINGS[name][2]
        step = np.spacing(np.float32(np.nanmax(np.abs(ref[np.isfinite(ref)]), initial=0.0)
                                     + abs(bzero)))
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2 * step)
    else:
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("name", sorted(ENCODINGS))
@pytest.mark.parametrize("byteorder", [">", "<"])
@pytest.mark.parametrize("ext", [False, True], ids=["primary", "extension"])
def test_uncompressed_reads_equal_astropy(tmp_path, name, byteorder, ext):
    path = write_image(tmp_path / f"{name}.fits", name, SHAPE, byteorder=byteorder, ext=ext)
    spec = f"{path}[1]" if ext else path
    with Mosaic.open([spec], bands=["b"]) as mosaic:
        assert mosaic.shape == SHAPE
        assert mosaic.compressed == (False,)
        for window in WINDOWS:
            ours = mosaic.read(*window)
            assert ours.dtype == np.float32 and ours.dtype.isnative
            assert ours.shape == (1, window[1] - window[0], window[3] - window[2])
            assert_same(ours[0], expected(path, 1 if ext else 0, name, window), name)


@pytest.mark.parametrize("name", ["i16_scaled_blank", "i32_scaled_blank", "u16", "u64", "i16"])
def test_scaled_values_are_rounded_once_from_float64(tmp_path, name):
    path = write_image(tmp_path / "s.fits", name, SHAPE)
    blank = ENCODINGS[name][3]
    with fits.open(path, do_not_scale_image_data=True, uint=False) as hdul:
        stored = hdul[0].data.astype(np.float64)
        if name == "u64":  # exact: stored int64 + 2**63 as uint64
            exact = (hdul[0].data.astype(np.int64).view(np.uint64) ^ np.uint64(1 << 63))
            want = exact.astype(np.float32)
        else:
            h = hdul[0].header
            want = (stored * h.get("BSCALE", 1.0) + h.get("BZERO", 0.0)).astype(np.float32)
        if blank is not None:
            want[hdul[0].data == blank] = np.nan
    with Mosaic.open([path]) as mosaic:
        np.testing.assert_array_equal(mosaic.read(0, SHAPE[0], 0, SHAPE[1])[0], want)


def test_three_d_image_with_degenerate_axis_reads_as_2d(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=">f4").reshape((1, *SHAPE))
    header = make_wcs(SHAPE).to_header()
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "cube.fits")
    with Mosaic.open([tmp_path / "cube.fits"]) as mosaic:
        assert mosaic.shape == SHAPE
        np.testing.assert_array_equal(mosaic.read(0, 37, 0, 53)[0], data[0])


# -- tile-compressed -----------------------------------------------------------

COMPRESSED = [
    # (encoding, fitsio compress, qlevel)
    ("i16", "RICE", None), ("i16_scaled_blank", "RICE", None), ("u8", "RICE", None),
    ("i32_scaled_blank", "RICE", None), ("i16", "GZIP", None), ("i32", "GZIP_2", None),
    ("f64", "GZIP", 0), ("f32", "GZIP", 0), ("i16", "HCOMPRESS", None),
    ("u8", "PLIO", None), ("f32", "RICE", 4.0), ("u16", "RICE", None),
]


@pytest.mark.parametrize(("name", "compress", "qlevel"), COMPRESSED)
@pytest.mark.parametrize("byteorder", [">", "<"])
def test_compressed_reads_equal_astropy(tmp_path, name, compress, qlevel, byteorder):
    dtype, bscale, bzero, blank = ENCODINGS[name]
    rng = np.random.default_rng(3)
    if dtype.startswith("f"):
        data = (rng.standard_normal(SHAPE) * 100).astype(dtype)
        data[3, 4] = np.nan
    else:
        info = np.iinfo(dtype)
        small = compress in ("PLIO", "HCOMPRESS")  # codecs for small non-negative values
        lo, hi = (0, min(1000, info.max)) if small else (info.min, info.max)
        data = rng.integers(lo, hi, size=SHAPE, dtype=dtype)
        if blank is not None:
            data[5::7, 3] = blank
    data = data.astype(np.dtype(dtype).newbyteorder(byteorder))
    header = dict(make_wcs(SHAPE).to_header())
    if bscale != 1.0 or bzero != 0.0:
        header.update(BSCALE=bscale, BZERO=bzero)
    if blank is not None:
        header["BLANK"] = blank
    header["FILTER"] = "i"
    tile_dims = [8, 16] if compress == "HCOMPRESS" else None
    path = write_compressed(tmp_path / "i.fits.fz", data, compress, header=header,
                            qlevel=qlevel, tile_dims=tile_dims)
    with Mosaic.open([path]) as mosaic:
        assert mosaic.compressed == (True,)
        assert mosaic.bands == ("i",)
        assert mosaic.shape == SHAPE
        for window in WINDOWS:
            ours = mosaic.read(*window)[0]
            ref = expected(path, 1, name, window)
            if dtype.startswith("f"):
                np.testing.assert_array_equal(ours, ref)
            else:
                assert_same(ours, ref, name)
        if qlevel is None or qlevel == 0:  # lossless: equal to the data written too
            whole = mosaic.read(0, SHAPE[0], 0, SHAPE[1])[0]
            want = data.astype(np.float64) * bscale + bzero
            if blank is not None:
                want[data == blank] = np.nan
            np.testing.assert_allclose(whole, want.astype(np.float32), rtol=2e-7)


def test_mef_bands_by_extname_and_number(tmp_path):
    ny, nx = SHAPE
    g = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    i = g * 2
    header = make_wcs(SHAPE).to_header()
    fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(g, header=header, name="G"),
        fits.ImageHDU(i, header=header, name="I"),
    ]).writeto(tmp_path / "field.fits")
    with Mosaic.open([f"{tmp_path}/field.fits[g]", f"{tmp_path}/field.fits[2]"],
                     bands=["g", "i"]) as mosaic:
        out = mosaic.read(0, ny, 0, nx)
        np.testing.assert_array_equal(out[0], g)
        np.testing.assert_array_equal(out[1], i)
    # Default: first HDU holding an image (the primary is empty).
    with Mosaic.open([tmp_path / "field.fits"], bands=["g"]) as mosaic:
        np.testing.assert_array_equal(mosaic.read(0, ny, 0, nx)[0], g)


def test_band_names_from_filter_band_and_stem(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"FILTER": "g.MP9401"})
    write_image(tmp_path / "b.fits", "f32", header_extra={"BAND": "i"})
    write_image(tmp_path / "r.fits", "f32")
    with Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "r.fits"]) as m:
        assert m.bands == ("g.MP9401", "i", "r")
        assert m.nband == 3
    with Mosaic.open([tmp_path / "a.fits"], bands=["g"]) as m:
        assert m.bands == ("g",)


def test_mosaic_names_two_extensions_of_one_file(tmp_path):
    header = make_wcs((37, 53)).to_header()
    data = np.zeros((37, 53), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header),
                  fits.ImageHDU(data + 1, header)]).writeto(tmp_path / "f.fits")
    with Mosaic.open([f"{tmp_path}/f.fits[1]", f"{tmp_path}/f.fits[2]"]) as m:
        assert m.bands == ("f[1]", "f[2]")
        assert m.read(0, 1, 0, 1)[:, 0, 0].tolist() == [0.0, 1.0]
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header, name="G"),
                  fits.ImageHDU(data + 1, header, name="I")]).writeto(tmp_path / "e.fits")
    with Mosaic.open([f"{tmp_path}/e.fits[1]", f"{tmp_path}/e.fits[I]"]) as m:
        assert m.bands == ("G", "I")
    with pytest.raises(ConfigError, match=r"f\.fits\[1\]: the same image as .*f\.fits\[1\] "
                       r"\(one file, HDU 1\)"):  # one HDU twice
        Mosaic.open([f"{tmp_path}/f.fits[1]", f"{tmp_path}/f.fits[1]"])


def test_mosaic_refuses_bands_equal_by_key(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"FILTER": "i.MP9702"})
    write_image(tmp_path / "b.fits", "f32", header_extra={"FILTER": "i.MP9703"})
    with pytest.raises(ConfigError, match=r"not unique when compared .*: i\.MP9702, i\.MP9703"):
        Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits"])
    with pytest.warns(BandWarning) as said:  # said, not refused
        m = Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits"], bands=["i1", "i2"])
    assert [str(w.message).split(": ", 1)[1] for w in said] == [
        "FILTER = 'i.MP9702' but given as band 'i1'; scanning it as 'i1' (check the order of "
        "--bands)", "FILTER = 'i.MP9703' but given as band 'i2'; scanning it as 'i2' (check "
        "the order of --bands)"]
    with m:
        assert m.bands == ("i1", "i2")  # --bands overrides


def test_out_buffer_is_filled_in_place(tmp_path):
    write_image(tmp_path / "a.fits", "f32")
    write_image(tmp_path / "b.fits", "f32", seed=1)
    with Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits"], bands=["x", "y"]) as m:
        big = np.zeros((2, 50, 60), np.float32)
        view = big[:, 5:25, 10:40]
        got = m.read(-5, 15, 30, 60, out=view)
        assert got is view
        np.testing.assert_array_equal(big[:, 5:25, 10:40], m.read(-5, 15, 30, 60))
        assert not big[:, :5].any() and not big[:, 25:].any()


def test_wcs_and_shape_properties(tmp_path):
    wcs = make_wcs(SHAPE)
    write_image(tmp_path / "a.fits", "f32", wcs=wcs)
    with Mosaic.open([tmp_path / "a.fits"]) as m:
        assert m.wcs.pixel_shape == (SHAPE[1], SHAPE[0])
        sky = m.wcs.pixel_to_world_values(10.0, 20.0)
        np.testing.assert_allclose(sky, wcs.pixel_to_world_values(10.0, 20.0), rtol=0, atol=1e-12)


def test_small_window_of_large_image_reads_only_the_window(tmp_path):
    shape = (3000, 2000)
    data = np.zeros(shape, dtype=">i2")
    header = make_wcs(shape).to_header()
    hdu = fits.PrimaryHDU(data, header=header)
    hdu.header["BSCALE"] = 0.5
    hdu.header["BZERO"] = 3.0
    hdu.writeto(tmp_path / "big.fits")
    write_compressed(tmp_path / "big.fits.fz", data, "RICE", header=dict(header))
    for name in ("big.fits", "big.fits.fz"):
        with Mosaic.open([tmp_path / name]) as m:
            m.read(100, 110, 100, 110)  # warm up: compile, open handles
            tracemalloc.start()
            m.read(1000, 1010, 500, 510)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < 200_000, f"{name}: reading 10 x 10 pixels allocated {peak} bytes"


def test_concurrent_reads_equal_serial_reads(tmp_path):
    shape = (300, 400)
    rng = np.random.default_rng(7)
    g = rng.standard_normal(shape).astype(">f4")
    header = make_wcs(shape).to_header()
    fits.PrimaryHDU(g, header=header).writeto(tmp_path / "g.fits")
    i16 = rng.integers(-3000, 3000, size=shape, dtype=np.int16)
    write_compressed(tmp_path / "i.fits.fz", i16, "RICE",
                     header={**dict(header), "BSCALE": 0.1, "BZERO": 5.0})
    with Mosaic.open([tmp_path / "g.fits", tmp_path / "i.fits.fz"]) as m:
        windows = []
        for _ in range(160):
            y0, x0 = rng.integers(-50, 300), rng.integers(-50, 400)
            h, w = rng.integers(1, 300), rng.integers(1, 300)
            windows.append((int(y0), int(y0 + h), int(x0), int(x0 + w)))
        serial = [m.read(*w, parallel=False) for w in windows]
        barrier = threading.Barrier(8)

        def work(k):
            barrier.wait()
            return [m.read(*w) for w in windows[k::8]]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for k in range(8):
            for got, want in zip(results[k], serial[k::8], strict=True):
                np.testing.assert_array_equal(got, want)


def test_pickles_as_reopen(tmp_path):
    write_image(tmp_path / "a.fits", "i16_scaled_blank")
    with Mosaic.open([tmp_path / "a.fits"], bands=["g"]) as m:
        clone = pickle.loads(pickle.dumps(m))
        with clone:
            assert clone.bands == ("g",)
            np.testing.assert_array_equal(clone.read(-2, 40, 0, 53), m.read(-2, 40, 0, 53))


# -- refusals ------------------------------------------------------------------

def _open_error(paths, **kw) -> str:
    with pytest.raises(PyEngineError) as info:
        Mosaic.open(paths, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    msg = _open_error([tmp_path / "nope.fits"])
    assert "nope.fits" in msg and "no such file" in msg


def test_not_fits(tmp_path):
    (tmp_path / "notes.txt").write_text("hello " * 1000)
    with pytest.raises(FitsFormatError, match=r"notes\.txt: not a FITS file"):
        Mosaic.open([tmp_path / "notes.txt"])


def test_empty_file(tmp_path):
    (tmp_path / "e.fits").write_bytes(b"")
    with pytest.raises(FitsFormatError, match="empty file"):
        Mosaic.open([tmp_path / "e.fits"])


def test_gzip_file_is_refused_with_advice(tmp_path):
    write_image(tmp_path / "a.fits", "f32")
    (tmp_path / "a.fits.gz").write_bytes(gzip.compress((tmp_path / "a.fits").read_bytes()))
    msg = _open_error([tmp_path / "a.fits.gz"])
    assert "gzip" in msg and "fpack" in msg


@pytest.mark.parametrize("keep", [100, 2880 + 500, 2880 * 2 - 1])
def test_truncated_file(tmp_path, keep):
    path = write_image(tmp_path / "a.fits", "f64", shape=(40, 40))
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(FitsFormatError, match="truncated"):
        Mosaic.open([path])


def test_table_hdu_is_not_an_image(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column("ra", "D", array=np.arange(3.0))],
                                          name="CAT")
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "t.fits")
    msg = _open_error([f"{tmp_path}/t.fits[CAT]"])
    assert "is a table, not an image" in msg and "t.fits[CAT]" in msg
    msg = _open_error([tmp_path / "t.fits"])
    assert "no image HDU" in msg


def test_empty_hdu_is_not_an_image(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3)))]).writeto(tmp_path / "m.fits")
    msg = _open_error([f"{tmp_path}/m.fits[0]"])
    assert "is empty" in msg and "m.fits[0]" in msg


def test_missing_extension(tmp_path):
    write_image(tmp_path / "a.fits", "f32")
    assert "no HDU 3" in _open_error([f"{tmp_path}/a.fits[3]"])
    assert "no HDU with EXTNAME 'SCI'" in _open_error([f"{tmp_path}/a.fits[SCI]"])


@pytest.mark.parametrize(("shape", "words"), [((2, 5, 6), "3-D image"), ((7,), "1-D image")])
def test_non_2d_images(tmp_path, shape, words):
    fits.PrimaryHDU(np.zeros(shape, np.float32)).writeto(tmp_path / "c.fits")
    with pytest.raises(FitsFormatError, match=words):
        Mosaic.open([tmp_path / "c.fits"])


def test_bands_of_different_shapes(tmp_path):
    write_image(tmp_path / "g.fits", "f32", shape=(37, 53))
    write_image(tmp_path / "i.fits", "f32", shape=(37, 54))
    with pytest.raises(MosaicMismatchError, match=r"i\.fits: shape 37 x 54 .*g\.fits: 37 x 53"):
        Mosaic.open([tmp_path / "g.fits", tmp_path / "i.fits"])


def test_bands_with_different_wcs_name_the_keys(tmp_path):
    write_image(tmp_path / "g.fits", "f32")
    write_image(tmp_path / "i.fits", "f32", wcs=make_wcs(SHAPE, crpix_shift=(2.0, 0.0)))
    msg = _open_error([tmp_path / "g.fits", tmp_path / "i.fits"])
    assert "WCS differs" in msg and "CRPIX1" in msg and "2 px" in msg
    # Within the tolerance it opens.
    write_image(tmp_path / "i2.fits", "f32", wcs=make_wcs(SHAPE, crpix_shift=(0.01, 0.0)))
    Mosaic.open([tmp_path / "g.fits", tmp_path / "i2.fits"], bands=["g", "i"]).close()


def test_uninterpretable_wcs(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"CTYPE1": "RA---QQQ"})
    with pytest.raises(WCSError, match=r"a\.fits: astropy cannot interpret its WCS"):
        Mosaic.open([tmp_path / "a.fits"])


def test_non_celestial_wcs(tmp_path):
    fits.PrimaryHDU(np.zeros(SHAPE, np.float32)).writeto(tmp_path / "nowcs.fits")
    with pytest.raises(WCSError, match=r"nowcs\.fits: no celestial WCS"):
        Mosaic.open([tmp_path / "nowcs.fits"])


def test_duplicate_or_miscounted_band_names(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"FILTER": "g"})
    with pytest.raises(ConfigError, match="the same image as"):
        Mosaic.open([tmp_path / "a.fits", tmp_path / "a.fits"])
    with pytest.raises(ConfigError, match="1 band names"):
        Mosaic.open([tmp_path / "a.fits", tmp_path / "a.fits"], bands=["g"])
    with pytest.raises(ConfigError, match="no band images"):
        Mosaic.open([])


def test_bad_read_arguments(tmp_path):
    write_image(tmp_path / "a.fits", "f32")
    m = Mosaic.open([tmp_path / "a.fits"])
    with pytest.raises(ConfigError, match="reversed window"):
        m.read(10, 5, 0, 5)
    with pytest.raises(ConfigError, match="out must be a writable float32"):
        m.read(0, 5, 0, 5, out=np.zeros((1, 5, 5), np.float64))
    m.close()
    with pytest.raises(ConfigError, match="closed"):
        m.read(0, 5, 0, 5)


def test_directory_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="is a directory"):
        Mosaic.open([tmp_path])


def _vm_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="needs madvise")
def test_resident_memory_bounded_by_the_budget_not_the_mosaic(tmp_path):
    from pyengine import TilePlan

    shape = (4096, 4096)  # 64 MB per band, two bands
    header = make_wcs(shape).to_header()
    for name in ("g", "i"):
        data = np.random.default_rng(0).standard_normal(shape).astype(">f4")
        fits.PrimaryHDU(data, header=header).writeto(tmp_path / f"{name}.fits")
        del data
    with Mosaic.open([tmp_path / "g.fits", tmp_path / "i.fits"]) as m:
        budget = 8 << 20
        for reader in m._readers:
            reader.mapped_budget = budget // 2
        plan = TilePlan.for_cutout(m.shape, cutout=64, core=512)
        buf = np.empty((2, 512 + 64, 512 + 64), np.float32)
        m.read(0, 10, 0, 10)  # compile/load kernels first
        before = _vm_rss()
        peak = before
        for tile in plan:
            y0, y1, x0, x1 = tile.window
            m.read(y0, y1, x0, x1, out=buf[:, : y1 - y0, : x1 - x0])
            peak = max(peak, _vm_rss())
            for reader in m._readers:
                assert reader._mapped_bytes <= reader.mapped_budget
        # Without releases the 128 MB mosaic would stay mapped.
        assert peak - before < 32 << 20, f"resident memory grew by {(peak - before) >> 20} MiB"
