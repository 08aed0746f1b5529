"""The runner interface, alone: choosing a runner by name is :mod:`pyengine.runners.select`,
which runners work here :mod:`pyengine.runners.probe`.

A runner turns a batch of raw cutouts (B, nband, S, S), NaN allowed, into
cluster scores (B,) float32 and class probabilities (B, K), with the model's own
in-graph preprocessing.
Its life cycle follows Polygraphy's runners: construct (cheap: no inference
library is loaded), ``activate`` (load the session or engine), ``infer`` or
``submit`` as often as needed, ``deactivate``; a runner is also a context
manager.

Contract for the scan engine:

* ``input_dtype``: the dtype the runner wants its batches in (float32, or
  float16 where the GPU path takes half-precision input: the torch CUDA runner
  at fp16, TensorRT engines with a half input).  ``infer``/``submit`` accept
  float32 and float16 always and convert as needed (on the GPU for GPU runners).
* ``preferred_batch_size`` (known before ``activate``) and ``max_batch_size``
  (None: unlimited).
* ``in_flight`` (known before ``activate``): how many submitted batches the scan
  engine keeps outstanding before it waits for the oldest one's scores: 2 for CPU
  runners (they compute in ``submit``, so the figure only bounds the slots held),
  ``GPU_IN_FLIGHT`` for GPU runners, whose copy and compute run behind the host.
* ``allocate_slots(count, batch_size, dtype=None)`` (after ``activate``): the
  arrays the batcher fills, (batch_size, nband, S, S) of ``input_dtype`` (or
  ``dtype``): page-aligned NumPy memory, or pinned host memory on a GPU runner,
  allocated once and kept by the runner, so the copy to the GPU starts from
  them directly (pass a slot, or a leading slice ``slot[:n]`` of it, to submit).
* ``submit(batch) -> Pending``; ``Pending.result()`` blocks until the scores
  (B,) float32 are ready.  GPU runners return at once, so the copy and compute
  of the next batch overlap this one; the caller keeps a batch's memory
  untouched until its ``result()`` returned.  CPU runners compute in
  ``submit``.  ``infer(batch)`` is ``submit(batch).result()``.
* ``Pending.outputs()`` (after ``result()``, or blocking as it does): the batch's
  per-row outputs beyond the score, name -> array (B, ...), as
  ``output_fields`` (known before ``activate``) declares them: name -> (shape of
  one row, dtype).  Every runner of a model declares ``probabilities`` ((K,)
  float32, the graph's softmax output, K = the spec's classes), which the
  ONNX Runtime, torch and TensorRT runners return from the same model run as the
  scores (the graph computes both; the GPU runners copy both back).  An ensemble
  (:mod:`pyengine.runners.ensemble`) declares more (member votes, the spread of
  the score).  A Pending that has none returns ``{}`` (a runner written before
  the outputs existed: its scans have no class columns).
  ``infer_outputs(batch)`` is ``(result(), outputs())`` of one submit.
* ``chosen_because``: why this runner was picked (:func:`pyengine.runners.select.make_runner`).

Thread safety: ``submit``/``infer``/``result`` may be called from one thread at a
time per runner (the scan engine gives each runner one inference thread);
``activate``, ``allocate_slots`` and ``deactivate`` must not race with them.

"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pyengine.errors import ConfigError
from pyengine.memory import aligned_empty
from pyengine.models.spec import ModelSpec

__all__ = ["CPU_BATCH", "CPU_IN_FLIGHT", "ENGINE_SUFFIXES", "GPU_BATCH", "GPU_IN_FLIGHT",
           "HALF_MAX", "PRECISIONS", "Pending", "Ready", "Runner", "to_half"]

#: Precisions each backend runs (what ``make_runner`` and the runners accept).  fp32 on a
#: GPU is IEEE float32 (no TensorFloat-32); ``tf32`` (torch on CUDA only) asks for TF32
#: convolutions and matmuls on purpose (10-bit mantissa products, float32 accumulation).
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "tf32", "fp16", "bf16"),
              "tensorrt": ("fp32", "fp16", "int8")}
#: File suffixes of serialized TensorRT engines.
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_BATCH_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
#: Default batch sizes.  On a GPU a batch of 1024 64x64 cutouts is a few milliseconds of
#: ResNet-50 work, well past the launch and copy latencies that a batch of 256 (about a
#: millisecond on an H100-class GPU) would leave exposed.
CPU_BATCH, GPU_BATCH = 32, 1024
#: Batches outstanding (submitted, scores not yet collected) on CPU and GPU runners: three
#: on a GPU, so a copy, a model run and a copy back can all be queued behind the host.
CPU_IN_FLIGHT, GPU_IN_FLIGHT = 2, 3
#: The largest finite float16.
HALF_MAX = 65504.0


def to_half(batch: np.ndarray) -> np.ndarray:
    """``batch`` as float16 the way the scan's gather converts (pyengine.scan.batching):
    rounded to nearest even, finite values beyond +-65504 saturated there rather than
    overflowing to inf (the graphs read inf as a missing pixel); NaN and inf kept."""
    if batch.dtype == np.float16:
        return batch
    out = batch.astype(np.float32, copy=True)
    big = np.isfinite(out) & (np.abs(out) > HALF_MAX)
    out[big] = np.copysign(HALF_MAX, out[big])
    return out.astype(np.float16)


class Pending(ABC):
    """Scores of one submitted batch; ``result()`` blocks until they are ready."""

    @abstractmethod
    def result(self) -> np.ndarray:
        """The scores (B,) float32 (a private copy; calling again returns the same array)."""

    def outputs(self) -> dict[str, np.ndarray]:
        """The batch's other per-row outputs, name -> (B, ...) (see the module docstring);
        blocks as ``result()`` does.  None here: ``{}``."""
        return {}


class Ready(Pending):
    """A Pending computed synchronously: its scores and (optionally) its other outputs."""

    __slots__ = ("_outputs", "_scores")

    def __init__(self, scores: np.ndarray, outputs: dict[str, np.ndarray] | None = None):
        self._scores = scores
        self._outputs = outputs if outputs is not None else {}

    def result(self) -> np.ndarray:
        return self._scores

    def outputs(self) -> dict[str, np.ndarray]:
        return self._outputs


class Runner(ABC):
    """Scores for raw cutouts; see the module docstring for the contract."""

    name = "runner"

    def __init__(self, spec: ModelSpec, precision: str, batch_size: int | None = None):
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise ConfigError(f"batch size {batch_size!r} is not accepted; accepted: a positive "
                              "integer, or None for the runner's preferred size")
        self.spec = spec
        self.precision = precision
        self.active = False
        self.activations = 0  # counts activate(); memory from allocate_slots lives one
        self.chosen_because = ""
        self._batch_size = int(batch_size) if batch_size is not None else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(nband, S, S) of one cutout."""
        return (self.spec.nband, self.spec.cutout_size, self.spec.cutout_size)

    @property
    def input_dtype(self) -> np.dtype:
        """dtype the runner takes batches in without converting them."""
        return np.dtype(np.float32)

    @property
    def preferred_batch_size(self) -> int:
        """The batch size this runner is fastest with (the one asked for, if any)."""
        return self._batch_size or CPU_BATCH

    @property
    def max_batch_size(self) -> int | None:
        """The largest batch the runner accepts (None: no limit)."""
        return None

    @property
    def in_flight(self) -> int:
        """Batches the scan engine keeps submitted before waiting for the oldest."""
        return CPU_IN_FLIGHT

    @property
    def output_fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-row outputs besides the score that ``Pending.outputs()`` gives: name ->
        (shape of one row, dtype).  A model's runner: its class probabilities."""
        return {"probabilities": ((self.spec.num_classes,), np.dtype(np.float32))}

    # -- life cycle -------------------------------------------------------------------
    def activate(self) -> Runner:
        if not self.active:
            self._activate()
            self.active = True
            self.activations += 1
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    # -- memory -----------------------------------------------------------------------
    def allocate_slots(self, count: int, batch_size: int, dtype=None) -> list[np.ndarray]:
        """``count`` arrays (batch_size, nband, S, S) of ``dtype`` (None: ``input_dtype``)
        for the batcher to fill; kept valid while the caller holds them."""
        self._require_active("allocate_slots")
        if isinstance(count, bool) or int(count) < 1:
            raise ConfigError(f"{self.name} runner: slot count {count!r} is not accepted; "
                              "accepted: a positive integer")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ConfigError(f"{self.name} runner: slot batch size {batch_size!r} is not "
                              "accepted; accepted: a positive integer")
        self._check_batch_limit(int(batch_size))
        dtype = self.input_dtype if dtype is None else np.dtype(dtype)
        if dtype not in _BATCH_DTYPES:
            raise ConfigError(f"{self.name} runner: slot dtype {dtype} is not accepted; "
                              "accepted: float32, float16")
        return self._allocate_slots(int(count), int(batch_size), dtype)

    def _allocate_slots(self, count: int, batch_size: int, dtype: np.dtype) -> list[np.ndarray]:
        shape = (batch_size, *self.input_shape)
        return [aligned_empty(shape, dtype) for _ in range(count)]

    # -- inference --------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Scores (B,) float32 for cutouts (B, nband, S, S) float32 or float16."""
        return self._start(batch, "infer()").result()

    def infer_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(scores (B,), the other per-row outputs) for cutouts (B, nband, S, S), from one
        model run (see ``output_fields``)."""
        pending = self._start(batch, "infer_outputs()")
        return pending.result(), pending.outputs()

    def submit(self, batch: np.ndarray) -> Pending:
        """Start scoring ``batch``; its memory must stay untouched until ``result()``."""
        return self._start(batch, "submit()")

    def _start(self, batch, call: str) -> Pending:
        batch = self._check(batch, call)
        if batch.shape[0] == 0:
            return Ready(np.zeros(0, np.float32), {
                name: np.zeros((0, *shape), dtype)
                for name, (shape, dtype) in self.output_fields.items()})
        return self._submit(batch)

    def _submit(self, batch: np.ndarray) -> Pending:
        # ``_infer`` gives the scores, or (probabilities, scores) where the backend has both
        out = self._infer(self._convert(batch))
        if isinstance(out, tuple):
            probabilities, scores = out
            return Ready(scores, {"probabilities": probabilities})
        return Ready(out)

    def _convert(self, batch: np.ndarray) -> np.ndarray:
        """The batch as the backend takes it (CPU runners: ``input_dtype`` on the host;
        float16 by :func:`to_half`)."""
        if self.input_dtype == np.float16:
            return to_half(batch)
        return batch.astype(self.input_dtype, copy=False)

    def _check(self, batch, call: str) -> np.ndarray:
        self._require_active(call)
        if not isinstance(batch, np.ndarray) or batch.dtype not in _BATCH_DTYPES or \
                batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            what = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else \
                type(batch).__name__
            raise ConfigError(f"{self.name} runner: batch must be float32 (B, "
                              f"{', '.join(map(str, self.input_shape))}) (float16 also "
                              f"accepted), got {what}")
        self._check_batch_limit(batch.shape[0])
        return np.ascontiguousarray(batch)

    def _check_batch_limit(self, size: int) -> None:
        limit = self.max_batch_size
        if limit is not None and size > limit:
            raise ConfigError(f"{self.name} runner: batch size {size} exceeds its maximum "
                              f"{limit}; accepted: 1..{limit}")

    def _require_active(self, what: str) -> None:
        if not self.active:
            raise ConfigError(f"{self.name} runner: {what} before activate()")

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Scores (B,) of a converted batch, or (probabilities (B, K), scores (B,))."""

    @abstractmethod
    def _deactivate(self) -> None: ...
