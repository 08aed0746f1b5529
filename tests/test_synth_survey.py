"""Tests of synthetic surveys (``pyengine synth --survey``): overlapping fields of one sky."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError
from pyengine.survey.manifest import Survey, footprint_corners
from pyengine.synth import DEFAULT_BANDS, SynthConfig, make_field
from pyengine.synth.catalog import CELL, Objects, draw_cell
from pyengine.synth.profiles import PSF
from pyengine.synth.survey import (
    PlacedObject,
    SurveyConfig,
    SurveyLayout,
    make_survey,
    parse_grid,
)

NO_DISK = tuple(dataclasses.replace(b, disk_mu0=40.0) for b in DEFAULT_BANDS)
EMPTY = {"rgb_density": 0.0, "halo_rgb_density": 0.0, "foreground_density": 0.0,
         "galaxy_density": 0.0, "cluster_density": 0.0, "halo_cluster_density": 0.0}
SCALE = 0.187
# A populated sky: clusters, galaxies and stars in every overlap.
BUSY = SurveyConfig(3, 2, field_size=300, overlap=0.2, rotation_deg=3.0, dither=10.0,
                    base=SynthConfig(seed=4, cluster_density=3e4, galaxy_density=1e5,
                                     foreground_density=2e4, rgb_density=0.01))
# An empty, flat sky (no disk) for measuring placed objects, noise and seeing.
QUIET = SurveyConfig(3, 2, field_size=256, overlap=0.25, rotation_deg=5.0, dither=20.0,
                     seeing_spread=0.15, depth_spread=0.4,
                     base=SynthConfig(seed=10, bands=NO_DISK, **EMPTY))
CORNER = ("F00", "F10", "F01", "F11")


def _three_way(layout, **limits):
    """A position inside exactly three of the fields round the first grid corner."""
    for trio in itertools.combinations(CORNER, 3):
        try:
            return trio, layout.find_point(trio, **limits)
        except ConfigError:
            continue
    raise AssertionError("no 3-way overlap at the first corner of this layout")


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """BUSY with clusters placed on a boundary and in 3- and 4-way overlaps."""
    layout = SurveyLayout(BUSY)
    trio, p3 = _three_way(layout)
    where = {"boundary": (layout.midpoint("F00", "F10"), ("F00", "F10")),
             "vertical": (layout.midpoint("F10", "F11"), ("F10", "F11")),
             "three": (p3, trio), "four": (layout.midpoint(*CORNER), CORNER)}
    placed = [PlacedObject(*pos, kind="cluster", i_mag=18.0, r_h_pc=3.0)
              for pos, _ in where.values()]
    result = make_survey(tmp_path_factory.mktemp("busy"), BUSY, extra_objects=placed)
    return result, layout, where


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """QUIET with bright stars in a 2-, 3- and 4-way overlap and an elongated galaxy on
    the boundary of the vertical pair whose rotations differ most."""
    layout = SurveyLayout(QUIET)
    # Far enough inside its three fields for a centroid window of 12 px.
    trio, p3 = _three_way(layout, inside=14.0, outside=2.0)
    pair = max((("F00", "F01"), ("F20", "F21")), key=lambda p: abs(
        layout.field(p[0]).config.rotation_deg - layout.field(p[1]).config.rotation_deg))
    stars = {"two": layout.midpoint("F00", "F10"), "three": p3,
             "four": layout.midpoint("F10", "F20", "F11", "F21")}
    holders = {"two": ("F00", "F10"), "three": trio, "four": ("F10", "F20", "F11", "F21")}
    galaxy = PlacedObject(*layout.midpoint(*pair), kind="galaxy", i_mag=17.8, r_e_arcsec=1.2,
                          sersic_n=1.0, q=0.35, pa_deg=30.0)
    placed = [PlacedObject(*pos, kind="star", i_mag=18.5, g_i=1.0) for pos in stars.values()]
    result = make_survey(tmp_path_factory.mktemp("quiet"), QUIET,
                         extra_objects=[*placed, galaxy])
    return result, layout, stars, galaxy, pair, holders


def _image(result, field_id, band="i"):
    path, hdu = result.fields[field_id].images[band]
    with fits.open(path) as hdul:
        return hdul[hdu].data.astype(np.float64), hdul[hdu].header.copy()


def _truth(path):
    return Table.read(path, mask_invalid=False)


def _centroid(data, x, y, sky, r=12.0):
    """Flux-weighted centroid in a circle of radius r, recentred until it settles,
    starting from the brightest pixel within 6 px of (x, y)."""
    yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
    near = (xx - x) ** 2 + (yy - y) ** 2 <= 36
    k = np.argmax(np.where(near, data, -np.inf))
    cx, cy = float(xx.flat[k]), float(yy.flat[k])
    for _ in range(30):
        w = np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, data - sky, 0.0)
        nx, ny = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
        if abs(nx - cx) + abs(ny - cy) < 1e-6:
            break
        cx, cy = nx, ny
    return cx, cy, w


def _holding(truth, placed_index):
    """Field ids holding the placed object of that index (survey truth order)."""
    rows = truth[truth["placed"]]
    return str(rows["fields"][placed_index]).split(",")


# -- the manifest and footprints ----------------------------------------------

def test_manifest_reads_back_with_fields_bands_and_footprints(busy):
    result, layout, _ = busy
    survey = Survey.read(result.manifest)
    assert [f.id for f in survey.fields] == ["F00", "F10", "F20", "F01", "F11", "F21"]
    assert survey.bands == ("g", "i")
    for f in survey.fields:
        folder = result.manifest.parent / f.id
        assert f.images == (str((folder / "g.fits").resolve()), str((folder / "i.fits").resolve()))
        assert f.shape == (300, 300)
        assert f.pixel_scale == pytest.approx(SCALE, rel=1e-9)
        for band, path in zip(survey.bands, f.images, strict=True):
            header = fits.getheader(path)
            assert header["FILTER"] == band and header["BUNIT"] == "adu"
            expect = footprint_corners(WCS(header), (300, 300))
            np.testing.assert_allclose(f.corners, expect, rtol=0, atol=1e-10)
        assert (folder / "truth.fits").exists()
    # Footprints are where the layout put each field's tangent point.
    for f, spec in zip(survey.fields, layout.fields, strict=True):
        ra, dec = np.mean(f.corners, axis=0)
        assert ra == pytest.approx(spec.config.ra, abs=1e-4)
        assert dec == pytest.approx(spec.config.dec, abs=1e-4)


def _plane(ra0, dec0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [-SCALE / 3600, SCALE / 3600]
    return w


def _inside(poly, x, y):
    """Signed distance (px) of points inside a convex polygon (negative outside)."""
    d = np.full(np.shape(x), np.inf)
    n = len(poly)
    u, v = poly[1] - poly[0], poly[2] - poly[1]
    sign = np.sign(u[0] * v[1] - u[1] * v[0])
    for k in range(n):
        a, b = poly[k], poly[(k + 1) % n]
        edge = b - a
        cross = edge[0] * (y - a[1]) - edge[1] * (x - a[0])
        d = np.minimum(d, sign * cross / np.hypot(*edge))
    return d


def _polygons(survey, plane):
    return {f.id: np.array(plane.wcs_world2pix(np.array(f.corners), 0)) for f in survey.fields}


def _overlap_along(polys, a, b, centres):
    """Length (px) of the segment between two fields' centres lying in both footprints."""
    t = np.linspace(-0.5, 1.5, 40001)
    p = centres[a][None, :] + t[:, None] * (centres[b] - centres[a])[None, :]
    both = (_inside(polys[a], p[:, 0], p[:, 1]) > 0) & (_inside(polys[b], p[:, 0], p[:, 1]) > 0)
    return both.sum() * (t[1] - t[0]) * np.hypot(*(centres[b] - centres[a]))


