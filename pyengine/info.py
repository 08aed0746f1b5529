"""What this machine offers pyengine: versions, CPU, GPU and usable runners.

Used by ``pyengine info`` and by benchmarks to stamp their results.  Probing a
runner imports its library (torch, onnxruntime, tensorrt); that happens only
here, on request, never at ``import pyengine``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata

__all__ = ["RunnerStatus", "cpu_model", "gpus", "machine_info", "package_versions", "runners"]

_PACKAGES = (
    "pyengine", "numpy", "numba", "llvmlite", "astropy", "fitsio", "click",
    "torch", "onnxruntime", "onnx", "tensorrt", "safetensors", "sep", "pybind11",
)


@dataclass(frozen=True)
class RunnerStatus:
    """Whether a runner can be used here, and if not, why."""

    name: str
    usable: bool
    detail: str


def package_versions() -> dict[str, str | None]:
    """Installed versions of pyengine's dependencies (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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


def _probe_onnxruntime() -> RunnerStatus:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return RunnerStatus("onnxruntime", False, f"not installed ({exc}); pip install onnxruntime")
    providers = ", ".join(ort.get_available_providers())
    return RunnerStatus("onnxruntime", True, f"onnxruntime {ort.__version__}; providers: {providers}")


def _probe_torch() -> RunnerStatus:
    try:
        import torch
    except ImportError as exc:
        return RunnerStatus("torch", False, f"not installed ({exc}); pip install torch")
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
        return RunnerStatus("torch", True, f"torch {torch.__version__}; CPU and CUDA ({dev})")
    why = "this build has no CUDA" if torch.version.cuda is None else "no CUDA device visible"
    return RunnerStatus("torch", True, f"torch {torch.__version__}; CPU only ({why})")


def _probe_tensorrt() -> RunnerStatus:
    try:
        import tensorrt as trt
    except ImportError:
        return RunnerStatus(
            "tensorrt", False,
            "not installed: TensorRT 10+ comes from NVIDIA's package index and needs an NVIDIA GPU",
        )
    except OSError as exc:  # wheel present, CUDA libraries missing
        return RunnerStatus("tensorrt", False, f"installed but cannot load its libraries: {exc}")
    if not gpus():
        return RunnerStatus("tensorrt", False, f"tensorrt {trt.__version__} found, but no NVIDIA GPU")
    return RunnerStatus("tensorrt", True, f"tensorrt {trt.__version__}")


def runners() -> list[RunnerStatus]:
    """Every runner pyengine knows, probed in isolation: one broken backend fails alone.
    Usability is :func:`pyengine.runners.base.available_runners`' verdict (what
    ``make_runner`` acts on); the probes add versions and devices."""
    from pyengine.runners.base import available_runners

    problems = available_runners()
    out = []
    for status in (_probe_onnxruntime(), _probe_torch(), _probe_tensorrt()):
        problem = problems.get(status.name)
        if status.usable and problem is not None:
            status = RunnerStatus(status.name, False, problem)
        out.append(status)
    return out


def machine_info(*, probe_runners: bool = True) -> dict:
    """Everything above as one JSON-serialisable dict."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "threads": usable_threads(),
        "gpus": gpus(),
        "packages": package_versions(),
    }
    if probe_runners:
        info["runners"] = [r.__dict__ for r in runners()]
    return info
