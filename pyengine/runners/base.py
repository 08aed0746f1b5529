"""The runner interface, and choosing a runner by name.

A runner turns a batch of raw cutouts (B, nband, S, S) float32, NaN allowed,
into cluster scores (B,) float32, with the model's own in-graph preprocessing.
Its life cycle follows Polygraphy's runners: construct (cheap: nothing heavy
is imported), ``activate`` (load the session or engine), ``infer`` as often as
needed, ``deactivate``; a runner is also a context manager.

Thread safety: ``infer`` may be called from one thread at a time per runner
(the scan engine gives each runner one inference thread); ``activate`` and
``deactivate`` must not race with ``infer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.models.spec import ModelSpec

__all__ = ["PRECISIONS", "RUNNER_NAMES", "Runner", "RunnerUnavailable", "make_runner"]

RUNNER_NAMES = ("auto", "onnxruntime", "torch")
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "fp16", "bf16")}


class RunnerUnavailable(ConfigError):
    """The runner asked for cannot work here (library, device or file missing)."""


class Runner(ABC):
    """Scores for raw cutouts; see the module docstring for the life cycle."""

    name = "runner"

    def __init__(self, spec: ModelSpec, precision: str):
        self.spec = spec
        self.precision = precision
        self.active = False

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(nband, S, S) of one cutout."""
        return (self.spec.nband, self.spec.cutout_size, self.spec.cutout_size)

    def activate(self) -> Runner:
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Scores (B,) float32 for cutouts (B, nband, S, S) float32."""
        if not self.active:
            raise ConfigError(f"{self.name} runner: infer() before activate()")
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ConfigError(f"{self.name} runner: batch must be float32 (B, "
                              f"{', '.join(map(str, self.input_shape))}), got {batch.dtype} "
                              f"{batch.shape}")
        return self._infer(np.ascontiguousarray(batch))

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _deactivate(self) -> None: ...


def make_runner(name: str, model, *, precision: str | None = None, threads: int | None = None,
                cache_dir=None, device: str = "auto") -> Runner:
    """A runner by name for ``model`` (a model file, an exported .onnx file, or None for the
    shipped demo model).  ``auto`` picks the best usable one (so far: ONNX Runtime; the
    TensorRT runner and auto's GPU choices come with the scan engine).  ``precision`` None means the
    exported file's own, or fp32 for a model file."""
    if name not in RUNNER_NAMES:
        raise ConfigError(f"runner {name!r} is not known; accepted: {', '.join(RUNNER_NAMES)}")
    if name == "auto":
        name = "onnxruntime"
    accepted = PRECISIONS[name]
    if precision is not None and precision not in accepted:
        raise ConfigError(f"precision {precision!r} is not available with the {name} runner; "
                          f"accepted: {', '.join(accepted)}")
    model = Path(model) if model is not None else None
    if name == "torch":
        from pyengine.runners.torch import TorchRunner

        return TorchRunner(model, precision=precision, device=device, threads=threads)
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(model, precision=precision, threads=threads, cache_dir=cache_dir)
