"""Survey manifests, field footprints, ownership and area selection (pyengine.survey)."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine.errors import ConfigError
from pyengine.survey import Survey, SurveyError, read_manifest
from pyengine.survey.geometry import Cone, SurveyGeometry, parse_within
from pyengine.survey.manifest import Field

SIZE, SCALE = 200, 0.187  # px, arcsec / px
STEP = 160  # px between field centres: 40 px overlaps


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    """A 2 x 2 survey of 200 px fields overlapping by 40 px, listed A, B, C, D."""
    from tests.makedata import make_survey_2x2

    root = tmp_path_factory.mktemp("survey")
    survey, specs = make_survey_2x2(root, SIZE, STEP)
    return root, survey, specs


def test_a_manifest_round_trips_with_relative_paths_and_geometry(fields, tmp_path):
    root, survey, _ = fields
    described = survey.described()
    assert all(f.shape == (SIZE, SIZE) for f in described.fields)
    assert all(f.pixel_scale == pytest.approx(SCALE, rel=1e-6) for f in described.fields)
    path = described.write(root / "survey.ecsv")
    text = path.read_text()
    assert "A/g.fits" in text and str(root) not in text  # relative to the manifest
    back = read_manifest(path)
    assert back.bands == ("g", "i") and [f.id for f in back.fields] == list("ABCD")
    assert back.fields == described.fields
    assert back.total_pixels == 4 * SIZE * SIZE
    # a CSV written by hand: field and paths only, described on demand
    (root / "hand.csv").write_text("field,path_g,path_i\nA,A/g.fits,A/i.fits\n")
    hand = read_manifest(root / "hand.csv")
    assert not hand.fields[0].described
    assert hand.described().fields[0] == described.fields[0]


@pytest.mark.parametrize(("text", "message"), [
    ("field,path_g,path_i\nA,A/g.fits,\n",
     "field 'A': no image for band i (column path_i is empty); every field needs one image "
     "per band"),
    ("field,path_g,path_i\nA,A/g.fits,A/i.fits\nA,B/g.fits,B/i.fits\n",
     "field 'A' appears twice (rows 1 and 2); field ids must be unique"),
    ("field,g,i\nA,A/g.fits,A/i.fits\n", "no path_<band> columns"),
    ("path_g,path_i\nA/g.fits,A/i.fits\n", "no 'field' column"),
    ("field,path_g,path_i,colour\nA,A/g.fits,A/i.fits,red\n", "unknown column(s) colour"),
])
def test_bad_manifests_are_one_line_naming_the_field(fields, text, message):
    root, _, _ = fields
    path = root / "bad.csv"
    path.write_text(text)
    with pytest.raises(SurveyError) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_fields_are_found_when_described(fields, tmp_path):
    root, _, _ = fields
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((20, 20), np.float32)).writeto(tmp_path / "nowcs.fits")
    cases = {
        "A,A/g.fits,A/missing.fits": "field 'A': " + str(root / "A" / "missing.fits") +
                                     ": no such file",
        "A,A/g.fits,B/i.fits": "field 'A': ",  # bands on two grids
        f"A,{tmp_path}/nowcs.fits,{tmp_path}/nowcs.fits": "field 'A': ",
    }
    for row, message in cases.items():
        path = root / "bad.csv"
        path.write_text(f"field,path_g,path_i\n{row}\n")
        with pytest.raises(SurveyError) as info:
            read_manifest(path).described()
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    path.write_text("field,path_g,path_i\nA,A/g.fits,B/i.fits\n")
    with pytest.raises(SurveyError, match=r"grid|WCS|shape"):
        read_manifest(path).described()


def test_every_position_has_one_owner_farthest_from_its_edges(fields):
    _, survey, _ = fields
    geo = SurveyGeometry(survey)
    # a dense grid over the union of the four footprints and around it
    corners = np.array([c for f in geo.survey.fields for c in f.corners])
    ra = np.linspace(corners[:, 0].min() - 0.001, corners[:, 0].max() + 0.001, 61)
    dec = np.linspace(corners[:, 1].min() - 0.001, corners[:, 1].max() + 0.001, 59)
    ra, dec = (a.ravel() for a in np.meshgrid(ra, dec))
    owner = geo.owner(ra, dec)
    d = geo.edge_distances(ra, dec)
    covered = (d > 0).any(axis=0)
    assert covered.any() and (~covered).any()
    np.testing.assert_array_equal(owner >= 0, covered)
    # the owner covers the position and no other field lies deeper inside
    hit = np.flatnonzero(covered)
    assert np.all(d[owner[hit], hit] > 0)
    rounded = np.round(d, 6)  # the rule compares to a micro-arcsec
    assert np.all(rounded[owner[hit], hit] >= rounded[:, hit].max(axis=0))
    # the edge distance is what the pixels say, in arcsec
    frame = geo.frames[1]
    x, y = frame.pixels(ra[hit], dec[hit])
    want = np.minimum.reduce([x + 0.5, SIZE - 0.5 - x, y + 0.5, SIZE - 0.5 - y]) * SCALE
    np.testing.assert_allclose(d[1, hit], want, rtol=0, atol=1e-6)
    # overlaps: two, three and four fields cover some positions, each owned once
    counts = (d > 0).sum(axis=0)
    assert {1, 2, 4} <= set(counts.tolist())
    ranked = geo.ranked(ra[hit], dec[hit])
    assert [r[0] for r in ranked] == owner[hit].tolist()
    assert [len(r) for r in ranked] == counts[hit].tolist()


def test_ties_go_to_the_field_listed_first(fields):
    _, survey, specs = fields
    a = survey.fields[0]
    # two fields on one grid (the same files): every position is a tie
    twins = Survey((Field("X", a.images), Field("Y", a.images)), survey.bands)
    geo = SurveyGeometry(twins)
    ra, dec = specs["A"]
    probe_ra = ra + np.array([0.0, 0.003, -0.004])
    probe_dec = dec + np.array([0.0, 0.002, -0.001])
    d = geo.edge_distances(probe_ra, probe_dec)
    np.testing.assert_array_equal(d[0], d[1])
    assert geo.owner(probe_ra, probe_dec).tolist() == [0, 0, 0]
    flipped = SurveyGeometry(Survey(twins.fields[::-1], twins.bands))
    assert [flipped.frames[k].id for k in flipped.owner(probe_ra, probe_dec)] == ["Y"] * 3
    # between A and B, nudged towards B's centre: B owns it whatever the order
    geo = SurveyGeometry(survey)
    mid_ra = (specs["A"][0] + specs["B"][0]) / 2
    nudged = mid_ra + (specs["B"][0] - specs["A"][0]) * 0.05
    for order in (survey.fields, survey.fields[::-1]):
        g = SurveyGeometry(Survey(order, survey.bands))
        assert g.frames[g.owner([nudged], [specs["A"][1]])[0]].id == "B"
    assert geo.frames[geo.owner([mid_ra - 0.0005], [specs["A"][1]])[0]].id == "A"


def test_cones_and_regions_select_the_fields_they_touch(fields, tmp_path):
    _, survey, specs = fields
    geo = SurveyGeometry(survey)
    ra_d, dec_d = geo.frames[3].wcs.pixel_to_world_values(30, 150)  # D only: its east side
    small = Cone(float(ra_d), float(dec_d), 2.0 / 3600)
    assert geo.fields_touching(small) == [3]
    assert geo.fields_touching(Cone(specs["A"][0], specs["A"][1], 1.0)) == [0, 1, 2, 3]
    assert geo.fields_touching() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"^--within 20,-30,0.1 touches none of the "
                                          r"survey's 4 fields"):
        geo.fields_touching(Cone(20.0, -30.0, 0.1))
    assert geo.inside([ra_d, specs["A"][0]], [dec_d, specs["A"][1]], small).tolist() == \
        [True, False]
    # a DS9 sky circle around the same point
    from pyengine.survey.geometry import read_sky_region

    reg = tmp_path / "r.reg"
    reg.write_text(f'# Region file format: DS9\nfk5\ncircle({ra_d:.7f},{dec_d:.7f},2")\n')
    regions = read_sky_region(reg)
    assert geo.fields_touching(regions=regions) == [3]
    assert geo.inside([ra_d, specs["A"][0]], [dec_d, specs["A"][1]], regions=regions,
                      frame=geo.frames[3]).tolist() == [True, False]
    (tmp_path / "pix.reg").write_text("# Region file format: DS9\nimage\ncircle(10,10,3)\n")
    with pytest.raises(ConfigError, match="no sky regions"):
        read_sky_region(tmp_path / "pix.reg")
    with pytest.raises(ConfigError, match="no such file"):
        read_sky_region(tmp_path / "none.reg")


@pytest.mark.parametrize("text", ["10,41", "a,b,c", "10,95,1", "10,41,0", "10,41,-2"])
def test_within_is_checked_in_one_line(text):
    with pytest.raises(ConfigError, match=r"^--within .* is not accepted; accepted: RA"):
        parse_within(text)


def test_within_parses_m31s_30_kpc_circle():
    cone = parse_within("10.6847,41.2690,2.19")
    assert (cone.ra, cone.dec, cone.radius) == (10.6847, 41.269, 2.19)
    assert cone.contains([10.6847, 10.6847], [41.269 + 2.18, 41.269 + 2.2]).tolist() == \
        [True, False]
