"""Surveys: fields (one image per band on its own grid and WCS), their manifest
(:mod:`pyengine.survey.manifest`), how they were found (:mod:`~pyengine.survey.discover`),
where they lie and which owns a sky position (:mod:`~pyengine.survey.geometry`), and what
``pyengine survey show`` reports (:mod:`~pyengine.survey.report`).  Names load on first
use, so ``pyengine --help`` imports no numpy."""

from __future__ import annotations

from pyengine._lazy import lazy_exports

__all__ = ["FORMAT", "Field", "Survey", "SurveyError", "SurveyGeometry", "discover",
           "read_manifest"]

_LAZY = {
    "FORMAT": "pyengine.survey.manifest",
    "Field": "pyengine.survey.manifest",
    "Survey": "pyengine.survey.manifest",
    "SurveyError": "pyengine.survey.manifest",
    "read_manifest": "pyengine.survey.manifest",
    "SurveyGeometry": "pyengine.survey.geometry",
    "discover": "pyengine.survey.discover",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
