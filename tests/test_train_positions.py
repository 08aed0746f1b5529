"""pyengine train --positions detect, and training across a survey manifest's fields."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.table import Table, vstack

from pyengine.errors import ConfigError
from pyengine.survey.manifest import Field, Survey
from pyengine.synth import DEFAULT_BANDS, SynthConfig, make_field
from pyengine.train import TrainConfig, train
from pyengine.training.fields import training_data

S = 32


@pytest.fixture(scope="module")
def two_fields(tmp_path_factory):
    """Two 512 px fields of bright clusters and stars, a manifest and one label catalog."""
    root = tmp_path_factory.mktemp("twofields")
    bands = tuple(dataclasses.replace(b, disk_mu0=40.0) for b in DEFAULT_BANDS)
    tables, fields = [], []
    for k, (seed, ra) in enumerate(((21, 11.0), (22, 11.2))):
        r = make_field(root / f"f{k}", SynthConfig(
            width=512, height=512, seed=seed, ra=ra, dec=41.6, bands=bands, rgb_density=0.0,
            halo_rgb_density=0.0, galaxy_density=0.0, cluster_density=0.0,
            halo_cluster_density=8e4, foreground_density=1.5e5, bright_limit=17.0,
            star_limit=21.0, cluster_mag_range=(17.0, 20.0)))
        t = Table.read(r.truth)
        t["class"] = np.char.strip(np.asarray(t["class"]).astype(str))
        t["id"] = t["id"] + 10**6 * k
        tables.append(t[t["i_mag"] < 21.5]["id", "ra", "dec", "class", "i_mag"])
        fields.append(Field(f"F{k}", (str(r.images["g"][0]), str(r.images["i"][0]))))
    vstack(tables, metadata_conflicts="silent").write(root / "labels.fits")
    Survey(tuple(fields), ("g", "i")).write(root / "survey.ecsv")
    return {"manifest": str(root / "survey.ecsv"), "labels": str(root / "labels.fits"),
            "fields": fields, "root": root}


def _cfg(two_fields, out, **kw):
    base = {"images": (two_fields["manifest"],), "catalog": two_fields["labels"],
            "output": str(out), "label_col": "class", "positive": ("cluster",),
            "binary": True, "positions": "detect", "cutout_size": S, "epochs": 1,
            "batch_size": 16, "threads": 2, "split": "spatial", "block_size": 128}
    return TrainConfig(**{**base, **kw})


def test_detections_of_every_field_are_labelled_and_split_by_field(two_fields, tmp_path):
    notes = []
    data, bands, scale = training_data(_cfg(two_fields, tmp_path / "m.safetensors"),
                                       notes.append)
    assert bands == ("g", "i") and abs(scale - 0.187) < 1e-3
    assert set(np.unique(data.fields)) == {0, 1}
    assert any(n.startswith("field F0: --positions detect:") for n in notes)
    assert any(n.startswith("field F1: --positions detect:") for n in notes)
    # Detections, not catalog rows: at the peaks SEP finds, within the radius of the
    # labels they matched (which the label table's own positions are not, exactly).
    assert data.position_columns == ("x_detect", "y_detect")
    assert (data.rows >= 0).all()  # this clean field has no detection without a label
    labels = Table.read(two_fields["labels"])
    from astropy.io import fits
    from astropy.wcs import WCS

    f0 = data.fields == 0
    wcs = WCS(fits.getheader(two_fields["fields"][0].images[0]))
    lx, ly = wcs.all_world2pix(labels["ra"][data.rows[f0]], labels["dec"][data.rows[f0]], 0)
    d = np.hypot(data.x[f0] - lx, data.y[f0] - ly)
    assert d.max() <= 1.0 / 0.187 + 1e-6 and d.max() > 0
    assert data.is_positive.sum() >= 5
    assert data.counts["detect_matched"] > 0 and "detect_ambiguous" in data.counts
    # A label row is used once, however many fields hold it.
    used = data.rows[data.rows >= 0]
    assert np.unique(used).size == used.size


def test_train_on_a_survey_at_detections(two_fields, tmp_path):
    out = tmp_path / "survey-model.safetensors"
    result = train(_cfg(two_fields, out, negative_ratio=3.0), log=lambda m: None)
    prov = result.spec.provenance
    assert prov["positions"] == "detect" and prov["match_radius_arcsec"] == 1.0
    assert prov["negative_ratio"] == 3.0
    train_n = result.spec.metrics["training"]["per_class"]
    val = result.spec.metrics["validation"]
    assert train_n["non-cluster"] + val["n_non_cluster"] <= 3 * (train_n["cluster"] +
                                                                  val["n_cluster"]) + 1
    assert "ece" in result.spec.metrics["reliability"]


def test_bad_training_position_options_are_one_line_errors(two_fields, tmp_path):
    with pytest.raises(ConfigError, match=r"--positions 'peaks' is not accepted; accepted: "
                                          r"catalog, detect"):
        _cfg(two_fields, tmp_path / "m.safetensors", positions="peaks")
    with pytest.raises(ConfigError, match=r"--match-radius"):
        _cfg(two_fields, tmp_path / "m.safetensors", match_radius=0)
    with pytest.raises(ConfigError, match=r"--unmatched-label 'dust' is not a value of the "
                                          r"label column"):
        training_data(_cfg(two_fields, tmp_path / "m.safetensors", unmatched_label="dust"),
                      lambda m: None)


def test_an_object_two_fields_see_is_used_once_and_never_made_a_negative(two_fields, tmp_path):
    """Field B is field A's images again (a total overlap): every detection of B is of an
    object A used, so B adds nothing (its detections are left out, not negatives)."""
    a = two_fields["fields"][0]
    Survey((a, Field("B", a.images)), ("g", "i")).write(tmp_path / "twice.ecsv")
    data, _, _ = training_data(_cfg(two_fields, tmp_path / "m.safetensors",
                                    images=(str(tmp_path / "twice.ecsv"),)), lambda m: None)
    assert set(np.unique(data.fields)) == {0}
    used = data.rows[data.rows >= 0]
    assert np.unique(used).size == used.size
