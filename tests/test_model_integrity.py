"""Damaged, foreign and pre-checksum model files: refused in one line, or run with a warning.

Model files (safetensors) carry the SHA-256 of their tensor data, ONNX exports that of
their graph (weights included), TensorRT engine sidecars that of the engine.  A file
whose bytes no longer match is refused before anything is scanned or exported (one
``Error: ...`` line, no catalog, no export); a file written before the checksum existed
runs, with one ``Warning: ...`` line.  Garbage under a model's name (random bytes, an
empty or truncated file, text) is one line naming the file and what is accepted, never
a protobuf or ONNX Runtime traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ModelFileError, ModelFileWarning
from pyengine.hashing import file_sha256

#: CLI exit status of a user error (one ``Error: ...`` line; pyengine.cli).
USER_ERROR = 1
FLIPS = 2000  # bytes flipped, as in the report (39 false candidates of 40, exit 0)


def _cli(args, cache):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    # catch_exceptions=False: a traceback escaping the CLI fails the test as such.
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def _scan(field, catalog, model, out, cache, *extra):
    return _cli(["scan", *field["paths"], "--catalog", catalog, "--model", model, "-q",
                 "-o", out, *extra], cache)


def _one_error_line(res, start: str) -> str:
    """The only line of a failed command: ``Error: START...``."""
    assert res.exit_code == USER_ERROR, res.output
    assert "Traceback" not in res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"Error: {start}"), lines[0]
    return lines[0]


def _flip(path, start: int, stop: int, *, count: int = FLIPS, seed: int = 0) -> None:
    """Invert ``count`` distinct bytes of ``path`` between offsets ``start`` and ``stop``."""
    raw = bytearray(path.read_bytes())
    where = np.random.default_rng(seed).choice(np.arange(start, stop), count, replace=False)
    for i in where:
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _tensor_data_start(path) -> int:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + length


def _weights_span(path) -> tuple[int, int]:
    """Offsets of the largest initializer's raw weight bytes inside an ONNX file."""
    import onnx

    proto = onnx.load(str(path))
    raw = max((t.raw_data for t in proto.graph.initializer), key=len)
    start = path.read_bytes().find(raw)
    assert start > 0 and len(raw) > 4 * FLIPS
    return start, start + len(raw)


