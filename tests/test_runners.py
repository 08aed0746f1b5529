"""Runners: the ONNX Runtime runner scores like torch; selection errors are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyengine.errors import ConfigError, ModelFileError
from pyengine.export.onnx import export_onnx
from pyengine.models.checkpoint import load_model, save_model
from pyengine.models.classifier import ClusterClassifier
from pyengine.models.spec import ModelSpec
from pyengine.runners import make_runner
from pyengine.runners.base import RunnerUnavailable

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
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_runner_on_cuda(model_file, precision):
    with make_runner("torch", model_file, precision=precision, device="cuda") as runner:
        got = runner.infer(_batch())
    with torch.no_grad():
        want = load_model(model_file)(torch.from_numpy(_batch()))[1].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 if precision == "fp32" else 5e-2)
