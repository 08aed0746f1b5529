"""Injection-recovery on the user's own images (``pyengine inject``).

Artificial King-profile star clusters, drawn by the synth's one cluster model with each
band's PSF measured from the field's own stars and its zero point, are added to the
pixels as the scan reads them (the images on disk are never modified); the scan's own
detection and classification then look for them, and the report gives completeness
against magnitude and half-light radius with 50 % and 90 % limits, as cluster surveys
measure it (PHAT's artificial cluster tests, Johnson et al. 2015; DOLPHOT's artificial
stars, Dolphin 2000).

>>> from pyengine.injection import inject, completeness_magnitude
>>> report = inject(["g.fits", "i.fits"], n=300, mag=(16, 23), rh=(1, 6))  # doctest: +SKIP
>>> completeness_magnitude(report, 0.5)  # doctest: +SKIP

Modules: :mod:`~pyengine.injection.psf` (PSF from stars), :mod:`~.clusters` (sites,
parameters, pixels, the injected mosaic), :mod:`~.recovery` (detections near the clusters,
matching), :mod:`~.report` and :mod:`~.figures` (curves, limits, JSON, PNGs),
:mod:`~.run` (:func:`inject`), :mod:`~.cli`.

Thread safety: see the submodules; importing this package is cheap (its names load their
modules on first use).
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports

__all__ = ["PSFMeasurement", "completeness_magnitude", "inject", "measure_psf",
           "summary_line"]

_LAZY = {
    "PSFMeasurement": "pyengine.injection.psf",
    "measure_psf": "pyengine.injection.psf",
    "inject": "pyengine.injection.run",
    "completeness_magnitude": "pyengine.injection.report",
    "summary_line": "pyengine.injection.report",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
