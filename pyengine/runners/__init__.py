"""Runners: one interface over the inference backends (DESIGN.md §5).

ONNX Runtime (CPU), torch (CPU or CUDA: pinned slots, copy streams, CUDA graphs)
and TensorRT (engines built and cached by pyengine.export.tensorrt).  The GPU
paths are written to the documented torch and TensorRT 10/11 APIs and are
tested on a GPU by tests/test_runners_gpu.py; see each module.

* :mod:`~pyengine.runners.base`: the interface alone (``Runner``, ``Pending``).
* :mod:`~pyengine.runners.probe`: which runners work here, and why not.
* :mod:`~pyengine.runners.select`: ``make_runner(name, model, precision=...)``
  (``auto`` picks the best usable and says why in ``runner.chosen_because``).
* :mod:`~pyengine.runners.loaders`: a model file -> the cached ONNX a runner runs.
* :mod:`~pyengine.runners.onnxrt`, :mod:`~pyengine.runners.torch`,
  :mod:`~pyengine.runners.tensorrt`: the backends.

Heavy libraries are imported by the runner that needs them, when it is activated
(or probed), so one broken backend fails alone.
"""

from pyengine.errors import RunnerUnavailable
from pyengine.runners.base import Pending, Runner
from pyengine.runners.probe import available_runners
from pyengine.runners.select import RUNNER_NAMES, make_runner

__all__ = ["RUNNER_NAMES", "Pending", "Runner", "RunnerUnavailable", "available_runners",
           "make_runner"]
