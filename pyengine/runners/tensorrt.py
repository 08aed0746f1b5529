"""The TensorRT runner: a serialized engine run with ``execute_async_v3`` on our stream.

Takes a TensorRT engine built by pyengine (``.engine``, with its JSON sidecar
holding the model spec: :func:`pyengine.export.tensorrt.engine_metadata`), an
exported ``.onnx`` (its precision and input dtype are the file's), or a pyengine
model file (exported to ONNX at fp32 or fp16 first, fp16 with a float16 input
when the model's preprocessing is affine-invariant (so the scan sends float16
batches: half the host-to-device copy, and no cast on the GPU), float32
otherwise; int8 needs the calibrated QDQ export, ``pyengine export MODEL
--precision int8``).  Engines are built by
:func:`pyengine.export.tensorrt.build_engine` and cached under ``cache_dir``
(default ``~/.cache/pyengine/engines``, as ``pyengine export``), keyed by GPU,
compute capability, TensorRT and CUDA versions, precision, input dtype, profile
shapes and the ONNX file's hash.  The optimisation profile built is (1,
batch_size, batch_size), or ``pyengine export``'s default (1, 1024, 4096) when no
batch size is given.

Activation: ``import tensorrt`` (only here: this module imports without it),
the engine's bytes checked against the SHA-256 in its sidecar
(:func:`pyengine.export.tensorrt.read_engine`),
``trt.Runtime.deserialize_cuda_engine``, a check of the engine's inputs and
outputs against the model spec (one float32/float16 input ``cutouts`` (batch,
nband, S, S); float32 outputs ``probabilities`` (batch, classes) and ``score``
(batch,)), a check that the input's dtype is the one the sidecar records (a one-line
``ModelFileError`` otherwise: the engine and its sidecar do not belong together),
the choice of an optimisation profile holding ``batch_size``, and one
execution context.  Device memory comes from torch (the CUDA allocator here: no
pycuda or cuda-python); host memory, copy streams, events and the compute
stream are :class:`pyengine.runners.torch.CudaFeed`'s, as for the torch runner.
Per batch: ``set_input_shape`` when the batch size changes (batches below the
profile's minimum are padded), ``set_tensor_address`` of the input buffer,
``execute_async_v3(compute_stream)``; both outputs, the scores and the class
probabilities, are copied back (``Pending.outputs()``).  ``input_dtype`` is the engine input's
dtype (half -> float16): before activation the one it will have (the sidecar's
``input_dtype`` for an engine file, float32 when absent; the ONNX metadata's for an
``.onnx``; the export's for a model file), after it the engine's own; batches of
the other float dtype are cast on the GPU (to float16: finite values beyond 65504
saturated there, as the scan's gather does, not overflowing to inf).
Only the TensorRT 10/11 name-based tensor API is used (no bindings API, no
precision flags: the precision is the ONNX file's, see pyengine.export.tensorrt).

NOT RUN HERE: TensorRT cannot be installed in this project's workplace, so no
engine has ever been built or run by this code (float16-input engines included).
The pure parts (:func:`engine_io`, :func:`check_engine_io`,
:func:`engine_profiles`, :func:`choose_profile`, :func:`open_engine` against a fake
``tensorrt``, the input dtype known before activation) and every refusal are
tested on the CPU (``tests/test_tensorrt_runner.py``); the float16-input ONNX
graphs themselves are run by ONNX Runtime on the CPU (``tests/test_export.py``).

Thread safety: see :mod:`pyengine.runners.base` (one thread submits and collects;
the execution context is not shared).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.defaults import DEFAULT_TENSORRT_PROFILE
from pyengine.errors import ConfigError, ModelFileError, PyEngineError, RunnerUnavailable
from pyengine.models.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec
from pyengine.runners.base import (
    ENGINE_SUFFIXES,
    GPU_IN_FLIGHT,
    HALF_MAX,
    PRECISIONS,
    Pending,
    Runner,
)
from pyengine.runners.loaders import cached_export, model_file_export
from pyengine.runners.probe import tensorrt_problem, unavailable
from pyengine.runners.torch import CudaFeed, parse_device

__all__ = ["DEFAULT_PROFILE", "EnginePlan", "TensorInfo", "TensorRTRunner", "check_engine_io",
           "choose_profile", "default_engine_cache", "engine_io", "engine_profiles",
           "open_engine", "trt_dtype_name"]

DEFAULT_PROFILE = DEFAULT_TENSORRT_PROFILE  # pyengine export --format tensorrt's default
_DTYPE_NAMES = (("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"),
                ("INT8", "int8"), ("INT32", "int32"), ("INT64", "int64"), ("BOOL", "bool"),
                ("UINT8", "uint8"), ("FP8", "fp8"))


def default_engine_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyengine" / "engines"


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of an engine: name, direction, shape (-1: dynamic) and dtype name."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str


def trt_dtype_name(trt, dtype) -> str:
    """NumPy-style name of a ``trt.DataType`` (its str() for the exotic ones)."""
    for attr, name in _DTYPE_NAMES:
        if hasattr(trt.DataType, attr) and dtype == getattr(trt.DataType, attr):
            return name
    return str(dtype)


def engine_io(trt, engine) -> list[TensorInfo]:
    """The engine's I/O tensors, by the name-based API of TensorRT 10 and 11."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        out.append(TensorInfo(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                              tuple(int(d) for d in engine.get_tensor_shape(name)),
                              trt_dtype_name(trt, engine.get_tensor_dtype(name))))
    return out


