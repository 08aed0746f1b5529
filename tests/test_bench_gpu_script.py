"""benchmarks/bench_gpu.py: the CPU smoke run exercises every path that needs no CUDA,
writes the stable JSON keys and marks the CUDA-only parts skipped with a reason; asking
for CUDA where there is none is refused with one line.  (Figures are not asserted.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
SECTIONS = {"model_only", "h2d", "end_to_end", "gather_threads"}
TOP = {"schema", "smoke", "device", "env", "torch", "model", "args", "field", "anchor",
       "sections", "summary", "stopped", "elapsed_s"}
MODEL_KEYS = {"precision", "cuda_graphs", "batch", "input", "pad_channels", "in_flight",
              "input_dtype", "bytes_per_cutout",
              "status", "reason", "cutouts_per_s", "cutouts_per_s_min", "cutouts_per_s_max",
              "repeats", "cutouts_per_repeat", "seconds", "setup_s", "graph_captured",
              "peak_gpu_mib"}
E2E_KEYS = {"precision", "batch", "threads", "gather_threads", "read_workers", "torch_threads",
            "cuda_graphs", "transfer_dtype", "positions", "tiles", "status", "reason",
            "cutouts_per_s", "cutouts_per_s_min", "cutouts_per_s_max", "repeats", "seconds",
            "setup_s", "model_only_from_slots", "model_only_device_resident",
            "ratio_to_model_only", "ratio_to_device_resident", "goal", "meets_goal"}
BATCHER_KEYS = {"threads", "dtype", "batch", "status", "reason", "cutouts_per_s",
                "cutouts_per_s_min", "cutouts_per_s_max", "gb_per_s", "repeats",
                "cutouts_per_repeat", "seconds"}


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _positive(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", "tmp.json",
                           "--workdir", str(out / "work")],
                          cwd=out, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "tmp.json").read_text()), seconds


@pytest.mark.slow
def test_smoke_run_prints_every_table(smoke):
    proc, _, _ = smoke
    for title in ("== model_only:", "== h2d: skipped", "== end_to_end:", "== gather_threads:",
                  "C++ BatchRing alone", "published anchor (NOT a measurement",
                  "anchor scaled by FLOPs, not a measurement", "(224/64)^2 = 12.25"):
        assert title in proc.stdout, title
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_smoke_json_has_the_stable_keys(smoke):
    _, data, _ = smoke
    assert set(data) == TOP
    assert data["schema"] == "pyengine.bench_gpu/1"
    assert data["smoke"] is True and data["device"] == "cpu"
    assert set(data["sections"]) == SECTIONS
    for name, sec in data["sections"].items():
        assert {"status", "reason", "results"} <= set(sec), name
        assert sec["status"] in ("ok", "partial", "skipped", "error"), name
    assert all(set(e) == MODEL_KEYS for e in data["sections"]["model_only"]["results"])
    assert all(set(e) == E2E_KEYS for e in data["sections"]["end_to_end"]["results"])
    gather = data["sections"]["gather_threads"]
    assert all(set(e) == E2E_KEYS for e in gather["results"])
    assert all(set(e) == BATCHER_KEYS for e in gather["batcher"])
    assert set(gather["model_only_reference"]) == {"precision", "batch", "from_slots",
                                                   "device_resident"}
    assert data["model"]["nband"] == 2 and data["model"]["cutout_size"] == 64
    assert data["field"]["size"] == 256 and not data["field"]["reused"]
    assert data["torch"]["device"] == "cpu" and data["torch"]["gpu"] is None


@pytest.mark.slow
def test_smoke_numbers_are_sensible(smoke):
    _, data, _ = smoke
    secs = data["sections"]
    ran = [e for e in secs["model_only"]["results"] if e["status"] == "ok"]
    # fp32 and bf16, batches 2 and 4, CUDA graphs off, device-resident and host slots
    assert {(e["precision"], e["batch"], e["input"]) for e in ran} == {
        (p, b, i) for p in ("fp32", "bf16") for b in (2, 4)
        for i in ("device_resident", "host_slots")}
    # the padded stem: the first precision at --pad-batches (4 in the smoke run)
    assert {(e["precision"], e["batch"], e["input"]) for e in ran if e["pad_channels"]} == {
        ("fp32", 4, "device_resident"), ("fp32", 4, "host_slots")}
    assert {e["pad_channels"] for e in ran} == {None, 8}
    for e in ran:
        assert e["in_flight"] == 2  # the CPU runner's, as the scan engine keeps them
        assert e["cuda_graphs"] is False and e["input_dtype"] == "float32"
        assert e["bytes_per_cutout"] == 2 * 64 * 64 * 4
        assert _positive(e["cutouts_per_s"]) and e["repeats"] == 2
        assert e["cutouts_per_s_min"] <= e["cutouts_per_s"] <= e["cutouts_per_s_max"]
        assert e["cutouts_per_repeat"] % e["batch"] == 0 and len(e["seconds"]) == 2
    e2e = secs["end_to_end"]
    assert e2e["status"] == "ok", e2e["reason"]
    assert [e["precision"] for e in e2e["results"]] == ["fp32", "bf16"]
    for e in e2e["results"]:
        assert e["positions"] == 8 * 8 and e["tiles"] == 4  # 256^2, stride 32, core 128
        assert _positive(e["cutouts_per_s"]) and _positive(e["ratio_to_model_only"])
        assert e["ratio_to_model_only"] == pytest.approx(
            e["cutouts_per_s"] / e["model_only_from_slots"])
        assert e["goal"] == 0.9 and e["meets_goal"] == (e["ratio_to_model_only"] >= 0.9)
    gather = secs["gather_threads"]
    assert gather["status"] == "ok", gather["reason"]
    counts = [e["threads"] for e in gather["results"]]
    assert counts == [int(t) for t in data["args"]["threads"].split(",")] and counts[0] == 1
    for e in gather["results"]:
        assert e["gather_threads"] == e["threads"] and _positive(e["cutouts_per_s"])
    assert {(e["dtype"], e["threads"]) for e in gather["batcher"]} == {
        (d, e["threads"]) for d in ("float16", "float32") for e in gather["results"]}
    assert all(_positive(e["cutouts_per_s"]) and _positive(e["gb_per_s"])
               for e in gather["batcher"])
    assert _positive(gather["model_only_reference"]["from_slots"])


@pytest.mark.slow
def test_smoke_marks_cuda_only_parts_skipped_with_a_reason(smoke):
    _, data, _ = smoke
    secs = data["sections"]
    assert secs["h2d"]["status"] == "skipped" and "CUDA" in secs["h2d"]["reason"]
    assert secs["h2d"]["results"] == []
    graphs = [e for e in secs["model_only"]["results"] if e["cuda_graphs"]]
    assert len(graphs) == 8  # 2 precisions x 2 batches x 2 inputs
    assert all(e["status"] == "skipped" and "CUDA" in e["reason"] for e in graphs)
    assert all(e["status"] == "ok" for e in secs["model_only"]["results"] if not e["cuda_graphs"])
    assert secs["model_only"]["status"] == "partial" and "CUDA" in secs["model_only"]["reason"]
    anchor = data["anchor"]
    assert anchor["label"] == "anchor scaled by FLOPs, not a measurement"
    assert anchor["flops_ratio"] == (224 / 64) ** 2 == 12.25
    assert anchor["scaled_cutouts_per_s"] == pytest.approx(88_700 * 12.25)
    assert anchor["best_measured_over_scaled_anchor"] is None  # no GPU: no comparison


@pytest.mark.skipif(_cuda_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_refused_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda", "--json", "x.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench_gpu: --device cuda needs a CUDA GPU")
    assert proc.stdout == ""
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_exhausted_budget_skips_measurements_with_the_reason(tmp_path):
    """Without --workdir the field goes to a temporary directory; with no time left no
    measurement starts, each says why, and the JSON is still complete."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--budget", "0",
                           "--sections", "model_only,end_to_end,gather_threads",
                           "--json", "b.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "b.json").read_text())
    secs = data["sections"]
    assert secs["h2d"] == {"status": "skipped", "reason": "not selected (--sections)",
                           "results": []}
    entries = [*secs["model_only"]["results"], *secs["end_to_end"]["results"],
               *secs["gather_threads"]["results"], *secs["gather_threads"]["batcher"]]
    assert entries and all(e["status"] == "skipped" for e in entries)
    assert all("time budget exhausted" in e["reason"] for e in entries if not e.get("cuda_graphs"))
    assert all(secs[name]["status"] == "skipped" for name in secs)
    assert not Path(data["field"]["dir"]).exists()  # the temporary directory is gone