def _legacy_copy(model, path):
    """``model`` saved as pyengine wrote model files before the checksum: safetensors'
    own writer with the spec as the only metadata."""
    from safetensors.torch import save_file

    from pyengine.models.checkpoint import load_model

    net = load_model(model)
    save_file({k: v.contiguous() for k, v in net.backbone.state_dict().items()}, str(path),
              metadata={"pyengine": net.spec.to_json()})
    return path


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The session model exported to fp32 ONNX (with its graph checksum)."""
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import load_model

    return export_onnx(load_model(model), tmp_path_factory.mktemp("onnx") / "m.onnx")


# -- safetensors model files ----------------------------------------------------------------

def test_flipped_tensor_bytes_fail_the_scan_in_one_line(field, catalog, model, tmp_path):
    bad = tmp_path / "bad.safetensors"
    shutil.copy(model, bad)
    _flip(bad, _tensor_data_start(bad), bad.stat().st_size)
    for runner in ("onnxruntime", "torch"):
        out = tmp_path / f"{runner}.fits"
        res = _scan(field, catalog, bad, out, tmp_path / "xdg", "--runner", runner)
        line = _one_error_line(res, f"{bad}: the tensor data does not match its checksum "
                                    "(SHA-256 ")
        assert line.endswith("the file is damaged; copy it again from where it came from, or "
                             "train it again"), line
        assert not out.exists()
    assert not (tmp_path / "xdg").exists() or not list((tmp_path / "xdg").rglob("*.onnx"))
    from pyengine.models.checkpoint import load_model

    with pytest.raises(ModelFileError, match="does not match its checksum"):
        load_model(bad)


def test_export_refuses_a_damaged_model_file(model, tmp_path):
    bad = tmp_path / "bad.safetensors"
    shutil.copy(model, bad)
    _flip(bad, _tensor_data_start(bad), bad.stat().st_size, seed=1)
    res = _cli(["export", bad, "--cutouts", "16"], tmp_path / "xdg")
    _one_error_line(res, f"{bad}: the tensor data does not match its checksum")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_model_files_are_saved_with_their_checksum_deterministically(model, tmp_path):
    """Two metadata keys, yet the same bytes on every save (safetensors orders its metadata
    map at random: the header is written by pyengine, keys sorted)."""
    from pyengine.models.checkpoint import TENSORS_SHA256_KEY, load_model, save_model

    raw = model.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    assert list(header["__metadata__"]) == ["pyengine", TENSORS_SHA256_KEY]
    assert (8 + length) % 8 == 0  # the tensor data stays 8-byte aligned
    net = load_model(model)
    for i in range(3):
        assert save_model(net, tmp_path / f"{i}.safetensors").read_bytes() == raw


def test_shipped_demo_model_carries_its_checksum():
    from pyengine.models.checkpoint import DEMO_MODEL, TENSORS_SHA256_KEY, read_spec

    raw = DEMO_MODEL.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + length])["__metadata__"]
    import hashlib

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ModelFileWarning
        read_spec(DEMO_MODEL, verify=True)
    assert meta[TENSORS_SHA256_KEY] == hashlib.sha256(raw[8 + length :]).hexdigest()


def test_legacy_model_file_scans_with_one_warning(field, catalog, model, tmp_path):
    from pyengine.models.checkpoint import load_model

    old = _legacy_copy(model, tmp_path / "old.safetensors")
    out = tmp_path / "c.fits"
    res = _scan(field, catalog, old, out, tmp_path / "xdg")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert warned == [f"Warning: {old}: this model file has no checksum of its tensors "
                      "(written before pyengine stored one), so damage to its weights cannot "
                      "be detected; save it again with this pyengine (save_model(load_model("
                      "path), path)) to add one"], res.stderr
    assert out.exists()
    with pytest.warns(ModelFileWarning, match="no checksum of its tensors"):
        load_model(old)


# -- ONNX exports ---------------------------------------------------------------------------

def test_onnx_with_flipped_weight_bytes_fails_the_scan(field, catalog, exported, tmp_path):
    bad = tmp_path / "bad.onnx"
    shutil.copy(exported, bad)
    _flip(bad, *_weights_span(bad))
    out = tmp_path / "c.fits"
    res = _scan(field, catalog, bad, out, tmp_path / "xdg")
    line = _one_error_line(res, f"{bad}: the graph's weights do not match their checksum "
                                "(SHA-256 ")
    assert line.endswith("the file is damaged; export it again (pyengine export MODEL)"), line
    assert not out.exists()


def test_int8_exports_carry_the_checksum_and_refuse_altered_weights(exported, tmp_path):
    """int8 QDQ graphs get their checksum from the same writer (finish_onnx); a damaged
    fp32 graph is not quantised into a freshly checksummed int8 one."""
    import onnx

    from pyengine.export.quantize import quantize_int8
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    rng = np.random.default_rng(0)
    cutouts = rng.normal(1000.0, 10.0, (8, 2, 32, 32)).astype(np.float32)
    int8 = quantize_int8(exported, tmp_path / "m8.onnx", cutouts)
    OnnxRuntimeRunner(int8).activate().deactivate()  # intact: accepted

    proto = onnx.load(str(int8))
    q = max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8),
            key=lambda t: len(t.raw_data)).raw_data
    start = int8.read_bytes().find(q)
    _flip(int8, start, start + len(q), count=len(q) // 4)
    runner = OnnxRuntimeRunner(int8)  # reads the spec; the weights are checked on activation
    with pytest.raises(ModelFileError, match=r"m8\.onnx: the graph's weights do not match"):
        runner.activate()
    bad = tmp_path / "bad.onnx"
    shutil.copy(exported, bad)
    _flip(bad, *_weights_span(bad))
    with pytest.raises(ModelFileError, match=r"bad\.onnx: the graph's weights do not match"):
        quantize_int8(bad, tmp_path / "b8.onnx", cutouts)
    assert not (tmp_path / "b8.onnx").exists()
    from pyengine.export.onnx import GRAPH_SHA256_KEY, graph_sha256, onnx_metadata

    good = quantize_int8(exported, tmp_path / "g8.onnx", cutouts)
    assert onnx_metadata(good)[GRAPH_SHA256_KEY] == graph_sha256(good)


def _strip_checksum(src, dst):
    """``src`` as pyengine exported ONNX before the graph checksum existed."""
    import onnx

    proto = onnx.load(str(src))
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != "pyengine_graph_sha256"]
    del proto.metadata_props[:]
    for key, value in keep:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(dst))
    return dst


def test_legacy_onnx_scans_with_one_warning(field, catalog, exported, tmp_path):
    old = _strip_checksum(exported, tmp_path / "old.onnx")
    out = tmp_path / "c.fits"
    res = _scan(field, catalog, old, out, tmp_path / "xdg")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert warned == [f"Warning: {old}: this ONNX export has no checksum of its graph (made "
                      "before pyengine stored one), so damage to its weights cannot be "
                      "detected; export it again with pyengine export to add one"], res.stderr
    assert out.exists()


def test_onnx_runtime_load_errors_are_one_line(field, catalog, exported, tmp_path):
    """A legacy export (no checksum) whose graph bytes are garbage passes the wire-format
    metadata read; ONNX Runtime's InvalidProtobuf becomes one line, after the warning."""
    import onnx

    old = _strip_checksum(exported, tmp_path / "old.onnx")
    raw = bytearray(old.read_bytes())
    # Wreck the graph's structure (its nodes, from the first one on), keeping its framing.
    first = raw.find(onnx.load(str(old)).graph.node[0].SerializeToString())
    assert 0 < first and first + 4000 < _weights_span(old)[0]
    raw[first : first + 4000] = np.random.default_rng(3).integers(0, 256, 4000,
                                                                  dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(raw))
    out = tmp_path / "c.fits"
    res = _scan(field, catalog, bad, out, tmp_path / "xdg")
    assert res.exit_code == USER_ERROR, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(f"Warning: {bad}: this ONNX export has no checksum"), lines
    assert len(lines) == 2 and lines[1].startswith(f"Error: {bad}: "), lines
    assert "accepted: an ONNX graph written by pyengine export" in lines[1]
    assert not out.exists()