def _shape(dims) -> str:
    text = ", ".join("batch" if d == -1 else str(d) for d in dims)
    return f"({text},)" if len(dims) == 1 else f"({text})"


def check_engine_io(io: list[TensorInfo], spec: ModelSpec, where) -> np.dtype:
    """The engine input's dtype, after checking its tensors against ``spec``; a one-line
    ModelFileError naming what differs otherwise."""
    inputs = [t for t in io if t.is_input]
    outputs = {t.name: t for t in io if not t.is_input}
    if [t.name for t in inputs] != [INPUT_NAME]:
        raise ModelFileError(f"{where}: the engine's inputs are {[t.name for t in inputs]}; a "
                             f"pyengine engine has one input {INPUT_NAME!r}")
    x = inputs[0]
    s = spec.cutout_size
    want = (spec.nband, s, s)
    if len(x.shape) != 4 or x.shape[1:] != want or not (x.shape[0] == -1 or x.shape[0] >= 1):
        raise ModelFileError(f"{where}: engine input {INPUT_NAME!r} is {_shape(x.shape)}; the "
                             f"model (bands {', '.join(spec.bands)}, {s} px cutouts) needs "
                             f"(batch, {spec.nband}, {s}, {s})")
    if x.dtype not in ("float32", "float16"):
        raise ModelFileError(f"{where}: engine input {INPUT_NAME!r} is {x.dtype}; accepted: "
                             "float32, float16")
    if sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ModelFileError(f"{where}: the engine's outputs are {sorted(outputs)}; a pyengine "
                             f"engine has {list(OUTPUT_NAMES)}")
    wanted = {"probabilities": (2, spec.num_classes), "score": (1, None)}
    for name, (rank, width) in wanted.items():
        t = outputs[name]
        if len(t.shape) != rank or (width is not None and t.shape[1] != width) or \
                t.dtype != "float32":
            need = "(batch, " + str(width) + ")" if width is not None else "(batch,)"
            raise ModelFileError(f"{where}: engine output {name!r} is {t.dtype} "
                                 f"{_shape(t.shape)}; the model needs float32 {need}")
    return np.dtype(x.dtype)


def engine_profiles(engine, name: str = INPUT_NAME) -> list[tuple[int, int, int]]:
    """(min, opt, max) batch of ``name`` in each optimisation profile."""
    out = []
    for index in range(engine.num_optimization_profiles):
        lo, opt, hi = engine.get_tensor_profile_shape(name, index)
        out.append((int(next(iter(lo))), int(next(iter(opt))), int(next(iter(hi)))))
    return out


def choose_profile(profiles: list[tuple[int, int, int]], batch_size: int | None,
                   where) -> tuple[int, tuple[int, int, int]]:
    """(index, (min, opt, max)) of the profile to run ``batch_size`` with: one whose range
    holds it, the nearest optimum first; None: the largest optimum."""
    if not profiles:
        raise ModelFileError(f"{where}: the engine has no optimisation profile")
    if batch_size is None:
        index = max(range(len(profiles)), key=lambda i: (profiles[i][1], -i))
        return index, profiles[index]
    fits = [i for i, (lo, _, hi) in enumerate(profiles) if lo <= batch_size <= hi]
    if not fits:
        ranges = ", ".join(f"{lo}..{hi}" for lo, _, hi in profiles)
        raise ConfigError(f"{where}: batch size {batch_size} is outside the engine's "
                          f"optimisation profiles; accepted: {ranges} (or build an engine for "
                          "it: give the .onnx or model file with this batch size)")
    index = min(fits, key=lambda i: (abs(profiles[i][1] - batch_size), profiles[i][0], i))
    return index, profiles[index]


