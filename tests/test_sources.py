"""Position sources: catalog rows, SEP detections and grids, each owned by exactly one tile."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import sep
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from pyengine import Mosaic, TilePlan
from pyengine.coords import centre_pixel
from pyengine.errors import CatalogError, ConfigError
from pyengine.sources import (
    DETECT_COLUMNS,
    MAG_COLUMNS,
    ZERO_POINT_KEYS,
    CatalogSource,
    DetectionError,
    DetectSource,
    GridSource,
    TilePositions,
    make_source,
)
from pyengine.sources.detect import _peak_positions
from tests.makedata import make_wcs

SHAPE = (300, 410)          # (ny, nx): 5 x 7 tiles of core 64
NAN_ROWS, NAN_COLS = (180, 300), (0, 150)   # blank corner: whole tile windows of core 64
SIGMA_PSF = 1.5
# Injected sources (x, y): a jittered lattice plus sources on core borders (64k - 0.5 is
# the ownership border between pixel 64k - 1 and 64k) and tile corners.
_rng = np.random.default_rng(42)
_lattice = np.array([(x, y) for y in range(14, 300, 36) for x in range(14, 410, 36)], float)
_lattice += _rng.uniform(-4, 4, _lattice.shape)
BORDER = np.array([[63.45, 40.2], [127.55, 100.3], [255.4, 127.5],
                   [319.5, 63.5], [383.6, 255.45], [247.5, 191.5], [191.5, 176.0]])
ALL = np.concatenate([_lattice, BORDER])
_far = np.min(np.hypot(*(ALL[:, None, :] - ALL[None, :, :]).transpose(2, 0, 1))
              + np.eye(len(ALL)) * 99, axis=1) > 9   # isolated
_blank = ((ALL[:, 1] > NAN_ROWS[0] - 6) & (ALL[:, 0] < NAN_COLS[1] + 6))
_edge = ((ALL[:, 0] < 5) | (ALL[:, 0] > SHAPE[1] - 6) | (ALL[:, 1] < 5)
         | (ALL[:, 1] > SHAPE[0] - 6))
TRUTH = ALL[_far & ~_blank & ~_edge]
G_ONLY = 3  # TRUTH[G_ONLY] shines in g and not in i


def _gaussians(points, amplitude):
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    out = np.zeros(SHAPE)
    for (x, y), a in zip(points, amplitude, strict=True):
        sl = (slice(max(int(y) - 8, 0), int(y) + 9), slice(max(int(x) - 8, 0), int(x) + 9))
        out[sl] += a * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / (2 * SIGMA_PSF**2))
    return out


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Two-band mosaic: sloped sky, noise, Gaussian sources (TRUTH), a blank corner."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    amp = np.full(len(TRUTH), 60.0)
    amp_i = amp.copy()
    amp_i[G_ONLY] = 0.0
    g = 100 + 0.02 * xx + rng.normal(0, 1, SHAPE) + _gaussians(TRUTH, amp)
    i = 50 - 0.01 * yy + rng.normal(0, 2, SHAPE) + _gaussians(TRUTH, 2 * amp_i)
    header = make_wcs(SHAPE).to_header()
    paths = []
    for name, data in (("g", g), ("i", i)):
        data = data.astype(np.float32)
        data[NAN_ROWS[0]:NAN_ROWS[1], NAN_COLS[0]:NAN_COLS[1]] = np.nan
        paths.append(root / f"{name}.fits")
        fits.PrimaryHDU(data, header=header).writeto(paths[-1])
    with Mosaic.open(paths, bands=["g", "i"]) as mosaic:
        yield mosaic


def _scan(source, mosaic, plan):
    """Bind, then concatenate every tile's positions; also checks ownership and counts."""
    source.bind(mosaic, plan)
    parts = []
    for tile in plan:
        pixels = mosaic.read(*tile.window) if source.needs_pixels else None
        got = source.positions(tile, pixels)
        assert isinstance(got, TilePositions)
        assert got.x.dtype == np.float64 and got.y.dtype == np.float64
        assert got.row.dtype == np.int64
        assert list(got.columns) == list(source.column_dtypes)
        for name, dtype in source.column_dtypes.items():
            assert got.columns[name].dtype == dtype
        cx, cy = centre_pixel(got.x), centre_pixel(got.y)
        assert np.all((tile.x0 <= cx) & (cx < tile.x1) & (tile.y0 <= cy) & (cy < tile.y1))
        count = source.count(tile)
        assert count is None or count == len(got)
        parts.append(got)
    return parts


def _cat(parts):
    return (np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
            np.concatenate([p.row for p in parts]))


# -- catalog -----------------------------------------------------------------------------


