"""Which runners work here, and why not: one line per runner, never an exception.

Probing imports the runner's library (onnxruntime, torch, tensorrt); that happens
only when asked (``pyengine info``, ``make_runner``), never at ``import pyengine``.

The GPU question is asked cheaply first: :func:`nvidia_device_problem` looks for
NVIDIA device nodes and ``nvidia-smi`` (no driver call, no import), and where
there is neither, :func:`torch_cuda_problem` answers "no NVIDIA device found"
without importing torch (1.3 s and hundreds of MB, only to learn there is no
GPU).  Once torch is imported (a torch runner, a test faking
``torch.cuda.is_available``), torch's own answer is used, so the cheap probe
never hides what torch says.  :func:`runner_problem` probes one runner, so a
caller that needs only ONNX Runtime never imports torch to learn of it.

Thread safety: the probes only import modules and look at files; safe from any
thread.
"""

from __future__ import annotations

import sys

from pyengine.devices import nvidia_device_problem
from pyengine.errors import RunnerUnavailable

__all__ = ["available_runners", "nvidia_device_problem", "runner_problem", "tensorrt_problem",
           "torch_cuda_problem", "unavailable"]


def _onnxruntime_problem() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def _torch_problem() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch)"
    return None


def torch_cuda_problem() -> str | None:
    """Why torch cannot use a CUDA GPU here (None: it can).

    Without torch imported yet and without any NVIDIA device
    (:func:`pyengine.devices.nvidia_device_problem`), the answer comes without importing torch."""
    if "torch" not in sys.modules:
        problem = nvidia_device_problem()
        if problem is not None:
            return problem
    problem = _torch_problem()
    if problem is not None:
        return problem
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA"
    return "no CUDA device is visible to torch"


def tensorrt_problem() -> str | None:
    """Why the tensorrt runner cannot work here (None: it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("the tensorrt package is not installed (TensorRT 10+ comes from NVIDIA's "
                "package index and needs an NVIDIA GPU)")
    except OSError as exc:  # the wheel is there, its CUDA libraries are not
        return f"the tensorrt package is installed but its libraries do not load ({exc})"
    problem = torch_cuda_problem()
    if problem is not None:
        return f"{problem} (the tensorrt runner keeps its buffers in torch CUDA memory)"
    return None


_PROBES = {"onnxruntime": _onnxruntime_problem, "torch": _torch_problem,
           "tensorrt": tensorrt_problem}


def runner_problem(name: str) -> str | None:
    """One concrete runner's verdict (see :func:`available_runners`): imports only its own
    library (and, for tensorrt, asks :func:`torch_cuda_problem`)."""
    return _PROBES[name]()


def available_runners() -> dict[str, str | None]:
    """Every concrete runner: None where it can be used here, else why not (one line).
    Probing imports the libraries (never at ``import pyengine``)."""
    return {name: probe() for name, probe in _PROBES.items()}


def unavailable(name: str, why: str, runners: dict[str, str | None] | None = None
                ) -> RunnerUnavailable:
    """The one-line error for a runner that cannot work here, naming those that can."""
    runners = available_runners() if runners is None else runners
    usable = [n for n, problem in runners.items() if problem is None and n != name]
    return RunnerUnavailable(f"{name} runner: {why}; available runners: "
                             f"{', '.join(usable) if usable else 'none'}")
