"""Surveys: fields (one image per band on its own grid and WCS), their manifest
(:mod:`pyengine.survey.manifest`), how they were found (:mod:`~pyengine.survey.discover`),
where they lie and which owns a sky position (:mod:`~pyengine.survey.geometry`), how they
are scanned (:mod:`~pyengine.survey.scan`, in units of :mod:`~pyengine.survey.units`; on
a cluster, :mod:`~pyengine.survey.dask`; shards joined by :mod:`~pyengine.survey.merge`),
and what ``pyengine survey show`` reports (:mod:`~pyengine.survey.report`).  Names load on first
use, so ``pyengine --help`` imports no numpy."""

from __future__ import annotations

from pyengine._lazy import lazy_exports

__all__ = ["FORMAT", "Cone", "Field", "Survey", "SurveyError", "SurveyGeometry", "discover",
           "merge_shards", "read_manifest", "scan_survey"]

_LAZY = {
    "FORMAT": "pyengine.survey.manifest",
    "Field": "pyengine.survey.manifest",
    "Survey": "pyengine.survey.manifest",
    "SurveyError": "pyengine.survey.manifest",
    "read_manifest": "pyengine.survey.manifest",
    "SurveyGeometry": "pyengine.survey.geometry",
    "Cone": "pyengine.survey.geometry",
    "scan_survey": "pyengine.survey.scan",
    "merge_shards": "pyengine.survey.merge",
    "discover": "pyengine.survey.discover",
}

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
