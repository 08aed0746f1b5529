"""ONNX export of a ClusterClassifier, checked against torch.

The exported graph takes the raw cutouts (batch, nband, S, S) with NaN and
returns ``probabilities`` and ``score`` (float32): preprocessing is inside it.
fp16 keeps the preprocessing in float32 (raw sky levels of thousands with a
noise of a few counts would lose their noise in half precision) and runs the
ResNet in float16, returning float32 outputs.  The precision is thus carried by
the ONNX types, which is how TensorRT 11 (strongly typed networks, no
precision flags) reads it.

The input ``cutouts`` is float32 by default.  ``input_dtype="float16"`` makes it
float16, for GPU runners that are handed float16 batches (half the
host-to-device copy: the scan maps each tile affinely, sky to 0 and noise to 1,
so float16 holds the values; see ``pyengine.scan.pipeline.tile_affine``).  Such a
graph's only use of its input is a Cast to float32, so everything after it,
the preprocessing included, is the float32-input graph's (a NaN stays NaN
through the Cast, and the graph's finite mask treats it as before; pyengine's
conversions to float16 saturate finite values beyond 65504 there, so a bright
pixel does not become inf, which that mask would read as missing).  The
input's dtype is recorded as ``pyengine_input_dtype`` (``float32`` or
``float16``, written by :func:`set_metadata` from the graph's own input type
for every export; a file without the key is float32: :func:`input_dtype_of`).
float16 input is meant for fp16 graphs (``pyengine export`` refuses it for
fp32 and int8, whose point is float32 precision).

The model's spec, file hash and the export precision travel in the ONNX
``metadata_props`` (keys ``pyengine``, ``pyengine_model_sha256``,
``pyengine_precision``, and for int8 ``pyengine_int8_target``), so a runner of the
ONNX file alone knows its bands, cutout size and threshold.  ``pyengine_graph_sha256``
is the SHA-256 of the serialized graph (ModelProto field 7: its nodes and their
constants, and the initializers, which are the weights), written by
:func:`set_metadata` for every export (fp32, fp16 and int8 alike) and checked by
:func:`read_export` (and so by every runner of an ``.onnx``) from the wire format,
without the onnx package: altered weights raise ``ModelFileError``; exports made
before the key existed run with a ``ModelFileWarning``.

Thread safety: export functions write their own files; run one per output path.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from pyengine.atomic import publish, temporary_beside
from pyengine.errors import ConfigError, ModelFileError, ModelFileWarning
from pyengine.hashing import ranges_sha256, stream_sha256
from pyengine.models.spec import INPUT_NAME, OUTPUT_NAMES

__all__ = [
    "GRAPH_SHA256_KEY",
    "INPUT_DTYPES",
    "INPUT_DTYPE_KEY",
    "ONNX_PRECISIONS",
    "OPSET",
    "export_onnx",
    "finish_onnx",
    "graph_damage",
    "graph_sha256",
    "input_dtype_of",
    "onnx_metadata",
    "read_export",
    "set_metadata",
    "temporary_beside",
    "verify_graph",
]

ONNX_PRECISIONS = ("fp32", "fp16")
OPSET = 17
#: The metadata key holding the SHA-256 of the serialized graph (weights included).
GRAPH_SHA256_KEY = "pyengine_graph_sha256"
#: dtypes the graph's input ``cutouts`` may have, and the metadata key recording it.
INPUT_DTYPES = ("float32", "float16")
INPUT_DTYPE_KEY = "pyengine_input_dtype"
_ACCEPTED = "accepted: an ONNX graph written by pyengine export"


# TensorProto.DataType values of the accepted input dtypes (onnx/onnx.proto).
_ELEM_TYPES = {1: "float32", 10: "float16"}


def _graph_input_dtype(onnx_model) -> str:
    """The dtype name of the graph's input ``cutouts`` (float32 when the graph has no
    input of that name: foreign test graphs)."""
    for value in onnx_model.graph.input:
        if value.name == INPUT_NAME:
            elem = value.type.tensor_type.elem_type
            if elem not in _ELEM_TYPES:
                raise ModelFileError(f"the graph's input {INPUT_NAME!r} has ONNX element type "
                                     f"{elem}; accepted: {', '.join(INPUT_DTYPES)}")
            return _ELEM_TYPES[elem]
    return "float32"


def set_metadata(onnx_model, model_spec_json: str, sha256: str, precision: str,
                 extra: dict[str, str] | None = None) -> None:
    """Write pyengine's metadata into an onnx.ModelProto (replacing earlier values):
    spec, model hash, precision, the input's dtype as the graph has it
    (``pyengine_input_dtype``), ``extra``, and the SHA-256 of its graph as it stands
    now (so set it last)."""
    props = {p.key: p.value for p in onnx_model.metadata_props}
    # The graph's bytes inside the saved file are its own serialization (no map fields,
    # so the encoding is deterministic); finish_onnx checks that they agree.
    graph = stream_sha256(io.BytesIO(onnx_model.graph.SerializeToString()))
    props.update(pyengine=model_spec_json, pyengine_model_sha256=sha256,
                 pyengine_precision=precision,
                 **{INPUT_DTYPE_KEY: _graph_input_dtype(onnx_model)}, **(extra or {}),
                 **{GRAPH_SHA256_KEY: graph})
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
        damage = graph_damage(tmp, onnx_metadata(tmp))
        if damage is not None:
            raise ModelFileError(f"{path}: the export does not pass its own checksum ({damage})")
        publish([(tmp, path)])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ModelProto field numbers (onnx/onnx.proto): graph is field 7 (a GraphProto: nodes,
# initializers, inputs, outputs); metadata_props is field 14, a repeated
# StringStringEntryProto {key = 1, value = 2}.
_GRAPH = 7
_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(fh) -> int:
    value, shift = 0, 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(fh, end: int):
    """(field number, wire type, value) of the protobuf message in ``fh`` up to byte
    ``end``: a varint's value, or a length-delimited field's length with ``fh`` at its
    first byte (the caller may read it; the next step seeks past it either way).
    Fixed-width fields are skipped."""
    while fh.tell() < end:
        tag = _varint(fh)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            yield number, wire, _varint(fh)
        elif wire in (_FIXED64, _FIXED32):
            fh.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
        elif wire == _LENGTH:
            length = _varint(fh)
            start = fh.tell()
            if start + length > end:
                raise ValueError(f"field {number} runs past the end of its message")
            yield number, wire, length
            fh.seek(start + length)
        else:
            raise ValueError(f"field {number} has wire type {wire}, which ONNX never uses")


def onnx_metadata(path) -> dict[str, str]:
    """The metadata_props of an ONNX file, read without the onnx package.

    Reads the ModelProto's top-level fields from the protobuf wire format and seeks
    past the others (the graph and its weights), so a 100 MB export costs a few reads
    and no ``import onnx`` (0.8 s with its ml_dtypes): a scan of an exported model
    needs only ONNX Runtime.  tests/test_export.py checks it against ``onnx.load``."""
    meta = {}
    try:
        with open(path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            for number, wire, length in _fields(fh, end):
                if number == _METADATA_PROPS and wire == _LENGTH:
                    entry = {}
                    for field, kind, size in _fields(fh, fh.tell() + length):
                        if kind == _LENGTH:
                            entry[field] = fh.read(size).decode("utf-8")
                    meta[entry.get(1, "")] = entry.get(2, "")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc}); {_ACCEPTED}") from None
    return meta


def graph_sha256(path) -> str:
    """SHA-256 of the bytes of an ONNX file's graph field (every occurrence, in file order),
    found from the wire format like :func:`onnx_metadata` and hashed straight from the
    file (no copy of the ~100 MB graph in memory)."""
    try:
        with open(path, "rb") as fh:
            end = os.fstat(fh.fileno()).st_size
            ranges = [(fh.tell(), length) for number, wire, length in _fields(fh, end)
                      if number == _GRAPH and wire == _LENGTH]
            return ranges_sha256(fh, ranges)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable ONNX file ({exc}); {_ACCEPTED}") from None


def graph_damage(path, meta: dict[str, str]) -> str | None:
    """None when the graph of the ONNX file ``path`` matches the checksum in its metadata
    ``meta``; otherwise why not (no checksum stored, or the two hashes)."""
    stored = meta.get(GRAPH_SHA256_KEY)
    if not stored:
        return "no checksum stored"
    got = graph_sha256(path)
    if got != stored:
        return f"SHA-256 {got[:16]}..., stored {stored[:16]}..."
    return None


def verify_graph(path, meta: dict[str, str] | None = None) -> None:
    """``ModelFileError`` when the graph (weights included) of a pyengine ONNX export
    differs from its stored checksum; a :class:`~pyengine.errors.ModelFileWarning` when
    it was exported before pyengine stored one."""
    meta = onnx_metadata(path) if meta is None else meta
    damage = graph_damage(path, meta)
    if damage is None:
        return
    if GRAPH_SHA256_KEY not in meta:
        warnings.warn(f"{path}: this ONNX export has no checksum of its graph (made before "
                      "pyengine stored one), so damage to its weights cannot be detected; "
                      "export it again with pyengine export to add one", ModelFileWarning,
                      stacklevel=3)
        return
    raise ModelFileError(f"{path}: the graph's weights do not match their checksum ({damage}): "
                         "the file is damaged; export it again (pyengine export MODEL)")


def input_dtype_of(meta: dict[str, str], where) -> str:
    """The input dtype (``float32``/``float16``) recorded in an export's metadata ``meta``;
    float32 for exports made before pyengine recorded it."""
    dtype = meta.get(INPUT_DTYPE_KEY, "float32")
    if dtype not in INPUT_DTYPES:
        raise ModelFileError(f"{where}: {INPUT_DTYPE_KEY} = {dtype!r} is not accepted; "
                             f"accepted: {', '.join(INPUT_DTYPES)}")
    return dtype


def read_export(path: Path, precision: str | None = None, *, verify: bool = True):
    """(ModelSpec, stored precision) of a pyengine ONNX export; refuses other files, a
    ``precision`` other than the one the graph was exported at, and (``verify``) a graph
    that does not match its checksum (:func:`verify_graph`; a caller passing
    ``verify=False`` runs it itself before using the graph)."""
    from pyengine.models.spec import ModelSpec

    if not path.exists():
        raise ModelFileError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path}: an empty file (0 bytes), not an ONNX graph; {_ACCEPTED}")
    meta = onnx_metadata(path)
    if "pyengine" not in meta:
        raise ModelFileError(f"{path}: not a pyengine ONNX export (no pyengine "
                             "metadata); export models with pyengine export")
    stored = meta.get("pyengine_precision", "fp32")
    if precision is not None and precision != stored:
        raise ConfigError(f"{path} is a {stored} graph; --precision {precision} needs "
                          f"its own export (pyengine export MODEL --precision {precision})")
    spec = ModelSpec.from_json(meta["pyengine"], where=str(path))
    if verify:
        verify_graph(path, meta)
    return spec, stored


def _half_input(graph):
    """``graph`` behind a float16 input: its first op casts the cutouts to float32."""
    import torch

    class _HalfInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph = graph

        def forward(self, cutouts):
            return self.graph(cutouts.float())

    return _HalfInput().eval()


def export_onnx(model, path, *, precision: str = "fp32", input_dtype: str = "float32",
                opset: int = OPSET, batch: int = 2) -> Path:
    """Export ``model`` (ClusterClassifier, with .sha256 when loaded from a file) to ``path``,
    its input ``cutouts`` of ``input_dtype`` (float32, or float16 cast to float32 at once:
    see the module docstring)."""
    import torch

    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"ONNX precision {precision!r} is not accepted; accepted: "
                          f"{', '.join(ONNX_PRECISIONS)} (int8: pyengine export --precision int8)")
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"ONNX input dtype {input_dtype!r} is not accepted; accepted: "
                          f"{', '.join(INPUT_DTYPES)}")
    path = Path(path)
    spec = model.spec
    from pyengine.models.classifier import precision_graph

    graph = precision_graph(model, precision)
    dummy = torch.zeros(batch, spec.nband, spec.cutout_size, spec.cutout_size)
    if input_dtype == "float16":
        graph, dummy = _half_input(graph), dummy.half()
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

