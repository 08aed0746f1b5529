"""Runners: one interface over ONNX Runtime, torch and TensorRT (DESIGN.md §5).

``make_runner(name, model, precision=...)`` builds one; heavy libraries are
imported by the runner that needs them, when it is activated, so one broken
backend fails alone.
"""

from pyengine.runners.base import RUNNER_NAMES, Runner, make_runner

__all__ = ["RUNNER_NAMES", "Runner", "make_runner"]