def _catalog_table(mosaic, n=400, seed=3):
    """Rows all over and around the image, exact border cases, NaN rows; RA/Dec and pixels."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    x = np.concatenate([rng.uniform(-20, nx + 20, n), [63.5, 63.4999, -0.5, -0.51, nx - 0.5,
                                                        nx - 0.51, 10.0, np.nan]])
    y = np.concatenate([rng.uniform(-20, ny + 20, n), [10.0, 127.5, 0.0, 5.0, 7.0, ny - 0.51,
                                                        np.nan, 3.0]])
    ra, dec = mosaic.wcs.pixel_to_world_values(x, y)
    mag = rng.uniform(17, 25, len(x))
    mag[::17] = np.nan
    return Table({"id": np.arange(len(x)) + 1000, "RA": ra, "DEC": dec, "mag": mag,
                  "name": [f"s{k}" for k in range(len(x))]})


def _wcs_pixels(mosaic, ra, dec):
    """The reference: astropy's high-level WCS."""
    ok = np.isfinite(ra) & np.isfinite(dec)
    px, py = np.full(len(ra), np.nan), np.full(len(ra), np.nan)
    sky = SkyCoord(ra[ok], dec[ok], unit="deg", frame="icrs")
    px[ok], py[ok] = mosaic.wcs.world_to_pixel(sky)
    return px, py


@pytest.fixture(scope="module")
def sky_catalog(field, tmp_path_factory):
    table = _catalog_table(field)
    path = tmp_path_factory.mktemp("cat") / "cat.fits"
    table.write(path)
    return path, table


def test_catalog_every_row_once_at_the_wcs_position(field, sky_catalog):
    path, table = sky_catalog
    plan = TilePlan(SHAPE, core=64, halo=16)
    source = CatalogSource(path)
    assert source.kind == "catalog" and not source.needs_pixels
    parts = _scan(source, field, plan)
    off = source.off_image()
    x, y, row = _cat([*parts, off])
    np.testing.assert_array_equal(np.sort(row), np.arange(len(table)))   # each row once
    for part in parts:
        assert np.all(np.diff(part.row) > 0)                             # input order
    px, py = _wcs_pixels(field, np.asarray(table["RA"]), np.asarray(table["DEC"]))
    np.testing.assert_allclose(x, px[row], rtol=0, atol=1e-8)
    np.testing.assert_allclose(y, py[row], rtol=0, atol=1e-8)
    # off-image rows: non-finite, or centre pixel outside the image; the rest are on it
    cx, cy = centre_pixel(off.x), centre_pixel(off.y)
    with np.errstate(invalid="ignore"):
        inside = ((0 <= cx) & (cx < SHAPE[1]) & (0 <= cy) & (cy < SHAPE[0])
                  & np.isfinite(off.x) & np.isfinite(off.y))
    assert not inside.any() and len(off) > 20
    assert source.passthrough() is not None and len(source.passthrough()) == len(table)
    assert "cat.fits: 408 positions (RA/Dec columns RA, DEC)" in source.describe()
    assert f"{len(off)} off the image" in source.describe()


def test_catalog_pixel_columns_give_the_same_positions(field, sky_catalog, tmp_path):
    _, table = sky_catalog
    px, py = _wcs_pixels(field, np.asarray(table["RA"]), np.asarray(table["DEC"]))
    pix = Table({"id": table["id"], "X": px, "y_pix": py})
    pix.write(tmp_path / "pix.ecsv")
    plan = TilePlan(SHAPE, core=64, halo=16)
    sky, flat = CatalogSource(sky_catalog[0]), CatalogSource(tmp_path / "pix.ecsv")
    for a, b in zip(_scan(sky, field, plan), _scan(flat, field, plan), strict=True):
        np.testing.assert_array_equal(a.row, b.row)
        np.testing.assert_allclose(a.x, b.x, atol=1e-8)
        np.testing.assert_allclose(a.y, b.y, atol=1e-8)
    np.testing.assert_array_equal(sky.off_image().row, flat.off_image().row)
    assert flat.fingerprint()["form"] == "pixel"
    assert flat.fingerprint()["columns"] == ["X", "y_pix"]


def test_catalog_magnitude_cut_and_passthrough(field, sky_catalog):
    path, table = sky_catalog
    plan = TilePlan(SHAPE, core=128, halo=16)
    source = CatalogSource(path, mag_limit=21)
    parts = _scan(source, field, plan)
    mag = np.asarray(table["mag"])
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(mag) & (mag <= 21)
    passed = source.passthrough()
    assert passed.colnames == table.colnames
    np.testing.assert_array_equal(passed["id"], table["id"][keep])        # input order
    _, _, row = _cat([*parts, source.off_image()])
    np.testing.assert_array_equal(np.sort(row), np.arange(keep.sum()))
    px, _ = _wcs_pixels(field, np.asarray(passed["RA"]), np.asarray(passed["DEC"]))
    for part in parts:   # rows index the pass-through table
        np.testing.assert_allclose(part.x, px[part.row], atol=1e-8)
    assert f"{keep.sum()} of {len(table)} rows with mag <= 21" in source.describe()
    assert source.fingerprint()["mag_col"] == "mag"


def test_catalog_magnitude_column_choice(field, tmp_path):
    plan = TilePlan(SHAPE, core=128, halo=16)
    t = Table({"ra": [10.6847, 10.6848], "dec": [41.269, 41.2691], "MAG_G": [20.0, 22.0],
               "mag_i": [22.0, 20.0]})
    t.write(tmp_path / "two.csv")
    with pytest.raises(CatalogError, match=r"two\.csv: several magnitude columns \(MAG_G, "
                                           r"mag_i\); choose .* --mag-col"):
        CatalogSource(tmp_path / "two.csv", mag_limit=21).bind(field, plan)
    s = CatalogSource(tmp_path / "two.csv", mag_col="MAG_I", mag_limit=21)
    s.bind(field, plan)
    assert len(s.passthrough()) == 1 and s.passthrough()["mag_i"][0] == 20.0
    # a magnitude column without a limit cuts nothing
    s = CatalogSource(tmp_path / "two.csv", mag_col="mag_g")
    s.bind(field, plan)
    assert len(s.passthrough()) == 2


