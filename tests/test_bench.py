"""`pyengine bench`: --quick runs and writes valid JSON with the stable keys; bad options
give one line.  (Figures are measured by benchmarks, not asserted here.)"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pyengine.cli import main

KEYS = {"read", "gather", "model_only", "end_to_end", "end_to_end_over_model_only", "machine"}


@pytest.mark.slow
def test_bench_quick_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    res = CliRunner().invoke(main, ["bench", "--quick", "--min-time", "0.05", "--json", str(out),
                                    "--plot", str(png), "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert KEYS <= set(data)
    assert data["machine"]["threads"] >= 1 and data["machine"]["cpu"]
    assert data["read"]["mpix_per_s"] > 0 and data["read"]["ratio_to_copy"] > 0
    assert data["read"]["tiles"] >= 1 and data["read"]["compressed"] is False
    gather = data["gather"]
    assert gather["copy_gb_per_s"] > 0
    assert gather["threads"][0]["threads"] == 1
    assert all(t["cutouts_per_s"] > 0 and t["ratio_to_copy"] > 0 for t in gather["threads"])
    assert {(m["runner"], m["precision"], m["batch"]) for m in data["model_only"]} == {
        ("onnxruntime", "fp32", 16), ("onnxruntime", "fp32", 32)}
    assert all(m["cutouts_per_s"] > 0 for m in data["model_only"])
    (e2e,) = data["end_to_end"]
    assert e2e["positions"] > 0 and e2e["cutouts_per_s"] > 0
    (ratio,) = data["end_to_end_over_model_only"]
    best = max(data["model_only"], key=lambda m: m["cutouts_per_s"])
    assert ratio["batch"] == best["batch"] == e2e["batch"]
    assert ratio["ratio"] == pytest.approx(e2e["cutouts_per_s"] / best["cutouts_per_s"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "model only (prepared batches)" in res.output
    assert "end to end" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["--runner", "cuda"], "Error: --runner 'cuda' is not known; accepted: onnxruntime, torch, "
                           "tensorrt"),
    (["missing.fits"], "Error: missing.fits: no such image file"),
    (["--plot", "x.pdf"], "Error: --plot x.pdf: the plot is a PNG file; give a .png name"),
    (["--json", "/nonexistent-dir/x.json"], "Error: /nonexistent-dir"),
])
def test_bench_bad_options_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["bench", "--quick", *args])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.output


def test_bench_usage_errors_exit_2():
    res = CliRunner().invoke(main, ["bench", "--batch", "0,8"])
    assert res.exit_code == 2
    assert "comma-separated positive integers" in res.output