@pytest.mark.slow
def test_smoke_summary_comes_last_and_matches_the_tables(smoke):
    proc, data, _ = smoke
    summary = data["summary"]
    assert proc.stdout.rindex("== summary") > proc.stdout.rindex("== published anchor")
    model = data["sections"]["model_only"]["results"]
    for row in summary["model_only"]:
        best = max(e["cutouts_per_s"] for e in model if e["status"] == "ok" and
                   (e["precision"], e["input"], e["pad_channels"]) ==
                   (row["precision"], row["input"], None))
        assert row["cutouts_per_s"] == best
    (pad,) = summary["pad_speedup"]
    assert (pad["precision"], pad["batch"], pad["pad_channels"]) == ("fp32", 4, 8)
    assert _positive(pad["ratio"])
    assert [e["precision"] for e in summary["end_to_end"]] == ["fp32", "bf16"]
    need = summary["gather_threads_needed"]
    assert need["dtype"] == "float32" and need["threads"] in (None, 1, 2)
    m31 = summary["m31_projection"]
    best = max(e["cutouts_per_s"] for e in summary["end_to_end"])
    assert m31["positions"] == pytest.approx(5.6e9 / 16)
    assert m31["hours"] == pytest.approx(m31["positions"] / best / 3600)
    assert data["stopped"] is None and "projection: M31 30 kpc" in proc.stdout