def test_neighbouring_footprints_overlap_by_the_asked_fraction(busy):
    result, layout, _ = busy
    survey = Survey.read(result.manifest)
    plane = _plane(BUSY.base.ra, BUSY.base.dec)
    polys = _polygons(survey, plane)
    centres = {f.id: np.array(plane.wcs_world2pix([[f.config.ra, f.config.dec]], 0)[0])
               for f in layout.fields}
    pairs = [("F00", "F10"), ("F10", "F20"), ("F01", "F11"), ("F11", "F21"),
             ("F00", "F01"), ("F10", "F11"), ("F20", "F21")]
    for a, b in pairs:
        length = _overlap_along(polys, a, b, centres)
        line = centres[b] - centres[a]
        separation = np.hypot(*line)
        # The overlap is what the separation of the dithered centres leaves of the two
        # half-widths, each along the line, across the field's rotated edges ...
        half = 0.0
        for f in (a, b):
            poly = polys[f]
            axis = poly[1] - poly[0] if a[2] == b[2] else poly[3] - poly[0]
            cos = abs(axis @ line) / (np.hypot(*axis) * separation)
            half += 0.5 * np.hypot(*axis) / cos
        assert length == pytest.approx(half - separation, abs=0.05)
        # ... about the asked fraction (dither moves each centre by up to 10 px).
        assert length / 300 == pytest.approx(BUSY.overlap, abs=2 * 10 / 300 + 0.01)
    # Without dither and rotation, exactly the asked fraction.
    exact = SurveyLayout(dataclasses.replace(BUSY, dither=0.0, rotation_deg=0.0))
    fake = {f.id: np.array(plane.wcs_world2pix(np.array(footprint_corners(f.wcs, (300, 300))),
                                               0)) for f in exact.fields}
    centres = {f.id: np.array(plane.wcs_world2pix([[f.config.ra, f.config.dec]], 0)[0])
               for f in exact.fields}
    for a, b in pairs:
        assert _overlap_along(fake, a, b, centres) == pytest.approx(0.2 * 300, abs=0.2)


