"""Shared helpers for the benchmark scripts: timing, environment header, results.

Every script prints the environment first (versions, CPU, GPU, threads) so a
figure never travels without its machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from pyengine.info.report import machine_info

__all__ = ["environment", "print_environment", "repeat", "write_json"]


def environment() -> dict:
    info = machine_info(probe_runners=False)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    # A copy of the tree without .git (a device machine's) names it in PYENGINE_COMMIT.
    info["commit"] = commit or os.environ.get("PYENGINE_COMMIT") or None
    info["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def print_environment(env: dict) -> None:
    pk = env["packages"]
    print(f"# {env['date']}  commit {env['commit']}")
    print(f"# CPU: {env['cpu']}, {env['threads']} threads; GPUs: "
          f"{', '.join(g['name'] for g in env['gpus']) or 'none'}")
    print(f"# Python {env['python']}; " + ", ".join(
        f"{k} {v}" for k, v in pk.items() if v and k in ("pyengine", "numpy", "numba", "astropy",
                                                         "fitsio", "torch", "onnxruntime")))


def repeat(fn, n: int = 5) -> dict:
    """Call ``fn`` n times; wall-clock seconds as min / median / max."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min": min(times), "median": statistics.median(times), "max": max(times),
            "runs": n}


def write_json(path, payload: dict) -> None:
    """Write ``payload`` to ``path`` whole or not at all (a temporary file, then a rename),
    so a run killed while saving leaves the previous complete file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
