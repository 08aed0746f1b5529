"""``pyengine info``: what this machine offers pyengine (versions, CPU, GPU, usable runners).

:mod:`~pyengine.info.report` builds the report (benchmarks stamp their results with
it); :mod:`~pyengine.info.cli` prints it.
"""

from pyengine.info.report import RunnerStatus, machine_info, package_versions, runners

__all__ = ["RunnerStatus", "machine_info", "package_versions", "runners"]
