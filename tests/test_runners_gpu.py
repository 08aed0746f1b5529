"""GPU runners: the torch CUDA path (pinned slots, copy streams, CUDA graphs) and TensorRT.

Marked ``gpu`` and skipped without a CUDA GPU (TensorRT tests also without the
tensorrt package).  Every score is compared with the torch fp32 graph on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyengine.models.checkpoint import load_model, save_model
from pyengine.models.classifier import ClusterClassifier
from pyengine.models.spec import ModelSpec
from pyengine.runners import make_runner
from pyengine.runners.base import GPU_BATCH, GPU_IN_FLIGHT
from pyengine.runners.torch import TorchRunner

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SPEC = ModelSpec(cutout_size=32)
# fp32 is IEEE float32 on the GPU (TF32 switched off while the runner is active); tf32
# asks for TensorFloat-32 convolutions, whose error against the CPU is ~5e-4..4e-3.
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 5e-2, "bf16": 5e-2}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    return save_model(ClusterClassifier(SPEC).eval(),
                      tmp_path_factory.mktemp("m") / "m.safetensors")


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(500.0, 8.0, size=(n, 2, 32, 32)).astype(np.float32)
    x[0, :, :, :12] = np.nan
    if n > 3:
        x[3, 1] = np.nan  # a blank band
    return x


def _reference(model_file, x):
    with torch.no_grad():
        return load_model(model_file)(torch.from_numpy(np.asarray(x, np.float32)))[1].numpy()


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_cuda_scores_match_cpu_fp32(model_file, precision, graphs):
    x = _batch(40)
    with TorchRunner(model_file, precision=precision, device="cuda", batch_size=40,
                     cuda_graphs=graphs) as runner:
        assert runner.input_dtype == (np.float16 if precision == "fp16" else np.float32)
        assert runner.preferred_batch_size == 40
        got = runner.infer(x)  # float32 in, even where float16 is preferred
        assert bool(runner._graphs) == graphs
    assert got.dtype == np.float32 and got.shape == (40,)
    np.testing.assert_allclose(got, _reference(model_file, x), rtol=0, atol=TOLERANCE[precision])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_on_and_off_agree(model_file, precision):
    x = _batch(24, seed=1)
    out = []
    for graphs in (True, False):
        with TorchRunner(model_file, precision=precision, device="cuda", batch_size=24,
                         cuda_graphs=graphs) as runner:
            out.append(runner.infer(x))
    np.testing.assert_allclose(out[0], out[1], rtol=0, atol=1e-5 if precision == "fp32" else 2e-3)


def test_padded_last_batch_uses_the_full_size_graph(model_file):
    x = _batch(21, seed=2)
    with TorchRunner(model_file, device="cuda", batch_size=16) as runner:
        assert sorted(runner._graphs) == [16]  # captured at activate
        first = runner.submit(x[:16]).result()
        last = runner.submit(x[16:]).result()  # 5 rows padded into the 16-row graph
        assert sorted(runner._graphs) == [16]
        bigger = runner.infer(np.concatenate([x, x]))  # 42 rows: a graph of its own
        assert sorted(runner._graphs) == [16, 42]
    want = _reference(model_file, x)
    np.testing.assert_allclose(np.concatenate([first, last]), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(bigger, np.concatenate([want, want]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_pinned_slots_and_two_in_flight(model_file, precision):
    """The scan engine's pattern: fill a slot, submit a leading slice of it, keep two
    batches in flight, collect in order, reuse a slot only after its result()."""
    batches = [_batch(n, seed=10 + k) for k, n in enumerate((32, 32, 32, 32, 32, 7))]
    with TorchRunner(model_file, precision=precision, device="cuda", batch_size=32) as runner:
        slots = runner.allocate_slots(3, 32)
        dtype = runner.input_dtype
        for slot in slots:
            assert slot.dtype == dtype and slot.shape == (32, 2, 32, 32)
            assert torch.from_numpy(slot).is_pinned()
        flight, got, inputs = [], [], []
        for k, b in enumerate(batches):
            slot = slots[k % 3]
            slot[: len(b)] = b  # float16 slots round the pixels
            inputs.append(slot[: len(b)].astype(np.float32))
            assert runner._feed.find_slot(slot[: len(b)]) is not None  # pinned: no staging
            flight.append(runner.submit(slot[: len(b)]))
            if len(flight) > 1:
                got.append(flight.pop(0).result())
        got.extend(p.result() for p in flight)
        assert not runner._feed._staging  # never needed a staging buffer
        # an ordinary array goes through the pinned staging buffer instead
        plain = runner.infer(batches[0])
    for scores, x in zip(got, inputs, strict=True):
        np.testing.assert_allclose(scores, _reference(model_file, x), rtol=0,
                                   atol=TOLERANCE[precision])
    np.testing.assert_allclose(plain, _reference(model_file, batches[0]), rtol=0,
                               atol=TOLERANCE[precision])


def test_more_in_flight_than_the_ring_and_float32_slots_at_fp16(model_file):
    batches = [_batch(16, seed=20 + k) for k in range(7)]
    with TorchRunner(model_file, precision="fp16", device="cuda", batch_size=16) as runner:
        assert runner.input_dtype == np.float16
        slots = runner.allocate_slots(7, 16, np.float32)  # the engine may keep float32
        pending = []
        for slot, b in zip(slots, batches, strict=True):
            slot[:] = b
            pending.append(runner.submit(slot))  # 7 in flight: the ring of 3 waits
        got = [p.result() for p in pending]
    for scores, b in zip(got, batches, strict=True):
        np.testing.assert_allclose(scores, _reference(model_file, b), rtol=0, atol=5e-2)


def test_auto_picks_a_gpu_runner(model_file):
    runner = make_runner("auto", model_file)
    assert runner.name in ("tensorrt", "torch")
    assert runner.chosen_because
    assert runner.preferred_batch_size == GPU_BATCH
    assert runner.in_flight == GPU_IN_FLIGHT


def test_cudnn_benchmark_is_on_while_active_and_put_back(model_file):
    torch.backends.cudnn.benchmark = False
    runner = TorchRunner(model_file, device="cuda", batch_size=8)
    with runner:
        assert torch.backends.cudnn.benchmark is True
        assert runner._feed.depth == GPU_IN_FLIGHT + 1
        runner.infer(_batch(8))
    assert torch.backends.cudnn.benchmark is False
    with TorchRunner(model_file, device="cuda", batch_size=8, cudnn_benchmark=False):
        assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_zero_padded_stem_on_the_gpu_matches(model_file, precision):
    x = _batch(32, seed=7)
    with TorchRunner(model_file, precision=precision, device="cuda", batch_size=32,
                     pad_channels=8) as runner:
        assert runner._graph.backbone.conv1.conv.in_channels == 8
        got = runner.infer(x)
    np.testing.assert_allclose(got, _reference(model_file, x), rtol=0, atol=TOLERANCE[precision])


@pytest.mark.parametrize("graphs", [True, False])
def test_cuda_probabilities_come_back_with_the_scores(model_file, graphs):
    """Both graph outputs through the CUDA feed (and the captured graphs), and an ensemble
    of two GPU members, whose batches go to each member from the first one's pinned slot."""
    from pyengine.runners.ensemble import EnsembleRunner

    x = _batch(40, seed=2)
    with torch.no_grad():
        want = load_model(model_file)(torch.from_numpy(x))[0].numpy()
    with TorchRunner(model_file, device="cuda", batch_size=40, cuda_graphs=graphs) as runner:
        scores, outputs = runner.infer_outputs(x)
    np.testing.assert_allclose(outputs["probabilities"], want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scores, want[:, 1], rtol=0, atol=1e-4)
    members = [TorchRunner(model_file, device="cuda", batch_size=40, cuda_graphs=graphs)
               for _ in range(2)]
    with EnsembleRunner(members, ["a", "b"]) as ensemble:
        slot = ensemble.allocate_slots(2, 40)[0]
        slot[:] = x
        pending = ensemble.submit(slot)
        got = pending.outputs()
    np.testing.assert_allclose(got["probabilities"], want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got["class_agreement"], 1.0)  # one model, twice
    np.testing.assert_array_equal(got["class_index"], np.argmax(got["probabilities"], axis=1))
    np.testing.assert_allclose(pending.result(), want[:, 1], rtol=0, atol=1e-4)