# -- one sky ------------------------------------------------------------------

def test_union_truth_has_each_object_once_with_its_coverage(busy):
    result, _, where = busy
    union = _truth(result.truth)
    assert list(union["id"]) == list(range(1, len(union) + 1))
    assert len(union) > 500
    assert len({(round(r, 10), round(d, 10)) for r, d in zip(union["ra"], union["dec"],
                                                             strict=True)}) == len(union)
    survey = Survey.read(result.manifest)
    holders = {}
    by_id = {int(i): k for k, i in enumerate(union["id"])}
    for f in survey.fields:
        t = _truth(result.manifest.parent / f.id / "truth.fits")
        assert t.colnames == ["id", "ra", "dec", "x", "y", "class", "g_mag", "i_mag", "r_h_pc",
                              "subclass"]
        assert len(set(t["id"])) == len(t)
        rows = np.array([by_id[int(i)] for i in t["id"]])
        # Same object, same sky position, class and magnitudes in the field's catalog.
        np.testing.assert_allclose(t["ra"], union["ra"][rows], rtol=0, atol=1e-9)
        np.testing.assert_allclose(t["dec"], union["dec"][rows], rtol=0, atol=1e-9)
        assert list(t["class"]) == list(union["class"][rows])
        np.testing.assert_array_equal(t["i_mag"], union["i_mag"][rows])
        assert t["x"].min() >= -0.5 and t["x"].max() < 299.5
        for i in t["id"]:
            holders.setdefault(int(i), []).append(f.id)
    # Every object is in at least one field's truth, and exactly in those it names.
    assert set(holders) == set(by_id)
    for row in union:
        assert row["fields"].split(",") == holders[int(row["id"])]
        assert row["n_fields"] == len(holders[int(row["id"])])
    assert (union["n_fields"] >= 2).sum() > 50
    # Coverage counts match the manifest's footprints.
    plane = _plane(BUSY.base.ra, BUSY.base.dec)
    x, y = plane.wcs_world2pix(union["ra"], union["dec"], 0)
    depth = np.array([_inside(p, x, y) for p in _polygons(survey, plane).values()])
    clear = np.all(np.abs(depth) > 1e-3, axis=0)
    assert clear.mean() > 0.99
    np.testing.assert_array_equal((depth > 0).sum(axis=0)[clear], union["n_fields"][clear])
    # The placed clusters: flagged, and on the fields they were put across.
    placed = union[union["placed"]]
    assert len(placed) == len(where)
    assert set(placed["class"]) == {"cluster"}
    assert list(placed["n_fields"]) == [2, 2, 3, 4]
    assert list(placed["fields"]) == [",".join(ids) for _, ids in where.values()]
    assert not union["placed"][:-len(where)].any()


