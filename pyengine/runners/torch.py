"""The torch runner: PyTorch eager on the CPU or a CUDA GPU.

Runs :func:`pyengine.models.classifier.precision_graph`, the same graph the
ONNX export writes: the preprocessing in float32 and the ResNet in fp32, fp16 or
bf16.  ``channels_last`` stores the ResNet's activations NHWC, which the CPU
(oneDNN) and GPU convolution kernels prefer.

Written and tested on a CPU.  The CUDA path is plain device-generic torch
(module and batch moved to the GPU); it has not run here (no GPU was lent),
and pinned-slot copy streams and CUDA graphs come with the scan engine.

Thread safety: see :mod:`pyengine.runners.base`.  ``threads`` sets torch's
intra-op thread count, which is process-wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.runners.base import Runner, RunnerUnavailable

__all__ = ["TorchRunner"]

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model: Path | None, *, precision: str | None = None,
                 device: str = "auto", threads: int | None = None, channels_last: bool = True):
        from pyengine.models.checkpoint import DEMO_MODEL, read_spec

        if threads is not None and threads < 1:
            raise ConfigError(f"threads = {threads}; a positive number is needed")
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError(f"device {device!r} is not accepted; accepted: auto, cpu, cuda, "
                              "cuda:N")
        if model is not None and model.suffix.lower() == ".onnx":
            raise ConfigError(f"{model}: the torch runner takes a pyengine model file "
                              "(.safetensors); run ONNX files with --runner onnxruntime")
        self._source = model if model is not None else DEMO_MODEL
        spec, _ = read_spec(self._source)
        super().__init__(spec, precision or "fp32")
        self._device_request, self._threads, self._channels_last = device, threads, channels_last
        self._graph = self._device = None

    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            raise RunnerUnavailable("torch is not installed (pip install torch)") from None
        from pyengine.models.checkpoint import load_model
        from pyengine.models.classifier import precision_graph

        cuda = torch.cuda.is_available()
        request = self._device_request
        if request.startswith("cuda") and not cuda:
            why = "this torch build has no CUDA" if torch.version.cuda is None else \
                "no CUDA device is visible"
            raise RunnerUnavailable(f"torch runner on {request}: {why}; use --device cpu")
        self._device = torch.device("cuda" if request == "auto" and cuda else
                                    "cpu" if request == "auto" else request)
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        graph = precision_graph(load_model(self._source), self.precision)
        if self._channels_last:
            graph.backbone = graph.backbone.to(memory_format=torch.channels_last)
        self._graph = graph.to(self._device)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to(self._device, non_blocking=True)
        with torch.inference_mode():
            score = self._graph(x)[1]
        return score.float().cpu().numpy()

    def _deactivate(self) -> None:
        self._graph = None
