"""What the scan engine keeps in flight, and the GPU runner's defaults that a CPU can check.

A GPU runner returns from ``submit`` at once and the scores come later, so the infer
stage keeps ``runner.in_flight`` batches outstanding (3 on a GPU) and the Engine sizes
its slots so that the gather stage always has one to fill.  These tests drive the real
pipeline with a runner that defers every batch's scores, as a GPU does.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pyengine.errors import ConfigError
from pyengine.io.mosaic import Mosaic
from pyengine.models.checkpoint import load_model, read_spec
from pyengine.runners.base import CPU_IN_FLIGHT, GPU_BATCH, GPU_IN_FLIGHT, Pending, Runner
from pyengine.scan.engine import Engine
from pyengine.sources import GridSource

pytestmark = pytest.mark.timeout(120)  # a deadlocked pipeline fails instead of hanging


class _Deferred(Pending):
    def __init__(self, owner, scores):
        self.owner, self.scores, self.done = owner, scores, False

    def result(self):
        if not self.done:
            self.done = True
            with self.owner.lock:
                self.owner.outstanding -= 1
        return self.scores


class DeferringRunner(Runner):
    """Scores each cutout by its NaN-free mean, handed back only when asked for."""

    name = "deferring"

    def __init__(self, spec, in_flight):
        super().__init__(spec, "fp32")
        self._in_flight = in_flight
        self.lock = threading.Lock()
        self.outstanding = self.peak = self.submitted = 0

    @property
    def in_flight(self):
        return self._in_flight

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, batch):
        flat = batch.astype(np.float32).reshape(batch.shape[0], -1)
        return np.where(np.isnan(flat), 0, flat).mean(axis=1).astype(np.float32)

    def _submit(self, batch):
        with self.lock:
            self.outstanding += 1
            self.submitted += 1
            self.peak = max(self.peak, self.outstanding)
        return _Deferred(self, self._infer(batch))


def _scan(model, field, runner, **kw):
    engine = Engine(model, runner=runner, batch_size=8, core=64, **kw)
    with Mosaic.open(field["paths"]) as mosaic:
        results = list(engine.iter_results(*engine.prepare(mosaic, GridSource(7))))
    return engine, np.concatenate([r.score for r in results])


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_the_infer_stage_keeps_the_runners_in_flight_batches_outstanding(model, field, depth):
    spec = read_spec(model)[0]
    runner = DeferringRunner(spec, depth)
    engine, scores = _scan(model, field, runner)
    assert engine.in_flight == depth
    assert engine.nslots == max(4, depth + 2)  # one being gathered, one queued
    assert runner.submitted > 2 * depth
    assert runner.peak == depth, f"at most {runner.peak} outstanding, in_flight is {depth}"
    assert runner.outstanding == 0  # every batch was collected
    _, reference = _scan(model, field, DeferringRunner(spec, 1))
    np.testing.assert_array_equal(scores, reference)  # same scores whatever the depth


def test_fewer_slots_than_the_runner_wants_in_flight_still_finish(model, field):
    """slots=2 with a runner wanting 3 in flight would leave the gather stage no slot to
    fill: the engine caps in_flight at its slots instead of deadlocking."""
    runner = DeferringRunner(read_spec(model)[0], 3)
    engine, scores = _scan(model, field, runner, slots=2)
    assert (engine.nslots, engine.in_flight) == (2, 2)
    assert runner.peak == 2 and scores.size > 0 and runner.outstanding == 0


def test_runner_defaults_on_the_cpu_and_for_gpus(model):
    from pyengine.runners.torch import TorchRunner

    assert (CPU_IN_FLIGHT, GPU_IN_FLIGHT, GPU_BATCH) == (2, 3, 1024)
    cpu = TorchRunner(model, device="cpu")
    assert cpu.in_flight == CPU_IN_FLIGHT and cpu.preferred_batch_size == 32
    assert Engine(model, runner=cpu).nslots == 4


def test_a_zero_padded_stem_gives_the_same_scores(model):
    """pad_channels=8: the first convolution takes 8 channels, 6 of them zeros with zero
    weights, so the scores are those of the unpadded graph."""
    import torch

    from pyengine.models.classifier import precision_graph
    from pyengine.runners.torch import TorchRunner, pad_stem

    rng = np.random.default_rng(4)
    spec = read_spec(model)[0]
    x = rng.normal(300.0, 6.0, (6, spec.nband, spec.cutout_size, spec.cutout_size))
    x = x.astype(np.float32)
    x[1, :, :5] = np.nan
    got = {}
    for pad in (None, 8):
        with TorchRunner(model, device="cpu", pad_channels=pad) as runner:
            got[pad] = runner.infer(x)
            conv = runner._graph.backbone.conv1
            weight = (conv.conv if pad else conv).weight
            assert weight.shape[1] == (8 if pad else spec.nband)
            if pad:
                assert torch.count_nonzero(weight[:, spec.nband :]) == 0
    np.testing.assert_allclose(got[8], got[None], rtol=0, atol=1e-5)
    graph = precision_graph(load_model(model), "fp32")
    assert pad_stem(graph, spec.nband) is graph and graph.backbone.conv1.in_channels == 2


@pytest.mark.parametrize("bad", [0, 65, 2.5, True, "8"])
def test_pad_channels_is_checked(model, bad):
    from pyengine.runners.torch import TorchRunner

    with pytest.raises(ConfigError, match=r"pad_channels = .* is not accepted; accepted: None "
                                          r"or a channel count from 1 to 64"):
        TorchRunner(model, device="cpu", pad_channels=bad)


def test_gather_threads_default_and_override(model):
    from pyengine.devices import usable_threads

    assert Engine(model, runner="torch", device="cpu", threads=1).gather_threads == 1
    assert Engine(model, runner="torch", device="cpu").gather_threads == min(4, usable_threads())
    engine = Engine(model, runner="torch", device="cpu", threads=1, gather_threads=2)
    assert engine.gather_threads == min(2, usable_threads())
    assert Engine(model, runner="torch", device="cpu", gather_threads=10_000).gather_threads == \
        usable_threads()
    with pytest.raises(ConfigError, match="gather threads"):
        Engine(model, runner="torch", device="cpu", gather_threads=0)