def test_tensorrt_runner_matches_cpu(tmp_path, model_file):
    pytest.importorskip("tensorrt")
    x = _batch(50, seed=5)
    with make_runner("tensorrt", model_file, cache_dir=tmp_path, batch_size=32) as runner:
        assert (runner.preferred_batch_size, runner.max_batch_size) == (32, 32)
        slots = runner.allocate_slots(2, 32)
        flight, got = [], []
        for k, start in enumerate(range(0, 50, 32)):
            part = x[start : start + 32]
            slots[k % 2][: len(part)] = part
            flight.append(runner.submit(slots[k % 2][: len(part)]))
        got = np.concatenate([p.result() for p in flight])
    np.testing.assert_allclose(got, _reference(model_file, x), rtol=0, atol=1e-3)
    assert list(tmp_path.glob("*.engine"))  # built and cached


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_scan_on_the_gpu_matches_the_cpu(model, field, precision):
    """The whole scan on the GPU (pinned slots, 3 batches in flight, float16 transfer at
    fp16, CUDA graphs) against the same scan on the CPU; needs the scan fixtures' FITS
    field (astropy, fitsio), skipped without them."""
    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.engine import Engine
    from pyengine.sources import GridSource

    scores = {}
    for device in ("cpu", "cuda"):
        engine = Engine(model, runner="torch", precision=precision if device == "cuda" else
                        "fp32", device=device, batch_size=64, core=128)
        with engine, Mosaic.open(field["paths"]) as mosaic:
            if device == "cuda":
                assert engine.in_flight == GPU_IN_FLIGHT and engine.nslots == GPU_IN_FLIGHT + 2
                assert str(engine.transfer_dtype) == ("float16" if precision == "fp16" else
                                                      "float32")
            results = list(engine.iter_results(*engine.prepare(mosaic, GridSource(9))))
        scores[device] = np.concatenate([r.score for r in results])
    assert scores["cuda"].size > 200
    finite = np.isfinite(scores["cpu"])
    np.testing.assert_array_equal(np.isfinite(scores["cuda"]), finite)
    np.testing.assert_allclose(scores["cuda"][finite], scores["cpu"][finite], rtol=0,
                               atol=TOLERANCE[precision])
