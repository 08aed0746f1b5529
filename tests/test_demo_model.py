"""The demo model shipped inside the package: loads by default, carries its metrics,
and its int8 export agrees with fp32 (the issue's goal: >= 99.5 % of decisions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.table import Table

import pyengine
from pyengine import Mosaic
from pyengine.export.onnx import export_onnx
from pyengine.export.quantize import quantize_int8
from pyengine.models.checkpoint import DEMO_MODEL
from pyengine.runners.onnxrt import decision_agreement, onnx_scores
from pyengine.scan.cutouts import extract_cutouts
from pyengine.synth import SynthConfig, make_field


@pytest.fixture(scope="module")
def demo():
    return pyengine.load_model()


def test_demo_model_loads_by_default_and_describes_itself(demo):
    assert demo.source == DEMO_MODEL
    assert demo.weights == "int8-per-channel"
    assert DEMO_MODEL.stat().st_size < 30e6  # the repository stays small
    spec = demo.spec
    assert spec.bands == ("g", "i")
    assert spec.class_names == ("non-cluster", "cluster")
    assert 0.0 < spec.threshold < 1.0
    # The issue-14 recipe: trained at detections, calibrated on another field, measured
    # on held-out fields in both modes (tools/train_demo_model.py).
    assert spec.provenance["positions"] == "detect" and spec.provenance["seed"] == 1
    cal = spec.metrics["calibration"]
    assert cal["method"] == "temperature+prior" and spec.temperature == cal["temperature"]
    assert list(spec.logit_bias) == cal["logit_bias"] and spec.logit_bias[1] < 0  # rarer
    assert cal["ece_after"] <= cal["ece_before"]
    assert spec.metrics["threshold"]["rule"].endswith("_at_prevalence")
    held = spec.metrics["held_out"]
    fields = [k for k in held if isinstance(held[k], dict) and "catalog" in held[k]]
    assert len(fields) >= 3
    for name in fields:
        for mode in ("catalog", "detection"):
            point = held[name][mode]
            assert point["positives"] > 20 and 0 <= point["recall"] <= 1, (name, mode)
        assert held[name]["shift_1px"]["n"] > 100


@pytest.fixture(scope="module")
def field_cutouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    result = make_field(root, SynthConfig(width=1024, height=1024, seed=404,
                                          cluster_density=4e4))
    truth = Table.read(result.truth, mask_invalid=False)
    truth = truth[truth["i_mag"] < 21]
    with Mosaic.open([result.images["g"][0], result.images["i"][0]]) as mosaic:
        cut = extract_cutouts(mosaic, truth["x"], truth["y"], 64)
    keep = cut.on_image & (cut.nan_fraction < 0.5)
    return cut.pixels[keep][:600]


def test_demo_model_separates_clusters_and_onnx_matches(demo, field_cutouts, tmp_path):
    path = export_onnx(demo, tmp_path / "demo.onnx")
    with torch.no_grad():
        want = demo(torch.from_numpy(field_cutouts))[1].numpy()
    np.testing.assert_allclose(onnx_scores(path, field_cutouts), want, rtol=0, atol=1e-4)


def test_demo_model_int8_export_agrees_with_fp32(demo, field_cutouts, tmp_path):
    fp32 = export_onnx(demo, tmp_path / "demo.onnx")
    calib, held_out = field_cutouts[:200], field_cutouts[200:]
    int8 = quantize_int8(fp32, tmp_path / "demo8.onnx", calib)
    agree, diff = decision_agreement(fp32, int8, held_out, demo.spec.threshold)
    assert agree >= 0.995, f"int8 agrees on {100 * agree:.2f} % of decisions"
    # Recomputed from each graph's own scores, so a function comparing a graph with
    # itself (or returning 1) cannot pass; the held-out set has decisions of both kinds,
    # so the agreement measures something.
    t = demo.spec.threshold
    ref, got = onnx_scores(fp32, held_out), onnx_scores(int8, held_out)
    assert 0 < np.count_nonzero(ref >= t) < ref.size
    assert agree == float(np.mean((ref >= t) == (got >= t)))
    assert diff == float(np.max(np.abs(ref - got))) > 0
    # At a threshold between the two graphs' scores of the cutout they differ most on,
    # that cutout is decided differently: the agreement must drop below 1.
    i = int(np.argmax(np.abs(ref - got)))
    between = float((ref[i] + got[i]) / 2)
    low, _ = decision_agreement(fp32, int8, held_out, between)
    assert low < 1.0
    assert low == float(np.mean((ref >= between) == (got >= between)))