def _garbage(kind, tmp_path, exported):
    rng = np.random.default_rng(7)
    if kind == "random.onnx":
        data = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    elif kind == "empty.onnx":
        data = b""
    elif kind == "truncated.onnx":
        data = exported.read_bytes()[:50000]
    elif kind == "random.safetensors":
        data = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    else:  # text.safetensors
        data = b"these are not the weights you are looking for\n" * 20
    path = tmp_path / kind
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["random.onnx", "empty.onnx", "truncated.onnx",
                                  "random.safetensors", "text.safetensors"])
def test_garbage_model_files_are_one_line_naming_what_is_accepted(kind, field, catalog,
                                                                  exported, tmp_path):
    path = _garbage(kind, tmp_path, exported)
    out = tmp_path / "c.fits"
    line = _one_error_line(_scan(field, catalog, path, out, tmp_path / "xdg"), f"{path}: ")
    want = ("accepted: an ONNX graph written by pyengine export" if kind.endswith(".onnx")
            else "accepted: a pyengine model file (safetensors, written by pyengine train)")
    assert want in line, line
    assert not out.exists()
    line = _one_error_line(_cli(["export", path, "--cutouts", "16"], tmp_path / "xdg"),
                           f"{path}: ")
    assert "accepted: a pyengine model file" in line, line  # export takes model files only
    assert sorted(p.name for p in tmp_path.iterdir()) == [kind]