def test_catalog_fingerprint_follows_bytes_and_options(field, sky_catalog, tmp_path):
    path, table = sky_catalog
    plan = TilePlan(SHAPE, core=128, halo=16)

    def fp(p, **kw):
        s = CatalogSource(p, **kw)
        s.bind(field, plan)
        return s.fingerprint()

    base = fp(path)
    json.dumps(base)
    assert base == fp(path)
    assert base["file"]["size"] == path.stat().st_size
    assert fp(path, mag_limit=21) != base
    assert fp(path, mag_limit=21) != fp(path, mag_limit=22)
    copy = table.copy()
    copy["mag"][1] += 0.001     # same size, other bytes
    copy.write(tmp_path / "cat.fits")
    other = fp(tmp_path / "cat.fits")
    assert other["file"]["size"] == base["file"]["size"]
    assert other["file"]["sha256"] != base["file"]["sha256"]
    both = table.copy()
    both["x"], both["y"] = _wcs_pixels(field, np.asarray(table["RA"]), np.asarray(table["DEC"]))
    both.write(tmp_path / "both.fits")
    assert (fp(tmp_path / "both.fits", ra_col="RA", dec_col="DEC")
            != fp(tmp_path / "both.fits", x_col="x", y_col="y"))


def _one_line(exc_info, name):
    text = str(exc_info.value)
    assert "\n" not in text and name in text
    return text


@pytest.mark.parametrize(("table", "options", "error", "match"), [
    (Table({"ra": np.zeros(0), "dec": np.zeros(0)}), {}, CatalogError, "the catalog is empty"),
    (Table({"mag": [20.0]}), {}, CatalogError, "no usable position columns"),
    (Table({"ra": [10.68], "dec": [41.27]}), {"ra_col": "ra", "x_col": "x"}, CatalogError,
     "not both"),
    (Table({"ra": [10.68], "dec": [41.27], "mag": [22.5]}), {"mag_limit": 21}, CatalogError,
     r"no row has mag <= 21 \(its finite values span 22.5 .. 22.5\)"),
    (Table({"ra": [10.68], "dec": [41.27], "mag": [np.nan]}), {"mag_limit": 21}, CatalogError,
     "no row has mag <= 21 .it has no finite values"),
    (Table({"ra": [10.68], "dec": [41.27]}), {"mag_limit": 21}, CatalogError,
     "needs a magnitude column"),
    (Table({"ra": [10.68], "dec": [41.27]}), {"mag_col": "imag"}, CatalogError,
     "no column 'imag' for magnitudes"),
    (Table({"ra": [np.nan, np.nan], "dec": [41.27, 41.28]}), {}, CatalogError,
     r"no usable position in columns ra, dec: all 2 rows have non-finite or out-of-range"),
    (Table({"ra": [np.nan, 10.68, 10.68], "dec": [41.27, 95.0, 41.27], "mag": [20, 20.5, 22]}),
     {"mag_limit": 21}, CatalogError, r"no usable position in columns ra, dec among the rows "
     r"with mag <= 21: all 2 rows with mag <= 21 have non-finite or out-of-range"),
])
def test_catalog_errors_name_the_file(field, tmp_path, table, options, error, match):
    path = tmp_path / "bad_cat.fits"
    table.write(path)
    with pytest.raises(error, match=match) as exc:
        CatalogSource(path, **options).bind(field, TilePlan(SHAPE, core=128, halo=16))
    _one_line(exc, "bad_cat.fits")


@pytest.mark.parametrize("limit", ["faint", float("nan"), True])
def test_catalog_bad_magnitude_limit(limit):
    with pytest.raises(ConfigError, match=r"magnitude limit .* is not a finite number") as exc:
        CatalogSource("c.fits", mag_limit=limit)
    _one_line(exc, "c.fits")


def test_catalog_extension_spec(field, sky_catalog):
    path, table = sky_catalog
    source = CatalogSource(f"{path}[1]", mag_limit=22.0)
    source.bind(field, TilePlan(SHAPE, core=128, halo=16))
    assert source.fingerprint()["file"]["ext"] == "1"
    assert source.fingerprint()["file"]["path"] == str(path.resolve())
    assert len(source.passthrough()) == np.count_nonzero(np.asarray(table["mag"]) <= 22.0)


def test_catalog_missing_file_and_unbound_use(tmp_path, field):
    with pytest.raises(CatalogError, match="no such catalog file") as exc:
        CatalogSource(tmp_path / "nope.fits").bind(field, TilePlan(SHAPE, core=128))
    _one_line(exc, "nope.fits")
    source = CatalogSource(tmp_path / "nope.fits")
    assert source.describe() == "catalog nope.fits (not read yet)"
    with pytest.raises(RuntimeError, match="bind"):
        source.fingerprint()


