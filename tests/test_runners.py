"""Runners: the ONNX Runtime runner scores like torch; selection errors are one line."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from pyengine.errors import ConfigError, ModelFileError, RunnerUnavailable
from pyengine.export.onnx import export_onnx
from pyengine.models.checkpoint import load_model, save_model
from pyengine.models.classifier import ClusterClassifier
from pyengine.models.spec import ModelSpec
from pyengine.runners import make_runner
from pyengine.runners.base import GPU_IN_FLIGHT

SPEC = ModelSpec(cutout_size=32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(1)
    return save_model(ClusterClassifier(SPEC).eval(),
                      tmp_path_factory.mktemp("m") / "m.safetensors")


def _batch(n=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(500.0, 8.0, size=(n, 2, 32, 32)).astype(np.float32)
    x[0, :, :, :12] = np.nan
    return x


def test_model_file_is_exported_once_and_scores_like_torch(tmp_path, model_file):
    cache = tmp_path / "cache"
    with make_runner("auto", model_file, cache_dir=cache, threads=1) as runner:
        assert runner.name == "onnxruntime"
        assert runner.precision == "fp32"
        assert runner.input_shape == (2, 32, 32)
        got = runner.infer(_batch())
    with torch.no_grad():
        want = load_model(model_file)(torch.from_numpy(_batch()))[1].numpy()
    assert got.shape == (9,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    cached = list(cache.glob("*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    with make_runner("onnxruntime", model_file, cache_dir=cache) as again:
        again.infer(_batch(3))
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not exported again


def test_exported_onnx_keeps_its_precision(tmp_path, model_file):
    path = export_onnx(load_model(model_file), tmp_path / "m.onnx")
    runner = make_runner("onnxruntime", path)
    assert runner.precision == "fp32"
    with pytest.raises(ConfigError, match="is a fp32 graph; --precision int8 needs its own export"):
        make_runner("onnxruntime", path, precision="int8")


def test_selection_errors(tmp_path, model_file):
    with pytest.raises(ConfigError, match=r"runner .cuda. is not known; accepted: auto, onnxruntime, torch"):
        make_runner("cuda", model_file)
    with pytest.raises(ConfigError, match="precision 'fp8' is not available"):
        make_runner("onnxruntime", model_file, precision="fp8")
    with pytest.raises(RunnerUnavailable, match="calibrated on real cutouts"):
        make_runner("onnxruntime", model_file, precision="int8")
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        make_runner("onnxruntime", tmp_path / "none.onnx")
    runner = make_runner("onnxruntime", model_file, cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match=r"infer\(\) before activate\(\)"):
        runner.infer(_batch())
    with runner, pytest.raises(ConfigError, match=r"batch must be float32 \(B, 2, 32, 32\)"):
        runner.infer(_batch().astype(np.float64))
    with pytest.raises(ConfigError, match="threads = 0"):
        make_runner("onnxruntime", model_file, threads=0)


def test_demo_model_is_the_default(tmp_path):
    runner = make_runner("auto", None, cache_dir=tmp_path)
    assert runner.spec.bands == ("g", "i")
    assert runner.spec.cutout_size == 64


@pytest.mark.parametrize(("precision", "channels_last", "atol"), [
    ("fp32", False, 1e-5), ("fp32", True, 1e-4), ("bf16", True, 5e-2), ("fp16", False, 2e-2)])
def test_torch_runner_on_cpu(model_file, precision, channels_last, atol):
    from pyengine.runners.torch import TorchRunner

    runner = TorchRunner(model_file, precision=precision, device="cpu",
                         channels_last=channels_last)
    with runner:
        got = runner.infer(_batch())
    with torch.no_grad():
        want = load_model(model_file)(torch.from_numpy(_batch()))[1].numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_torch_runner_refusals(tmp_path, model_file):
    from pyengine.runners.torch import TorchRunner

    with pytest.raises(ConfigError, match="precision 'int8' is not available with the torch"):
        make_runner("torch", model_file, precision="int8")
    with pytest.raises(ConfigError, match="device 'tpu' is not accepted"):
        TorchRunner(model_file, device="tpu")
    with pytest.raises(ConfigError, match="run ONNX files with --runner onnxruntime"):
        TorchRunner(tmp_path / "m.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(RunnerUnavailable, match=r"torch runner on cuda: .*use --device cpu"):
            TorchRunner(model_file, device="cuda").activate()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_torch_runner_on_cuda(model_file, precision):
    with make_runner("torch", model_file, precision=precision, device="cuda") as runner:
        got = runner.infer(_batch())
    with torch.no_grad():
        want = load_model(model_file)(torch.from_numpy(_batch()))[1].numpy()
    atol = {"fp32": 1e-4, "tf32": 5e-3}.get(precision, 5e-2)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


# -- what fp32 means on a GPU: IEEE float32, TF32 only when asked for ---------------------------
def _fp32_settings():
    return (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)


def test_fp32_math_is_set_and_restored_without_deprecation_warnings():
    """set_fp32_math uses torch's fp32_precision API (the strict configuration turns the
    deprecated allow_tf32 setters' warning into an error)."""
    from pyengine.runners.torch import fp32_math, restore_fp32_math, set_fp32_math

    assert (fp32_math("fp32"), fp32_math("tf32"), fp32_math("fp16"), fp32_math("bf16")) == \
        ("ieee", "tf32", None, None)
    before = _fp32_settings()
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's own default for cuDNN
        torch.backends.cuda.matmul.fp32_precision = "none"
        previous = set_fp32_math(torch, "ieee")
        assert previous == ("tf32", "none")
        assert _fp32_settings() == ("ieee", "ieee")
        restore_fp32_math(torch, previous)
        assert _fp32_settings() == ("tf32", "none")
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = \
            before