@pytest.mark.slow
def test_the_hard_deadline_stops_a_stalled_run_and_keeps_the_json(tmp_path):
    """--budget only stops new measurements; one that hangs (here: --debug-stall sleeps
    in the first) is cut at --budget + --grace: exit status 4, the JSON says so."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sections", "model_only",
                           "--budget", "4", "--grace", "2", "--debug-stall", "120",
                           "--json", "d.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert seconds < 60, f"stopped only after {seconds:.0f} s"
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["stopped"].startswith("hard deadline: --budget 4 s + --grace 2 s passed")
    assert data["summary"] is not None and 5.5 < data["elapsed_s"] < 30
    # stalled in its first measurement (after the CUDA-graph ones, skipped on a CPU)
    model_only = data["sections"]["model_only"]
    assert model_only["status"] == "partial"
    assert model_only["reason"].startswith("stopped by the hard deadline during this section")
    assert model_only["results"] and all(e["status"] == "skipped" and e["cuda_graphs"]
                                         for e in model_only["results"])
    assert data["sections"]["h2d"]["reason"] == "not selected (--sections)"
    assert "STOPPED: hard deadline" in proc.stdout and "Traceback" not in proc.stderr


BLOCKER = """import sys

class AbsentFinder:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("astropy", "fitsio", "sep") or name == "pyengine._core":
            raise ModuleNotFoundError(f"{name} is absent here", name=name)
        return None

sys.meta_path.insert(0, AbsentFinder())
"""


@pytest.mark.slow
def test_sections_fail_alone_where_astropy_fitsio_and_the_core_are_missing(tmp_path):
    """As on the GPU machine before the wheels are installed: the model-only section
    runs; the scan sections are recorded as errors saying what is missing; the run
    goes to its end (exit status 3), with no traceback."""
    import os

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    root = str(SCRIPT.parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--precisions", "fp32",
                           "--batches", "2", "--eager-batches", "2", "--pad-batches", "",
                           "--e2e-batch", "2", "--json", "f.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads((tmp_path / "f.json").read_text())
    secs = data["sections"]
    assert secs["model_only"]["status"] == "partial"  # graphs skipped, eager measured
    for name in ("end_to_end", "gather_threads"):
        assert secs[name]["status"] == "error"
        assert secs[name]["reason"].startswith("the synthetic field could not be made: "
                                               "astropy is not installed"), secs[name]["reason"]
    assert "== end_to_end: error (the synthetic field could not be made" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("# 2 measurement(s) or section(s) "
                                                            "failed")
