"""The machine: CPU model, usable threads and NVIDIA GPUs, found without importing any
inference library (no torch, no CUDA driver call).  A leaf: imports nothing of pyengine.

Thread safety: each call reads /proc or runs nvidia-smi; safe from any thread.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess

__all__ = ["cpu_model", "gpus", "nvidia_device_problem", "usable_threads"]

# Where an NVIDIA driver shows itself without being called: the device nodes of
# the Linux driver (/dev/nvidia0, nvidiactl, ...), WSL2's GPU node, and the
# driver's nvidia-smi (installed beside every driver, also on Windows).
_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/dxg")


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where available."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_threads() -> int:
    """CPU threads this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs reported by nvidia-smi (empty when there is none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version,compute_cap",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = []
    for line in res.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            found.append(dict(zip(("name", "memory", "driver", "compute_capability"), parts,
                                  strict=True)))
    return found


def nvidia_device_problem() -> str | None:
    """Why there cannot be a CUDA GPU here, from files alone (None: there may be one).

    No driver call and no import: no NVIDIA device node (``/dev/nvidia*``, WSL2's
    ``/dev/dxg``) and no ``nvidia-smi`` on PATH means no NVIDIA driver, hence no
    CUDA device for torch or TensorRT to find.  A None answer is only "maybe": the
    full probe (torch) decides."""
    if any(glob.glob(pattern) for pattern in _DEVICE_GLOBS):
        return None
    if shutil.which("nvidia-smi") is not None:
        return None
    if os.name == "nt":  # no device nodes to look at; nvidia-smi is the only sign
        return "no NVIDIA device found (no nvidia-smi on PATH)"
    return "no NVIDIA device found"