def test_cuda_runner_activation_sets_ieee_and_deactivate_restores(model_file, monkeypatch):
    """A fp32 torch runner on CUDA (here: torch.cuda and the model's move to the device
    stood in for, CudaFeed replaced by a recorder) sets IEEE math before its feed exists
    and puts the previous values back on deactivate; tf32 sets TF32; fp16 leaves them."""
    from pyengine.runners import torch as torch_runner
    from pyengine.runners.torch import TorchRunner

    seen, feeds = [], []

    class Feed:
        def __init__(self, *args, depth):
            seen.append(_fp32_settings())
            feeds.append((depth, torch.backends.cudnn.benchmark))

        def close(self):
            pass

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch_runner, "CudaFeed", Feed)
    before = _fp32_settings()
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "none"
        for precision, during in [("fp32", ("ieee", "ieee")), ("tf32", ("tf32", "tf32")),
                                  ("fp16", ("tf32", "none"))]:
            runner = TorchRunner(model_file, precision=precision, device="cuda",
                                 cuda_graphs=False)
            with runner:
                assert _fp32_settings() == during
            assert seen[-1] == during
            assert _fp32_settings() == ("tf32", "none")
        # cudnn.benchmark is on before the feed (and any graph) exists, and put back after;
        # the feed's ring holds one more batch than the engine keeps in flight
        assert feeds == [(GPU_IN_FLIGHT + 1, True)] * 3
        assert torch.backends.cudnn.benchmark is False
        with TorchRunner(model_file, device="cuda", cuda_graphs=False, cudnn_benchmark=False):
            assert feeds[-1] == (GPU_IN_FLIGHT + 1, False)
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = \
            before