# -- detection ---------------------------------------------------------------------------


def _match(x, y, truth, tol=1.0):
    """Index of the detection within tol of each truth position (-1 if none); asserts
    that no truth position has two."""
    d = np.hypot(x[None, :] - truth[:, 0, None], y[None, :] - truth[:, 1, None])
    near = d < tol
    assert np.all(near.sum(axis=1) <= 1), "a source detected twice"
    return np.where(near.any(axis=1), np.argmax(near, axis=1), -1)


@pytest.fixture(scope="module")
def detections(field):
    """Detections (x, y, parts) for band -> core; threshold 5 sigma."""
    out = {}
    for band, core in (("sum", 64), ("sum", 128), ("sum", 4096), ("g", 64), ("i", 64)):
        parts = _scan(DetectSource(band=band, threshold=5), field,
                      TilePlan(SHAPE, core=core, halo=16))
        x, y, row = _cat(parts)
        assert np.all(row == -1)
        out[band, core] = x, y, parts
    return out


@pytest.mark.parametrize(("band", "core"), [("sum", 64), ("sum", 128), ("sum", 4096),
                                            ("g", 64)])
def test_detection_finds_every_source_once(detections, band, core):
    x, y, _ = detections[band, core]
    idx = _match(x, y, TRUTH)
    assert np.all(idx >= 0), f"missed {TRUTH[idx < 0]}"
    assert len(x) == len(TRUTH), "spurious detections"
    dist = np.hypot(x[idx] - TRUTH[:, 0], y[idx] - TRUTH[:, 1])
    assert dist.max() < 0.3
    # nothing in (or leaking from) the blank corner
    assert not np.any((y > NAN_ROWS[0]) & (x < NAN_COLS[1]))


def test_detection_border_sources_owned_once(detections):
    x, y, parts = detections["sum", 64]
    border = TRUTH[np.isin(TRUTH[:, 0], BORDER[:, 0])]
    assert len(border) == len(BORDER)
    idx = _match(x, y, border)
    assert np.all(idx >= 0)
    owners = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    assert len(set(owners[idx])) > 3   # they really sit in different tiles


def test_detection_named_band(detections):
    xg, yg, _ = detections["g", 64]
    xi, yi, _ = detections["i", 64]
    assert _match(xg, yg, TRUTH[[G_ONLY]])[0] >= 0
    assert _match(xi, yi, TRUTH[[G_ONLY]])[0] == -1
    rest = np.delete(TRUTH, G_ONLY, axis=0)
    assert np.all(_match(xi, yi, rest) >= 0) and len(xi) == len(rest)


def _sorted(x, y):
    order = np.lexsort((x, y))
    return x[order], y[order]


def test_detection_does_not_depend_on_the_tiling(detections):
    """Positions are a function of the pixels near each peak: bitwise the same per tiling."""
    ref = _sorted(*detections["sum", 4096][:2])
    for core in (64, 128):
        got = _sorted(*detections["sum", core][:2])
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


def test_detection_on_ownership_borders(tmp_path):
    """Sources within hundredths of a pixel of core borders: each owned exactly once."""
    shape = (192, 192)
    eps = np.array([-0.06, -0.03, -0.01, 0.0, 0.01, 0.03, 0.06])
    ys = 8.0 + 14.0 * np.arange(len(eps))            # along the border x = 63.5 ...
    vertical = np.c_[63.5 + eps, ys]
    horizontal = np.c_[ys + 90.0, 127.5 + eps[::-1]]  # ... and y = 127.5
    corner = np.array([[127.5 + 0.02, 63.5 - 0.01]])
    truth = np.concatenate([vertical, horizontal, corner])
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = 20 + rng.normal(0, 1, shape)
    for x, y in truth:
        img += 30 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    fits.PrimaryHDU(img.astype(np.float32), header=make_wcs(shape).to_header()).writeto(
        tmp_path / "b.fits")
    with Mosaic.open([tmp_path / "b.fits"], bands=["r"]) as mosaic:
        ref = None
        for core, halo in ((32, 8), (64, 16), (64, 8), (192, 8)):
            x, y, _ = _cat(_scan(DetectSource(threshold=5), mosaic,
                                 TilePlan(shape, core=core, halo=halo)))
            idx = _match(x, y, truth, tol=0.5)
            assert np.all(idx >= 0) and len(x) == len(truth)
            got = _sorted(x, y)
            if ref is None:
                ref = got
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])


def test_detection_order_and_columns(detections):
    for part in detections["sum", 128][2]:
        assert np.all(np.diff(part.y) >= 0)            # sorted by y (then x)
        assert np.all(part.columns["npix"] >= 5)
        assert np.all(part.columns["flux"] > 0)
        assert np.all(part.columns["a"] >= part.columns["b"])


