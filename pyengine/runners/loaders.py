"""What a runner given a model file (not an exported graph) loads: Polygraphy-style
loaders below the runners, which call the exporters and never the reverse.  The
model file's tensors are checked against their checksum before anything is
exported, and a cached export is reused only when it was made from that very file
and passes its own checksum.

Thread safety: pure functions of their arguments, except that :func:`cached_export`
writes its cache entry (atomically; two concurrent exports of one entry both succeed,
the later rename wins).
"""

from __future__ import annotations

from pathlib import Path

from pyengine.errors import RunnerUnavailable

__all__ = ["cached_export", "half_input", "model_file_export", "model_identity"]


def model_identity(model: Path | None) -> str:
    """The SHA-256 that names the model whichever form of it is scanned (catalog
    ``MODELSHA``, resume fingerprints): the file's own hash for a model file (None: the
    shipped demo model), and the source model's hash that pyengine stores in its ONNX
    exports (``pyengine_model_sha256``) and TensorRT engine sidecars (``model_sha256``).

    So a model file, its fp32/fp16 export and an engine built from it share one identity;
    an int8 graph too (it is the same model quantised; the catalog's ``PRECISN`` says
    which).  Files without a stored hash (foreign graphs, exports of a model that was not
    loaded from a file, engines of an older pyengine) fall back to their own hash.

    An ensemble (a list of member files): the SHA-256 of its members' identities in
    order, so the same members in another form (their ONNX exports) share it too.
    """
    from pyengine.hashing import file_sha256
    from pyengine.models.checkpoint import DEMO_MODEL
    from pyengine.runners.base import ENGINE_SUFFIXES

    if isinstance(model, list | tuple):  # an ensemble: its members' identities, in order
        import hashlib

        if len(model) == 1:
            return model_identity(model[0])
        members = ",".join(model_identity(m) for m in model)
        return hashlib.sha256(f"pyengine-ensemble:{members}".encode()).hexdigest()
    path = Path(model) if model is not None else DEMO_MODEL
    suffix = path.suffix.lower()
    stored = ""
    if suffix == ".onnx":
        from pyengine.export.onnx import onnx_metadata

        stored = onnx_metadata(path).get("pyengine_model_sha256", "")
    elif suffix in ENGINE_SUFFIXES:
        from pyengine.export.tensorrt import engine_metadata

        stored = engine_metadata(path).get("model_sha256", "")
    return stored if isinstance(stored, str) and stored else file_sha256(path)


def half_input(spec, precision: str) -> bool:
    """Whether pyengine's own fp16 export of a model for a GPU engine takes float16 input:
    at fp16, when the model's preprocessing is affine-invariant, so that the scan hands
    it tiles mapped to sky 0 and noise 1, which float16 holds (otherwise the scan sends
    float32, and a float16 input would only round the raw pixels on the GPU)."""
    return precision == "fp16" and spec.preprocess.affine_invariant


def model_file_export(model: Path | None, precision: str | None, cache_dir: Path,
                      exportable: tuple[str, ...], *, half: bool = False):
    """(source model file, its spec, precision, input dtype, cached ONNX path) for a runner
    given a model file (None: the shipped demo model) rather than an exported graph.  The
    input dtype is float16 when ``half`` and :func:`half_input` allow it, else float32.
    The ONNX is named by the file's SHA-256, the precision and the input dtype;
    precisions outside ``exportable`` (int8, which is calibrated on real cutouts) are
    refused with the command that makes them.  The file's tensors are checked against
    their checksum here, so a damaged model file is refused before anything is exported
    or scanned."""
    from pyengine.hashing import file_sha256
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    source = model if model is not None else DEMO_MODEL
    spec, _ = read_spec(source, verify=True)
    precision = precision or "fp32"
    if precision not in exportable:
        raise RunnerUnavailable(
            f"{source}: an {precision} graph is calibrated on real cutouts; make it with "
            f"pyengine export {source} --precision {precision} --images ... and give the .onnx")
    dtype = "float16" if half and half_input(spec, precision) else "float32"
    name = f"{file_sha256(source)[:32]}-{precision}-{dtype}.onnx"
    return source, spec, precision, dtype, Path(cache_dir) / name


def cached_export(source: Path, onnx_path: Path, precision: str,
                  input_dtype: str = "float32") -> Path:
    """``onnx_path``, the cached ONNX export of the model file ``source``
    (:func:`model_file_export` names it), exported now (needs torch) unless the file there
    was made from this very file (its ``pyengine_model_sha256`` is ``source``'s SHA-256)
    at ``precision`` with an ``input_dtype`` input, and its graph matches its checksum: a
    damaged, foreign, pre-checksum or other-precision or other-input-dtype cache entry
    is replaced (atomically), never run."""
    from pyengine.errors import ModelFileError
    from pyengine.export.onnx import graph_damage, input_dtype_of, onnx_metadata
    from pyengine.hashing import file_sha256

    if onnx_path.exists():
        try:
            meta = onnx_metadata(onnx_path)
            if (meta.get("pyengine_model_sha256") == file_sha256(source)
                    and meta.get("pyengine_precision", "fp32") == precision
                    and input_dtype_of(meta, onnx_path) == input_dtype
                    and graph_damage(onnx_path, meta) is None):
                return onnx_path
        except ModelFileError:
            pass  # unreadable: exported again below
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RunnerUnavailable(
            f"{source}: exporting a model file to ONNX needs torch (pip install "
            "pyengine[train]); or give an exported .onnx file") from None
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import load_model

    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(load_model(source), onnx_path, precision=precision,
                       input_dtype=input_dtype)
