"""Synthetic PAndAS-like g, i fields of M31 with a truth catalog (``pyengine synth``).

Real PAndAS images are not redistributable here, so tests, training and
benchmarks run on fields made by this package: a TAN-projected MegaCam-like
field (0.187"/px) with sky, M31's inclined exponential disk, Poisson and read
noise, Milky Way foreground stars, M31 giants, King-profile star clusters with
resolved members, Sersic background galaxies, saturated stars with bleed
trails and optional CCD gaps, each band with its own Moffat PSF.

>>> from pyengine.synth import SynthConfig, make_field
>>> result = make_field("out", SynthConfig(width=1024, height=1024, seed=3))  # doctest: +SKIP

A survey (:mod:`pyengine.synth.survey`) is overlapping fields of one sky, each with
its own TAN WCS, rotation, seeing and depth, a truth catalog for the whole area and a
survey manifest:

>>> from pyengine.synth import SurveyConfig, make_survey
>>> result = make_survey("out", SurveyConfig(columns=3, rows=2))  # doctest: +SKIP

Thread safety: see the submodules; :func:`make_field` runs one field on the
calling thread (Numba kernels use Numba's thread pool and release the GIL).
Importing this package is cheap; its names load their modules on first use.
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports

__all__ = [
    "CLASSES",
    "DEFAULT_BANDS",
    "ENCODINGS",
    "SUBCLASSES",
    "BandSpec",
    "FieldRenderer",
    "PlacedObject",
    "SurveyConfig",
    "SurveyLayout",
    "SynthConfig",
    "SynthResult",
    "band_header",
    "field_wcs",
    "make_field",
    "make_survey",
]

# Loaded on first use so that ``pyengine --help`` (which registers the synth
# command) does not import Numba or astropy.
_LAZY = {
    "CLASSES": "pyengine.synth.catalog",
    "SUBCLASSES": "pyengine.synth.catalog",
    "DEFAULT_BANDS": "pyengine.synth.config",
    "ENCODINGS": "pyengine.synth.config",
    "BandSpec": "pyengine.synth.config",
    "SynthConfig": "pyengine.synth.config",
    "FieldRenderer": "pyengine.synth.field",
    "SynthResult": "pyengine.synth.field",
    "make_field": "pyengine.synth.field",
    "PlacedObject": "pyengine.synth.survey",
    "SurveyConfig": "pyengine.synth.survey",
    "SurveyLayout": "pyengine.synth.survey",
    "make_survey": "pyengine.synth.survey",
    "band_header": "pyengine.synth.sky",
    "field_wcs": "pyengine.synth.sky",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
