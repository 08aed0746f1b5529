"""``pyengine info``: what this machine offers pyengine (versions, CPU, GPU, usable runners).

:mod:`~pyengine.info.report` builds the report (benchmarks stamp their results with
it); :mod:`~pyengine.info.cli` prints it.  Names load their module on first use, so
``pyengine --help`` imports no NumPy.
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports

_LAZY = dict.fromkeys(("RunnerStatus", "machine_info", "package_versions", "runners"),
                      "pyengine.info.report")

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
