"""What a model file says about itself: the metadata half of the model contract.

A pyengine model file carries its weights and a :class:`ModelSpec`: the
architecture, band names and order, cutout size, pixel scale, the
:class:`PreprocessSpec` applied *inside* the graph, class names, which
classes count as "cluster", the decision threshold, and training provenance
and metrics.  Callers never restate any of it (torchvision's weights enums are
the model): a scan, an export and a fine-tune all read it from the file.

This module needs no torch: a scan with ONNX Runtime reads the same spec.
Every validation failure is a :class:`~pyengine.errors.ModelFileError` naming
the field, the bad value and what is accepted.

Thread safety: specs are immutable; share them freely.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace

from pyengine.errors import ModelFileError

__all__ = ["FORMAT", "FORMAT_VERSION", "INPUT_NAME", "OUTPUT_NAMES", "ModelSpec", "PreprocessSpec"]

# Names of the model graph's input and outputs (ONNX, TensorRT), here so that the
# runners of exported files need no torch.
INPUT_NAME = "cutouts"
OUTPUT_NAMES = ("probabilities", "score")

FORMAT = "pyengine-model"
FORMAT_VERSION = 1

BACKGROUNDS = ("none", "border_median")
SCALES = ("none", "border_mad")
STRETCHES = ("linear", "asinh", "minmax", "zscore")
ARCHITECTURES = ("resnet50",)


def _check(ok: bool, where: str, value, accepted: str) -> None:
    if not ok:
        raise ModelFileError(f"{where} = {value!r} is not accepted; {accepted}")


@dataclass(frozen=True)
class PreprocessSpec:
    """Per-cutout, per-band preprocessing, in this order, all inside the model graph.

    1. ``background``: ``"border_median"`` subtracts the median of the finite
       pixels in the outer ring ``border`` px wide; ``"none"`` subtracts nothing.
    2. ``scale``: ``"border_mad"`` divides by 1.4826 x the median absolute
       deviation of those ring pixels (a robust noise estimate, floored at
       ``eps``); ``"none"`` divides by 1.
    3. ``stretch``: ``"linear"`` (y = x), ``"asinh"`` (y = asinh(x / softening)),
       ``"minmax"`` (y = (x - min) / (max - min) over the cutout's finite
       pixels, per band) or ``"zscore"`` (y = (x - mean) / std over them).
    4. ``clip``: (lo, hi) bounds applied after the stretch, or None.
    5. NaN pixels (off-image, blank) become ``nan_fill`` at the end.

    Only the ring enters a sort: ``ring_size(S)`` pixels (960 for S = 64 with a
    4 px border).  TensorRT's TopK allows k <= 3840, so a whole-cutout median
    (k = S^2 = 4096 at S = 64) is deliberately not offered; ``validate`` checks
    the ring against that limit.
    """

    background: str = "border_median"
    scale: str = "border_mad"
    stretch: str = "asinh"
    softening: float = 3.0
    clip: tuple[float, float] | None = (-10.0, 10.0)
    border: int = 4
    nan_fill: float = 0.0
    eps: float = 1e-6

    @property
    def affine_invariant(self) -> bool:
        """Whether a map ``a x + b`` (a > 0) of a cutout's pixels leaves the preprocessed
        result unchanged (the border median and MAD normalise it away): then a scan may
        hand the runner each tile mapped to sky 0 and noise 1, which float16 holds."""
        return self.background == "border_median" and self.scale == "border_mad"

    def ring_size(self, size: int) -> int:
        """Pixels in the outer ring of a size x size cutout (the sort length)."""
        inner = max(size - 2 * self.border, 0)
        return size * size - inner * inner

    def validate(self, size: int | None = None) -> PreprocessSpec:
        _check(self.background in BACKGROUNDS, "preprocess.background", self.background,
               f"accepted: {', '.join(BACKGROUNDS)}")
        _check(self.scale in SCALES, "preprocess.scale", self.scale,
               f"accepted: {', '.join(SCALES)}")
        _check(self.stretch in STRETCHES, "preprocess.stretch", self.stretch,
               f"accepted: {', '.join(STRETCHES)}")
        _check(math.isfinite(self.softening) and self.softening > 0, "preprocess.softening",
               self.softening, "a finite number > 0 is needed")
        _check(isinstance(self.border, int) and self.border >= 1, "preprocess.border",
               self.border, "an integer >= 1 is needed")
        _check(math.isfinite(self.nan_fill), "preprocess.nan_fill", self.nan_fill,
               "a finite number is needed")
        _check(math.isfinite(self.eps) and self.eps > 0, "preprocess.eps", self.eps,
               "a finite number > 0 is needed")
        if self.clip is not None:
            lo, hi = self.clip
            _check(math.isfinite(lo) and math.isfinite(hi) and lo < hi, "preprocess.clip",
                   self.clip, "(lo, hi) with lo < hi, or null")
        if size is not None:
            _check(2 * self.border < size, "preprocess.border", self.border,
                   f"the ring must leave an inner region of the {size} px cutout")
            ring = self.ring_size(size)
            _check(ring <= 3840 or (self.background == "none" and self.scale == "none"),
                   "preprocess.border", self.border,
                   f"its ring has {ring} pixels; TensorRT sorts at most 3840 (narrow the ring)")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFileError(f"preprocess: unknown keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        if data.get("clip") is not None:
            data["clip"] = tuple(float(v) for v in data["clip"])
        return cls(**data).validate()


@dataclass(frozen=True)
class ModelSpec:
    """Everything a model file says about itself besides its weights."""

    bands: tuple[str, ...] = ("g", "i")
    cutout_size: int = 64
    pixel_scale: float = 0.187
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    class_names: tuple[str, ...] = ("non-cluster", "cluster")
    positive_classes: tuple[int, ...] = (1,)
    threshold: float = 0.5
    #: Temperature scaling (Guo et al. 2017): the graph divides the logits by this before
    #: the softmax.  1 = uncalibrated; ``pyengine calibrate`` fits it on a labelled field
    #: and records how in ``metrics["calibration"]``.
    temperature: float = 1.0
    #: Per-class offsets added after the division (the prior of the calibration field:
    #: a model trained on balanced batches predicts a 50 % prior); () = none.
    logit_bias: tuple[float, ...] = ()
    architecture: str = "resnet50"
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def nband(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def validate(self) -> ModelSpec:
        _check(self.architecture in ARCHITECTURES, "architecture", self.architecture,
               f"accepted: {', '.join(ARCHITECTURES)}")
        _check(len(self.bands) >= 1 and len(set(self.bands)) == len(self.bands)
               and all(isinstance(b, str) and b for b in self.bands), "bands", list(self.bands),
               "one or more distinct band names are needed")
        _check(isinstance(self.cutout_size, int) and 8 <= self.cutout_size <= 512,
               "cutout_size", self.cutout_size, "an integer from 8 to 512 is needed")
        _check(math.isfinite(self.pixel_scale) and self.pixel_scale > 0, "pixel_scale",
               self.pixel_scale, "arcsec per pixel > 0 is needed")
        _check(len(self.class_names) >= 2 and len(set(self.class_names)) == len(self.class_names),
               "class_names", list(self.class_names), "two or more distinct names are needed")
        _check(len(self.positive_classes) >= 1
               and all(0 <= c < len(self.class_names) for c in self.positive_classes)
               and len(self.positive_classes) < len(self.class_names), "positive_classes",
               list(self.positive_classes),
               f"indices into class_names (0..{len(self.class_names) - 1}), not all of them")
        _check(math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0, "threshold",
               self.threshold, "a probability in [0, 1] is needed")
        _check(isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
               and 0.01 <= self.temperature <= 100.0, "temperature", self.temperature,
               "a number from 0.01 to 100 is needed")
        _check(len(self.logit_bias) in (0, len(self.class_names))
               and all(isinstance(b, int | float) and math.isfinite(b) and abs(b) <= 100
                       for b in self.logit_bias), "logit_bias", list(self.logit_bias),
               "one finite offset per class (|b| <= 100), or none")
        self.preprocess.validate(self.cutout_size)
        return self

    def replace(self, **changes) -> ModelSpec:
        return replace(self, **changes).validate()

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        out = asdict(self)
        out["bands"] = list(self.bands)
        out["class_names"] = list(self.class_names)
        out["positive_classes"] = list(self.positive_classes)
        out["logit_bias"] = list(self.logit_bias)
        out["preprocess"]["clip"] = (list(self.preprocess.clip)
                                     if self.preprocess.clip is not None else None)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict, where: str = "model") -> ModelSpec:
        if not isinstance(data, dict):
            raise ModelFileError(f"{where}: metadata is not a JSON object")
        if data.get("format") != FORMAT:
            raise ModelFileError(
                f"{where}: format = {data.get('format')!r}; a pyengine model file has "
                f"format = {FORMAT!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{where}: format_version = {version!r}; this pyengine reads version "
                f"{FORMAT_VERSION} (upgrade pyengine for newer files)")
        body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        known = {f.name for f in fields(cls)}
        missing = sorted(k for k in ("bands", "cutout_size", "class_names", "preprocess")
                         if k not in body)
        if missing:
            raise ModelFileError(f"{where}: metadata lacks {missing}")
        unknown = sorted(set(body) - known)
        if unknown:
            raise ModelFileError(f"{where}: unknown metadata keys {unknown}")
        try:
            body["preprocess"] = PreprocessSpec.from_dict(body["preprocess"])
            for key in ("bands", "class_names", "positive_classes", "logit_bias"):
                if key in body:
                    body[key] = tuple(body[key])
            return cls(**body).validate()
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{where}: malformed metadata ({exc})") from None

    @classmethod
    def from_json(cls, text: str, where: str = "model") -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{where}: metadata is not valid JSON ({exc})") from None
        return cls.from_dict(data, where)
