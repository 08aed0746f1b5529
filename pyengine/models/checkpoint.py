"""Model files: one safetensors file holding the weights and the JSON ModelSpec.

Layout: a standard safetensors file (a little-endian u64 header length, a JSON
header, raw tensor bytes).  The header's ``__metadata__`` holds two keys:
``"pyengine"``, the :class:`ModelSpec` as JSON, and ``"pyengine_tensors_sha256"``,
the SHA-256 of the tensor data (every byte after the header), checked whenever the
weights are read (:func:`load_model`, and ``read_spec(path, verify=True)`` for
runners that export the file to ONNX without loading it in torch): a damaged file
raises :class:`~pyengine.errors.ModelFileError` instead of scoring garbage.  Files
written before the checksum existed load with a
:class:`~pyengine.errors.ModelFileWarning`.  safetensors writes its metadata map in
no fixed order, so :func:`save_model` lets safetensors lay out the tensors, then
writes the header itself with sorted keys: the same model gives the same bytes,
and so the same hash, on every save.  The weight storage shows in the tensor names:

* ``float32``: every tensor of the ResNet's state dict as stored in training;
  a save/load round trip is bit-exact.
* ``int8-per-channel``: each convolution and linear weight (ndim >= 2) is
  stored as int8 ``<name>.q8`` with a float32 per-output-channel scale
  ``<name>.scale`` (symmetric, scale = max|w| / 127); everything else stays
  float32.  Weights expand to float32 at load.  It is 3.7x smaller, for the
  model shipped inside the package; its metrics are measured after the round
  trip.

Nothing is unpickled: safetensors holds plain tensors, and ``read_spec`` parses
the header with the standard library (no torch needed to read the spec, so
ONNX Runtime scans can check a file's bands).  Every defect, such as a missing
or corrupt file, missing keys, wrong shapes or a foreign format, raises
:class:`~pyengine.errors.ModelFileError` naming the file.

Thread safety: loading builds new objects and may run concurrently; saving
writes a temporary file and renames it (atomic), one writer per path.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
from pathlib import Path

from pyengine.atomic import atomic_path
from pyengine.errors import ModelFileError, ModelFileWarning
from pyengine.hashing import (
    file_sha256,  # re-exported: its one home is pyengine.hashing
    stream_sha256,
)
from pyengine.models.spec import ModelSpec

__all__ = ["DEMO_MODEL", "TENSORS_SHA256_KEY", "WEIGHT_FORMATS", "file_sha256", "load_model",
           "read_spec", "save_model"]

DEMO_MODEL = Path(__file__).parent / "data" / "demo.safetensors"
WEIGHT_FORMATS = ("float32", "int8-per-channel")
#: The header metadata key holding the SHA-256 of the tensor data.
TENSORS_SHA256_KEY = "pyengine_tensors_sha256"
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_ACCEPTED = "accepted: a pyengine model file (safetensors, written by pyengine train)"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_header(path: Path) -> dict:
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a model file (only {size} bytes); {_ACCEPTED}")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(_MAX_HEADER, size - 8):
            raise ModelFileError(f"{path}: not a safetensors model file (header length "
                                 f"{length} does not fit a {size}-byte file); {_ACCEPTED}")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors header ({exc}); {_ACCEPTED}"
                             ) from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object); "
                             f"{_ACCEPTED}")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
               and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + length + end > size:
        raise ModelFileError(f"{path}: truncated model file: tensors need {8 + length + end} "
                             f"bytes, the file has {size}")
    return header


def read_spec(path, *, verify: bool = False) -> tuple[ModelSpec, str]:
    """The spec and weight storage format of a model file, without torch.

    ``verify``: also check the tensor data against the checksum in the header (reads
    the whole file): ``ModelFileError`` when they differ; a file written before the
    checksum existed passes with a :class:`~pyengine.errors.ModelFileWarning`.
    """
    path = Path(path)
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or "pyengine" not in meta:
        raise ModelFileError(f"{path}: a safetensors file without pyengine metadata; "
                             "not a pyengine model (import torchvision weights with "
                             "pyengine train --init-weights)")
    weights = "int8-per-channel" if any(k.endswith(".q8") for k in header) else "float32"
    spec = ModelSpec.from_json(meta["pyengine"], where=str(path))
    if verify:
        _verify_tensors(path, meta.get(TENSORS_SHA256_KEY))
    return spec, weights


def _verify_tensors(path: Path, stored) -> None:
    """Compare the SHA-256 of the tensor data (every byte after the header) with ``stored``."""
    if stored is None:
        warnings.warn(f"{path}: this model file has no checksum of its tensors (written "
                      "before pyengine stored one), so damage to its weights cannot be "
                      "detected; save it again with this pyengine (save_model(load_model("
                      "path), path)) to add one", ModelFileWarning, stacklevel=3)
        return
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + length)
            got = stream_sha256(fh)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror})") from None
    if not (isinstance(stored, str) and _SHA256.fullmatch(stored)):
        raise ModelFileError(f"{path}: its {TENSORS_SHA256_KEY} = {str(stored)[:80]!r} is not "
                             "a SHA-256 (64 hex digits): the file is damaged; copy it again "
                             "from where it came from, or save the model again")
    if got != stored:
        raise ModelFileError(f"{path}: the tensor data does not match its checksum (SHA-256 "
                             f"{got[:16]}..., stored {stored[:16]}...): the file is damaged; "
                             "copy it again from where it came from, or train it again")


def _quantize(weight):
    import torch

    flat = weight.reshape(weight.shape[0], -1).to(torch.float32)
    scale = flat.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def _dequantize(q, scale):
    import torch

    shape = (-1,) + (1,) * (q.ndim - 1)
    return q.to(torch.float32) * scale.reshape(shape).to(torch.float32)


def save_model(model, path, *, weights: str = "float32") -> Path:
    """Write ``model`` (a ClusterClassifier), its spec and the SHA-256 of its tensor data
    to ``path`` atomically; the same model gives the same bytes on every save."""
    from safetensors import SafetensorError
    from safetensors.torch import save

    if weights not in WEIGHT_FORMATS:
        raise ModelFileError(f"weights = {weights!r}; accepted: {', '.join(WEIGHT_FORMATS)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ModelFileError(f"{path}: cannot write the model: folder {path.parent} does not exist")
    tensors = {}
    for name, tensor in model.backbone.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        if weights == "int8-per-channel" and name.endswith(".weight") and tensor.ndim >= 2:
            tensors[f"{name}.q8"], tensors[f"{name}.scale"] = _quantize(tensor)
        else:
            tensors[name] = tensor
    try:
        blob = save(tensors, metadata={"pyengine": model.spec.to_json()})
        header, data = _with_checksum(blob)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(data)
    except (OSError, SafetensorError) as exc:
        raise ModelFileError(f"{path}: cannot write the model ({exc})") from None
    return path


def _with_checksum(blob: bytes) -> tuple[bytes, memoryview]:
    """(header, tensor data) of the safetensors file ``blob`` with the data's SHA-256
    added to its metadata.  The header is written here, metadata keys sorted, and
    padded with spaces to a multiple of 8 bytes as safetensors pads it, so the data
    keeps its alignment."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    stream = io.BytesIO(blob)
    stream.seek(8 + length)
    meta = {**header.get("__metadata__", {}), TENSORS_SHA256_KEY: stream_sha256(stream)}
    header["__metadata__"] = dict(sorted(meta.items()))
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, memoryview(blob)[8 + length :]


