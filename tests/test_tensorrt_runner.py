"""The GPU runners' CPU-testable parts: TensorRT against a fake ``tensorrt`` module, and
the CUDA feeding (CudaFeed) of both GPU runners on a CPU stand-in for ``torch.cuda``.

TensorRT cannot be installed here and no GPU is present: these tests cover what
surrounds the TensorRT calls (engine I/O checks against the model spec, profile
choice, engine files and their sidecars, batch sizes, precision rules, auto's
choice, and the errors when tensorrt or CUDA is missing), and the bookkeeping of
slots, staging, rings, padding and casts with streams and events as no-ops (so
not their concurrency).  The GPU path itself is in tests/test_runners_gpu.py.
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pyengine.errors import ConfigError, ModelFileError, RunnerUnavailable
from pyengine.export.onnx import set_metadata
from pyengine.export.tensorrt import build_engine, engine_metadata, read_engine, sidecar_path
from pyengine.models.checkpoint import save_model
from pyengine.models.classifier import INPUT_NAME, ClusterClassifier
from pyengine.models.spec import ModelSpec, PreprocessSpec
from pyengine.runners import make_runner
from pyengine.runners.base import GPU_BATCH
from pyengine.runners.probe import available_runners
from pyengine.runners.tensorrt import (
    DEFAULT_PROFILE,
    TensorInfo,
    TensorRTRunner,
    check_engine_io,
    choose_profile,
    open_engine,
)
from pyengine.runners.torch import CudaFeed, TorchRunner

SPEC = ModelSpec(cutout_size=32)
GPU = ("NVIDIA H100 80GB HBM3", "9.0", "12.8")


# -- a fake tensorrt: enough of the runtime and builder API ----------------------------------
class _DataType:
    FLOAT, HALF, INT8, INT32, BOOL = "dt.float", "dt.half", "dt.int8", "dt.int32", "dt.bool"


class _Mode:
    INPUT, OUTPUT = "mode.input", "mode.output"


class _Engine:
    def __init__(self, tensors, profiles):
        self.tensors = tensors  # name -> (mode, shape, dtype)
        self.profiles = profiles  # [(lo, opt, hi)] of the input's batch
        self.num_io_tensors = len(tensors)
        self.num_optimization_profiles = len(profiles)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_shape(self, name):
        return list(self.tensors[name][1])

    def get_tensor_dtype(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, index):
        assert name == INPUT_NAME
        return [[b, 2, 32, 32] for b in self.profiles[index]]

    def create_execution_context(self):
        return types.SimpleNamespace(engine=self)


def _tensors(*, bands=2, size=32, input_dtype=_DataType.FLOAT, score_dtype=_DataType.FLOAT,
             classes=2, names=("cutouts", "probabilities", "score"), batch=-1):
    x, p, s = names
    return {x: (_Mode.INPUT, (batch, bands, size, size), input_dtype),
            p: (_Mode.OUTPUT, (batch, classes), _DataType.FLOAT),
            s: (_Mode.OUTPUT, (batch,), score_dtype)}


def fake_tensorrt(version="10.13.0", engine=None):
    """A module standing in for ``tensorrt``: Runtime deserializes to ``engine``; the
    builder writes b"ENGINE"."""
    calls = []

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize", bytes(data)))
            return engine

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None,
                                         set_flag=lambda f: calls.append(("set_flag", f)),
                                         clear_flag=lambda f: calls.append(("clear_flag", f)),
                                         add_optimization_profile=lambda p: None)

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda name, *s: calls.append(("shape", s)))

        def build_serialized_network(self, network, config):
            calls.append(("build",))
            return b"ENGINE"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.calls = calls
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    module.Runtime, module.Builder, module.OnnxParser = Runtime, Builder, Parser
    module.DataType, module.TensorIOMode = _DataType, _Mode
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    module.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    return module


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_trt(monkeypatch, no_cuda):
    module = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(2)
    return save_model(ClusterClassifier(SPEC).eval(),
                      tmp_path_factory.mktemp("m") / "m.safetensors")


def _onnx_file(path, precision="fp16", spec=SPEC, input_type=TensorProto.FLOAT):
    """A tiny ONNX file with pyengine's metadata (the graph itself is never run here)."""
    x = helper.make_tensor_value_info(INPUT_NAME, input_type, ["batch", 2, 32, 32])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 2, 32, 32])
    graph = helper.make_graph([helper.make_node("Identity", [INPUT_NAME], ["score"])], "g", [x],
                              [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_metadata(proto, spec.to_json(), "0" * 64, precision)
    onnx.save(proto, str(path))
    return path


# -- pure parts ---------------------------------------------------------------------------
def _io(tensors):
    return [TensorInfo(n, m == _Mode.INPUT, s, {"dt.float": "float32", "dt.half": "float16"}
                       .get(d, d)) for n, (m, s, d) in tensors.items()]


def test_check_engine_io_against_the_spec():
    assert check_engine_io(_io(_tensors()), SPEC, "e") == np.float32
    assert check_engine_io(_io(_tensors(input_dtype=_DataType.HALF)), SPEC, "e") == np.float16
    assert check_engine_io(_io(_tensors(batch=64)), SPEC, "e") == np.float32
    cases = [
        (_tensors(bands=3), r"e: engine input 'cutouts' is \(batch, 3, 32, 32\); the model "
                            r"\(bands g, i, 32 px cutouts\) needs \(batch, 2, 32, 32\)"),
        (_tensors(size=64), r"is \(batch, 2, 64, 64\); the model .* needs \(batch, 2, 32, 32\)"),
        (_tensors(names=("x", "probabilities", "score")),
         r"the engine's inputs are \['x'\]; a pyengine engine has one input 'cutouts'"),
        (_tensors(names=("cutouts", "probs", "score")),
         r"the engine's outputs are \['probs', 'score'\]; a pyengine engine has "
         r"\['probabilities', 'score'\]"),
        (_tensors(score_dtype=_DataType.HALF),
         r"engine output 'score' is float16 \(batch,\); the model needs float32 \(batch,\)"),
        (_tensors(classes=5), r"engine output 'probabilities' is float32 \(batch, 5\); the "
                              r"model needs float32 \(batch, 2\)"),
        (_tensors(input_dtype=_DataType.INT8), r"engine input 'cutouts' is dt.int8; accepted: "
                                               r"float32, float16"),
    ]
    for tensors, message in cases:
        with pytest.raises(ModelFileError, match=message):
            check_engine_io(_io(tensors), SPEC, "e")


def test_choose_profile():
    profiles = [(1, 64, 128), (1, 256, 1024), (512, 2048, 4096)]
    assert choose_profile(profiles, None, "e") == (2, (512, 2048, 4096))  # the largest optimum
    assert choose_profile(profiles, 64, "e") == (0, (1, 64, 128))
    assert choose_profile(profiles, 100, "e") == (0, (1, 64, 128))
    assert choose_profile(profiles, 200, "e") == (1, (1, 256, 1024))
    assert choose_profile(profiles, 1024, "e") == (1, (1, 256, 1024))  # nearer than 2048
    assert choose_profile(profiles, 1500, "e") == (2, (512, 2048, 4096))
    assert choose_profile([(1, 8, 8), (1, 8, 8)], 8, "e") == (0, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"e: batch size 5000 is outside the engine's "
                                          r"optimisation profiles; accepted: 1..128, 1..1024, "
                                          r"512..4096 \(or build"):
        choose_profile(profiles, 5000, "e")
    with pytest.raises(ModelFileError, match="no optimisation profile"):
        choose_profile([], 8, "e")


def test_open_engine_with_a_fake_runtime():
    engine = _Engine(_tensors(input_dtype=_DataType.HALF), [(1, 64, 128), (1, 256, 1024)])
    trt = fake_tensorrt(engine=engine)
    plan = open_engine(trt, b"bytes", SPEC, 200, "m.engine")
    assert trt.calls == [("deserialize", b"bytes")]
    assert plan.input_dtype == np.float16
    assert (plan.profile, plan.batches) == (1, (1, 256, 1024))
    assert plan.context.engine is engine
    plan.release()
    assert plan.context is None and plan.engine is None
    static = _Engine(_tensors(batch=16), [])
    assert open_engine(fake_tensorrt(engine=static), b"", SPEC, None, "e").batches == (16, 16, 16)
    with pytest.raises(ConfigError, match="batch size 8 is outside"):
        open_engine(fake_tensorrt(engine=static), b"", SPEC, 8, "e")
    with pytest.raises(ModelFileError, match=r"m.engine: TensorRT 11.1.0 cannot deserialize this "
                                             r"engine \(built by another TensorRT version"):
        open_engine(fake_tensorrt("11.1.0", engine=None), b"", SPEC, None, "m.engine")
    wrong = _Engine(_tensors(bands=1), [(1, 8, 8)])
    with pytest.raises(ModelFileError, match=r"needs \(batch, 2, 32, 32\)"):
        open_engine(fake_tensorrt(engine=wrong), b"", SPEC, None, "e")


# -- the runner around them -------------------------------------------------------------------
def test_missing_tensorrt_or_cuda_is_one_line_naming_the_others(monkeypatch, model_file, no_cuda):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RunnerUnavailable, match=r"^tensorrt runner: the tensorrt package is not "
                                                r"installed \(.*\); available runners: "
                                                r"onnxruntime, torch$"):
        make_runner("tensorrt", model_file)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    problem = available_runners()["tensorrt"]
    assert "CUDA" in problem and "keeps its buffers in torch CUDA memory" in problem
    with pytest.raises(RunnerUnavailable, match=r"^tensorrt runner: .*CUDA.*; available runners: "
                                                r"onnxruntime, torch$"):
        make_runner("tensorrt", model_file)
    runner = TensorRTRunner(model_file)  # constructing needs neither
    with pytest.raises(RunnerUnavailable, match=r"^tensorrt runner: .*CUDA.*; available runners"):
        runner.activate()
    assert not runner.active


def test_auto_chooses_by_what_is_there(monkeypatch, model_file, fake_trt):
    runner = make_runner("auto", model_file)
    assert runner.name == "onnxruntime"
    assert runner.chosen_because.startswith("no CUDA GPU (")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend: nothing runs
    runner = make_runner("auto", model_file, batch_size=128)
    assert runner.name == "tensorrt"
    assert runner.chosen_because == "tensorrt is importable and a CUDA GPU is present"
    assert (runner.preferred_batch_size, runner.max_batch_size) == (128, 128)
    assert make_runner("auto", model_file, device="cpu").name == "onnxruntime"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    runner = make_runner("auto", model_file, precision="fp16")
    assert (runner.name, runner.precision) == ("torch", "fp16")
    assert runner.chosen_because.startswith("torch has CUDA (tensorrt: the tensorrt package")
    assert runner.input_dtype == np.float16 and runner.preferred_batch_size == GPU_BATCH
    with pytest.raises(RunnerUnavailable, match="calibrated on real cutouts"):
        make_runner("auto", model_file, precision="int8")  # ONNX Runtime: needs the QDQ export


def test_runner_takes_onnx_model_and_engine_files(tmp_path, model_file, fake_trt):
    onnx_path = _onnx_file(tmp_path / "m16.onnx")
    runner = TensorRTRunner(onnx_path, cache_dir=tmp_path / "cache")
    assert runner.precision == "fp16" and runner.spec == SPEC
    assert runner.preferred_batch_size == DEFAULT_PROFILE[1]
    assert runner.max_batch_size == DEFAULT_PROFILE[2]
    assert runner.input_dtype == np.float32  # the engine's own dtype is known once active
    with pytest.raises(ConfigError, match="is a fp16 graph; --precision int8 needs its own export"):
        TensorRTRunner(onnx_path, precision="int8")
    with pytest.raises(RunnerUnavailable, match="calibrated on real cutouts"):
        TensorRTRunner(model_file, precision="int8")
    runner = TensorRTRunner(model_file, precision="fp16", batch_size=64, cache_dir=tmp_path)
    assert runner._onnx.name.endswith("-fp16-float16.onnx") and runner._onnx.parent == tmp_path
    assert (runner.preferred_batch_size, runner.max_batch_size) == (64, 64)
    assert runner._build == (1, 64, 64)

    engine = build_engine(onnx_path, tmp_path / "engines", batch=(1, 128, 512), trt=fake_trt,
                          identity=GPU)
    meta = engine_metadata(engine)
    assert meta["spec"] == SPEC and meta["precision"] == "fp16"
    runner = TensorRTRunner(engine)
    assert (runner.spec, runner.precision) == (SPEC, "fp16")
    assert (runner.preferred_batch_size, runner.max_batch_size) == (128, 512)
    with pytest.raises(ConfigError, match="is a fp16 engine; --precision fp32 needs its own"):
        TensorRTRunner(engine, precision="fp32")
    engine.with_suffix(".json").unlink()
    with pytest.raises(ModelFileError, match=r"m16-fp16-.*\.engine: no m16-fp16-.*\.json beside "
                                             r"it \(the model spec pyengine writes"):
        TensorRTRunner(engine)
    again = build_engine(onnx_path, tmp_path / "engines", batch=(1, 128, 512), trt=fake_trt,
                         identity=GPU)  # the cache hit writes a missing sidecar back
    assert again == engine and engine_metadata(engine)["spec"] == SPEC
    assert sum(c == ("build",) for c in fake_trt.calls) == 1
    with pytest.raises(ModelFileError, match="no such TensorRT engine file"):
        TensorRTRunner(tmp_path / "none.engine")
    with pytest.raises(ConfigError, match="device 'cpu' is not accepted by the tensorrt runner"):
        TensorRTRunner(onnx_path, device="cpu")
    with pytest.raises(ConfigError, match="precision 'bf16' is not available with the tensorrt"):
        TensorRTRunner(onnx_path, precision="bf16")


def test_input_dtype_before_activation_is_the_one_the_engine_will_have(tmp_path, model_file,
                                                                        fake_trt):
    """An .onnx: its metadata's; an engine: its sidecar's (float32 when the key is missing);
    a model file: float16 at fp16 (an affine-invariant model), float32 otherwise."""
    import json

    half_onnx = _onnx_file(tmp_path / "h.onnx", input_type=TensorProto.FLOAT16)
    full_onnx = _onnx_file(tmp_path / "f.onnx")
    assert TensorRTRunner(half_onnx).input_dtype == np.float16
    assert TensorRTRunner(full_onnx).input_dtype == np.float32

    half = build_engine(half_onnx, tmp_path / "e", trt=fake_trt, identity=GPU)
    full = build_engine(full_onnx, tmp_path / "e", trt=fake_trt, identity=GPU)
    assert half != full
    assert TensorRTRunner(half).input_dtype == np.float16
    assert TensorRTRunner(full).input_dtype == np.float32
    side = sidecar_path(half)
    data = json.loads(side.read_text())
    assert data["input_dtype"] == "float16"
    del data["input_dtype"]  # a sidecar of an older pyengine
    side.write_text(json.dumps(data))
    assert TensorRTRunner(half).input_dtype == np.float32

    cache = tmp_path / "cache"
    fp16 = TensorRTRunner(model_file, precision="fp16", cache_dir=cache)
    assert fp16.input_dtype == np.float16 and fp16._onnx.name.endswith("-fp16-float16.onnx")
    fp32 = TensorRTRunner(model_file, precision="fp32", cache_dir=cache)
    assert fp32.input_dtype == np.float32 and fp32._onnx.name.endswith("-fp32-float32.onnx")
    assert TensorRTRunner(model_file, cache_dir=cache).input_dtype == np.float32
    # No sky/noise normalisation in the graph: the scan sends float32, so the engine takes it.
    raw = ModelSpec(cutout_size=32, preprocess=PreprocessSpec(background="none", scale="none"))
    torch.manual_seed(3)
    raw_file = save_model(ClusterClassifier(raw).eval(), tmp_path / "raw.safetensors")
    assert TensorRTRunner(raw_file, precision="fp16", cache_dir=cache).input_dtype == np.float32


def test_engine_whose_input_dtype_differs_from_its_sidecar_is_refused(tmp_path):
    """The runner's activation opens the engine with its sidecar's input_dtype
    (open_engine(..., engine_metadata(path)["input_dtype"])): a half-input engine beside a
    sidecar saying float32 is a one-line ModelFileError; matching ones open."""
    half_engine = _Engine(_tensors(input_dtype=_DataType.HALF), [(1, 8, 8)])
    trt = fake_tensorrt(engine=half_engine)
    full = build_engine(_onnx_file(tmp_path / "f.onnx"), tmp_path / "e", trt=trt, identity=GPU)
    half = build_engine(_onnx_file(tmp_path / "h.onnx", input_type=TensorProto.FLOAT16),
                        tmp_path / "e", trt=trt, identity=GPU)
    declared = engine_metadata(full)["input_dtype"]
    assert declared == "float32"
    with pytest.raises(ModelFileError, match=r"^.*f-fp16-.*\.engine: the engine's input "
                                             r"'cutouts' is float16, but its sidecar says "
                                             r"float32: they do not belong together; delete "
                                             r"both and build the engine again \(pyengine "
                                             r"export MODEL --format tensorrt\)$"):
        open_engine(trt, read_engine(full), SPEC, None, full, declared)
    plan = open_engine(trt, read_engine(half), SPEC, None, half,
                       engine_metadata(half)["input_dtype"])
    assert plan.input_dtype == np.float16
    full_engine = _Engine(_tensors(), [(1, 8, 8)])
    with pytest.raises(ModelFileError, match="is float32, but its sidecar says float16"):
        open_engine(fake_tensorrt(engine=full_engine), read_engine(half), SPEC, None, half,
                    "float16")


# -- CudaFeed and the GPU runners' launch code on a CPU stand-in for torch.cuda ---------------
class _Stream:
    def __init__(self, device=None, priority=0):
        self.cuda_stream = id(self)

    def wait_event(self, event):
        assert event.recorded

    def wait_stream(self, stream):
        pass

    def synchronize(self):
        pass


class _Event:
    made: ClassVar[list] = []

    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        self.recorded, self.blocking, self.waits = False, blocking, 0
        _Event.made.append(self)

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        assert self.recorded
        self.waits += 1


class _Cuda:
    Stream, Event = _Stream, _Event

    @staticmethod
    @contextmanager
    def stream(stream):
        yield

    @staticmethod
    def current_stream(device=None):
        return _Stream()

    @staticmethod
    def synchronize(device=None):
        pass


class StandIn:
    """torch with a no-op ``cuda`` and ``pin_memory`` ignored: CudaFeed runs on the CPU."""

    cuda = _Cuda
    float32, float16 = torch.float32, torch.float16
    no_grad = staticmethod(torch.no_grad)

    @staticmethod
    def zeros(*args, pin_memory=False, **kwargs):
        return torch.zeros(*args, **kwargs)

    @staticmethod
    def empty(*args, pin_memory=False, **kwargs):
        return torch.empty(*args, **kwargs)


def _cutouts(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(500.0, 8.0, size=(n, 2, 32, 32)).astype(np.float32)
    x[0, :, :, :10] = np.nan
    return x


def test_cuda_feed_bookkeeping_with_the_torch_launch(model_file):
    batches = [_cutouts(8, seed=k) for k in range(5)] + [_cutouts(3, seed=9)]
    with TorchRunner(model_file, device="cpu", cuda_graphs=False) as runner:
        want = [runner.infer(b) for b in batches]
        runner._feed = feed = CudaFeed(StandIn, torch.device("cpu"), runner.input_shape, 8)
        slots = runner.allocate_slots(3, 8)
        assert all(s.shape == (8, 2, 32, 32) and s.dtype == np.float32 for s in slots)
        assert feed.find_slot(slots[1][2:5]) is not None  # rows inside a slot
        assert feed.find_slot(slots[1][2:5]).data_ptr() == slots[1][2:5].ctypes.data
        assert feed.find_slot(np.zeros((2, 2, 32, 32), np.float32)) is None
        assert feed.find_slot(slots[0].view(np.float16)[:, :, :, :32]) is None  # not C order
        pending = []
        for k, b in enumerate(batches):  # five in flight at once: the ring of 3 waits
            slot = slots[k % 3]
            if k >= 3:
                pending[k - 3].result()  # the engine reuses a slot after its result()
            slot[: len(b)] = b
            pending.append(runner.submit(slot[: len(b)]))
        assert not feed._staging  # slots are copied from directly
        for p, w in zip(pending, want, strict=True):
            np.testing.assert_allclose(p.result(), w, rtol=0, atol=1e-6)
        plain = runner.submit(batches[0])  # an ordinary array: through the staging ring
        assert list(feed._staging) == ["float32"]
        np.testing.assert_allclose(plain.result(), want[0], rtol=0, atol=1e-6)
        half = runner.infer(batches[1].astype(np.float16))  # cast on the "GPU"
        assert list(feed._device_in) == [torch.float32, torch.float16]
        ref = runner._graph(torch.from_numpy(batches[1].astype(np.float16).astype(np.float32)))
        np.testing.assert_allclose(half, ref[1].detach().numpy(), rtol=0, atol=1e-6)
        big = np.concatenate(batches[:2])  # 16 rows: every ring grows
        np.testing.assert_allclose(runner.infer(big), np.concatenate(want[:2]), rtol=0,
                                   atol=1e-6)
        assert feed.capacity == 16 and feed._out[0][0].shape == (16,)
        assert all(e.blocking for e in _Event.made if e.waits)  # result() waits block
    assert runner._feed is None


def test_cuda_feed_copies_the_probabilities_back_with_the_scores(model_file):
    """Both graph outputs come back through the feed's pinned rings: ``outputs()`` holds
    the batch's probabilities, also after the rings grow for a larger batch."""
    batches = [_cutouts(8, seed=1), _cutouts(3, seed=2), _cutouts(12, seed=3)]
    with TorchRunner(model_file, device="cpu", cuda_graphs=False) as runner:
        want = [runner.infer_outputs(b) for b in batches]
        runner._feed = feed = CudaFeed(StandIn, torch.device("cpu"), runner.input_shape, 8)
        assert not feed._out_probs  # made at the first batch that has them
        for b, (scores, outputs) in zip(batches, want, strict=True):
            pending = runner.submit(b)
            got = pending.outputs()["probabilities"]
            assert got.shape == (len(b), 2)
            np.testing.assert_allclose(got, outputs["probabilities"], rtol=0, atol=1e-6)
            np.testing.assert_allclose(pending.result(), scores, rtol=0, atol=1e-6)
        assert feed.capacity == 12 and feed._out_probs[0][0].shape == (12, 2)
        feed.submit(batches[0], lambda x, n: torch.zeros(n))  # a launch giving scores alone
        assert feed._out_probs  # kept for the next batch that has them


class _Context:
    """An execution context that scores each row as its nanmean, read from our buffers."""

    def __init__(self, buffers):
        self.buffers, self.calls, self.address = buffers, [], {}

    def set_input_shape(self, name, shape):
        self.calls.append(("shape", tuple(shape)))
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.address[name] = address
        return True

    def execute_async_v3(self, stream):
        self.calls.append(("execute", stream))
        base = next(t for t in self.buffers() if t.data_ptr() == self.address[INPUT_NAME])
        rows = self.shape[0]
        x = base[:rows].float().reshape(rows, -1)
        score = next(t for t in self.buffers() if t.data_ptr() == self.address["score"])
        score[:rows] = torch.nanmean(x, dim=1)
        return True


def test_tensorrt_launch_pads_casts_and_sets_shapes(tmp_path, fake_trt):

    runner = TensorRTRunner(_onnx_file(tmp_path / "m.onnx", "fp32"), cache_dir=tmp_path)
    feed, context, cast = _activated_by_hand(runner, np.float32, (4, 8, 16))
    assert (runner.preferred_batch_size, runner.max_batch_size) == (8, 16)
    assert runner.input_dtype == np.float32
    x = _cutouts(8)
    want = np.nanmean(x.reshape(8, -1), axis=1)
    np.testing.assert_allclose(runner.infer(x), want, rtol=1e-6)
    scores, outputs = runner.infer_outputs(x[:5])  # the engine's probabilities buffer too
    assert outputs["probabilities"].shape == (5, 2) and scores.shape == (5,)
    np.testing.assert_allclose(runner.infer(x[:2]), want[:2], rtol=1e-6)  # padded to 4 rows
    np.testing.assert_allclose(runner.infer(x[:6]), want[:6], rtol=1e-6)
    np.testing.assert_allclose(runner.infer(x[:6]), want[:6], rtol=1e-6)
    half = x.astype(np.float16)
    np.testing.assert_allclose(runner.infer(half),  # cast into the engine's float32 buffer
                               np.nanmean(half.astype(np.float32).reshape(8, -1), axis=1),
                               rtol=1e-6)
    shapes = [c[1] for c in context.calls if c[0] == "shape"]
    assert shapes == [(8, 2, 32, 32), (5, 2, 32, 32), (4, 2, 32, 32), (6, 2, 32, 32),
                      (8, 2, 32, 32)]
    assert context.address[INPUT_NAME] == cast.data_ptr()
    assert {c[1] for c in context.calls if c[0] == "execute"} == {feed.compute.cuda_stream}
    with pytest.raises(ConfigError, match="tensorrt runner: batch size 17 exceeds its maximum 16"):
        runner.submit(_cutouts(17))
    runner.deactivate()
    assert runner._plan is None and runner._feed is None


def _activated_by_hand(runner, dtype, batches):
    """What ``_activate`` sets up, on the CPU stand-ins: a feed, output buffers, the cast
    buffer of the engine's input dtype and a recording context for the profile
    ``batches`` (min, opt, max); (feed, context, cast)."""
    from pyengine.runners.tensorrt import EnginePlan

    rows = batches[2]
    feed = CudaFeed(StandIn, torch.device("cpu"), runner.input_shape, rows)
    outputs = {"probabilities": torch.zeros((rows, 2)), "score": torch.zeros(rows)}
    tdtype = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
    cast = torch.zeros((rows, 2, 32, 32), dtype=tdtype)

    def buffers():
        ring = [t for r in feed._device_in.values() for t in r]
        return [*ring, cast, *outputs.values()]

    context = _Context(buffers)
    for name, t in outputs.items():
        context.set_tensor_address(name, t.data_ptr())
    runner._plan = EnginePlan(None, None, context, [], np.dtype(dtype), 0, batches)
    runner._feed, runner._outputs, runner._cast = feed, outputs, cast
    runner._engine_dtype, runner._where, runner.active = tdtype, "e", True
    return feed, context, cast


def test_tensorrt_launch_into_a_float16_engine_saturates_like_the_gather(tmp_path, fake_trt):
    """A float32 batch for a float16-input engine is cast on the "GPU" into its float16
    buffer: rounded, finite values beyond 65504 saturated there (as the scan's gather
    does, so a bright pixel is not read as missing), NaN and inf kept; float16 batches
    go in as they are."""
    from pyengine.runners.base import to_half
    from pyengine.scan.batching import gather_reference

    onnx_path = _onnx_file(tmp_path / "m.onnx", input_type=TensorProto.FLOAT16)
    runner = TensorRTRunner(onnx_path, cache_dir=tmp_path)
    assert runner.input_dtype == np.float16
    _, context, cast = _activated_by_hand(runner, np.float16, (1, 8, 8))
    x = _cutouts(4) - 500.0
    x[1, 0, 5, 5] = 1e5
    x[1, 1, 6, 6] = -3e5
    x[2, 0, 7, 7] = np.inf
    half = to_half(x)
    assert half[1, 0, 5, 5] == 65504 and half[1, 1, 6, 6] == -65504 and np.isinf(half[2, 0, 7, 7])
    # The same values as the scan's float16 gather makes of them.
    tile = x[1]
    np.testing.assert_array_equal(gather_reference(tile, np.array([16]), np.array([16]), 32,
                                                   dtype=np.float16)[0], half[1])
    want = np.nanmean(half.astype(np.float32).reshape(4, -1), axis=1)
    assert np.isfinite(want[1]) and np.isinf(want[2])
    np.testing.assert_allclose(runner.infer(x), want, rtol=0, atol=1e-5)  # sums' order
    assert context.address[INPUT_NAME] == cast.data_ptr()  # through the cast buffer
    np.testing.assert_allclose(runner.infer(half), want, rtol=0, atol=1e-5)
    assert context.address[INPUT_NAME] != cast.data_ptr()  # float16: as it is
    runner.deactivate()


# -- what fp32 means in a TensorRT engine -------------------------------------------------------
@pytest.mark.parametrize("version", ["10.13.0", "11.1.0"])
def test_fp32_engines_clear_tf32_and_fp16_engines_keep_it(tmp_path, version):
    """TensorRT's TF32 flag is on by default; an fp32 engine is IEEE float32, so its build
    clears it; fp16 builds leave TensorRT's default alone."""
    built = {}
    for precision in ("fp32", "fp16"):
        trt = fake_tensorrt(version)
        build_engine(_onnx_file(tmp_path / f"m{precision}.onnx", precision), tmp_path / "e",
                     trt=trt, identity=GPU)
        built[precision] = [c for c in trt.calls if c[0] in ("set_flag", "clear_flag")]
    assert built == {"fp32": [("clear_flag", "TF32")], "fp16": []}
    old = fake_tensorrt(version)
    del old.BuilderFlag.TF32  # a TensorRT without the flag: nothing to clear
    build_engine(_onnx_file(tmp_path / "old.onnx", "fp32"), tmp_path / "old", trt=old,
                 identity=GPU)
    assert not [c for c in old.calls if c[0] == "clear_flag"]
