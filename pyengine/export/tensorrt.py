"""TensorRT engines built from pyengine's ONNX files, cached by everything that matters.

NOT RUN HERE: TensorRT cannot be installed in this project's workplace (its
PyPI packages fetch the libraries from NVIDIA's own index).  This module is
written to the documented Python API of TensorRT 10 and 11; everything around
the TensorRT calls (version rules, cache keys, profiles, errors) is tested
against a recorded fake of that API (tests/test_export.py).

Precision comes from the ONNX file (its ``pyengine_precision`` metadata and
its tensor types):
* TensorRT 11 removed the precision builder flags: every network is strongly
  typed, so an fp16 graph (float16 ResNet) builds fp16 kernels and a QDQ graph
  builds int8 ones; no flag is set.
* TensorRT 10: fp16 graphs are parsed into a STRONGLY_TYPED network (the same
  semantics); int8 QDQ graphs use a weakly typed network with the INT8 flag
  (explicit quantisation) plus FP16 for the layers left unquantised.
* fp32 means IEEE float32, as for the torch runner: ``BuilderFlag.TF32`` is on by
  default ("allow, not require, TF32 for FLOAT tensors", TensorRT's documentation),
  so fp32 builds clear it (``config.clear_flag``), in TensorRT 10 and in 11, where
  TF32 is a math mode of float32 tensors rather than a type and the flag remains;
  where a TensorRT has no such flag nothing is cleared.  fp16 and int8 builds
  keep TensorRT's default.

The engine's input ``cutouts`` has the ONNX graph's input dtype (its
``pyengine_input_dtype`` metadata; float32 when absent): float16 for the fp16
engines pyengine builds from a model file (the TensorRT runner, ``pyengine export
--format tensorrt --precision fp16``), so the scan copies float16 batches to the
GPU, half the bytes of float32; the graph casts them to float32 first, so the
preprocessing stays float32.  fp32 and int8 engines take float32.

The engine is cached under ``cache_dir`` with a key over the GPU name and
compute capability, TensorRT and CUDA versions, precision, input dtype, the
optimisation profile's shapes and the ONNX file's SHA-256 (which covers the
model: its weights, spec and hash are in the file): an engine is never reused on
a GPU, driver stack or model it was not built for.  Beside each engine a JSON
sidecar (same name, ``.json``) holds that key (``input_dtype`` included; a
sidecar of an older pyengine without it means float32), the model's spec
(``pyengine``) and the engine file's SHA-256 (``engine_sha256``), so the TensorRT
runner can run an engine file alone (:func:`engine_metadata`: its spec, and its
input dtype before it is deserialized) and reads it through
:func:`read_engine`, which refuses an engine whose bytes differ from that hash
(an engine whose sidecar predates the hash is run with a ``ModelFileWarning``).
A cached engine that fails its hash is built again; one whose sidecar is missing
or predates the hash gets a sidecar with its current hash.

Thread safety: one build per cache entry at a time (the write is atomic; two
concurrent builds of one key both succeed, the later rename wins).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from pyengine.atomic import atomic_write_bytes, atomic_write_text
from pyengine.defaults import DEFAULT_TENSORRT_PROFILE
from pyengine.errors import ConfigError, ModelFileError, ModelFileWarning, PyEngineError
from pyengine.export.onnx import INPUT_DTYPES, input_dtype_of, onnx_metadata, verify_graph
from pyengine.hashing import file_sha256, stream_sha256
from pyengine.models.spec import INPUT_NAME, ModelSpec

__all__ = ["EngineKey", "build_engine", "engine_key", "engine_metadata", "import_tensorrt",
           "read_engine", "sidecar_path"]


class TensorRTUnavailable(PyEngineError):
    """TensorRT or a GPU is missing."""


def import_tensorrt():
    """The ``tensorrt`` module, or a one-line error saying why it cannot be used."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed: it comes from NVIDIA's package index (pip install "
            "tensorrt with NVIDIA's index) and needs an NVIDIA GPU; use --format onnx "
            "meanwhile") from None
    except OSError as exc:
        raise TensorRTUnavailable(f"TensorRT is installed but its libraries do not load ({exc})"
                                  ) from None
    return trt


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; its hash names the cache entry."""

    onnx_sha256: str
    precision: str
    gpu: str
    compute_capability: str
    tensorrt: str
    cuda: str
    input_shapes: tuple  # (min, opt, max), each (batch, nband, S, S)
    input_dtype: str = "float32"  # of the input "cutouts": float32 or float16

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _gpu_identity(device: int) -> tuple[str, str, str]:
    """(GPU name, compute capability, CUDA version) of ``device``."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return props.name, f"{props.major}.{props.minor}", str(torch.version.cuda)
    from pyengine.devices import gpus

    found = gpus()
    if not found or device >= len(found):
        raise TensorRTUnavailable(f"no NVIDIA GPU {device} found; TensorRT engines are built "
                                  "on the GPU that will run them")
    return found[device]["name"], found[device]["compute_capability"], "unknown"


