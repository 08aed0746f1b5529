"""Tests of pyengine synth: synthetic PAndAS-like fields and their truth catalogs."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tracemalloc

import numba
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError, PyEngineError
from pyengine.synth import DEFAULT_BANDS, FieldRenderer, SynthConfig, make_field
from pyengine.synth import render as kernels
from pyengine.synth.profiles import PSF, king_core_radius, king_enclosed
from pyengine.synth.sky import disk_coefficients, disk_geometry, disk_shape, sky_counts
from pyengine.synth.writers import int16_scaling

NO_DISK = tuple(dataclasses.replace(b, disk_mu0=40.0) for b in DEFAULT_BANDS)
EMPTY = {"rgb_density": 0.0, "halo_rgb_density": 0.0, "foreground_density": 0.0,
         "galaxy_density": 0.0, "cluster_density": 0.0, "halo_cluster_density": 0.0}
# A busy small field: every kind of object, saturated stars, CCD gaps; odd width.
BUSY = SynthConfig(width=515, height=400, seed=7, cluster_density=1e5, galaxy_density=1e5,
                   foreground_density=2e4, chip_gaps=True, chip_size=(200, 150), chip_gap=11)


def _digest(result):
    files = [*sorted({p for p, _ in result.images.values()}), result.truth]
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """BUSY written in every encoding: encoding -> SynthResult."""
    root = tmp_path_factory.mktemp("busy")
    return {enc: make_field(root / enc, dataclasses.replace(BUSY, encoding=enc))
            for enc in ("float32", "int16", "rice", "mef")}


def _truth(path):
    # NaN stays NaN (astropy would mask it by default).
    return Table.read(path, mask_invalid=False)


def _band(result, band):
    path, hdu = result.images[band]
    with fits.open(path) as hdul:
        header = hdul[hdu].header.copy()   # before astropy rescales the data
        return hdul[hdu].data.astype(np.float64), header


# -- determinism -------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["float32", "int16", "rice", "mef"])
def test_same_bytes_whatever_the_tile_size(tmp_path, busy, encoding):
    ref = _digest(busy[encoding])
    for tile in (128, 300, BUSY.height):
        config = dataclasses.replace(BUSY, encoding=encoding, tile_size=tile)
        assert _digest(make_field(tmp_path / f"t{tile}", config)) == ref


def test_busy_field_has_saturation_and_gaps(busy):
    data, header = _band(busy["float32"], "i")
    assert np.count_nonzero(data == header["SATURATE"]) > 10
    assert np.isnan(data).any()


def test_same_pixels_whatever_the_thread_count():
    config = dataclasses.replace(BUSY, height=160)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = FieldRenderer(config).render(0, 160)
    finally:
        numba.set_num_threads(before)
    many = FieldRenderer(config).render(0, 160)
    np.testing.assert_array_equal(one, many)


def test_seed_changes_everything(tmp_path, busy):
    other = make_field(tmp_path, dataclasses.replace(BUSY, seed=8))
    assert not set(_digest(other)) & set(_digest(busy["float32"]))
    a, _ = _band(busy["float32"], "g")
    b, _ = _band(other, "g")
    both = np.isfinite(a) & np.isfinite(b)
    assert np.mean(a[both] == b[both]) < 0.01


# -- headers, WCS, truth -----------------------------------------------------

def test_headers(busy):
    for band in ("g", "i"):
        _, h = _band(busy["float32"], band)
        spec = BUSY.band(band)
        assert h["FILTER"] == band
        assert h["MAGZPT"] == spec.zeropoint
        assert h["GAIN"] == spec.gain and h["RDNOISE"] == spec.read_noise
        assert h["SATURATE"] == spec.saturate and h["SEEING"] == spec.seeing
        assert h["BUNIT"] == "adu" and h["SEED"] == BUSY.seed and h["SYNTHETC"] is True
        assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
        assert h["CD1_1"] == pytest.approx(-0.187 / 3600) and h["CD2_2"] == pytest.approx(
            0.187 / 3600)
        assert h["CD1_2"] == 0 and h["CD2_1"] == 0


def test_wcs_north_up_east_left_and_centre(busy):
    _, h = _band(busy["float32"], "g")
    w = WCS(h)
    c = w.pixel_to_world((BUSY.width - 1) / 2, (BUSY.height - 1) / 2)
    assert c.ra.deg == pytest.approx(BUSY.ra) and c.dec.deg == pytest.approx(BUSY.dec)
    up = w.pixel_to_world(257, 300)
    right = w.pixel_to_world(300, 200)
    origin = w.pixel_to_world(257, 200)
    assert up.dec.deg > origin.dec.deg
    assert right.ra.deg < origin.ra.deg
    assert origin.separation(up).arcsec == pytest.approx(100 * 0.187, rel=1e-4)


def test_truth_catalog(busy):
    t = _truth(busy["float32"].truth)
    assert t.colnames[:9] == ["id", "ra", "dec", "x", "y", "class", "g_mag", "i_mag", "r_h_pc"]
    assert str(t["ra"].unit) == "deg" and str(t["x"].unit) == "pix"
    assert str(t["g_mag"].unit) == "mag" and str(t["r_h_pc"].unit) == "pc"
    assert list(t["id"]) == list(range(1, len(t) + 1))
    assert set(t["class"]) == {"cluster", "star", "galaxy"}
    assert busy["float32"].counts == {c: int(np.sum(t["class"] == c))
                                      for c in ("cluster", "star", "galaxy")}
    assert t["x"].min() >= -0.5 and t["x"].max() < BUSY.width - 0.5
    assert t["y"].min() >= -0.5 and t["y"].max() < BUSY.height - 0.5
    cl = t[t["class"] == "cluster"]
    assert len(cl) >= 20
    assert np.all((cl["r_h_pc"] >= 1.0) & (cl["r_h_pc"] <= 5.0))
    assert np.all((cl["i_mag"] >= 16.0) & (cl["i_mag"] <= 22.0))
    colour = cl["g_mag"] - cl["i_mag"]
    young = cl["subclass"] == "young"
    assert young.any() and (~young).any()
    assert np.all((colour[young] >= 0) & (colour[young] <= 0.5 + 1e-5))
    assert np.all((colour[~young] >= 0.8 - 1e-5) & (colour[~young] <= 1.3 + 1e-5))
    assert np.all(np.isnan(t["r_h_pc"][t["class"] != "cluster"]))
    stars = t[t["class"] == "star"]
    assert stars["i_mag"].max() <= BUSY.star_limit + 1e-5
    assert set(stars["subclass"]) <= {"foreground", "m31_giant", "m31_young"}


def test_truth_positions_match_wcs(busy):
    t = _truth(busy["float32"].truth)
    _, h = _band(busy["float32"], "i")
    sky = WCS(h).pixel_to_world(t["x"], t["y"])
    assert np.max(np.abs(sky.ra.deg - t["ra"])) < 1e-9
    assert np.max(np.abs(sky.dec.deg - t["dec"])) < 1e-9


def test_truth_is_the_same_for_every_encoding(busy):
    ref = busy["float32"].truth.read_bytes()
    assert all(r.truth.read_bytes() == ref for r in busy.values())


# -- photometry and shapes ---------------------------------------------------

def _isolated(t, width, height, radius):
    """Rows of t with no other object within radius px and away from the edges."""
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    d2 = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2
    np.fill_diagonal(d2, np.inf)
    ok = (d2.min(axis=1) > radius**2) & (x > radius) & (y > radius)
    return t[ok & (x < width - 1 - radius) & (y < height - 1 - radius)]


def test_star_aperture_flux_matches_magnitude(tmp_path):
    config = SynthConfig(width=384, height=384, seed=3, bands=NO_DISK,
                         **{**EMPTY, "foreground_density": 2e5}, bright_limit=18.0,
                         star_limit=18.6)
    result = make_field(tmp_path, config)
    t = _isolated(_truth(result.truth), 384, 384, 30)
    assert len(t) >= 3
    yy, xx = np.mgrid[:384, :384]
    for band in ("g", "i"):
        data, h = _band(result, band)
        psf = PSF(h["SEEING"] / 0.187, h["PSFBETA"])
        for row in t:
            d2 = (xx - row["x"]) ** 2 + (yy - row["y"]) ** 2
            inside = d2 <= 15**2
            measured = (data[inside] - h["SKYLEVEL"]).sum()
            expected = 10 ** (0.4 * (h["MAGZPT"] - row[f"{band}_mag"])) * psf.encircled(15)
            assert measured == pytest.approx(expected, rel=0.02)
            # The light is centred on the truth position (pixel i covers [i-0.5, i+0.5)).
            core = d2 <= 6**2
            w = data[core] - h["SKYLEVEL"]
            assert (w * xx[core]).sum() / w.sum() == pytest.approx(row["x"], abs=0.05)
            assert (w * yy[core]).sum() / w.sum() == pytest.approx(row["y"], abs=0.05)


def _moments(data, x, y, sky, r=8):
    """Centroid offset (dx, dy) and second moment about the given position."""
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    d2 = (xx - x) ** 2 + (yy - y) ** 2
    w = np.where(d2 <= r * r, data - sky, 0.0)
    return ((w * (xx - x)).sum() / w.sum(), (w * (yy - y)).sum() / w.sum(),
            float((w * d2).sum() / w.sum()))


def test_clusters_are_more_extended_than_stars(tmp_path):
    config = SynthConfig(width=768, height=768, seed=4, **{**EMPTY, "cluster_density": 3e4,
                                                           "foreground_density": 2e5},
                         bright_limit=17.6, star_limit=19.5, cluster_mag_range=(17.6, 19.5))
    result = make_field(tmp_path, config)
    t = _isolated(_truth(result.truth), 768, 768, 20)
    data, _ = _band(result, "i")
    bg = np.nanmedian(data)
    mom = {c: np.array([_moments(data, r["x"], r["y"], bg) for r in t[t["class"] == c]])
           for c in ("cluster", "star")}
    assert len(mom["cluster"]) >= 5 and len(mom["star"]) >= 5
    # A Moffat star's moment is fixed by the seeing; clusters add r_h^2 and more.
    m = {c: v[:, 2] for c, v in mom.items()}
    assert np.median(m["cluster"]) > 1.3 * np.median(m["star"])
    assert np.std(m["star"]) < 0.1 * np.median(m["star"])
    # Stamps sit on the truth position (resolved members scatter it a little).
    assert np.median(np.abs(mom["cluster"][:, :2])) < 0.25


def test_noise_level_and_independence(tmp_path):
    config = SynthConfig(width=512, height=512, seed=5, bands=NO_DISK, **EMPTY)
    result = make_field(tmp_path, config)
    g, hg = _band(result, "g")
    i, hi = _band(result, "i")
    for data, h in ((g, hg), (i, hi)):
        sigma = math.sqrt(h["SKYLEVEL"] / h["GAIN"] + (h["RDNOISE"] / h["GAIN"]) ** 2)
        assert data.mean() == pytest.approx(h["SKYLEVEL"], abs=0.01 * sigma)
        assert data.std() == pytest.approx(sigma, rel=0.01)
        z = (data - data.mean()) / data.std()
        assert np.mean(np.abs(z) > 3) == pytest.approx(0.0027, abs=0.0008)
        assert abs(np.mean(z[:, 1:] * z[:, :-1])) < 0.01    # neighbours independent
        assert abs(np.mean(z[1:] * z[:-1])) < 0.01
    assert abs(np.corrcoef(g.ravel(), i.ravel())[0, 1]) < 0.01


def test_sky_subtracted(tmp_path):
    config = SynthConfig(width=128, height=128, seed=5, bands=NO_DISK, **EMPTY,
                         sky_subtracted=True)
    data, h = _band(make_field(tmp_path, config), "i")
    assert abs(data.mean()) < 0.1 and h["SKYSUB"] is True
    assert h["SATURATE"] == pytest.approx(5000.0 - h["SKYLEVEL"])


# -- the disk, profiles ------------------------------------------------------

def test_disk_kernel_matches_numpy_twin_and_geometry():
    config = SynthConfig(width=300, height=200, ra=10.6847, dec=41.2690)
    out = np.empty((2, 200, 300))
    sky = np.array([1.0, 2.0])
    amp = np.array([10.0, 20.0])
    kernels.fill_background(out, 0, disk_coefficients(config), disk_geometry(config), sky, amp)
    yy, xx = np.mgrid[:200, :300]
    np.testing.assert_allclose(out[1], 2.0 + 20.0 * disk_shape(config, xx, yy), rtol=1e-12)
    # Centred on M31: the disk peaks at the middle, falls faster along the minor axis.
    assert disk_shape(config, 149.5, 99.5) == pytest.approx(1.0)
    d = 1000.0   # px, along the major (PA 38 deg) and minor axes; east is -x
    pa = math.radians(38.0)
    major = disk_shape(config, 149.5 - d * math.sin(pa), 99.5 + d * math.cos(pa))
    minor = disk_shape(config, 149.5 - d * math.cos(pa), 99.5 - d * math.sin(pa))
    h_px = 5.3 / 785.0 / math.radians(0.187 / 3600)
    assert major == pytest.approx(math.exp(-d / h_px), rel=1e-3)
    assert minor == pytest.approx(math.exp(-d / math.cos(math.radians(77)) / h_px), rel=1e-3)


def test_psf_table_and_king_profile():
    psf = PSF(4.0, 3.0)
    assert psf.pixel_grid(32).sum() == pytest.approx(psf.encircled(32.5), rel=2e-3)
    assert psf.value(psf.fwhm / 2) == pytest.approx(psf.peak / 2)
    rc, rt = king_core_radius(np.array([2.0, 5.0]), np.array([1.0, 1.5]))
    np.testing.assert_allclose(king_enclosed(2.0 / rc[0], rt[0] / rc[0]), 0.5, rtol=1e-9)
    np.testing.assert_allclose(rt / rc, [10.0, 10.0**1.5])


# -- encodings ---------------------------------------------------------------

def test_int16_within_quantisation_step(busy):
    for band in ("g", "i"):
        ref, _ = _band(busy["float32"], band)
        data, h = _band(busy["int16"], band)
        assert h["BITPIX"] == 16 and h["BLANK"] == -32768
        assert (h["BSCALE"], h["BZERO"]) == pytest.approx(int16_scaling(BUSY, band))
        np.testing.assert_array_equal(np.isnan(data), np.isnan(ref))   # BLANK read as NaN
        # Scale in float64 (astropy does it in float32, adding ~1e-4 of rounding).
        raw = fits.getdata(busy["int16"].images[band][0], do_not_scale_image_data=True)
        ok = raw != h["BLANK"]
        physical = raw[ok] * h["BSCALE"] + h["BZERO"]
        # Quantisation of the float64 value, plus float32 rounding of the reference.
        err = np.abs(physical - ref[ok])
        assert np.all(err <= 0.5 * h["BSCALE"] + 1e-7 * np.abs(ref[ok]))
        sigma = math.sqrt(sky_counts(BUSY, band) / h["GAIN"])
        assert h["BSCALE"] < sigma / 5


def test_rice_within_quantisation_step(busy):
    for band in ("g", "i"):
        path, hdu = busy["rice"].images[band]
        assert path.name == f"{band}.fits.fz" and hdu == 1
        with fits.open(path, disable_image_compression=True) as hdul:
            assert hdul[1].header["ZCMPTYPE"] == "RICE_1"
            assert hdul[1].header["ZTILE1"] == BUSY.width and hdul[1].header["ZTILE2"] == 1
            zscale = np.asarray(hdul[1].data["ZSCALE"])    # one quantisation step per row
        ref, _ = _band(busy["float32"], band)
        data, h = _band(busy["rice"], band)
        assert h["FILTER"] == band and h["MAGZPT"] == 30.0
        np.testing.assert_array_equal(np.isnan(data), np.isnan(ref))
        err = np.where(np.isfinite(ref), np.abs(data - ref), 0.0)
        step = np.where(np.isfinite(zscale), zscale, 0.0)
        assert np.all(err.max(axis=1) <= 0.5 * step + 1e-4)
        assert err.max() > 0
        # cfitsio's step is its estimate of the row's noise / q (q = 4).
        diff = np.diff(ref, axis=1)
        rows = ~np.all(np.isnan(diff), axis=1)
        diff = diff[rows]
        noise = 1.4826 * np.nanmedian(np.abs(diff - np.nanmedian(diff, axis=1)[:, None]),
                                      axis=1) / math.sqrt(2)
        assert 0.1 < np.median(step[rows] / noise) < 0.35


def test_mef_layout(busy):
    path, _ = busy["mef"].images["g"]
    assert path.name == "field.fits" and busy["mef"].images["i"] == (path, 2)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[0].header["NAXIS"] == 0 and hdul[0].header["NEXTEND"] == 2
        assert [h.name for h in hdul[1:]] == ["G", "I"]
        for band in ("g", "i"):
            ref, _ = _band(busy["float32"], band)
            np.testing.assert_array_equal(hdul[band.upper()].data, ref)
            assert hdul[band.upper()].header["FILTER"] == band


def test_chip_gaps_are_nan_where_expected(busy):
    data, _ = _band(busy["float32"], "g")
    # Gaps of 11 px cross at the centre (columns 252..262, rows 195..205) and
    # repeat every chip + gap (211 px in x, 161 px in y).
    cols = np.flatnonzero(np.all(np.isnan(data), axis=0)).tolist()
    rows = np.flatnonzero(np.all(np.isnan(data), axis=1)).tolist()
    assert cols == [*range(41, 52), *range(252, 263), *range(463, 474)]
    assert rows == [*range(34, 45), *range(195, 206), *range(356, 367)]
    gap = np.zeros(data.shape, bool)
    gap[:, cols] = True
    gap[rows, :] = True
    np.testing.assert_array_equal(np.isnan(data), gap)


# -- errors, CLI, memory -----------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width": 10}, r"width \(--size/--width\) must be an integer from 64"),
    ({"encoding": "png"}, r"encoding \(--encoding\) must be one of float32, int16, rice, mef; "
                          r"got 'png'"),
    ({"tile_size": 0}, r"tile_size \(--tile-size\) must be an integer from 1"),
    ({"dec": 95.0}, r"dec \(--dec\) must be a number from -89 to 89 deg; got 95.0"),
    ({"cluster_rh_range": (5.0, 1.0)}, r"cluster_rh_range must be a pair"),
    ({"bright_limit": 25.0}, r"bright_limit \(25.0\) must be brighter"),
])
def test_bad_config_names_option_value_and_range(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**kwargs)


def test_bad_band_and_output(tmp_path):
    with pytest.raises(ConfigError, match=r"band 'i' seeing \(--seeing-i\) .* got 0.1"):
        dataclasses.replace(DEFAULT_BANDS[1], seeing=0.1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PyEngineError, match="exists and is not a directory"):
        make_field(tmp_path / "file", SynthConfig(width=64, height=64))


def test_cli_writes_and_summarises(tmp_path):
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "o"), "--size", "128", "--seed",
                                    "2", "--encoding", "mef", "--chip-gaps", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"wrote {tmp_path / 'o' / 'field.fits'}" in res.output
    assert f"wrote {tmp_path / 'o' / 'truth.fits'}" in res.output
    assert "128 x 128 px, seed 2, mef:" in res.output and "galaxies" in res.output
    with fits.open(tmp_path / "o" / "field.fits") as hdul:
        assert np.isnan(hdul[1].data).any()


def test_cli_error_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--size", "10"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "Error: width (--size/--width) must be an integer from 64 to 1000000 pixels; got 10"]


def _peak_traced(tmp_path, height):
    config = SynthConfig(width=1024, height=height, seed=9, tile_size=64, rgb_density=0.02)
    tracemalloc.start()
    try:
        make_field(tmp_path / str(height), config)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_bounded_by_tile_not_field(tmp_path):
    # NumPy allocations are traced (Numba's and cfitsio's are not: both only
    # hold per-block buffers).  Tripling the height may grow the peak only by
    # what the kernel-FFT caches may still fill (< 2 MB per band).
    FieldRenderer(SynthConfig(width=256, height=256)).render(0, 64)   # compile outside
    short = _peak_traced(tmp_path, 2048)
    tall = _peak_traced(tmp_path, 6144)
    assert tall < short + 4 * 2**20
    assert tall < 0.5 * (2 * 1024 * 6144 * 4)   # far below the field's float32 size


def test_every_encoding_reads_back_through_mosaic(busy):
    """The fields are what pyengine itself reads: Mosaic opens each encoding as g, i
    and reads what astropy reads, NaN (gaps, BLANK, off-image) included."""
    from pyengine import Mosaic

    ny, nx = BUSY.height, BUSY.width
    world = None
    for encoding, result in busy.items():
        specs = [f"{p}[{hdu}]" for p, hdu in (result.images["g"], result.images["i"])]
        with Mosaic.open(specs) as m:
            assert m.bands == ("g", "i")
            assert m.shape == (ny, nx)
            here = m.wcs.pixel_to_world_values(10.0, 20.0)
            world = here if world is None else world
            np.testing.assert_allclose(here, world, rtol=0, atol=1e-12)
            got = m.read(-3, ny + 3, -3, nx + 3)
        assert np.isnan(got[:, :3]).all() and np.isnan(got[:, :, -3:]).all()
        for b, band in enumerate(("g", "i")):
            ref = _band(result, band)[0].astype(np.float32)
            inner = got[b, 3:-3, 3:-3]
            np.testing.assert_array_equal(np.isnan(inner), np.isnan(ref))
            if encoding == "int16":  # astropy scales int16 in float32: one rounding step
                step = np.spacing(np.float32(np.nanmax(np.abs(ref))))
                np.testing.assert_allclose(inner, ref, rtol=0, atol=2 * step)
            else:
                np.testing.assert_array_equal(inner, ref)
