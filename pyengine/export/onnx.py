"""ONNX export of a ClusterClassifier, checked against torch.

The exported graph takes the raw cutouts (batch, nband, S, S) float32 with
NaN and returns ``probabilities`` and ``score``: preprocessing is inside it.
fp16 keeps the preprocessing in float32 (raw sky levels of thousands with a
noise of a few counts would lose their noise in half precision) and runs the
ResNet in float16, returning float32 outputs.  The precision is thus carried by
the ONNX types, which is how TensorRT 11 (strongly typed networks, no
precision flags) reads it.

The model's spec, file hash and the export precision travel in the ONNX
``metadata_props`` (keys ``pyengine``, ``pyengine_model_sha256``,
``pyengine_precision``, and for int8 ``pyengine_int8_target``), so a runner of the
ONNX file alone knows its bands, cutout size and threshold.

Thread safety: export functions write their own files; run one per output path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from pyengine.atomic import publish, temporary_beside
from pyengine.errors import ConfigError, ModelFileError
from pyengine.models.spec import INPUT_NAME, OUTPUT_NAMES

__all__ = [
    "ONNX_PRECISIONS",
    "OPSET",
    "export_onnx",
    "finish_onnx",
    "onnx_metadata",
    "read_export",
    "set_metadata",
    "temporary_beside",
]

ONNX_PRECISIONS = ("fp32", "fp16")
OPSET = 17


def set_metadata(onnx_model, model_spec_json: str, sha256: str, precision: str,
                 extra: dict[str, str] | None = None) -> None:
    """Write pyengine's metadata into an onnx.ModelProto (replacing earlier values)."""
    props = {p.key: p.value for p in onnx_model.metadata_props}
    props.update(pyengine=model_spec_json, pyengine_model_sha256=sha256,
                 pyengine_precision=precision, **(extra or {}))
    del onnx_model.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value


def finish_onnx(tmp: Path, path: Path, spec_json: str, sha256: str, precision: str,
                extra: dict[str, str] | None = None) -> Path:
    """Stamp pyengine's metadata on the graph written at ``tmp``, check it fully, and
    rename it to ``path`` (atomic); ``tmp`` is removed if anything fails."""
    import onnx

    try:
        proto = onnx.load(str(tmp))
        set_metadata(proto, spec_json, sha256, precision, extra)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        publish([(tmp, path)])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def onnx_metadata(path) -> dict[str, str]:
    """The metadata_props of an ONNX file (no weights loaded)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc})") from None
    return {p.key: p.value for p in proto.metadata_props}


def read_export(path: Path, precision: str | None = None):
    """(ModelSpec, stored precision) of a pyengine ONNX export; refuses other files and a
    ``precision`` other than the one the graph was exported at."""
    from pyengine.models.spec import ModelSpec

    if not path.exists():
        raise ModelFileError(f"{path}: no such ONNX file")
    meta = onnx_metadata(path)
    if "pyengine" not in meta:
        raise ModelFileError(f"{path}: not a pyengine ONNX export (no pyengine "
                             "metadata); export models with pyengine export")
    stored = meta.get("pyengine_precision", "fp32")
    if precision is not None and precision != stored:
        raise ConfigError(f"{path} is a {stored} graph; --precision {precision} needs "
                          f"its own export (pyengine export MODEL --precision {precision})")
    return ModelSpec.from_json(meta["pyengine"], where=str(path)), stored


def export_onnx(model, path, *, precision: str = "fp32", opset: int = OPSET,
                batch: int = 2) -> Path:
    """Export ``model`` (ClusterClassifier, with .sha256 when loaded from a file) to ``path``."""
    import torch

    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"ONNX precision {precision!r} is not accepted; accepted: "
                          f"{', '.join(ONNX_PRECISIONS)} (int8: pyengine export --precision int8)")
    path = Path(path)
    spec = model.spec
    from pyengine.models.classifier import precision_graph

    graph = precision_graph(model, precision)
    dummy = torch.zeros(batch, spec.nband, spec.cutout_size, spec.cutout_size)
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    tmp = temporary_beside(path)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter, deliberately: the torch.export-based
            # one needs onnxscript (not a dependency) and is checked against nothing
            # here yet.  Its deprecation notice is expected.
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed",
                                    category=DeprecationWarning)
            torch.onnx.export(graph, (dummy,), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return finish_onnx(tmp, path, spec.to_json(), getattr(model, "sha256", ""), precision)

