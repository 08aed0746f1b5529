"""pyengine.hashing (file hashes) and the model identity built on it."""

import hashlib
import json
import os

import pytest

from pyengine.hashing import BLOCK, file_identity, file_sha256
from pyengine.runners.loaders import model_identity


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * BLOCK + 17)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_file_identity_hashes_the_two_ends_only(tmp_path):
    path = tmp_path / "band.fits"
    data = bytearray(os.urandom(4 * BLOCK))
    path.write_bytes(data)
    ident = file_identity(path)
    assert ident["path"] == str(path.resolve())
    assert ident["size"] == 4 * BLOCK and ident["mtime_ns"] == path.stat().st_mtime_ns
    assert ident["sha256_ends"] == hashlib.sha256(data[:BLOCK] + data[-BLOCK:]).hexdigest()
    # A change in the middle keeps the ends' hash (that is the price of being cheap);
    # a change at either end does not.
    st = path.stat()
    data[2 * BLOCK] ^= 0xFF
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_identity(path) == ident
    data[-1] ^= 0xFF
    path.write_bytes(data)
    assert file_identity(path)["sha256_ends"] != ident["sha256_ends"]
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    assert file_identity(small)["sha256_ends"] == hashlib.sha256(b"abc").hexdigest()


def test_model_identity_follows_the_source_model(tmp_path, model):
    from pyengine.export.onnx import export_onnx
    from pyengine.export.tensorrt import sidecar_path
    from pyengine.models.checkpoint import DEMO_MODEL, load_model, read_spec

    sha = file_sha256(model)
    assert model_identity(model) == sha
    assert model_identity(None) == file_sha256(DEMO_MODEL)
    onnx_path = export_onnx(load_model(model), tmp_path / "m.onnx")
    assert model_identity(onnx_path) == sha != file_sha256(onnx_path)
    # An export of a model not loaded from a file stores no hash: the graph's own.
    loose = load_model(model)
    loose.sha256 = ""
    plain = export_onnx(loose, tmp_path / "plain.onnx")
    assert model_identity(plain) == file_sha256(plain)
    # A TensorRT engine's sidecar carries the model hash; an older one without it
    # falls back to the engine file's hash.
    engine = tmp_path / "m-fp32-0123.engine"
    engine.write_bytes(b"not really an engine")
    side = {"precision": "fp32", "pyengine": read_spec(model)[0].to_json()}
    sidecar_path(engine).write_text(json.dumps({**side, "model_sha256": sha}))
    assert model_identity(engine) == sha
    sidecar_path(engine).write_text(json.dumps(side))
    assert model_identity(engine) == file_sha256(engine)


def test_model_identity_of_a_missing_file_is_a_user_error(tmp_path):
    from pyengine.errors import PyEngineError

    with pytest.raises((PyEngineError, FileNotFoundError), match=r"nope\.onnx"):
        model_identity(tmp_path / "nope.onnx")