class EnginePlan:
    """A deserialized engine, its execution context and the profile chosen."""

    def __init__(self, runtime, engine, context, io, input_dtype, profile, batches):
        self.runtime, self.engine, self.context = runtime, engine, context
        self.io: list[TensorInfo] = io
        self.input_dtype: np.dtype = input_dtype
        self.profile: int = profile
        self.batches: tuple[int, int, int] = batches

    def release(self) -> None:
        """Drop the TensorRT objects, context first."""
        self.context = None
        self.engine = None
        self.runtime = None


def open_engine(trt, data: bytes, spec: ModelSpec, batch_size: int | None, where,
                input_dtype=None) -> EnginePlan:
    """Deserialize ``data``, check it against ``spec`` (and its input's dtype against
    ``input_dtype``, the sidecar's, unless None), choose the profile for ``batch_size``
    and create the execution context (on the current CUDA device)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelFileError(f"{where}: TensorRT {trt.__version__} cannot deserialize this "
                             "engine (built by another TensorRT version, or for another GPU?); "
                             "delete it so it is rebuilt, or rebuild it with pyengine export")
    io = engine_io(trt, engine)
    dtype = check_engine_io(io, spec, where)
    if input_dtype is not None and dtype != np.dtype(input_dtype):
        raise ModelFileError(f"{where}: the engine's input {INPUT_NAME!r} is {dtype}, but its "
                             f"sidecar says {np.dtype(input_dtype)}: they do not belong "
                             "together; delete both and build the engine again (pyengine "
                             "export MODEL --format tensorrt)")
    batch = next(t for t in io if t.is_input).shape[0]
    profiles = engine_profiles(engine) if batch == -1 else [(batch, batch, batch)]
    index, batches = choose_profile(profiles, batch_size, where)
    context = engine.create_execution_context()
    if context is None:
        raise RunnerUnavailable(f"{where}: TensorRT could not create an execution context "
                                "(not enough GPU memory?)")
    return EnginePlan(runtime, engine, context, io, dtype, index, batches)


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, model: Path | None, *, precision: str | None = None, cache_dir=None,
                 device: str = "auto", batch_size: int | None = None,
                 workspace_gb: float = 4.0):
        kind, index = parse_device(device)
        if kind == "cpu":
            raise ConfigError("device 'cpu' is not accepted by the tensorrt runner; accepted: "
                              "auto, cuda, cuda:N")
        accepted = PRECISIONS["tensorrt"]
        if precision is not None and precision not in accepted:
            raise ConfigError(f"precision {precision!r} is not available with the tensorrt "
                              f"runner; accepted: {', '.join(accepted)}")
        self._gpu = index or 0
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_engine_cache()
        self._workspace_gb = workspace_gb
        self._engine = self._onnx = self._source = None
        self._known = None  # (min, opt, max) of the engine, known before activation
        self._plan = self._feed = self._torch = self._outputs = self._cast = None
        self._engine_dtype = self._rows = self._where = None
        self._input_dtype = np.dtype(np.float32)  # what the engine will take, before activation
        model = Path(model) if model is not None else None
        suffix = model.suffix.lower() if model is not None else ""
        if suffix in ENGINE_SUFFIXES:
            from pyengine.export.tensorrt import engine_metadata

            if not model.exists():
                raise ModelFileError(f"{model}: no such TensorRT engine file")
            meta = engine_metadata(model)
            stored = meta.get("precision", "fp32")
            if precision is not None and precision != stored:
                raise ConfigError(f"{model} is a {stored} engine; --precision {precision} needs "
                                  "its own engine (pyengine export MODEL --format tensorrt "
                                  f"--precision {precision})")
            shapes = meta.get("input_shapes")
            if shapes and len(shapes) == 3:
                self._known = tuple(int(s[0]) for s in shapes)
            self._engine = model
            self._input_dtype = np.dtype(meta["input_dtype"])
            super().__init__(meta["spec"], stored, batch_size)
        elif suffix == ".onnx":
            from pyengine.export.onnx import input_dtype_of, onnx_metadata, read_export

            spec, stored = read_export(model, precision)
            self._onnx = model
            self._input_dtype = np.dtype(input_dtype_of(onnx_metadata(model), model))
            super().__init__(spec, stored, batch_size)
        else:
            self._source, spec, precision, dtype, self._onnx = model_file_export(
                model, precision, self._cache_dir, ("fp32", "fp16"), half=True)
            self._input_dtype = np.dtype(dtype)
            super().__init__(spec, precision, batch_size)
        b = self._batch_size
        self._build = (1, b, b) if b is not None else DEFAULT_PROFILE

    # -- what the engine asks before activate ----------------------------------------------
    @property
    def _batches(self) -> tuple[int, int, int]:
        if self._plan is not None:
            return self._plan.batches
        return self._known or self._build

    @property
    def input_dtype(self) -> np.dtype:
        """The engine input's dtype once active; before, the one it will have."""
        return self._plan.input_dtype if self._plan is not None else self._input_dtype

    @property
    def preferred_batch_size(self) -> int:
        return self._batch_size or self._batches[1]

    @property
    def max_batch_size(self) -> int:
        return self._batches[2]

    @property
    def in_flight(self) -> int:
        return GPU_IN_FLIGHT

    # -- life cycle --------------------------------------------------------------------------
    def _engine_file(self, trt) -> Path:
        if self._engine is not None:
            return self._engine
        if self._source is not None:  # a model file: its cached export, checked
            cached_export(self._source, self._onnx, self.precision, str(self._input_dtype))
        from pyengine.export.tensorrt import build_engine

        return build_engine(self._onnx, self._cache_dir, batch=self._build,
                            workspace_gb=self._workspace_gb, device=self._gpu, trt=trt)

    def _activate(self) -> None:  # NOT RUN HERE (needs TensorRT and a GPU)
        problem = tensorrt_problem()
        if problem is not None:
            raise unavailable("tensorrt", problem)
        import tensorrt as trt
        import torch

        if self._gpu >= torch.cuda.device_count():
            raise RunnerUnavailable(f"tensorrt runner on cuda:{self._gpu}: only "
                                    f"{torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", self._gpu)
        with torch.cuda.device(device):
            path = self._engine_file(trt)
            from pyengine.export.tensorrt import engine_metadata, read_engine

            data = read_engine(path)  # checked against the hash in its sidecar
            plan = open_engine(trt, data, self.spec, self._batch_size, path,
                               engine_metadata(path)["input_dtype"])
            hi = plan.batches[2]
            feed = CudaFeed(torch, device, self.input_shape, hi)
            context = plan.context
            if plan.profile != 0:
                context.set_optimization_profile_async(plan.profile, feed.compute.cuda_stream)
                feed.compute.synchronize()
            outputs = {
                "probabilities": torch.zeros((hi, self.spec.num_classes), dtype=torch.float32,
                                             device=device),
                "score": torch.zeros(hi, dtype=torch.float32, device=device)}
            for name, tensor in outputs.items():
                if not context.set_tensor_address(name, tensor.data_ptr()):
                    raise PyEngineError(f"{path}: TensorRT refused the address of output {name!r}")
            self._engine_dtype = torch.float16 if plan.input_dtype == np.float16 else torch.float32
            self._cast = torch.zeros((hi, *self.input_shape), dtype=self._engine_dtype,
                                     device=device)
            torch.cuda.current_stream(device).synchronize()
        self._torch, self._plan, self._feed, self._outputs = torch, plan, feed, outputs
        self._rows, self._where = None, path

    def _deactivate(self) -> None:
        if self._feed is not None:
            self._feed.close()
        if self._plan is not None:
            self._plan.release()
        self._feed = self._plan = None
        self._outputs = self._cast = None

    # -- memory and inference (NOT RUN HERE) ---------------------------------------------------
    def _allocate_slots(self, count: int, batch_size: int, dtype: np.dtype) -> list[np.ndarray]:
        return self._feed.pinned_slots(count, batch_size, dtype)

    def _convert(self, batch: np.ndarray) -> np.ndarray:
        return batch  # cast on the GPU when the engine wants the other float dtype

    def _submit(self, batch: np.ndarray) -> Pending:
        return self._feed.submit(batch, self._launch)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pending = self._submit(batch)
        return pending.outputs()["probabilities"], pending.result()

    def _launch(self, x, n: int):
        """On the compute stream: enqueue the engine on ``x`` (n rows); the (score,
        probabilities) output buffers, both copied back by the feed."""
        context = self._plan.context
        rows = max(n, self._plan.batches[0])  # rows past n: stale, allocated, ignored
        if x.dtype != self._engine_dtype:
            if self._plan.input_dtype == np.float16:  # saturate, as the scan's gather does
                x = x.clamp(-HALF_MAX, HALF_MAX).where(~x.isinf(), x)  # inf and NaN kept
            self._cast[:n].copy_(x)
            x = self._cast
        if rows != self._rows:
            if not context.set_input_shape(INPUT_NAME, (rows, *self.input_shape)):
                raise PyEngineError(f"{self._where}: TensorRT refused input shape "
                                    f"({rows}, {', '.join(map(str, self.input_shape))})")
            self._rows = rows
        if not context.set_tensor_address(INPUT_NAME, x.data_ptr()):
            raise PyEngineError(f"{self._where}: TensorRT refused the input address")
        if not context.execute_async_v3(self._feed.compute.cuda_stream):
            raise PyEngineError(f"{self._where}: TensorRT execute_async_v3 failed (see its log)")
        return self._outputs["score"], self._outputs["probabilities"]
