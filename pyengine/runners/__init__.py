"""Runners: one interface over the inference backends (DESIGN.md §5).

Written: ONNX Runtime and torch.  The TensorRT runner comes with the scan engine
(engines can already be built: pyengine.export.tensorrt).

``make_runner(name, model, precision=...)`` builds one; heavy libraries are
imported by the runner that needs them, when it is activated, so one broken
backend fails alone.
"""

from pyengine.runners.base import RUNNER_NAMES, Runner, make_runner

__all__ = ["RUNNER_NAMES", "Runner", "make_runner"]