def load_model(path=None, *, device: str = "cpu"):
    """A ClusterClassifier in eval mode with ``.spec``, ``.weights``, ``.source``, ``.sha256``.

    With no path, the demo model shipped inside the package.  The tensor data is checked
    against its checksum first (see the module docstring).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pyengine.models.classifier import ClusterClassifier

    if path is None:
        path = DEMO_MODEL
        if not path.exists():
            raise ModelFileError(f"{path}: this build of pyengine ships no demo model; "
                                 "give a model file (pyengine train writes one)")
    path = Path(path)
    spec, weights = read_spec(path, verify=True)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{path}: corrupt model file ({exc})") from None
    state = {}
    for name, tensor in tensors.items():
        if name.endswith(".q8"):
            base = name[: -len(".q8")]
            if f"{base}.scale" not in tensors:
                raise ModelFileError(f"{path}: {name} has no {base}.scale")
            state[base] = _dequantize(tensor, tensors[f"{base}.scale"])
        elif not name.endswith(".scale"):
            state[name] = tensor
    model = ClusterClassifier(spec)
    want = model.backbone.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not fit its spec ({spec.architecture}, "
                             f"{spec.nband} bands, {spec.num_classes} classes): missing "
                             f"{missing[:4]}, unexpected {unexpected[:4]}")
    for name, tensor in state.items():
        if tensor.shape != want[name].shape:
            raise ModelFileError(f"{path}: {name} has shape {tuple(tensor.shape)}; its spec "
                                 f"needs {tuple(want[name].shape)}")
    model.backbone.load_state_dict(state, strict=True)
    model.eval().to(device)
    model.weights, model.source, model.sha256 = weights, path, file_sha256(path)
    return model
