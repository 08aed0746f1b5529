"""Scan defaults: the one place the library and ``pyengine scan`` read them from.

:class:`pyengine.scan.engine.Engine` and :class:`pyengine.sources.detect.DetectSource`
take these as their keyword defaults and the CLI shows and passes the same
names, so the documented defaults cannot drift apart.  A leaf module of plain
constants, so that ``pyengine --help`` imports nothing heavy to show them.
"""

__all__ = ["DEFAULT_APERTURE", "DEFAULT_CORE", "DEFAULT_DETECT_BAND", "DEFAULT_DETECT_THRESHOLD",
           "DEFAULT_MAX_NAN", "DEFAULT_MIN_AREA", "DEFAULT_TENSORRT_PROFILE"]

#: Tile core size in pixels (each tile also reads a halo of half a cutout).
DEFAULT_CORE = 2048
#: Cutouts with a larger share of NaN pixels are flagged BLANK (and not candidates).
DEFAULT_MAX_NAN = 0.5
#: Detection threshold in sigma of the local background noise.
DEFAULT_DETECT_THRESHOLD = 3.0
#: Minimum pixels above threshold for a detection.
DEFAULT_MIN_AREA = 5
#: Band detected on: a band name, or "sum" (noise-weighted sum of all bands).
DEFAULT_DETECT_BAND = "sum"
#: Radius in pixels of the aperture for detection magnitudes.
DEFAULT_APERTURE = 8.0
#: TensorRT optimisation profile (min, opt, max batch) when none is asked for:
#: ``pyengine export --format tensorrt --batch`` and the TensorRT runner without a batch size.
DEFAULT_TENSORRT_PROFILE = (1, 1024, 4096)  # opt: the GPU batch (runners.base.GPU_BATCH)
