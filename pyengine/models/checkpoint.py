"""Model files: one safetensors file holding the weights and the JSON ModelSpec.

Layout: a standard safetensors file (a little-endian u64 header length, a JSON
header, raw tensor bytes).  The header's ``__metadata__`` holds one key,
``"pyengine"``: the :class:`ModelSpec` as JSON.  (One key, because safetensors
writes its metadata map in no fixed order: two keys would make the same model's
bytes, and so its hash, vary between saves.)  The weight storage shows in the
tensor names:

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

import json
import struct
from pathlib import Path

from pyengine.atomic import atomic_path
from pyengine.errors import ModelFileError
from pyengine.hashing import file_sha256  # re-exported: its one home is pyengine.hashing
from pyengine.models.spec import ModelSpec

__all__ = ["DEMO_MODEL", "WEIGHT_FORMATS", "file_sha256", "load_model", "read_spec", "save_model"]

DEMO_MODEL = Path(__file__).parent / "data" / "demo.safetensors"
WEIGHT_FORMATS = ("float32", "int8-per-channel")
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def _read_header(path: Path) -> dict:
    if not path.exists():
        raise ModelFileError(f"{path}: no such model file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a model file (only {size} bytes; "
                                 "pyengine models are safetensors files)")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= min(_MAX_HEADER, size - 8):
            raise ModelFileError(f"{path}: not a safetensors model file (header length "
                                 f"{length} does not fit a {size}-byte file)")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
               and isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + length + end > size:
        raise ModelFileError(f"{path}: truncated model file: tensors need {8 + length + end} "
                             f"bytes, the file has {size}")
    return header


def read_spec(path) -> tuple[ModelSpec, str]:
    """The spec and weight storage format of a model file, without torch."""
    path = Path(path)
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if "pyengine" not in meta:
        raise ModelFileError(f"{path}: a safetensors file without pyengine metadata; "
                             "not a pyengine model (import torchvision weights with "
                             "pyengine train --init-weights)")
    weights = "int8-per-channel" if any(k.endswith(".q8") for k in header) else "float32"
    return ModelSpec.from_json(meta["pyengine"], where=str(path)), weights


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
    """Write ``model`` (a ClusterClassifier) and its spec to ``path`` atomically."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

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
    meta = {"pyengine": model.spec.to_json()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except (OSError, SafetensorError) as exc:
        raise ModelFileError(f"{path}: cannot write the model ({exc})") from None
    return path


def load_model(path=None, *, device: str = "cpu"):
    """A ClusterClassifier in eval mode with ``.spec``, ``.weights``, ``.source``, ``.sha256``.

    With no path, the demo model shipped inside the package.
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
    spec, weights = read_spec(path)
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