def engine_key(onnx_path, *, precision: str, spec: ModelSpec, batch: tuple[int, int, int],
               trt_version: str, device: int = 0, identity=None,
               input_dtype: str = "float32") -> EngineKey:
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"engine batch sizes (min, opt, max) = {batch}; need 1 <= min <= opt "
                          "<= max")
    gpu, capability, cuda = identity if identity is not None else _gpu_identity(device)
    shape = (spec.nband, spec.cutout_size, spec.cutout_size)
    return EngineKey(file_sha256(onnx_path), precision, gpu, capability, trt_version, cuda,
                     tuple((b, *shape) for b in (lo, opt, hi)), input_dtype)


def build_engine(onnx_path, cache_dir, *, batch: tuple[int, int, int] = DEFAULT_TENSORRT_PROFILE,
                 workspace_gb: float = 4.0, device: int = 0, trt=None, identity=None) -> Path:
    """Serialized engine for ``onnx_path`` (built, or taken from the cache): its path."""
    trt = trt if trt is not None else import_tensorrt()
    onnx_path = Path(onnx_path)
    meta = onnx_metadata(onnx_path)
    if "pyengine" not in meta:
        raise ModelFileError(f"{onnx_path}: not a pyengine ONNX export (no pyengine metadata)")
    spec = ModelSpec.from_json(meta["pyengine"], where=str(onnx_path))
    verify_graph(onnx_path, meta)  # damaged weights are never built into an engine
    precision = meta.get("pyengine_precision", "fp32")
    input_dtype = input_dtype_of(meta, onnx_path)
    from pyengine.export.quantize import int8_target

    if precision == "int8" and int8_target(meta) != "tensorrt":
        raise ModelFileError(
            f"{onnx_path}: this int8 graph was quantised for ONNX Runtime (uint8 activations), "
            "which TensorRT does not build; make one for TensorRT with pyengine export MODEL "
            "--format tensorrt --precision int8")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old; pyengine needs 10 or 11")
    key = engine_key(onnx_path, precision=precision, spec=spec, batch=batch,
                     trt_version=str(trt.__version__), device=device, identity=identity,
                     input_dtype=input_dtype)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path = cache_dir / f"{onnx_path.stem}-{precision}-{key.digest()[:16]}.engine"
    # model_sha256: the source model's identity (pyengine.runners.loaders.model_identity),
    # so a catalog scanned with the engine names the same model as one scanned with the file.
    sidecar = {**asdict(key), "pyengine": spec.to_json(),
               "model_sha256": meta.get("pyengine_model_sha256", "")}
    if engine_path.exists() and _cached_engine_ok(engine_path, sidecar):
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major == 10 and precision == "fp16":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if major == 10 and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # IEEE float32 convolutions and matmuls
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *key.input_shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PyEngineError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    data = bytes(serialized)
    try:
        atomic_write_bytes(engine_path, data)
    except OSError as exc:
        raise PyEngineError(f"{engine_path}: cannot write the engine ({exc.strerror})") from None
    _write_sidecar(engine_path, {**sidecar, "engine_sha256": _bytes_sha256(data)})
    return engine_path


