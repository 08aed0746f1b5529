"""``pyengine evaluate``: a scan's catalog against a truth catalog (purity, recall, F1, the
PR curve, completeness against magnitude and size, purity against score, calibration),
as a dict with stable keys (:mod:`pyengine.evaluation.run`), a JSON file and PNG
figures (:mod:`pyengine.evaluation.figures`).

>>> from pyengine.evaluation import evaluate
>>> result = evaluate("candidates.fits", "truth.fits", match_radius="0.5arcsec")  # doctest: +SKIP
>>> result["operating_point"]["precision"], result["operating_point"]["recall"]  # doctest: +SKIP

Thread safety: see the submodules; importing this package is cheap (its names load
their modules on first use).
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports

__all__ = ["evaluate", "write_outputs"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "evaluate": "pyengine.evaluation.run",
    "write_outputs": "pyengine.evaluation.figures",
})