# -- the cached export of a model file ------------------------------------------------------

def _cutouts(n=6):
    return np.random.default_rng(1).normal(1000.0, 10.0, (n, 2, 32, 32)).astype(np.float32)


def test_damaged_or_foreign_cached_exports_are_exported_again(model, tmp_path):
    """The cache entry is named by the model file's SHA-256; a damaged entry there, or
    another model's graph under that name, is replaced, never run."""
    from pyengine.export.onnx import onnx_metadata
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    cache = tmp_path / "cache"
    with OnnxRuntimeRunner(model, cache_dir=cache) as runner:
        cached, want = runner.onnx_file(), runner.infer(_cutouts())
    assert cached.name.startswith(file_sha256(model)[:32])
    good = cached.read_bytes()
    _flip(cached, *_weights_span(cached))
    with OnnxRuntimeRunner(model, cache_dir=cache) as runner:
        np.testing.assert_array_equal(runner.infer(_cutouts()), want)
    assert cached.read_bytes() == good  # the export is deterministic
    # Another model's export under this model's cache name (a copied cache, a bug):
    from tests.scanfield import make_model

    other = make_model(tmp_path / "other.safetensors", seed=5)
    with OnnxRuntimeRunner(other, cache_dir=cache) as runner:
        other_cached, other_scores = runner.onnx_file(), runner.infer(_cutouts())
    assert other_cached != cached
    shutil.copy(other_cached, cached)
    with OnnxRuntimeRunner(model, cache_dir=cache) as runner:
        np.testing.assert_array_equal(runner.infer(_cutouts()), want)
    assert not np.array_equal(other_scores, want)
    assert onnx_metadata(cached)["pyengine_model_sha256"] == file_sha256(model)


# -- TensorRT engines (the checks are plain Python; TensorRT is faked) -------------------------

GPU = ("NVIDIA H100 80GB HBM3", "9.0", "12.8")


def test_engine_sidecar_carries_the_engine_hash_checked_before_deserializing(tmp_path,
                                                                             exported):
    import hashlib

    from pyengine.export.tensorrt import build_engine, sidecar_path
    from tests.test_tensorrt_runner import fake_tensorrt

    trt = fake_tensorrt()
    engine = build_engine(exported, tmp_path, batch=(1, 8, 16), trt=trt, identity=GPU)
    side = json.loads(sidecar_path(engine).read_text())
    assert side["engine_sha256"] == hashlib.sha256(b"ENGINE").hexdigest()
    engine.write_bytes(b"ENGINX")  # one byte changed on disk
    # The cache never hands the damaged engine out again: it is built anew.
    assert build_engine(exported, tmp_path, batch=(1, 8, 16), trt=trt, identity=GPU) == engine
    assert engine.read_bytes() == b"ENGINE" and trt.calls.count(("build",)) == 2
    # The runner reads an engine through read_engine, before TensorRT deserializes it.
    from pyengine.export.tensorrt import read_engine

    assert read_engine(engine) == b"ENGINE"
    engine.write_bytes(b"ENGINX")
    with pytest.raises(ModelFileError, match=r"\.engine: the engine does not match its checksum "
                                             r"in .*\.json \(SHA-256 .*the file is damaged"):
        read_engine(engine)
    engine.write_bytes(b"ENGINE")
    # A sidecar of an older pyengine (no engine_sha256): the engine runs, with a warning.
    del side["engine_sha256"]
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.warns(ModelFileWarning, match=r"has no engine_sha256 \(written by an older "):
        assert read_engine(engine) == b"ENGINE"
