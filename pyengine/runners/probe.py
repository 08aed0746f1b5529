"""Which runners work here, and why not: one line per runner, never an exception.

Probing imports the runner's library (onnxruntime, torch, tensorrt); that happens
only when asked (``pyengine info``, ``make_runner``), never at ``import pyengine``.

Thread safety: the probes only import modules; safe from any thread.
"""

from __future__ import annotations

from pyengine.errors import RunnerUnavailable

__all__ = ["available_runners", "tensorrt_problem", "torch_cuda_problem", "unavailable"]

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
    """Why torch cannot use a CUDA GPU here (None: it can)."""
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


def available_runners() -> dict[str, str | None]:
    """Every concrete runner: None where it can be used here, else why not (one line).
    Probing imports the libraries (never at ``import pyengine``)."""
    return {"onnxruntime": _onnxruntime_problem(), "torch": _torch_problem(),
            "tensorrt": tensorrt_problem()}


def unavailable(name: str, why: str, runners: dict[str, str | None] | None = None
                ) -> RunnerUnavailable:
    """The one-line error for a runner that cannot work here, naming those that can."""
    runners = available_runners() if runners is None else runners
    usable = [n for n, problem in runners.items() if problem is None and n != name]
    return RunnerUnavailable(f"{name} runner: {why}; available runners: "
                             f"{', '.join(usable) if usable else 'none'}")