def test_objects_in_overlaps_are_at_one_sky_position(quiet):
    result, _, stars, _, _, holders = quiet
    union = _truth(result.truth)
    for k, (name, (ra, dec)) in enumerate(stars.items()):
        ids = _holding(union, k)
        assert ids == list(holders[name])
        positions = []
        for fid in ids:
            data, h = _image(result, fid)
            wcs = WCS(h)
            x, y = wcs.wcs_world2pix([[ra, dec]], 0)[0]
            assert 13 < x < 242 and 13 < y < 242, (name, fid)   # the window fits
            cx, cy, _ = _centroid(data, x, y, h["SKYLEVEL"])
            positions.append(SkyCoord(*wcs.wcs_pix2world([[cx, cy]], 0)[0], unit="deg"))
        truth = SkyCoord(ra, dec, unit="deg")
        for p in positions:
            assert p.separation(truth).arcsec < 0.1 * SCALE, name
        for p, q in itertools.combinations(positions, 2):
            assert p.separation(q).arcsec < 0.1 * SCALE, name


def test_light_of_objects_beyond_an_edge_reaches_the_field(quiet):
    """The 3-way star lies just beyond the fourth corner field's edge: that field holds
    no truth row for it but receives its PSF wings, as its neighbours' pixels do."""
    result, layout, stars, *_ = quiet
    union = _truth(result.truth)
    holders = _holding(union, 1)
    (other,) = set(CORNER) - set(holders)
    data, h = _image(result, other)
    x, y = WCS(h).wcs_world2pix([stars["three"]], 0)[0]
    assert layout.field(other).depth_inside(x, y) < -2.0       # beyond the edge
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(xx - x, yy - y)
    near = r <= 8
    assert near.sum() > 10
    psf = PSF(h["SEEING"] / SCALE, h["PSFBETA"])
    expect = 10 ** (0.4 * (h["MAGZPT"] - 18.5)) * psf.value(r[near]).sum()
    assert (data[near] - h["SKYLEVEL"]).sum() == pytest.approx(expect, rel=0.1)


