"""Per-cutout normalisation as a torch module, exported with the ResNet to ONNX/TensorRT.

:class:`Preprocess` implements the steps of :class:`~pyengine.models.spec.PreprocessSpec`
(background, scale, stretch, clip, NaN fill) on raw (B, C, S, S) cutouts.  It sits in
front of the ResNet inside the model graph (DESIGN.md §2), so training, torch scans,
ONNX Runtime and TensorRT all run the same arithmetic.  :func:`preprocess_reference`
is a plain NumPy implementation of the same contract, kept for tests.

Conventions, identical in both implementations (statistics are per cutout and band):

- *Missing pixels*: every non-finite input pixel (NaN, and also +-inf) is missing.
  Missing pixels take no part in any statistic and are ``nan_fill`` in the output.
- *Median* of n values: the mean of the two middle order statistics,
  ``0.5 * v[(n - 1) // 2] + 0.5 * v[n // 2]`` of the sorted values (numpy's
  convention; for odd n both are the middle value).
- *Background / scale*: the median and 1.4826 x MAD of the finite pixels of the
  outer ring ``border`` px wide; the scale is floored at ``eps``.  A ring with no
  finite pixel gives background 0 and scale 1.
- *minmax*: ``(y - min) / (max - min)`` over the finite pixels; if ``max == min``
  (constant cutout) or there is no finite pixel, every pixel is 0.
- *zscore*: ``(y - mean) / std`` over the finite pixels, population std (ddof = 0);
  if the std is 0 (a constant cutout gives exactly 0 here, see ``_zscore``) or there
  is no finite pixel, every pixel is 0.
- *All pixels missing*: the output is ``nan_fill`` everywhere.

The output is finite everywhere as long as the arithmetic of the chosen steps does not
overflow float32 (raw values beyond ~1e38 x ``eps``); the batcher's affine scaling keeps
inputs far from that.

Graph constraints (ONNX opset >= 17, meant for ONNX Runtime CPU and TensorRT 10):
shapes are static given the cutout size with a dynamic batch only; nothing has a
data-dependent size (no boolean-mask indexing, no NonZero).  The ring is a fixed index
buffer gathered with one ``Gather``; medians are a ``TopK`` (K <= 3840, TensorRT's
limit) over that fixed length with missing pixels set to +inf, so the n finite values
come first and the middle ones are picked with ``GatherElements`` at indices computed
from the finite count.  Every op exports with the TorchScript exporter (``dynamo=False``)
and traces under ``torch.export``; asinh is composed from Log and Sqrt because the
TorchScript exporter has no ``aten::asinh``.  ``tests/test_preprocess.py`` pins the
exported op set.

Thread safety: ``forward`` mutates nothing (its one buffer is only read), so threads
may call the same module concurrently; torch releases the GIL inside its kernels, so
such calls do overlap.  Moving the module (``.to(device)``) while another thread runs
it is not safe.  ``preprocess_reference`` and ``ring_mask`` are pure functions.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch

from pyengine.errors import ConfigError
from pyengine.models.spec import PreprocessSpec
from pyengine.stats import MAD_TO_SIGMA  # re-exported; its one home is pyengine.stats

__all__ = ["MAD_TO_SIGMA", "TOPK_LIMIT", "Preprocess", "preprocess_reference", "ring_mask"]

# TensorRT's ITopKLayer accepts K <= 3840 (TensorRT 8-10 operator docs); every sort
# here is a TopK, and its K is kept within this bound.
TOPK_LIMIT = 3840


def _check_size(spec, cutout_size) -> int:
    """Validate the (spec, size) pair; return the size as an int."""
    if not isinstance(spec, PreprocessSpec):
        raise ConfigError(f"spec = {spec!r} is not accepted; a PreprocessSpec is needed")
    if isinstance(cutout_size, bool):
        raise ConfigError(f"cutout_size = {cutout_size!r} is not accepted; an integer is needed")
    try:
        size = operator.index(cutout_size)
    except TypeError:
        raise ConfigError(
            f"cutout_size = {cutout_size!r} is not accepted; an integer is needed") from None
    if size < 1:
        raise ConfigError(f"cutout_size = {size} is not accepted; a positive integer is needed")
    # ModelFileError naming the field when the ring is too wide or too long to sort.
    spec.validate(size)
    return size


def ring_mask(spec: PreprocessSpec, cutout_size: int) -> np.ndarray:
    """(S, S) bool array, True on the outer ring ``spec.border`` px wide."""
    size = _check_size(spec, cutout_size)
    b = spec.border
    mask = np.ones((size, size), dtype=bool)
    mask[b:size - b, b:size - b] = False
    return mask


class Preprocess(torch.nn.Module):
    """The :class:`PreprocessSpec` steps on raw (B, C, S, S) cutouts, NaN allowed.

    ``forward`` returns float32 (B, C, S, S), finite everywhere (see the module
    docstring for the conventions).  Inputs of another floating dtype (e.g. a
    float16 transfer dtype) are upcast: every statistic is computed in float32.

    Raises :class:`~pyengine.errors.ConfigError` for a spec that is not a
    ``PreprocessSpec`` or a cutout size that is not a positive integer, and
    :class:`~pyengine.errors.ModelFileError` (from ``spec.validate``) for a spec
    that is invalid or whose ring does not fit the cutout or TensorRT's TopK.
    """

    ring_index: torch.Tensor

    def __init__(self, spec: PreprocessSpec, cutout_size: int):
        super().__init__()
        self.cutout_size = _check_size(spec, cutout_size)
        self.spec = spec
        self.ring_size = spec.ring_size(self.cutout_size)
        self._uses_ring = spec.background != "none" or spec.scale != "none"
        # Flat (row-major) positions of the ring pixels.  A buffer so that it follows
        # the module across devices and is a constant initializer in the exported
        # graph; not persistent because it derives from the metadata, so a state
        # dict never carries a copy that could disagree with the spec.
        flat = np.flatnonzero(ring_mask(spec, self.cutout_size).reshape(-1))
        self.register_buffer("ring_index", torch.from_numpy(flat.astype(np.int64)),
                             persistent=False)
        # The largest median index is n // 2 <= ring_size // 2, so only the smallest
        # ring_size // 2 + 1 values need sorting: half the TopK work and output.
        self._topk = self.ring_size // 2 + 1

    def extra_repr(self) -> str:
        s = self.spec
        return (f"cutout_size={self.cutout_size}, background={s.background!r}, "
                f"scale={s.scale!r}, stretch={s.stretch!r}, clip={s.clip}, "
                f"ring_size={self.ring_size}")

    # -- pieces ---------------------------------------------------------------
    # Everything works on cutouts flattened to (N, S*S), N = batch x band: a reshape
    # to the constant shape (-1, S*S) needs no Shape op, the ring is one Gather on
    # the last axis, and the only Shape in the graph is the final reshape back to
    # the input's shape.  Statistics are (N, 1) and broadcast.
    def _ring_median(self, values: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Median of the ``count`` finite values in each row of ``values`` (N, R).

        Missing entries must already be +inf.  TopK (smallest first, sorted) puts the
        ``count`` finite values first; the two middle ones are picked with gathers at
        indices computed from ``count``: data-dependent values, static shapes.  The
        index arithmetic is in float32 (exact for counts < 2**24) with Floor, so the
        graph has no integer division.  With count = 0 the index is clamped to 0 and
        the caller discards the (+inf) result.
        """
        smallest = torch.topk(values, self._topk, dim=-1, largest=False, sorted=True).values
        lo = torch.floor((count - 1.0) * 0.5).clamp(min=0.0).to(torch.int64)
        hi = torch.floor(count * 0.5).to(torch.int64)
        return 0.5 * torch.gather(smallest, -1, lo) + 0.5 * torch.gather(smallest, -1, hi)

    def _background_scale(self, y: torch.Tensor, finite: torch.Tensor):
        """(N, 1) background and scale (None where the spec says "none") from the ring."""
        spec = self.spec
        ring = y.index_select(1, self.ring_index)
        ring_ok = finite.index_select(1, self.ring_index)
        count = ring_ok.to(torch.float32).sum(dim=-1, keepdim=True)
        has_ring = count > 0.0
        median = self._ring_median(torch.where(ring_ok, ring, math.inf), count)
        median = torch.where(has_ring, median, 0.0)
        background = median if spec.background == "border_median" else None
        scale = None
        if spec.scale == "border_mad":
            deviation = torch.where(ring_ok, (ring - median).abs(), math.inf)
            mad = self._ring_median(deviation, count)
            scale = torch.where(has_ring, (MAD_TO_SIGMA * mad).clamp(min=spec.eps), 1.0)
        return background, scale

    @staticmethod
    def _asinh(z: torch.Tensor) -> torch.Tensor:
        """asinh from Log and Sqrt: the TorchScript ONNX exporter has no aten::asinh.

        asinh(z) = sign(z) * log1p(a + a^2 / (1 + sqrt(1 + a^2))), a = |z|, with
        log1p(u) = log(w) * u / (w - 1), w = 1 + u (Goldberg's exact-rounding trick;
        ONNX has no Log1p and log(1 + u) loses all digits of small u).  Beyond
        a = 1e4, sqrt(1 + a^2) == a in float32 and asinh(z) = log(2a); that branch also
        keeps a^2 from overflowing.  Agrees with float64 asinh within a few ulp.
        """
        a = z.abs()
        small = a.clamp(max=1e4)
        u = small + small * small / (1.0 + torch.sqrt(1.0 + small * small))
        w = 1.0 + u
        # w == 1 only when u is below half an ulp of 1; then log1p(u) = u.
        log1p = torch.where(w == 1.0, u, torch.log(w) * (u / torch.where(w == 1.0, 1.0, w - 1.0)))
        large = torch.log(a.clamp(min=1e4)) + math.log(2.0)
        return torch.sign(z) * torch.where(a > 1e4, large, log1p)

    @staticmethod
    def _minmax(y: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        lo = torch.where(finite, y, math.inf).amin(dim=-1, keepdim=True)
        hi = torch.where(finite, y, -math.inf).amax(dim=-1, keepdim=True)
        span = hi - lo
        # False for a constant cutout (0) and for no finite pixel (-inf - +inf = -inf);
        # Where never lets the unselected branch's inf or NaN through.
        ok = span > 0.0
        return torch.where(ok, (y - lo) / torch.where(ok, span, 1.0), 0.0)

    @staticmethod
    def _zscore(y: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        # Shifting by the minimum first makes a constant cutout exactly 0 (y - min == 0
        # for every pixel, so mean and std are exactly 0) whatever the backend's
        # summation order; a plain mean of n equal values may round away from the
        # value and turn a constant cutout into +-1 everywhere.
        lo = torch.where(finite, y, math.inf).amin(dim=-1, keepdim=True)
        d = torch.where(finite, y - lo, 0.0)
        n = finite.to(torch.float32).sum(dim=-1, keepdim=True).clamp(min=1.0)
        mean = d.sum(dim=-1, keepdim=True) / n
        centred = torch.where(finite, d - mean, 0.0)
        std = torch.sqrt((centred * centred).sum(dim=-1, keepdim=True) / n)
        ok = std > 0.0
        return torch.where(ok, centred / torch.where(ok, std, 1.0), 0.0)

    # -- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check_input(x)
        spec = self.spec
        flat = x.reshape(-1, self.cutout_size * self.cutout_size)
        if flat.dtype != torch.float32:
            flat = flat.to(torch.float32)
        # |x| < inf is False exactly for NaN and +-inf: an isfinite made of Abs and Less,
        # which every backend runs (no IsNaN/IsInf needed).
        finite = flat.abs() < math.inf
        # Zero the missing pixels once so no NaN or inf enters any later arithmetic.
        y = torch.where(finite, flat, 0.0)
        if self._uses_ring:
            background, scale = self._background_scale(y, finite)
            if background is not None:
                y = y - background
            if scale is not None:
                y = y / scale
        if spec.stretch == "asinh":
            y = self._asinh(y / spec.softening)
        elif spec.stretch == "minmax":
            y = self._minmax(y, finite)
        elif spec.stretch == "zscore":
            y = self._zscore(y, finite)
        if spec.clip is not None:
            y = y.clamp(min=spec.clip[0], max=spec.clip[1])
        return torch.where(finite, y, spec.nan_fill).reshape_as(x)

    def _check_input(self, x) -> None:
        s = self.cutout_size
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"Preprocess input is a {type(x).__name__}; a torch.Tensor "
                              f"(batch, band, {s}, {s}) is needed")
        if x.ndim != 4 or tuple(x.shape[2:]) != (s, s):
            raise ConfigError(f"Preprocess input has shape {tuple(x.shape)}; "
                              f"(batch, band, {s}, {s}) is needed")
        if not x.dtype.is_floating_point:
            raise ConfigError(f"Preprocess input has dtype {x.dtype}; a floating dtype "
                              "(float32, or float16/bfloat16 which is upcast) is needed")


# -- NumPy reference ------------------------------------------------------------
def _median(values: np.ndarray) -> np.float32:
    """Mean of the two middle order statistics, in float32 as the module computes it."""
    v = np.sort(values.astype(np.float32))
    n = v.size
    half = np.float32(0.5)
    return half * v[(n - 1) // 2] + half * v[n // 2]


def preprocess_reference(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Plain NumPy implementation of :class:`Preprocess`, one cutout and band at a time.

    ``x`` is (B, C, S, S); the cutout size is taken from it.  Written for clarity,
    not speed (tests only).  Statistics that the module computes with reductions
    (min/max span, mean, std) are computed here in float64, then rounded.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ConfigError(f"x has shape {x.shape}; (batch, band, S, S) is needed")
    size = x.shape[2]
    ring = ring_mask(spec, size)
    uses_ring = spec.background != "none" or spec.scale != "none"
    out = np.empty(x.shape, np.float32)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = x[b, c].astype(np.float32)
            ok = np.isfinite(img)
            y = np.where(ok, img, np.float32(0.0))
            background, scale = np.float32(0.0), np.float32(1.0)
            ring_values = img[ring & ok]
            if uses_ring and ring_values.size > 0:
                median = _median(ring_values)
                if spec.background == "border_median":
                    background = median
                if spec.scale == "border_mad":
                    mad = _median(np.abs(ring_values - median))
                    scale = max(np.float32(MAD_TO_SIGMA) * mad, np.float32(spec.eps))
            y = (y - background) / scale
            v = y[ok].astype(np.float64)
            constant = v.size == 0 or v.max() == v.min()
            if spec.stretch == "asinh":
                y = np.arcsinh(y / np.float32(spec.softening))
            elif spec.stretch in ("minmax", "zscore") and constant:
                y = np.zeros_like(y)
            elif spec.stretch == "minmax":
                y = (y - v.min()) / (v.max() - v.min())
            elif spec.stretch == "zscore":
                y = (y - v.mean()) / v.std()
            y = y.astype(np.float32)
            if spec.clip is not None:
                y = np.clip(y, np.float32(spec.clip[0]), np.float32(spec.clip[1]))
            out[b, c] = np.where(ok, y, np.float32(spec.nan_fill))
    return out
