"""A synthetic survey of one sky (pyengine synth --survey) scanned as a survey: clusters
placed on field boundaries and in 3- and 4-way overlaps appear exactly once, in the field
the ownership rule gives them, with a catalog of the whole region and with detection."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from astropy.table import Table

from pyengine.errors import ConfigError
from pyengine.scan.engine import Engine
from pyengine.sources.catalog import CatalogSource
from pyengine.sources.detect import DetectSource
from pyengine.survey.geometry import SurveyGeometry
from pyengine.survey.manifest import Survey
from pyengine.survey.scan import scan_survey
from pyengine.synth.config import SynthConfig
from pyengine.synth.survey import PlacedObject, SurveyConfig, SurveyLayout, make_survey

pytestmark = pytest.mark.slow

SKY = SurveyConfig(3, 2, field_size=300, overlap=0.2, rotation_deg=3.0, dither=10.0,
                   base=SynthConfig(seed=4, cluster_density=3e3, galaxy_density=2e4,
                                    foreground_density=2e4, rgb_density=0.002))
CORNER = ("F00", "F10", "F01", "F11")


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    layout = SurveyLayout(SKY)
    trio = p3 = None
    for trio in itertools.combinations(CORNER, 3):
        try:
            p3 = layout.find_point(trio)
            break
        except ConfigError:
            continue
    assert p3 is not None, "no 3-way overlap at the first corner of this layout"
    where = {"boundary": layout.midpoint("F00", "F10"), "vertical": layout.midpoint("F10", "F11"),
             "three": p3, "four": layout.midpoint(*CORNER)}
    placed = [PlacedObject(*pos, kind="cluster", i_mag=17.5, r_h_pc=3.0)
              for pos in where.values()]
    result = make_survey(tmp_path_factory.mktemp("onesky"), SKY, extra_objects=placed)
    return result, where


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, runner="torch", device="cpu", batch_size=32, core=128)


def _near(ra, dec, ra0, dec0, arcsec):
    sep = np.hypot((np.asarray(ra) - ra0) * np.cos(np.radians(dec0)), np.asarray(dec) - dec0)
    return np.flatnonzero(sep * 3600 <= arcsec)


def test_the_region_catalog_scores_each_placed_cluster_once_in_its_owner(sky, engine,
                                                                        tmp_path):
    result, where = sky
    survey = Survey.read(result.manifest)
    geo = SurveyGeometry(survey)
    truth = Table.read(result.truth)
    out = tmp_path / "cat.fits"
    scan_survey(engine, survey, out, make_source=lambda: CatalogSource(str(result.truth)))
    table = Table.read(out, mask_invalid=False)
    assert len(table) == len(truth)  # one row per truth row, each once
    fields = np.asarray(table["field"]).astype(str)
    for name, (ra, dec) in where.items():
        rows = _near(table["ra"], table["dec"], ra, dec, 0.05)
        assert rows.size == 1, f"{name}: {rows.size} rows"
        owner = geo.frames[geo.owner([ra], [dec])[0]].id
        assert fields[rows[0]] == owner, name
        assert np.isfinite(table["score"][rows[0]])
    # every object held by several fields is scored once, by its owner
    shared = np.asarray(truth["n_fields"]) >= 2
    assert shared.sum() > 20
    owner = geo.owner(np.asarray(truth["ra"]), np.asarray(truth["dec"]))
    want = np.array([geo.frames[k].id if k >= 0 else "" for k in owner])
    np.testing.assert_array_equal(fields, want)


def test_detection_finds_each_placed_cluster_once(sky, engine, tmp_path):
    result, where = sky
    survey = Survey.read(result.manifest)
    out = tmp_path / "det.fits"
    summary = scan_survey(engine, survey, out, make_source=lambda: DetectSource())
    table = Table.read(out, mask_invalid=False)
    assert summary.merged_duplicates > 0  # objects in overlaps were seen twice and merged
    for name, (ra, dec) in where.items():
        rows = _near(table["ra"], table["dec"], ra, dec, 1.0)
        assert rows.size == 1, f"{name}: detected {rows.size} times"
    # no object of the one sky twice: no two rows of different fields within 1"
    ra, dec = np.asarray(table["ra"]), np.asarray(table["dec"])
    fields = np.asarray(table["field"]).astype(str)
    dx = (ra[:, None] - ra[None, :]) * np.cos(np.radians(dec.mean())) * 3600
    dy = (dec[:, None] - dec[None, :]) * 3600
    twice = (np.hypot(dx, dy) <= 1.0) & (fields[:, None] != fields[None, :])
    assert not twice.any()