def test_rotation_is_applied_and_placed_objects_land_right(quiet):
    result, layout, _, galaxy, pair, _ = quiet
    cds = {}
    for f in layout.fields:
        _, h = _image(result, f.id)
        cd = np.array([[h["CD1_1"], h["CD1_2"]], [h["CD2_1"], h["CD2_2"]]])
        cds[f.id] = cd
        # CROTA2's CD matrix: north points rotation_deg from +y towards -x.
        angle = math.degrees(math.atan2(-cd[0, 1], cd[1, 1]))
        assert angle == pytest.approx(f.config.rotation_deg, abs=1e-9)
        assert abs(f.config.rotation_deg) <= QUIET.rotation_deg
    assert len({round(math.degrees(math.atan2(-c[0, 1], c[1, 1])), 3) for c in cds.values()}) == 6
    # The elongated galaxy has one position and orientation on the sky in both fields,
    # though its major axis points differently on the two pixel grids.
    union = _truth(result.truth)
    assert _holding(union, 3) == list(pair)
    angles = []
    for fid in pair:
        data, h = _image(result, fid)
        wcs = WCS(h)
        x, y = wcs.wcs_world2pix([[galaxy.ra, galaxy.dec]], 0)[0]
        cx, cy, w = _centroid(data, x, y, h["SKYLEVEL"], r=15.0)
        centre = SkyCoord(*wcs.wcs_pix2world([[cx, cy]], 0)[0], unit="deg")
        assert centre.separation(SkyCoord(galaxy.ra, galaxy.dec, unit="deg")).arcsec < 0.02
        yy, xx = np.mgrid[:data.shape[0], :data.shape[1]]
        mxx, myy = (w * (xx - cx) ** 2).sum(), (w * (yy - cy) ** 2).sum()
        mxy = (w * (xx - cx) * (yy - cy)).sum()
        theta = 0.5 * math.atan2(2 * mxy, mxx - myy)        # from +x, on this grid
        tip = SkyCoord(*wcs.wcs_pix2world([[cx + math.cos(theta), cy + math.sin(theta)]], 0)[0],
                       unit="deg")
        sky_pa = centre.position_angle(tip).deg % 180.0
        assert sky_pa == pytest.approx(galaxy.pa_deg, abs=1.0)
        angles.append(math.degrees(theta))
    turn = abs(layout.field(pair[0]).config.rotation_deg - layout.field(pair[1]).config.rotation_deg)
    assert turn > 2.0
    assert abs(angles[0] - angles[1]) == pytest.approx(turn, abs=1.0)


