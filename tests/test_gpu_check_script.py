"""benchmarks/gpu_check.sh in --rehearse mode: every step runs on a CPU, a failing step does
not end the check, and the files and the short table it leaves are the ones the GPU
machine's call brings back.  (make gpu-rehearsal runs it in environments shaped like the
GPU image; here it runs in this environment, which has every package.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("env", "wheels", "build", "imports", "tests", "bench")


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_a_failing_one_does_not_end_it(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WHEELS": str(wheels),
           "SITE": str(tmp_path / "site"), "WORK": str(tmp_path / "work"),
           "CHECK_SECONDS": "400"}
    proc = subprocess.run(["bash", str(SCRIPT), "--rehearse"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]  # the broken wheel failed its step
    assert {p.name for p in out.iterdir()} == {"check.log", "env.txt", "junit.xml",
                                               "bench_gpu.json", "summary.txt"}
    table = (out / "summary.txt").read_text()
    status = dict(re.findall(r"^   (\w+) +(ok|failed \(exit \d+\)|timed out) ", table, re.M))
    assert list(status) == list(STEPS), table
    assert status["wheels"].startswith("failed")
    assert all(status[s] == "ok" for s in STEPS if s != "wheels"), table
    assert "== summary (measured on this machine" in table  # the bench's, last
    assert output.rstrip().endswith(table.rstrip().splitlines()[-1])
    assert "torch " in (out / "env.txt").read_text()
    suite = ET.parse(out / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) >= 20 and int(suite.get("skipped")) == int(suite.get("tests"))
    assert "GPU tests collected:" in (out / "check.log").read_text()


def test_an_unknown_argument_is_refused_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("gpu_check.sh: unknown argument '--fast'; accepted: "
                                   "--rehearse (or nothing)")
