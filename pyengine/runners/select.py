"""Choosing a runner by name (``auto``: TensorRT, else torch on CUDA, else ONNX Runtime).

Thread safety: :func:`make_runner` builds a new runner; safe from any thread.
"""

from __future__ import annotations

from pathlib import Path

from pyengine.errors import ConfigError, RunnerUnavailable
from pyengine.runners.base import ENGINE_SUFFIXES, PRECISIONS, Runner
from pyengine.runners.probe import (
    runner_problem,
    tensorrt_problem,
    torch_cuda_problem,
    unavailable,
)

__all__ = ["ENGINE_SUFFIXES", "PRECISIONS", "RUNNER_NAMES", "chosen_runner", "ensemble_members",
           "make_runner"]

RUNNER_NAMES = ("auto", "onnxruntime", "torch", "tensorrt")

def _model_kind(model: Path | None) -> str:
    if model is None:
        return "model"
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    return "model"


_ACCEPTS = {"model": ("tensorrt", "torch", "onnxruntime"), "onnx": ("tensorrt", "onnxruntime"),
            "engine": ("tensorrt",)}


class _LazyProblems(dict):
    """runner name -> :func:`runner_problem`, probed on first look-up."""

    def __missing__(self, name: str) -> str | None:
        self[name] = problem = runner_problem(name)
        return problem


def _choose(model: Path | None, precision: str | None, device: str) -> tuple[str, str, str]:
    """(runner name, device, why) for ``auto``: the first usable of TensorRT, torch on
    CUDA and ONNX Runtime that takes this kind of model and this precision."""
    kind = _model_kind(model)
    # Probed lazily, each at most once: an ONNX Runtime choice on a machine without an
    # NVIDIA device imports neither torch nor tensorrt (see runners.probe).
    runners = _LazyProblems()
    gpu_problem = "device cpu was asked for" if device == "cpu" else torch_cuda_problem()
    passed: list[str] = []
    for name in _ACCEPTS[kind]:
        if precision is not None and precision not in PRECISIONS[name]:
            passed.append(f"{name} has no {precision}")
            continue
        if name == "tensorrt":
            problem = gpu_problem if device == "cpu" else runners["tensorrt"]
            if problem is None:
                return name, device, "tensorrt is importable and a CUDA GPU is present"
            passed.append(f"tensorrt: {problem}")
        elif name == "torch":
            problem = gpu_problem or runners["torch"]  # no GPU: no need to import torch
            if problem is None:
                return name, "cuda" if device == "auto" else device, \
                    f"torch has CUDA ({'; '.join(passed)})" if passed else "torch has CUDA"
            if gpu_problem is None:
                passed.append(f"torch: {problem}")
        else:
            problem = runners["onnxruntime"]
            if problem is None:
                why = f"no CUDA GPU ({gpu_problem})" if gpu_problem is not None else \
                    f"no GPU runner usable ({'; '.join(passed)})"
                return name, device, why
            passed.append(f"onnxruntime: {problem}")
    if gpu_problem is not None:
        passed.append(f"no CUDA GPU ({gpu_problem})")
    if kind == "model" and runners["torch"] is None and device != "cuda" and \
            not device.startswith("cuda:") and (precision or "fp32") in PRECISIONS["torch"]:
        return "torch", "cpu", f"torch on the CPU: {'; '.join(passed)}"
    what = {"model": "a model file", "onnx": "an ONNX file", "engine": "a TensorRT engine"}[kind]
    raise RunnerUnavailable(f"runner auto: nothing here runs {what}"
                            f"{f' at {precision}' if precision else ''}: {'; '.join(passed)}")


def ensemble_members(model) -> list[str] | None:
    """The member files of ``model`` when it is a list or tuple of files (an ensemble, or
    one file given as a list), else None; an empty list is refused."""
    if not isinstance(model, list | tuple):
        return None
    if not model:
        raise ConfigError("model: an empty list of model files; give one or more")
    return [str(m) for m in model]


def chosen_runner(name: str, model, precision: str | None = None, device: str = "auto") -> str:
    """The runner :func:`make_runner` builds for ``name`` (``auto``: its choice, probed as
    :func:`make_runner` probes), without building it (an ensemble: its first member's)."""
    if name != "auto":
        return name
    members = ensemble_members(model)
    if members is not None:
        model = members[0]
    return _choose(Path(model) if model is not None else None, precision, device)[0]


def make_runner(name: str, model, *, precision: str | None = None, threads: int | None = None,
                cache_dir=None, device: str = "auto", batch_size: int | None = None) -> Runner:
    """A runner by name for ``model`` (a model file, an exported .onnx file, a TensorRT
    engine built by pyengine, or None for the shipped demo model).  ``auto``: TensorRT
    if importable with a CUDA GPU, else torch on CUDA, else ONNX Runtime, among those
    that take this kind of model and precision; ``runner.chosen_because`` says why.
    ``precision`` None means the exported file's own, or fp32 for a model file.
    ``batch_size``: the batch size the caller will use (None: the runner's preferred).

    ``model`` a list or tuple of two or more files: an ensemble
    (:class:`pyengine.runners.ensemble.EnsembleRunner`), one runner of ``name`` per
    member, built with the same options; one file in a list is that file."""
    members = ensemble_members(model)
    if members is not None:
        options = {"precision": precision, "threads": threads, "cache_dir": cache_dir,
                   "device": device, "batch_size": batch_size}
        if len(members) == 1:
            return make_runner(name, members[0], **options)
        from pyengine.runners.ensemble import EnsembleRunner

        return EnsembleRunner([make_runner(name, m, **options) for m in members], members)
    if name not in RUNNER_NAMES:
        raise ConfigError(f"runner {name!r} is not known; accepted: {', '.join(RUNNER_NAMES)}")
    if precision is not None and name != "auto" and precision not in PRECISIONS[name]:
        raise ConfigError(f"precision {precision!r} is not available with the {name} runner; "
                          f"accepted: {', '.join(PRECISIONS[name])}")
    if precision is not None and not any(precision in p for p in PRECISIONS.values()):
        accepted = sorted({p for ps in PRECISIONS.values() for p in ps})
        raise ConfigError(f"precision {precision!r} is not known; accepted: {', '.join(accepted)}")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device {device!r} is not accepted; accepted: auto, cpu, cuda, cuda:N")
    model = Path(model) if model is not None else None
    because = f"{name} was asked for"
    if name == "auto":
        name, device, because = _choose(model, precision, device)
    kind = _model_kind(model)
    if name not in _ACCEPTS[kind]:
        raise ConfigError(f"{model}: the {name} runner does not take "
                          f"{'a TensorRT engine' if kind == 'engine' else 'ONNX files'}; "
                          f"accepted for this file: {', '.join(_ACCEPTS[kind])}")
    if name == "torch":
        from pyengine.runners.torch import TorchRunner

        runner = TorchRunner(model, precision=precision, device=device, threads=threads,
                             batch_size=batch_size)
    elif name == "tensorrt":
        problem = tensorrt_problem()
        if problem is not None:
            raise unavailable("tensorrt", problem)
        if device == "cpu":
            raise ConfigError("device 'cpu' is not accepted by the tensorrt runner; accepted: "
                              "auto, cuda, cuda:N")
        from pyengine.runners.tensorrt import TensorRTRunner

        runner = TensorRTRunner(model, precision=precision, cache_dir=cache_dir, device=device,
                                batch_size=batch_size)
    else:
        from pyengine.runners.onnxrt import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(model, precision=precision, threads=threads,
                                   cache_dir=cache_dir, batch_size=batch_size)
    runner.chosen_because = because
    return runner
