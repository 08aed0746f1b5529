"""What this machine offers pyengine: versions, CPU, GPU and usable runners.

Used by ``pyengine info`` and by benchmarks to stamp their results.  Probing a
runner imports its library (torch, onnxruntime, tensorrt); that happens only
here, on request, never at ``import pyengine``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata

from pyengine.devices import cpu_model, gpus, usable_threads
from pyengine.runners.probe import available_runners

__all__ = ["RunnerStatus", "machine_info", "package_versions", "runners"]

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
    Usability is :func:`pyengine.runners.probe.available_runners`' verdict (what
    ``make_runner`` acts on); the probes add versions and devices."""
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