def test_detection_blank_tiles(field):
    plan = TilePlan(SHAPE, core=64, halo=16)
    source = DetectSource()
    source.bind(field, plan)
    tile = plan[4 * plan.ncols]               # bottom-left: its whole window is blank
    pixels = field.read(*tile.window)
    assert np.isnan(pixels).all()
    empty = source.positions(tile, pixels)
    assert len(empty) == 0 and empty.columns.keys() == DETECT_COLUMNS.keys()
    # a window with only a sliver of data (no background mesh half full) finds nothing
    sliver = plan[3 * plan.ncols]
    assert len(source.positions(sliver, field.read(*sliver.window))) == 0
    assert len(source.off_image()) == 0 and source.passthrough() is None
    assert source.count(tile) is None


def test_detection_grows_sep_buffers_and_reports_failure(field, monkeypatch):
    plan = TilePlan(SHAPE, core=128, halo=16)
    source = DetectSource(threshold=5)
    source.bind(field, plan)
    tile = plan[1]
    pixels = field.read(*tile.window)
    want = source.positions(tile, pixels)
    old = sep.get_extract_pixstack()
    try:
        sep.set_extract_pixstack(20)      # far below one source's pixels
        got = source.positions(tile, pixels)
        assert sep.get_extract_pixstack() > 20
    finally:
        sep.set_extract_pixstack(old)
    np.testing.assert_array_equal(got.x, want.x)

    def full(*args, **kwargs):
        raise Exception("internal pixel buffer full: The limit of 1 active object pixels ...")

    monkeypatch.setattr(sep, "extract", full)
    monkeypatch.setattr(sep, "get_extract_pixstack", lambda: 1 << 40)
    with pytest.raises(DetectionError, match=r"tile 1 \(rows -16..143, columns 112..271\) is "
                                             "beyond SEP's limits") as exc:
        source.positions(tile, pixels)
    assert "\n" not in str(exc.value)


def test_peak_climb_is_start_independent_on_flat_tops():
    """A saturated (flat) top: every start on it ends on one pixel, half-way between ties."""
    yy, xx = np.mgrid[:40, :40]
    raw = (1000 * np.exp(-((xx - 20.3) ** 2 + (yy - 17.8) ** 2) / 18)).astype(np.float32)
    raw = np.minimum(raw, np.float32(600)).round()          # flat, integer-valued top
    top_y, top_x = np.nonzero(raw == 600)
    assert len(top_x) > 9
    ax, ay, dx, dy = _peak_positions(raw, np.r_[top_x, 14, 27], np.r_[top_y, 12, 23])
    assert len(set(zip(ax.tolist(), ay.tolist(), strict=True))) == 1
    assert np.ptp(ax + dx) == 0 and np.ptp(ay + dy) == 0
    assert abs(ax[0] + dx[0] - 20.3) < 1.0 and abs(ay[0] + dy[0] - 17.8) < 1.0
    # a two-pixel top: the position is half-way between them
    two = np.zeros((9, 9), np.float32)
    two[4, 3:5] = 9
    ax, ay, dx, dy = _peak_positions(two, np.array([4, 3]), np.array([4, 4]))
    np.testing.assert_array_equal(ax + dx, [3.5, 3.5])
    np.testing.assert_array_equal(ay + dy, [4.0, 4.0])


def test_sum_weights_follow_band_noise(field):
    source = DetectSource()
    source.bind(field, TilePlan(SHAPE, core=128, halo=16))
    wg, wi = source.fingerprint()["band_weights"]
    assert wg / wi == pytest.approx(2.0, rel=0.1)    # noise 1 in g, 2 in i
    assert "noise-weighted sum of the bands" in source.describe()


@pytest.mark.parametrize(("options", "match"), [
    ({"threshold": 0}, "threshold 0 is not accepted"),
    ({"threshold": float("nan")}, "threshold nan"),
    ({"min_area": 0}, "minimum area 0 is not accepted; an integer 1.."),
    ({"min_area": 2.5}, "minimum area 2.5"),
    ({"min_area": float("inf")}, "minimum area inf"),
    ({"background_box": 4}, "background box 4"),
    ({"band": ""}, "band '' is not accepted"),
    ({"deblend": "yes"}, "deblend 'yes'"),
    ({"mag_limit": float("nan")}, "magnitude limit nan is not accepted"),
    ({"mag_limit": "21"}, "magnitude limit '21'"),
    ({"zero_point": float("inf")}, "zero point inf"),
    ({"aperture": 0}, "aperture 0.0 is not accepted; a radius in pixels > 0"),
    ({"aperture": -3}, "aperture -3.0"),
    ({"aperture": None}, "aperture None"),
    ({"mag_band": ""}, "magnitude band '' is not accepted"),
])
def test_detection_option_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        DetectSource(**options)


def test_detection_band_and_halo_checked_at_bind(field):
    with pytest.raises(ConfigError, match="band 'r' is not a band of the mosaic; accepted: "
                                          "sum, g, i"):
        DetectSource(band="r").bind(field, TilePlan(SHAPE, core=128, halo=16))
    source = DetectSource(band="G")   # case-insensitive when unambiguous
    source.bind(field, TilePlan(SHAPE, core=128, halo=16))
    assert source.fingerprint()["band"] == "g"
    with pytest.raises(ConfigError, match="tile halo is 4 px; detection needs at least 8"):
        DetectSource().bind(field, TilePlan(SHAPE, core=128, halo=4))