def test_tf32_is_refused_on_the_cpu_in_one_line(tmp_path, model_file, monkeypatch):
    from pyengine.runners.torch import TorchRunner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    message = (r"^precision 'tf32' is a CUDA math mode \(TensorFloat-32 convolutions\) and is "
               r"not accepted on the CPU; accepted on the CPU: fp32, fp16, bf16 \(tf32 needs a "
               r"CUDA GPU\)$")
    with pytest.raises(ConfigError, match=message):
        TorchRunner(model_file, precision="tf32", device="cpu")
    runner = TorchRunner(model_file, precision="tf32")  # auto: no GPU here
    with pytest.raises(ConfigError, match=message):
        runner.activate()
    assert not runner.active
    with pytest.raises(ConfigError, match="precision 'tf32' is not available with the "
                                          "onnxruntime runner; accepted: fp32, int8"):
        make_runner("onnxruntime", model_file, precision="tf32")


# -- the scan engine's interface: slots, submit/result, dtypes, choosing ------------------------
@pytest.fixture(scope="module")
def ort_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ort-cache")


def _runners(model_file, cache):
    from pyengine.runners.torch import TorchRunner

    return [make_runner("onnxruntime", model_file, cache_dir=cache, threads=1),
            TorchRunner(model_file, device="cpu", threads=1)]


def test_allocate_slots_are_page_aligned_arrays_of_the_input_dtype(model_file, ort_cache):
    for runner in _runners(model_file, ort_cache):
        with pytest.raises(ConfigError, match=r"allocate_slots before activate\(\)"):
            runner.allocate_slots(2, 8)
        with runner:
            slots = runner.allocate_slots(3, 8)
            assert len(slots) == 3
            for s in slots:
                assert s.shape == (8, 2, 32, 32)
                assert s.dtype == runner.input_dtype == np.float32
                assert s.flags.c_contiguous and s.flags.writeable
                assert s.ctypes.data % 4096 == 0
            assert len({s.ctypes.data for s in slots}) == 3
            half = runner.allocate_slots(1, 5, np.float16)[0]
            assert half.dtype == np.float16 and half.shape == (5, 2, 32, 32)
            assert half.ctypes.data % 4096 == 0
            with pytest.raises(ConfigError, match="slot dtype float64 is not accepted; accepted: "
                                                  "float32, float16"):
                runner.allocate_slots(1, 8, np.float64)
            with pytest.raises(ConfigError, match="slot count 0 is not accepted"):
                runner.allocate_slots(0, 8)
            with pytest.raises(ConfigError, match="slot batch size 0 is not accepted"):
                runner.allocate_slots(2, 0)


def test_submit_result_equals_infer_and_slots_work(model_file, ort_cache):
    for runner in _runners(model_file, ort_cache):
        with runner:
            want = runner.infer(_batch())
            slots = runner.allocate_slots(2, 9)
            # the engine's pattern: fill a slot, submit a leading slice, two in flight
            flight, got = [], []
            for k, n in enumerate((9, 4, 9, 1)):
                slot = slots[k % 2]
                slot[:n] = _batch()[:n]
                flight.append((n, runner.submit(slot[:n])))
                if len(flight) > 1:
                    got.append(flight.pop(0))
            got.extend(flight)
            for n, pending in got:
                scores = pending.result()
                assert scores.dtype == np.float32 and scores.shape == (n,)
                np.testing.assert_array_equal(scores, runner.infer(_batch()[:n]))
                np.testing.assert_allclose(scores, want[:n], rtol=0, atol=1e-6)  # other size
                assert pending.result() is scores  # a second call returns the same array
            assert runner.submit(_batch()[:0]).result().shape == (0,)


def test_float16_batches_are_accepted(model_file, ort_cache):
    half = _batch().astype(np.float16)
    for runner in _runners(model_file, ort_cache):
        with runner:
            got = runner.infer(half)
            want = runner.infer(half.astype(np.float32))
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(runner.submit(half).result(), want)


