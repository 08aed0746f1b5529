"""Calibrated probabilities: temperature scaling (fit, in the graph, through ONNX), the
calibrate command, and thresholds at a field's prevalence (scan --prevalence)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError
from pyengine.export.onnx import export_onnx
from pyengine.models.checkpoint import load_model, read_spec, save_model
from pyengine.models.classifier import ClusterClassifier
from pyengine.models.operating import (
    estimate_prevalence,
    purity_at,
    rates_curve,
    shift_prior,
    threshold_at_prevalence,
)
from pyengine.models.spec import ModelSpec
from pyengine.runners.onnxrt import onnx_scores
from pyengine.synth import DEFAULT_BANDS, SynthConfig, make_field
from pyengine.training.calibrate import calibrate, fit_scaling, fit_temperature
from pyengine.training.reliability import ece

S = 32


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, (20000, 1)) * np.array([[1.0, -1.0]])
    p1 = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0])))
    labels = (rng.uniform(size=p1.size) < p1).astype(np.int64)
    # The network's logits are 3x too confident: T = 3 undoes it.
    assert abs(fit_temperature(3.0 * z, labels) - 3.0) < 0.1
    assert ece(labels == 1, p1) < 0.02


def test_fit_scaling_recovers_temperature_and_prior():
    """Logits of a model trained at a 50 % prior, 2x too confident, on a field of 3 %
    clusters: T = 2 and the offset log(0.03 / 0.97) undo both."""
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=60000) < 0.03
    d = np.where(truth, rng.normal(1.5, 1, truth.size), rng.normal(-1.5, 1, truth.size))
    z = 2.0 * np.c_[np.zeros_like(d), 3.0 * d]  # true log-odds at 50 %: 3 d
    t, bias = fit_scaling(z, truth.astype(np.int64))
    assert abs(t - 2.0) < 0.1
    assert bias[0] == 0.0 and abs(bias[1] - np.log(0.03 / 0.97)) < 0.15
    p_t = 1 / (1 + np.exp(-(z[:, 1] - z[:, 0]) / fit_temperature(z, truth.astype(np.int64))))
    p_tb = 1 / (1 + np.exp(-((z[:, 1] - z[:, 0]) / t + bias[1])))
    assert ece(truth, p_tb) < 0.01 < ece(truth, p_t)  # the prior is what T alone misses


def test_threshold_at_prevalence_and_prior_shift_by_the_formula():
    rates = {"threshold": [0.2, 0.5, 0.8], "tpr": [0.9, 0.7, 0.4], "fpr": [0.1, 0.01, 0.001]}
    # purity = pi TPR / (pi TPR + (1 - pi) FPR)
    np.testing.assert_allclose(purity_at(0.7, 0.01, 0.02), 0.014 / (0.014 + 0.0098))
    got = threshold_at_prevalence(rates, 0.02, 0.85)
    assert got["value"] == 0.8 and got["rule"] == "target_purity_at_prevalence"
    assert threshold_at_prevalence(rates, 0.3, 0.85)["value"] == 0.5  # more clusters: lower
    with pytest.raises(ConfigError, match=r"--prevalence 1\.5 is not accepted; the share of "
                                          r"clusters .* a number in \(0, 1\)"):
        threshold_at_prevalence(rates, 1.5, 0.85)
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=40000) < 0.05
    score = np.where(truth, rng.beta(8, 2, truth.size), rng.beta(2, 8, truth.size))
    curve = rates_curve(truth, score)
    assert curve["n_cluster"] == truth.sum()
    # Scores calibrated at a 50 % prior (x ~ N(+-1, 1): p = sigmoid(2 x)) on a field of
    # 5 % clusters: the EM recovers the 5 %; the prior shift moves p as Bayes says.
    x = np.where(truth, rng.normal(1, 1, truth.size), rng.normal(-1, 1, truth.size))
    p = 1 / (1 + np.exp(-2 * x))
    assert abs(estimate_prevalence(p, 0.5) - truth.mean()) < 0.01
    assert abs(np.mean(p) - truth.mean()) > 0.2  # the raw mean is far off
    np.testing.assert_allclose(shift_prior(0.5, 0.05, 0.5), 0.05)


@pytest.fixture(scope="module")
def cal_field(tmp_path_factory):
    """A small field of bright clusters and stars, and a labels catalog (RA/Dec)."""
    root = tmp_path_factory.mktemp("cal")
    bands = tuple(dataclasses.replace(b, disk_mu0=40.0) for b in DEFAULT_BANDS)
    r = make_field(root, SynthConfig(width=768, height=768, seed=12, bands=bands,
                                     rgb_density=0.0, halo_rgb_density=0.0, galaxy_density=0.0,
                                     cluster_density=0.0, halo_cluster_density=6e4,
                                     foreground_density=1e5, bright_limit=17.0, star_limit=20.0,
                                     cluster_mag_range=(17.0, 20.0)))
    truth = Table.read(r.truth)
    truth["class"] = np.char.strip(np.asarray(truth["class"]).astype(str))
    truth = truth[truth["i_mag"] < 21]["id", "ra", "dec", "class", "i_mag"]
    truth.write(root / "labels.fits")
    torch.manual_seed(3)
    model = ClusterClassifier(ModelSpec(cutout_size=S))
    save_model(model, root / "raw.safetensors")
    return {"images": [str(r.images["g"][0]), str(r.images["i"][0])],
            "labels": str(root / "labels.fits"), "model": root / "raw.safetensors",
            "root": root}


def test_calibrate_stores_the_temperature_and_onnx_applies_it(cal_field, tmp_path):
    out = tmp_path / "cal.safetensors"
    r = calibrate(cal_field["model"], cal_field["images"], cal_field["labels"], out,
                  log=lambda m: None, positions="catalog", label_col="class",
                  positive=("cluster",), threads=2)
    spec, _ = read_spec(out)
    cal = spec.metrics["calibration"]
    assert spec.temperature == pytest.approx(r["temperature"]) and spec.temperature != 1.0
    assert len(spec.logit_bias) == 2 and spec.logit_bias[0] == 0.0 and spec.logit_bias[1] != 0
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9
    assert cal["n"] == r["n"] and 0 < cal["prevalence"] < 1
    assert spec.threshold == pytest.approx(spec.metrics["threshold"]["value"])
    assert spec.metrics["threshold"]["prevalence"] == pytest.approx(cal["prevalence"])
    png = tmp_path / "cal.reliability.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The temperature is in the graph: torch and ONNX Runtime agree, and both differ
    # from the uncalibrated model by softmax(logits / T).
    model, raw = load_model(out), load_model(cal_field["model"])
    x = np.random.default_rng(0).normal(100, 5, (6, 2, S, S)).astype(np.float32)
    x[:, :, 12:20, 12:20] += 80
    with torch.no_grad():
        want = model(torch.from_numpy(x))[1].numpy()
        logits = raw.logits(torch.from_numpy(x)).double().numpy()
    z = logits / spec.temperature + np.asarray(spec.logit_bias)
    expect = np.exp(z[:, 1]) / np.exp(z).sum(axis=1)
    np.testing.assert_allclose(want, expect, atol=1e-5)
    path = export_onnx(model, tmp_path / "cal.onnx")
    np.testing.assert_allclose(onnx_scores(path, x), want, atol=1e-4)


def test_scan_prevalence_chooses_the_threshold_and_refuses_bad_values(cal_field, tmp_path):
    out = tmp_path / "cal.safetensors"
    calibrate(cal_field["model"], cal_field["images"], cal_field["labels"], out,
              log=lambda m: None, positions="catalog", label_col="class",
              positive=("cluster",), threads=2)
    spec, _ = read_spec(out)
    want = threshold_at_prevalence(spec.metrics["calibration"]["rates"], 0.01, 0.893)["value"]
    cat = tmp_path / "c.fits"
    res = CliRunner().invoke(main, ["scan", *cal_field["images"], "--model", str(out),
                                    "--catalog", cal_field["labels"], "--prevalence", "0.01",
                                    "-o", str(cat), "--quiet"])
    assert res.exit_code == 0, res.output
    from pyengine.io.catalog import read_catalog

    assert read_catalog(str(cat)).meta["THRESH"] == pytest.approx(want, abs=1e-6)
    bad = CliRunner().invoke(main, ["scan", *cal_field["images"], "--model", str(out),
                                    "--prevalence", "0", "-o", str(tmp_path / "d.fits")])
    assert bad.exit_code == 1 and "--prevalence 0.0 is not accepted" in bad.output
    raw = CliRunner().invoke(main, ["scan", *cal_field["images"], "--model",
                                    str(cal_field["model"]), "--prevalence", "0.02", "-o",
                                    str(tmp_path / "e.fits")])
    assert raw.exit_code == 1 and "--prevalence needs a calibrated model" in raw.output
    both = CliRunner().invoke(main, ["scan", *cal_field["images"], "--model", str(out),
                                     "--prevalence", "0.02", "--threshold", "0.5", "-o",
                                     str(tmp_path / "f.fits")])
    assert both.exit_code == 1 and "not both" in both.output
    json.dumps(spec.metrics)  # JSON-plain
