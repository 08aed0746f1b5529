"""pyengine: scan astronomical FITS mosaics with a ResNet-50 for star-cluster candidates.

Heavy modules (numba kernels, astropy, torch) load on first use, so
``import pyengine`` and ``pyengine --help`` stay instant.
"""

from __future__ import annotations

from importlib import import_module

from pyengine.errors import PyEngineError

__version__ = "0.1.0"

__all__ = ["Mosaic", "PyEngineError", "TilePlan", "__version__"]

_LAZY = {
    "Mosaic": "pyengine.io.mosaic",
    "TilePlan": "pyengine.io.tiles",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pyengine' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
