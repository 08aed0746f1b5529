"""Runners: one interface over the inference backends (DESIGN.md §5).

ONNX Runtime (CPU), torch (CPU or CUDA: pinned slots, copy streams, CUDA graphs)
and TensorRT (engines built and cached by pyengine.export.tensorrt).  The GPU
paths are written to the documented torch and TensorRT 10/11 APIs and are
tested on a GPU by tests/test_runners_gpu.py; see each module.

``make_runner(name, model, precision=...)`` builds one (``auto`` picks the best
usable and says why in ``runner.chosen_because``); ``available_runners()`` says
which work here.  Heavy libraries are imported by the runner that needs them,
when it is activated (or probed), so one broken backend fails alone.
"""

from pyengine.runners.base import (
                                   RUNNER_NAMES,
                                   Pending,
                                   Runner,
                                   RunnerUnavailable,
                                   available_runners,
                                   make_runner,
)

__all__ = ["RUNNER_NAMES", "Pending", "Runner", "RunnerUnavailable", "available_runners",
           "make_runner"]