def test_fields_have_their_own_seeing_and_noise(quiet):
    result, layout, stars, *_ = quiet
    union = _truth(result.truth)
    sigmas, seeings = [], []
    for f in layout.fields:
        data, h = _image(result, f.id)
        assert h["SEEING"] == f.config.band("i").seeing and h["GAIN"] == f.config.band("i").gain
        # Away from every placed object (some lie just beyond this field's edge).
        yy, xx = np.mgrid[:256, :256]
        clear = np.ones(data.shape, bool)
        for x, y in WCS(h).wcs_world2pix(np.c_[union["ra"], union["dec"]], 0):
            clear &= (xx - x) ** 2 + (yy - y) ** 2 > 40**2
        expect = math.sqrt(h["SKYLEVEL"] / h["GAIN"] + (h["RDNOISE"] / h["GAIN"]) ** 2)
        assert np.std(data[clear]) == pytest.approx(expect, rel=0.03)
        assert np.mean(data[clear]) == pytest.approx(h["SKYLEVEL"], abs=0.05 * expect)
        sigmas.append(expect)
        seeings.append(h["SEEING"])
    assert max(sigmas) > 1.2 * min(sigmas)
    # Each field's noise is its own (not one pattern scaled): uncorrelated pixel by pixel.
    a, ha = _image(result, "F00")
    b, hb = _image(result, "F10")
    assert abs(np.corrcoef((a - ha["SKYLEVEL"]).ravel(), (b - hb["SKYLEVEL"]).ravel())[0, 1]) < 0.02
    assert len(set(seeings)) == 6 and max(seeings) > 1.1 * min(seeings)
    # The 4-way star's width follows each field's own PSF.
    ra, dec = stars["four"]
    measured, model = [], []
    for fid in _holding(union, 2):
        data, h = _image(result, fid)
        x, y = WCS(h).wcs_world2pix([[ra, dec]], 0)[0]
        cx, cy, w = _centroid(data, x, y, h["SKYLEVEL"])
        yy, xx = np.mgrid[:256, :256]
        measured.append((w * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / w.sum())
        grid = PSF(h["SEEING"] / SCALE, h["PSFBETA"]).pixel_grid(12)
        gy, gx = np.mgrid[-12:13, -12:13]
        inside = gx**2 + gy**2 <= 144
        model.append((grid * (gx**2 + gy**2))[inside].sum() / grid[inside].sum())
    np.testing.assert_allclose(measured, model, rtol=0.03)
    assert max(model) > 1.1 * min(model)


# -- rendering from given objects ---------------------------------------------

def _drawn(config):
    return Objects.concat([draw_cell(config, cx, cy) for cy in range(-(-config.height // CELL))
                           for cx in range(-(-config.width // CELL))])


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix == ".fits"}


def test_given_objects_render_as_drawn_ones(tmp_path):
    """make_field(objects=...) is the single-field renderer fed another way: a field's own
    drawn objects, given back, make the same bytes (no clusters: their members may move
    to a neighbouring cell row, which only reorders sums) or the same pixels to rounding."""
    plain = SynthConfig(width=300, height=520, seed=3, galaxy_density=1e5,
                        foreground_density=2e4, cluster_density=0.0, halo_cluster_density=0.0)
    make_field(tmp_path / "a", plain)
    make_field(tmp_path / "b", plain, objects=_drawn(plain))
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    clusters = dataclasses.replace(plain, cluster_density=1e5, seed=5)
    a = make_field(tmp_path / "c", clusters)
    b = make_field(tmp_path / "d", clusters, objects=_drawn(clusters))
    for band in ("g", "i"):
        np.testing.assert_allclose(fits.getdata(b.images[band][0]),
                                   fits.getdata(a.images[band][0]), rtol=1e-6)
    assert (tmp_path / "c" / "truth.fits").read_bytes() == (tmp_path / "d" / "truth.fits"
                                                            ).read_bytes()


def test_survey_bytes_are_reproducible(tmp_path):
    config = SurveyConfig(2, 1, field_size=128, base=SynthConfig(seed=2, rgb_density=0.02))
    make_survey(tmp_path / "a", config)
    make_survey(tmp_path / "b", config)
    for folder in ("", "F00", "F10"):
        assert _digests(tmp_path / "a" / folder) == _digests(tmp_path / "b" / folder)
    assert (tmp_path / "a" / "survey.ecsv").read_text() == (tmp_path / "b" / "survey.ecsv"
                                                            ).read_text()


# -- errors and the CLI --------------------------------------------------------

def test_bad_survey_config_and_placed_objects():
    with pytest.raises(ConfigError, match=r"overlap \(--overlap\) must be a number from 0 "
                                          r"to 0.9 of the field size; got 1.2"):
        SurveyConfig(overlap=1.2)
    with pytest.raises(ConfigError, match=r"survey \(--survey\) must have 1 to 100 columns"):
        SurveyConfig(columns=0)
    assert parse_grid("3x2") == (3, 2) and parse_grid(" 4X1 ") == (4, 1)
    with pytest.raises(ConfigError, match="kind must be one of cluster, star, galaxy"):
        PlacedObject(10.0, 41.0, kind="blob")
    with pytest.raises(ConfigError, match=r"placed object 0 at RA 20.000000, Dec 41.000000 "
                                          "lies on no field"):
        make_survey("unused", QUIET, extra_objects=[PlacedObject(20.0, 41.0)])


@pytest.mark.parametrize(("args", "message"), [
    (["--survey", "0x2"], "Error: survey (--survey) must have 1 to 100 columns and 1 to 100 "
                          "rows (COLSxROWS, e.g. 3x2); got '0x2'"),
    (["--survey", "3by2"], "Error: survey (--survey) must be COLSxROWS, e.g. 3x2; got '3by2'"),
    (["--survey", "3x2", "--overlap", "1.2"],
     "Error: overlap (--overlap) must be a number from 0 to 0.9 of the field size; got 1.2"),
    (["--survey", "3x2", "--field-size", "-5"],
     "Error: field_size (--field-size) must be an integer from 64 to 100000 pixels; got -5"),
    (["--survey", "3x2", "--rotation", "-1"],
     "Error: rotation (--rotation) must be a number from 0 to 45 deg (the largest |rotation| "
     "of a field); got -1.0"),
    (["--overlap", "0.2"], "Error: --overlap: survey option; give --survey COLSxROWS too"),
    (["--field-catalogs"], "Error: --field-catalogs: survey option; give --survey COLSxROWS "
                           "too"),
    (["--survey", "3x2", "--size", "512"],
     "Error: --size, --width and --height set a single field's size; with --survey give "
     "--field-size"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "o"), *args])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [message]
    assert not (tmp_path / "o").exists()


def test_cli_writes_a_survey(tmp_path):
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["synth", str(out), "--survey", "2x2", "--field-size", "128",
                                    "--overlap", "0.3", "--dither", "5", "--rotation", "1",
                                    "--seed", "3", "--chip-gaps", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"wrote 4 fields (F00 .. F11) under {out}" in res.output
    assert f"wrote {out / 'survey.ecsv'}" in res.output
    assert "2 x 2 fields of 128 px, seed 3, float32:" in res.output
    survey = Survey.read(out / "survey.ecsv")
    assert [f.id for f in survey.fields] == ["F00", "F10", "F01", "F11"]
    for f in survey.fields:
        data = fits.getdata(f.images[1])
        assert data.shape == (128, 128) and np.isnan(data).any()   # chip gaps
    union = _truth(out / "truth.fits")
    assert union["n_fields"].max() == 4 and not union["placed"].any()


def test_field_catalogs_are_sextractor_ldac_catalogs_of_each_fields_truth(tmp_path):
    """--field-catalogs: F00/F00.cat, ... as SExtractor writes FITS_LDAC (X_IMAGE, Y_IMAGE
    1-based), read by content, named in the manifest; an object in the overlap is in
    both fields' catalogs, at one sky position."""
    from pathlib import Path

    from pyengine.io.catalog import catalog_positions, read_catalog

    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["synth", str(out), "--survey", "2x1", "--field-size", "128",
                                    "--overlap", "0.3", "--dither", "0", "--seed", "2", "--field-catalogs",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "each with its SExtractor catalog F00/F00.cat .." in res.output
    survey = Survey.read(out / "survey.ecsv")
    assert [f.catalog for f in survey.fields] == [str(out / "F00" / "F00.cat"),
                                                  str(out / "F10" / "F10.cat")]
    ids = []
    for f in survey.fields:
        with fits.open(f.catalog) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        cat, truth = read_catalog(f.catalog), _truth(Path(f.images[0]).parent / "truth.fits")
        assert cat.colnames[:6] == ["NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000",
                                    "DELTA_J2000", "MAG_AUTO"]
        np.testing.assert_array_equal(cat["TRUTH_ID"], truth["id"])
        np.testing.assert_array_equal(cat["X_IMAGE"], truth["x"] + 1.0)
        wcs = WCS(fits.getheader(f.images[0]))
        sky = catalog_positions(cat, wcs, where=f.catalog)
        assert (sky.form, sky.unused) == ("sky", ("X_IMAGE", "Y_IMAGE"))
        pix = catalog_positions(cat, wcs, where=f.catalog, x_col="X_IMAGE", y_col="Y_IMAGE")
        np.testing.assert_allclose(pix.x, truth["x"], rtol=0, atol=1e-9)
        np.testing.assert_allclose(sky.x, truth["x"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(sky.y, pix.y, rtol=0, atol=1e-6)
        ids.append(set(cat["TRUTH_ID"].tolist()))
    union = _truth(out / "truth.fits")
    assert len(ids[0] & ids[1]) == int(np.sum(union["n_fields"] == 2)) > 0
