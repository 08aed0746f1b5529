"""pyengine: scan astronomical FITS mosaics with a ResNet-50 for star-cluster candidates.

Heavy modules (numba kernels, astropy, torch) load on first use, so
``import pyengine`` and ``pyengine --help`` stay instant.
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports
from pyengine.errors import PyEngineError

__version__ = "0.1.0"

__all__ = ["Engine", "Mosaic", "PyEngineError", "Survey", "TilePlan", "__version__",
           "load_model"]

_LAZY = {
    "Engine": "pyengine.scan.engine",
    "Mosaic": "pyengine.io.mosaic",
    "Survey": "pyengine.survey.manifest",
    "TilePlan": "pyengine.io.tiles",
    "load_model": "pyengine.models.checkpoint",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
