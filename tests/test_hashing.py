"""pyengine.hashing (file hashes) and the model identity built on it."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from pyengine.hashing import (
    BLOCK,
    SAMPLE,
    SAMPLES,
    WHOLE,
    file_identity,
    file_sha256,
    sample_offsets,
)
from pyengine.runners.loaders import model_identity


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * BLOCK + 17)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def _sampled(data: bytes) -> str:
    h = hashlib.sha256()
    for offset, length in sample_offsets(len(data)):
        h.update(data[offset : offset + length])
    return h.hexdigest()


def test_sample_offsets_cover_the_ends_and_spread_evenly():
    assert sample_offsets(WHOLE) == [(0, WHOLE)] and sample_offsets(0) == [(0, 0)]
    size = 22 * 10**9 + 7  # a 22 GB band: 6 MiB read at fixed offsets
    ranges = sample_offsets(size)
    assert len(ranges) == SAMPLES + 2 and ranges[0] == (0, BLOCK)
    assert ranges[-1] == (size - BLOCK, BLOCK)
    assert ranges[1] == (BLOCK, SAMPLE) and ranges[-2][0] + SAMPLE == size - BLOCK
    starts = [o for o, _ in ranges[1:-1]]
    gaps = np.diff(starts)
    assert gaps.min() >= SAMPLE and gaps.max() - gaps.min() <= 1  # evenly, no overlap
    assert sum(n for _, n in ranges) == 2 * BLOCK + SAMPLES * SAMPLE
    assert sample_offsets(size) == ranges  # deterministic


def test_file_identity_is_content_only(tmp_path):
    """Size and sampled bytes: a copy with a new mtime and another path is the same file;
    other bytes at a sampled offset or at either end are not (a change between samples
    is the price of reading 6 MiB of a 22 GB file)."""
    path = tmp_path / "band.fits"
    data = bytearray(os.urandom(WHOLE + 5 * BLOCK + 3))
    path.write_bytes(data)
    ident = file_identity(path)
    assert ident == {"size": len(data), "sha256_sampled": _sampled(data)}
    copy = tmp_path / "elsewhere" / "copy.fits"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    os.utime(copy, ns=(0, 10**18))
    assert file_identity(copy) == ident
    ranges = sample_offsets(len(data))
    for at in (0, ranges[SAMPLES // 2][0] + 7, len(data) - 1):  # start, a middle sample, end
        changed = bytearray(data)
        changed[at] ^= 0xFF
        copy.write_bytes(changed)
        assert file_identity(copy) != ident, at
    between = ranges[SAMPLES // 2][0] + SAMPLE + 1  # not sampled
    changed = bytearray(data)
    changed[between] ^= 0xFF
    copy.write_bytes(changed)
    assert file_identity(copy) == ident
    assert file_identity(copy)["size"] == len(data)
    copy.write_bytes(data[:-1])
    assert file_identity(copy) != ident
    small = tmp_path / "small"
    small.write_bytes(b"abc")
    assert file_identity(small) == {"size": 3, "sha256_sampled": hashlib.sha256(b"abc").hexdigest()}


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
