"""Surveys: fields (one image per band on its own grid and WCS), their manifest, footprints
and ownership (:mod:`pyengine.survey.manifest`, :mod:`pyengine.survey.geometry`)."""

from pyengine.survey.manifest import FORMAT, Field, Survey, SurveyError, read_manifest

__all__ = ["FORMAT", "Field", "Survey", "SurveyError", "read_manifest"]