def test_detection_bands_compare_by_the_one_band_rule(field):
    """band= and mag_band= find bands as Mosaic matching does (pyengine.bands): MegaCam
    filter names match their band letter, any case; names are shown as the mosaic's."""
    plan = TilePlan(SHAPE, core=128, halo=16)
    with Mosaic.open(field.paths, bands=["g.MP9401", "i.MP9702"]) as megacam:
        source = DetectSource(band="G", mag_band="i", zero_point=30.0)
        source.bind(megacam, plan)
        fp = source.fingerprint()
        assert (fp["band"], fp["mag_band"]) == ("g.MP9401", "i.MP9702")
        assert "band g.MP9401" in source.describe()
        with pytest.raises(ConfigError, match="magnitude band 'r' is not a band of the mosaic; "
                                              r"accepted: g\.MP9401, i\.MP9702"):
            DetectSource(mag_band="r", zero_point=30.0).bind(megacam, plan)
    source = DetectSource(band="i.MP9702")  # the plain-named mosaic: i
    source.bind(field, plan)
    assert source.fingerprint()["band"] == "i"


def test_detection_fingerprint_and_pickle(field):
    plan = TilePlan(SHAPE, core=128, halo=16)
    a, b = DetectSource(), DetectSource(threshold=4)
    a.bind(field, plan)
    b.bind(field, plan)
    json.dumps(a.fingerprint())
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint()["sep"] == sep.__version__
    assert "threshold 3 sigma" in a.describe()
    clone = pickle.loads(pickle.dumps(a))
    tile = plan[3]
    pixels = field.read(*tile.window)
    np.testing.assert_array_equal(clone.positions(tile, pixels).x, a.positions(tile, pixels).x)


# -- detection magnitudes -----------------------------------------------------------------

PHOT_SHAPE = (160, 200)
ZP_I, ZP_G = 30.0, 28.0
# (x, y, true i magnitude): isolated, none within 0.2 mag of 21; some on the core borders
# of 64 px cores (x or y = 63.5, 127.5).
PHOT = np.array([(20.3, 20.7, 19.0), (63.6, 30.2, 20.5), (100.2, 24.9, 22.0),
                 (150.7, 40.1, 23.0), (180.4, 20.2, 20.0), (30.1, 70.4, 21.5),
                 (70.2, 63.45, 19.5), (127.4, 80.3, 22.5), (170.3, 100.6, 20.8),
                 (40.6, 130.2, 22.2), (100.8, 127.6, 20.2), (160.2, 140.4, 21.3)])
PHOT_FLUX = 10 ** (0.4 * (ZP_I - PHOT[:, 2]))    # total i counts; g has half of them


def _flux_gaussians(shape, points, flux):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape)
    norm = 2 * np.pi * SIGMA_PSF**2
    for (x, y), f in zip(points, flux, strict=True):
        out += f / norm * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA_PSF**2))
    return out


@pytest.fixture(scope="module")
def phot_field(tmp_path_factory):
    """g, i mosaic with sources of known flux; zero points MAGZPT (i) and PHOTZP (g)."""
    root = tmp_path_factory.mktemp("phot")
    rng = np.random.default_rng(7)
    paths = []
    for name, sky, share, keys in (("g", 80.0, 0.5, {"PHOTZP": ZP_G}),
                                   ("i", 200.0, 1.0, {"MAGZPT": ZP_I, "ZP": 99.0})):
        data = sky + rng.normal(0, 1, PHOT_SHAPE) + _flux_gaussians(
            PHOT_SHAPE, PHOT[:, :2], share * PHOT_FLUX)
        header = make_wcs(PHOT_SHAPE).to_header()
        header.update(keys)
        paths.append(root / f"{name}.fits")
        fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(paths[-1])
    with Mosaic.open(paths, bands=["g", "i"]) as mosaic:
        yield mosaic


def _phot_scan(mosaic, core, **options):
    """(x, y, columns) of a detection scan, concatenated over tiles."""
    source = DetectSource(threshold=5, **options)
    parts = _scan(source, mosaic, TilePlan(PHOT_SHAPE, core=core, halo=16))
    x, y, _ = _cat(parts)
    columns = {k: np.concatenate([p.columns[k] for p in parts]) for k in source.column_dtypes}
    return source, x, y, columns


def test_detection_magnitudes_from_the_header(phot_field):
    source, x, y, cols = _phot_scan(phot_field, 64)
    assert list(source.column_dtypes) == [*DETECT_COLUMNS, *MAG_COLUMNS]
    idx = _match(x, y, PHOT[:, :2])
    assert np.all(idx >= 0) and len(x) == len(PHOT)
    mag, err = cols["mag"][idx], cols["mag_err"][idx]
    np.testing.assert_allclose(mag, PHOT[:, 2], atol=0.1)      # i (last band), MAGZPT
    assert np.all((err > 0) & (err < 0.05))
    # the error is the background noise (1 per pixel) over the 8 px aperture
    np.testing.assert_allclose(err * PHOT_FLUX / 1.0857, np.sqrt(np.pi * 64), rtol=0.15)
    fp = source.fingerprint()
    assert (fp["mag_band"], fp["zero_point"], fp["zero_point_from"]) == ("i", ZP_I, "MAGZPT")
    assert fp["mag_limit"] is None and fp["aperture"] == fp["aperture_used"] == 8.0
    assert "magnitudes in band i, aperture radius 8 px, zero point 30 (MAGZPT)" in (
        source.describe())
    # detecting on g measures g (its PHOTZP) by default; mag_band picks another band
    source, x, y, cols = _phot_scan(phot_field, 128, band="g")
    idx = _match(x, y, PHOT[:, :2])
    truth_g = ZP_G - 2.5 * np.log10(0.5 * PHOT_FLUX)
    np.testing.assert_allclose(cols["mag"][idx], truth_g, atol=0.1)
    assert source.fingerprint()["zero_point_from"] == "PHOTZP"
    source, x, y, cols = _phot_scan(phot_field, 128, band="g", mag_band="I")
    np.testing.assert_allclose(cols["mag"][_match(x, y, PHOT[:, :2])], PHOT[:, 2], atol=0.1)
    assert source.fingerprint()["mag_band"] == "i"