def _bytes_sha256(data: bytes) -> str:
    return stream_sha256(io.BytesIO(data))


def _cached_engine_ok(engine_path: Path, sidecar: dict) -> bool:
    """Whether the cached ``engine_path`` may be reused: False when its sidecar stores an
    ``engine_sha256`` the file no longer has (it is built again).  A sidecar that is
    missing, unreadable or predates the hash is written (again) with the file's hash."""
    try:
        old = json.loads(sidecar_path(engine_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    stored = old.get("engine_sha256") if isinstance(old, dict) else None
    try:
        got = file_sha256(engine_path)
    except OSError:
        return False
    if stored:
        return (stored == got and "pyengine" in old
                and old.get("input_dtype", "float32") == sidecar["input_dtype"])
    _write_sidecar(engine_path, {**sidecar, "engine_sha256": got})
    return True


def sidecar_path(engine_path) -> Path:
    """The JSON beside an engine: its cache key and the model's spec."""
    return Path(engine_path).with_suffix(".json")


def _write_sidecar(engine_path: Path, sidecar: dict) -> None:
    path = sidecar_path(engine_path)
    try:
        atomic_write_text(path, json.dumps(sidecar, indent=2) + "\n")
    except OSError as exc:
        raise PyEngineError(f"{path}: cannot write the engine's sidecar ({exc.strerror})"
                            ) from None


def engine_metadata(engine_path) -> dict:
    """The sidecar of an engine built by :func:`build_engine`: its key fields
    (``precision``, ``input_dtype`` (float32 when the sidecar predates it),
    ``input_shapes`` (min, opt, max), GPU, versions), ``engine_sha256`` (absent in
    sidecars of an older pyengine) and ``spec``, the :class:`ModelSpec` it was built
    for."""
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    how = ("give the .onnx or model file instead (the engine is built and cached), or "
           "build it with pyengine export MODEL --format tensorrt")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{engine_path}: no {path.name} beside it (the model spec pyengine "
                             f"writes with each engine); {how}") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable engine sidecar ({exc}); {how}") from None
    if not isinstance(data, dict) or "pyengine" not in data:
        raise ModelFileError(f"{path}: has no model spec (written by an older pyengine); {how}")
    data["spec"] = ModelSpec.from_json(data["pyengine"], where=str(path))
    data.setdefault("input_dtype", "float32")
    if data["input_dtype"] not in INPUT_DTYPES:
        raise ModelFileError(f"{path}: input_dtype = {data['input_dtype']!r} is not accepted; "
                             f"accepted: {', '.join(INPUT_DTYPES)}")
    return data


def read_engine(engine_path) -> bytes:
    """The bytes of a serialized engine, checked against the ``engine_sha256`` of its
    sidecar before TensorRT deserializes them: ``ModelFileError`` when they differ; a
    :class:`~pyengine.errors.ModelFileWarning` when the sidecar predates the hash."""
    engine_path = Path(engine_path)
    meta = engine_metadata(engine_path)
    try:
        data = engine_path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{engine_path}: cannot read the engine ({exc.strerror})") from None
    stored = meta.get("engine_sha256")
    if not stored:
        warnings.warn(f"{engine_path}: its sidecar {sidecar_path(engine_path).name} has no "
                      "engine_sha256 (written by an older pyengine), so damage to the engine "
                      "cannot be detected; build it again with pyengine export MODEL --format "
                      "tensorrt to add one", ModelFileWarning, stacklevel=2)
        return data
    got = _bytes_sha256(data)
    if got != stored:
        raise ModelFileError(f"{engine_path}: the engine does not match its checksum in "
                             f"{sidecar_path(engine_path).name} (SHA-256 {got[:16]}..., stored "
                             f"{str(stored)[:16]}...): the file is damaged; delete it and build "
                             "it again (pyengine export MODEL --format tensorrt)")
    return data
