"""The runner interface, choosing a runner by name, and which runners work here.

A runner turns a batch of raw cutouts (B, nband, S, S), NaN allowed, into
cluster scores (B,) float32, with the model's own in-graph preprocessing.
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
* ``chosen_because``: why this runner was picked (``make_runner``).

Thread safety: ``submit``/``infer``/``result`` may be called from one thread at a
time per runner (the scan engine gives each runner one inference thread);
``activate``, ``allocate_slots`` and ``deactivate`` must not race with them.
``available_runners`` and ``aligned_empty`` are safe from any thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.models.spec import ModelSpec

__all__ = ["ENGINE_SUFFIXES", "PRECISIONS", "RUNNER_NAMES", "Pending", "Ready", "Runner",
           "RunnerUnavailable", "aligned_empty", "available_runners", "make_runner"]

RUNNER_NAMES = ("auto", "onnxruntime", "torch", "tensorrt")
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "fp16", "bf16"),
              "tensorrt": ("fp32", "fp16", "int8")}
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PAGE = 4096
_BATCH_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
CPU_BATCH, GPU_BATCH = 32, 256


class RunnerUnavailable(ConfigError):
    """The runner asked for cannot work here (library, device or file missing)."""


def aligned_empty(shape, dtype, alignment: int = PAGE) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``alignment``-byte
    boundary (the array keeps its over-allocated buffer alive)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


class Pending(ABC):
    """Scores of one submitted batch; ``result()`` blocks until they are ready."""

    @abstractmethod
    def result(self) -> np.ndarray:
        """The scores (B,) float32 (a private copy; calling again returns the same array)."""


class Ready(Pending):
    """A Pending computed synchronously."""

    __slots__ = ("_scores",)

    def __init__(self, scores: np.ndarray):
        self._scores = scores

    def result(self) -> np.ndarray:
        return self._scores


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

    def submit(self, batch: np.ndarray) -> Pending:
        """Start scoring ``batch``; its memory must stay untouched until ``result()``."""
        return self._start(batch, "submit()")

    def _start(self, batch, call: str) -> Pending:
        batch = self._check(batch, call)
        if batch.shape[0] == 0:
            return Ready(np.zeros(0, np.float32))
        return self._submit(batch)

    def _submit(self, batch: np.ndarray) -> Pending:
        return Ready(self._infer(self._convert(batch)))

    def _convert(self, batch: np.ndarray) -> np.ndarray:
        """The batch as the backend takes it (CPU runners: ``input_dtype`` on the host)."""
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
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _deactivate(self) -> None: ...


# -- availability ------------------------------------------------------------------------
def _onnxruntime_problem() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def _torch_problem() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch)"
    return None


def torch_cuda_problem() -> str | None:
    """Why torch cannot use a CUDA GPU here (None: it can)."""
    problem = _torch_problem()
    if problem is not None:
        return problem
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA"
    return "no CUDA device is visible to torch"


def tensorrt_problem() -> str | None:
    """Why the tensorrt runner cannot work here (None: it can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return ("the tensorrt package is not installed (TensorRT 10+ comes from NVIDIA's "
                "package index and needs an NVIDIA GPU)")
    except OSError as exc:  # the wheel is there, its CUDA libraries are not
        return f"the tensorrt package is installed but its libraries do not load ({exc})"
    problem = torch_cuda_problem()
    if problem is not None:
        return f"{problem} (the tensorrt runner keeps its buffers in torch CUDA memory)"
    return None


def available_runners() -> dict[str, str | None]:
    """Every concrete runner: None where it can be used here, else why not (one line).
    Probing imports the libraries (never at ``import pyengine``)."""
    return {"onnxruntime": _onnxruntime_problem(), "torch": _torch_problem(),
            "tensorrt": tensorrt_problem()}


def unavailable(name: str, why: str, runners: dict[str, str | None] | None = None
                ) -> RunnerUnavailable:
    """The one-line error for a runner that cannot work here, naming those that can."""
    runners = available_runners() if runners is None else runners
    usable = [n for n, problem in runners.items() if problem is None and n != name]
    return RunnerUnavailable(f"{name} runner: {why}; available runners: "
                             f"{', '.join(usable) if usable else 'none'}")


# -- choosing ----------------------------------------------------------------------------
def _model_kind(model: Path | None) -> str:
    if model is None:
        return "model"
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    return "model"


_ACCEPTS = {"model": ("tensorrt", "torch", "onnxruntime"), "onnx": ("tensorrt", "onnxruntime"),
            "engine": ("tensorrt",)}


def _choose(model: Path | None, precision: str | None, device: str) -> tuple[str, str, str]:
    """(runner name, device, why) for ``auto``: the first usable of TensorRT, torch on
    CUDA and ONNX Runtime that takes this kind of model and this precision."""
    kind = _model_kind(model)
    runners = available_runners()
    gpu_problem = "device cpu was asked for" if device == "cpu" else torch_cuda_problem()
    passed: list[str] = []
    for name in _ACCEPTS[kind]:
        if precision is not None and precision not in PRECISIONS[name]:
            passed.append(f"{name} has no {precision}")
            continue
        if name == "tensorrt":
            problem = gpu_problem if device == "cpu" else runners["tensorrt"]
            if problem is None:
                return name, device, "tensorrt is importable and a CUDA GPU is present"
            passed.append(f"tensorrt: {problem}")
        elif name == "torch":
            problem = runners["torch"] or gpu_problem
            if problem is None:
                return name, "cuda" if device == "auto" else device, \
                    f"torch has CUDA ({'; '.join(passed)})" if passed else "torch has CUDA"
            if gpu_problem is None:
                passed.append(f"torch: {problem}")
        else:
            problem = runners["onnxruntime"]
            if problem is None:
                why = f"no CUDA GPU ({gpu_problem})" if gpu_problem is not None else \
                    f"no GPU runner usable ({'; '.join(passed)})"
                return name, device, why
            passed.append(f"onnxruntime: {problem}")
    if gpu_problem is not None:
        passed.append(f"no CUDA GPU ({gpu_problem})")
    if kind == "model" and runners["torch"] is None and device != "cuda" and \
            not device.startswith("cuda:") and (precision or "fp32") in PRECISIONS["torch"]:
        return "torch", "cpu", f"torch on the CPU: {'; '.join(passed)}"
    what = {"model": "a model file", "onnx": "an ONNX file", "engine": "a TensorRT engine"}[kind]
    raise RunnerUnavailable(f"runner auto: nothing here runs {what}"
                            f"{f' at {precision}' if precision else ''}: {'; '.join(passed)}")


def make_runner(name: str, model, *, precision: str | None = None, threads: int | None = None,
                cache_dir=None, device: str = "auto", batch_size: int | None = None) -> Runner:
    """A runner by name for ``model`` (a model file, an exported .onnx file, a TensorRT
    engine built by pyengine, or None for the shipped demo model).  ``auto``: TensorRT
    if importable with a CUDA GPU, else torch on CUDA, else ONNX Runtime, among those
    that take this kind of model and precision; ``runner.chosen_because`` says why.
    ``precision`` None means the exported file's own, or fp32 for a model file.
    ``batch_size``: the batch size the caller will use (None: the runner's preferred)."""
    if name not in RUNNER_NAMES:
        raise ConfigError(f"runner {name!r} is not known; accepted: {', '.join(RUNNER_NAMES)}")
    if precision is not None and name != "auto" and precision not in PRECISIONS[name]:
        raise ConfigError(f"precision {precision!r} is not available with the {name} runner; "
                          f"accepted: {', '.join(PRECISIONS[name])}")
    if precision is not None and not any(precision in p for p in PRECISIONS.values()):
        accepted = sorted({p for ps in PRECISIONS.values() for p in ps})
        raise ConfigError(f"precision {precision!r} is not known; accepted: {', '.join(accepted)}")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"device {device!r} is not accepted; accepted: auto, cpu, cuda, cuda:N")
    model = Path(model) if model is not None else None
    because = f"{name} was asked for"
    if name == "auto":
        name, device, because = _choose(model, precision, device)
    kind = _model_kind(model)
    if name not in _ACCEPTS[kind]:
        raise ConfigError(f"{model}: the {name} runner does not take "
                          f"{'a TensorRT engine' if kind == 'engine' else 'ONNX files'}; "
                          f"accepted for this file: {', '.join(_ACCEPTS[kind])}")
    if name == "torch":
        from pyengine.runners.torch import TorchRunner

        runner = TorchRunner(model, precision=precision, device=device, threads=threads,
                             batch_size=batch_size)
    elif name == "tensorrt":
        problem = tensorrt_problem()
        if problem is not None:
            raise unavailable("tensorrt", problem)
        if device == "cpu":
            raise ConfigError("device 'cpu' is not accepted by the tensorrt runner; accepted: "
                              "auto, cuda, cuda:N")
        from pyengine.runners.tensorrt import TensorRTRunner

        runner = TensorRTRunner(model, precision=precision, cache_dir=cache_dir, device=device,
                                batch_size=batch_size)
    else:
        from pyengine.runners.onnxrt import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(model, precision=precision, threads=threads,
                                   cache_dir=cache_dir, batch_size=batch_size)
    runner.chosen_because = because
    return runner


def model_file_export(model: Path | None, precision: str | None, cache_dir: Path,
                      exportable: tuple[str, ...]):
    """(source model file, its spec, precision, cached ONNX path) for a runner given a model
    file (None: the shipped demo model) rather than an exported graph.  The ONNX is named by
    the file's SHA-256 and the precision; precisions outside ``exportable`` (int8, which is
    calibrated on real cutouts) are refused with the command that makes them."""
    from pyengine.models.checkpoint import DEMO_MODEL, file_sha256, read_spec

    source = model if model is not None else DEMO_MODEL
    spec, _ = read_spec(source)
    precision = precision or "fp32"
    if precision not in exportable:
        raise RunnerUnavailable(
            f"{source}: an {precision} graph is calibrated on real cutouts; make it with "
            f"pyengine export {source} --precision {precision} --images ... and give the .onnx")
    return source, spec, precision, Path(cache_dir) / f"{file_sha256(source)[:32]}-{precision}.onnx"