def test_detection_magnitude_cut_keeps_the_bright_ones(phot_field):
    bright = PHOT[PHOT[:, 2] <= 21]
    assert 0 < len(bright) < len(PHOT)
    _, x_all, y_all, cols_all = _phot_scan(phot_field, 4096)
    ref = None
    for core in (4096, 64):
        source, x, y, cols = _phot_scan(phot_field, core, mag_limit=21)
        idx = _match(x, y, bright[:, :2])
        assert np.all(idx >= 0) and len(x) == len(bright)
        assert np.all(cols["mag"] <= 21) and "keeps mag <= 21" in source.describe()
        got = _sorted(x, y)
        if ref is None:
            ref = got
        # the kept positions are bitwise those of the uncut scan, for every tile size
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        keep = np.isin(x_all, x) & np.isin(y_all, y)
        assert keep.sum() == len(bright)
        np.testing.assert_allclose(np.sort(cols["mag"]), np.sort(cols_all["mag"][keep]),
                                   atol=0.01)


def test_detection_zero_point_given_overrides_the_header(phot_field, field):
    _, x, y, cols = _phot_scan(phot_field, 128)
    _, x2, y2, cols2 = _phot_scan(phot_field, 128, zero_point=25.0)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_allclose(cols2["mag"], cols["mag"] - 5.0, atol=1e-4)
    np.testing.assert_array_equal(cols2["mag_err"], cols["mag_err"])
    # a mosaic without zero-point keys: magnitudes only with one given
    source = DetectSource(zero_point=30.0)
    source.bind(field, TilePlan(SHAPE, core=128, halo=16))
    assert "mag" in source.column_dtypes
    assert source.fingerprint()["zero_point_from"] == "given"


def test_detection_without_a_zero_point(field):
    plan = TilePlan(SHAPE, core=128, halo=16)
    source = DetectSource(threshold=5)
    source.bind(field, plan)     # no zero point and no cut: no magnitude columns
    assert source.column_dtypes == DETECT_COLUMNS
    assert source.fingerprint()["zero_point"] is None
    assert "no magnitudes (no zero point in the band i header)" in source.describe()
    tile = plan[1]
    got = source.positions(tile, field.read(*tile.window))
    assert len(got) > 0 and list(got.columns) == list(DETECT_COLUMNS)
    keys = ", ".join(ZERO_POINT_KEYS)
    assert keys == "MAGZPT, PHOTZP, MAGZERO, ZEROPT, ZP, MAGZP"
    with pytest.raises(ConfigError, match=rf"i\.fits: a magnitude limit needs a photometric zero "
                                          rf"point and the header has none of {keys}; pass "
                                          r"--zero-point") as exc:
        DetectSource(mag_limit=21).bind(field, plan)
    _one_line(exc, "i.fits")
    with pytest.raises(ConfigError, match=r"g\.fits: magnitudes in band 'g' needs .* "
                                          r"--zero-point"):
        DetectSource(mag_band="g").bind(field, plan)


def test_detection_magnitude_band_and_header_checked_at_bind(phot_field, tmp_path):
    plan = TilePlan(PHOT_SHAPE, core=128, halo=16)
    with pytest.raises(ConfigError, match=r"magnitude band 'r' is not a band of the mosaic; "
                                          r"accepted: g, i$"):
        DetectSource(mag_band="r").bind(phot_field, plan)
    header = make_wcs((32, 32)).to_header()
    header["MAGZPT"] = "thirty"
    fits.PrimaryHDU(np.zeros((32, 32), np.float32), header=header).writeto(tmp_path / "z.fits")
    with Mosaic.open([tmp_path / "z.fits"], bands=["r"]) as mosaic, pytest.raises(
            ConfigError, match=r"z\.fits: header zero point MAGZPT = 'thirty' is not a finite "
                               r"number; fix the header or pass --zero-point"):
        DetectSource().bind(mosaic, TilePlan((32, 32), core=32, halo=16))


