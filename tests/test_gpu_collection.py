"""tests/test_runners_gpu.py collects where only torch and numpy are there (issue 12).

The GPU machine's image has torch, numpy and pytest but no astropy, fitsio or SEP,
possibly no ONNX Runtime, and no built ``pyengine._core``.  Here pytest's
collection of the GPU tests runs in a subprocess whose imports of those names
fail: a ``sitecustomize.py`` on ``PYTHONPATH`` puts a ``sys.meta_path`` finder
first that raises ModuleNotFoundError for them, as for a package not installed.
The collection must succeed and find the same tests as an ordinary one (all
skipped here without CUDA; collected all the same).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = "tests/test_runners_gpu.py"
ABSENT = ("astropy", "fitsio", "sep", "onnxruntime", "numba")  # top-level packages
ABSENT_MODULES = ("pyengine._core",)

BLOCKER = f'''\
"""Made by tests/test_gpu_collection.py: these imports fail, as on the GPU machine."""
import sys

ABSENT = {ABSENT!r}
ABSENT_MODULES = {ABSENT_MODULES!r}


class AbsentFinder:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT or name in ABSENT_MODULES:
            raise ModuleNotFoundError(f"{{name}} is absent here (tests/test_gpu_collection.py)",
                                      name=name)
        return None


sys.meta_path.insert(0, AbsentFinder())
'''


def _env(blocker_dir: Path | None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT), env.get("PYTHONPATH", "")]
    if blocker_dir is not None:
        paths.insert(0, str(blocker_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _collect(blocker_dir: Path | None) -> tuple[list[str], str]:
    """(collected node ids, pytest's output) of ``pytest --collect-only -q GPU_TESTS``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         GPU_TESTS],
        cwd=ROOT, env=_env(blocker_dir), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"collection failed (exit {proc.returncode}):\n{output}"
    assert "ERROR" not in output, output
    ids = [line for line in proc.stdout.splitlines() if line.startswith(GPU_TESTS + "::")]
    summary = re.search(r"(\d+) tests? collected", output)
    assert summary and int(summary.group(1)) == len(ids), output
    return ids, output


@pytest.mark.slow
def test_gpu_tests_collect_without_astropy_fitsio_sep_onnxruntime_numba_core(tmp_path):
    pytest.importorskip("torch", reason="tests/test_runners_gpu.py needs torch to collect")
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    # the blocker works: each name fails to import in such a subprocess
    names = (*ABSENT, *ABSENT_MODULES)
    probe = subprocess.run(
        [sys.executable, "-c",
         "import importlib, sys\n"
         "for name in sys.argv[1:]:\n"
         "    try:\n"
         "        importlib.import_module(name)\n"
         "    except ImportError as e:\n"
         "        print(name, 'absent' if 'is absent here' in str(e) else 'missing')\n"
         "    else:\n"
         "        print(name, 'imported')\n",
         *names],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert probe.stdout.split() == [w for n in names for w in (n, "absent")], probe

    normal, _ = _collect(None)
    blocked, output = _collect(tmp_path)
    assert len(normal) > 0
    assert blocked == normal, output