def test_batch_sizes_and_reasons(model_file, ort_cache):
    runner = make_runner("onnxruntime", model_file, cache_dir=ort_cache)
    assert runner.preferred_batch_size == 32 and runner.max_batch_size is None
    assert runner.chosen_because == "onnxruntime was asked for"
    runner = make_runner("torch", model_file, device="cpu", batch_size=48)
    assert runner.preferred_batch_size == 48 and runner.input_dtype == np.float32
    with pytest.raises(ConfigError, match="batch size 0 is not accepted"):
        make_runner("onnxruntime", model_file, batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks a GPU runner here")
def test_auto_picks_onnxruntime_on_a_cpu_and_says_why(model_file, ort_cache):
    runner = make_runner("auto", model_file, cache_dir=ort_cache)
    assert runner.name == "onnxruntime"
    assert runner.chosen_because.startswith("no CUDA GPU (")
    runner = make_runner("auto", model_file, precision="bf16")  # only torch has bf16
    assert (runner.name, runner.precision) == ("torch", "bf16")
    assert runner.chosen_because.startswith("torch on the CPU: tensorrt has no bf16")
    assert runner.preferred_batch_size == 32


def test_available_runners_and_the_tensorrt_message(model_file, monkeypatch):
    from pyengine.runners import available_runners

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    found = available_runners()
    assert set(found) == {"onnxruntime", "torch", "tensorrt"}
    assert found["onnxruntime"] is None and found["torch"] is None
    assert found["tensorrt"].startswith("the tensorrt package is not installed")
    with pytest.raises(RunnerUnavailable, match=r"^tensorrt runner: the tensorrt package is not "
                                                r"installed \(.*\); available runners: "
                                                r"onnxruntime, torch$"):
        make_runner("tensorrt", model_file)
    from pyengine.info import runners

    status = {r.name: r for r in runners()}
    assert not status["tensorrt"].usable and status["onnxruntime"].usable


def test_precision_and_model_kind_errors(tmp_path, model_file):
    with pytest.raises(ConfigError, match="precision 'bf16' is not available with the tensorrt "
                                          "runner; accepted: fp32, fp16, int8"):
        make_runner("tensorrt", model_file, precision="bf16")
    with pytest.raises(ConfigError, match="precision 'fp8' is not known; accepted: bf16, fp16, "
                                          "fp32, int8, tf32"):
        make_runner("auto", model_file, precision="fp8")
    with pytest.raises(ConfigError, match="device 'gpu' is not accepted; accepted: auto, cpu, "
                                          "cuda, cuda:N"):
        make_runner("auto", model_file, device="gpu")
    engine = tmp_path / "m.engine"
    with pytest.raises(ConfigError, match="the onnxruntime runner does not take a TensorRT "
                                          "engine; accepted for this file: tensorrt"):
        make_runner("onnxruntime", engine)
    with pytest.raises(ConfigError, match="the torch runner does not take ONNX files; accepted "
                                          "for this file: tensorrt, onnxruntime"):
        make_runner("torch", tmp_path / "m.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(RunnerUnavailable, match="runner auto: nothing here runs a TensorRT "
                                                    "engine: tensorrt: "):
            make_runner("auto", engine)


def test_scan_cli_tf32_on_the_cpu_is_an_error_line(field, model, tmp_path, monkeypatch):
    import os

    from click.testing import CliRunner

    from pyengine.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU host too
    out = tmp_path / "c.ecsv"
    res = CliRunner().invoke(main, ["scan", *map(str, field["paths"]), "--grid", "16",
                                    "--model", str(model), "--runner", "torch", "--precision",
                                    "tf32", "-o", str(out)],
                             env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert res.exit_code == 1, res.output  # the CLI's one-line user error (pyengine.cli)
    assert res.output.strip().splitlines()[-1] == (
        "Error: precision 'tf32' is a CUDA math mode (TensorFloat-32 convolutions) and is not "
        "accepted on the CPU; accepted on the CPU: fp32, fp16, bf16 (tf32 needs a CUDA GPU)")
    assert "Traceback" not in res.output and not out.exists()