def test_detection_magnitude_fingerprint_and_aperture_clamp(phot_field):
    plan = TilePlan(PHOT_SHAPE, core=128, halo=16)

    def bound(**options):
        s = DetectSource(**options)
        s.bind(phot_field, plan)
        return s

    base = bound().fingerprint()
    json.dumps(base)
    assert bound().fingerprint() == base
    for options in ({"mag_limit": 21}, {"mag_band": "g"}, {"zero_point": 29.0},
                    {"aperture": 6}):
        assert bound(**options).fingerprint() != base, options
    assert bound(mag_limit=21).fingerprint() != bound(mag_limit=22).fingerprint()
    wide = bound(aperture=40)        # beyond the 16 px halo: clamped to it
    assert (wide.fingerprint()["aperture"], wide.fingerprint()["aperture_used"]) == (40.0, 16.0)
    assert "aperture radius 16 px (asked 40, clamped to the tile halo)" in wide.describe()
    assert "keeps mag <= 21" in DetectSource(mag_limit=21).describe()   # before bind too
    clone = pickle.loads(pickle.dumps(bound(mag_limit=21)))
    tile = plan[0]
    got = clone.positions(tile, phot_field.read(*tile.window))
    assert list(got.columns) == [*DETECT_COLUMNS, *MAG_COLUMNS]
    assert np.all(got.columns["mag"] <= 21)


# -- grid --------------------------------------------------------------------------------


@pytest.mark.parametrize(("stride", "offset", "core"), [(16, None, 64), (7, 3, 50), (1, 0, 128),
                                                        (500, 5, 64)])
def test_grid_covers_the_image_once(field, stride, offset, core):
    source = GridSource(stride, offset=offset)
    plan = TilePlan(SHAPE, core=core, halo=16)
    parts = _scan(source, field, plan)
    off = source.offset
    assert off == (stride // 2 if offset is None else offset)
    x, y, _ = _cat(parts)
    gx, gy = np.arange(off, SHAPE[1], stride), np.arange(off, SHAPE[0], stride)
    assert source.grid_shape() == (len(gy), len(gx))
    assert len(x) == len(gx) * len(gy)
    j, i = source.grid_index(x, y)
    flat = j * len(gx) + i
    np.testing.assert_array_equal(np.sort(flat), np.arange(len(x)))    # every point once
    np.testing.assert_array_equal(x, gx[i])
    np.testing.assert_array_equal(y, gy[j])
    for part in parts:   # row-major within a tile
        pj, pi = source.grid_index(part.x, part.y)
        assert np.all(np.diff(pj * len(gx) + pi) > 0)
    assert len(source.off_image()) == 0 and source.passthrough() is None
    assert source.fingerprint() == {"kind": "grid", "stride": stride, "offset": off,
                                    "grid_shape": [len(gy), len(gx)]}


@pytest.mark.parametrize(("stride", "offset", "match"), [
    (0, None, "grid stride 0 is not accepted"),
    (2.5, None, "grid stride 2.5"),
    (8, 8, r"grid offset 8 is not accepted; an integer 0..7"),
    (8, -1, "grid offset -1"),
])
def test_grid_option_errors(stride, offset, match):
    with pytest.raises(ConfigError, match=match):
        GridSource(stride, offset=offset)


def test_grid_with_no_point_on_the_image(field):
    with pytest.raises(ConfigError, match="stride 1000 with offset 500 puts no point on the "
                                          "300 x 410 image"):
        GridSource(1000).bind(field, TilePlan(SHAPE, core=128))


# -- factory and containers --------------------------------------------------------------


def test_make_source(tmp_path):
    assert isinstance(make_source(), DetectSource)
    assert isinstance(make_source(catalog="c.fits", mag_limit=None), CatalogSource)
    grid = make_source(stride=8, offset=None, threshold=None)
    assert isinstance(grid, GridSource) and grid.offset == 4
    detect = make_source("detect", threshold=4.5, band="g", mag_limit=None)
    assert detect.threshold == 4.5 and detect.band == "g"
    detect = make_source("detect", mag_limit=21, mag_band="i", zero_point=30.0, aperture=6)
    assert (detect.mag_limit, detect.mag_band, detect.zero_point, detect.aperture) == (
        21.0, "i", 30.0, 6.0)
    with pytest.raises(ConfigError, match=r"grid source: option\(s\) threshold do not apply; "
                                          r"accepted: offset"):
        make_source(stride=8, threshold=3)
    with pytest.raises(ConfigError, match=r"detect source: option\(s\) catalog do not apply"):
        make_source("detect", catalog="c.fits", mag_limit=21)
    with pytest.raises(ConfigError, match=r"grid source: option\(s\) aperture, mag_band"):
        make_source(stride=8, mag_band="i", aperture=5)
    with pytest.raises(ConfigError, match="kind 'dense' is not known; accepted: catalog, "
                                          "detect, grid"):
        make_source("dense")
    with pytest.raises(ConfigError, match="no catalog file given"):
        make_source("catalog")
    with pytest.raises(ConfigError, match="no stride given"):
        make_source("grid")


def test_tile_positions_container():
    empty = TilePositions.empty([("flux", np.float32), ("npix", np.int32)])
    assert len(empty) == 0 and empty.columns["npix"].dtype == np.int32
    assert len(TilePositions.empty()) == 0
    with pytest.raises(ValueError, match="unequal length"):
        TilePositions(np.zeros(2), np.zeros(2), np.zeros(1, np.int64))
