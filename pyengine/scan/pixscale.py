"""The pixel-scale guard: a model sees the sky at the pixel scale it was trained at.

A ResNet trained on 0.187"/px MegaCam cutouts of S x S pixels has learnt what a cluster
looks like over S x 0.187" of sky; a 1.7"/px DSS image gives it cutouts of nine times
that, where a cluster is a point source. Scores there mean nothing, so a scan refuses,
before any work (before the model loads, int8 calibrates or a tile is read), an image
whose pixel scale differs from the model's ``spec.pixel_scale`` by more than
:data:`TOLERANCE` (5 %): one :class:`~pyengine.errors.PixelScaleError` line naming the
file (or the survey field), both scales and the fixes (resample the image to the model's
scale, or train a model at the image's). ``--allow-pixel-scale-mismatch``
(``allow_pixel_scale_mismatch=True`` in the Python API) scans it with one
:class:`~pyengine.errors.PixelScaleWarning` line instead.

The image's scale is the geometric mean of its celestial WCS's pixel scales at the
reference pixel (:func:`pyengine.survey.manifest.pixel_scale_arcsec`; a survey field's
``pixscale``, which the manifest records from the same function). An image without a
celestial WCS is not checked; every image ``pyengine scan`` opens has one
(:meth:`pyengine.io.mosaic.Mosaic.open` refuses others), so in practice only cutouts
given to :meth:`pyengine.scan.engine.Engine.classify` go unchecked. The model's scale is
read from its file without loading weights (a model file's header, an ONNX export's
metadata, a TensorRT engine's sidecar). ``pyengine bench`` does not check: it measures
speed, which does not depend on what the pixels mean.

Thread safety: pure functions (they read headers); warnings go through ``warnings``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from pyengine.errors import PixelScaleError, PixelScaleWarning

__all__ = ["TOLERANCE", "check_field_scales", "check_mosaic_scale", "mismatch",
           "model_pixel_scale"]

#: Largest accepted |image scale / model scale - 1|.
TOLERANCE = 0.05
FLAG = "--allow-pixel-scale-mismatch"


def model_pixel_scale(model) -> float:
    """The pixel scale (arcsec/px) a model was trained at: a model file, an ``.onnx``
    export, a TensorRT engine (its sidecar), or None (the shipped demo model)."""
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    path = Path(model) if model is not None else DEMO_MODEL
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from pyengine.export.onnx import read_export

        return float(read_export(path, verify=False)[0].pixel_scale)
    if suffix in (".engine", ".plan", ".trt"):
        from pyengine.export.tensorrt import engine_metadata

        return float(engine_metadata(path)["spec"].pixel_scale)
    return float(read_spec(path)[0].pixel_scale)


def image_pixel_scale(wcs) -> float | None:
    """arcsec/px of a celestial WCS, None without one."""
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return None
    from pyengine.survey.manifest import pixel_scale_arcsec

    return pixel_scale_arcsec(wcs)


def mismatch(image_scale: float | None, model_scale: float) -> float | None:
    """image / model - 1 when beyond :data:`TOLERANCE` (else None)."""
    if image_scale is None or not math.isfinite(image_scale) or image_scale <= 0:
        return None
    off = image_scale / model_scale - 1.0
    return off if abs(off) > TOLERANCE else None


def _describe(where: str, image_scale: float, model_scale: float) -> str:
    off = image_scale / model_scale - 1.0
    return (f"{where}: pixel scale {image_scale:.4g}\"/px differs from the model's "
            f"{model_scale:.4g}\"/px by {100 * off:+.0f} % (more than {100 * TOLERANCE:g} %: "
            f"its cutouts would cover {image_scale / model_scale:.2f}x the sky the model was "
            "trained on)")


def _judge(found: list[tuple[str, float]], model_scale: float, allow: bool,
           stacklevel: int) -> None:
    """Refuse (or, ``allow``, warn once about) the mismatched (where, scale) pairs."""
    if not found:
        return
    where, scale = found[0]
    text = _describe(where, scale, model_scale)
    more = f" (and {len(found) - 1} more field(s): {', '.join(w for w, _ in found[1:])})" \
        if len(found) > 1 else ""
    if not allow:
        raise PixelScaleError(f"{text}{more}; resample the image to {model_scale:.4g}\"/px "
                              f"(e.g. with reproject or SWarp), or train a model at "
                              f"{scale:.4g}\"/px (pyengine train); {FLAG} scans it anyway")
    warnings.warn(f"{text}{more}; scanned anyway ({FLAG}): its scores are not the model's "
                  "measured performance", PixelScaleWarning, stacklevel=stacklevel + 1)


def _model_scale(model) -> float:
    """arcsec/px of ``model``: a number, anything with a ``spec`` (an Engine, a runner),
    or what :func:`model_pixel_scale` reads."""
    if isinstance(model, int | float) and not isinstance(model, bool):
        return float(model)
    spec = getattr(model, "spec", None)
    return float(spec.pixel_scale) if spec is not None else model_pixel_scale(model)


def check_mosaic_scale(model, mosaic, *, allow: bool = False, stacklevel: int = 2) -> None:
    """The guard for one mosaic (its WCS), named by its band files; ``model``: a scale
    (arcsec/px), an Engine, or a model path (None: the demo model)."""
    model_scale = _model_scale(model)
    scale = image_pixel_scale(getattr(mosaic, "wcs", None))
    if mismatch(scale, model_scale) is not None:
        where = ", ".join(str(p) for p in mosaic.paths)
        _judge([(where, scale)], model_scale, allow, stacklevel + 1)


def check_field_scales(model, geo, touched, *, allow: bool = False,
                       stacklevel: int = 2) -> None:
    """The guard for the touched fields of a survey (a SurveyGeometry), each named as
    ``MANIFEST: field 'ID'``; one error or warning for all of them (``model`` as for
    :func:`check_mosaic_scale`)."""
    model_scale = _model_scale(model)
    name = geo.survey.manifest or "survey"
    found = []
    for k in touched:
        frame = geo.frames[k]
        scale = frame.scale if frame.scale else image_pixel_scale(frame.wcs)
        if mismatch(scale, model_scale) is not None:
            found.append((f"{name}: field {frame.id!r} ({', '.join(geo.survey.fields[k].images)})",
                          scale))
    _judge(found, model_scale, allow, stacklevel + 1)
