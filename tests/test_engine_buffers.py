"""The scan loop's memory: pooled tile buffers, segments gathered straight into slots.

The batches the runner receives are checked bit for bit against the reference
gather of every position (the NumPy ``gather_reference`` of the tile read
afresh), for tile plans whose segments are all sparse (gathered straight into
the slot) and plans whose slots mix dense segments (filled by the ring's
workers from the pinned tile buffer) with sparse ones, in float32 and float16.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

import pyengine.scan.pipeline as pipeline_module
from pyengine.coords import centre_pixel
from pyengine.io.mosaic import Mosaic
from pyengine.models.checkpoint import read_spec
from pyengine.runners.base import Pending, Ready, Runner
from pyengine.scan.batching import gather_reference
from pyengine.scan.buffers import TileBuffers
from pyengine.scan.engine import Engine
from pyengine.scan.pipeline import tile_affine
from pyengine.sources import CatalogSource, GridSource


class RecordingRunner(Runner):
    """Scores each cutout by its NaN-free mean and keeps a copy of every batch sent."""

    name = "recording"

    def __init__(self, spec, dtype=np.float32):
        super().__init__(spec, "fp32")
        self._dtype = np.dtype(dtype)
        self.batches: list[np.ndarray] = []

    @property
    def input_dtype(self):
        return self._dtype

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _submit(self, batch):
        self.batches.append(batch.copy())
        return Ready(self._infer(batch))

    def _infer(self, batch):
        flat = batch.astype(np.float32).reshape(batch.shape[0], -1)
        return np.where(np.isnan(flat), 0, flat).mean(axis=1).astype(np.float32)


class CountingBuffers(TileBuffers):
    made: ClassVar[list[TileBuffers]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CountingBuffers.made.append(self)


def _scan(model, field, source, *, core, batch, dtype=np.float32, prefetch=2, slots=4):
    spec = read_spec(model)[0]
    runner = RecordingRunner(spec, dtype)
    engine = Engine(model, runner=runner, batch_size=batch, core=core, prefetch=prefetch,
                    slots=slots)
    with Mosaic.open(field["paths"]) as mosaic:
        mosaic_, source_, plan = engine.prepare(mosaic, source)
        results = list(engine.iter_results(mosaic_, source_, plan))
        expected, nan_fraction = [], []
        size = spec.cutout_size
        for result in results:
            y0, y1, x0, x1 = plan[result.tile].window
            pixels = mosaic_.read(y0, y1, x0, x1)
            offset, scale = (tile_affine(pixels) if engine.transfer_dtype == np.float16
                             else (None, None))
            cut = gather_reference(pixels, centre_pixel(result.x) - x0,
                                   centre_pixel(result.y) - y0, size, offset=offset,
                                   scale=scale, dtype=engine.transfer_dtype)
            expected.append(cut)
            nan_fraction.append(np.isnan(cut).mean(axis=(1, 2, 3)))
    # Every batch has the full batch size: the last one is padded (pipeline._padded).
    assert {b.shape[0] for b in runner.batches} == {batch}
    sent = np.concatenate(runner.batches)[: sum(len(r) for r in results)]
    return engine, results, sent, np.concatenate(expected), np.concatenate(nan_fraction)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("core", "batch"), [(256, 16), (64, 16), (64, 5)])
def test_batches_are_the_reference_cutouts_bit_for_bit(model, field, catalog, core, batch,
                                                       dtype):
    """core 256: every segment is sparse; core 64: windows of 96^2 px, so a segment of
    3 or more 32 px cutouts is dense, one per slot is pinned, the rest go straight in."""
    engine, results, sent, expected, frac = _scan(model, field, CatalogSource(catalog),
                                                  core=core, batch=batch, dtype=dtype)
    assert sent.dtype == engine.transfer_dtype == np.dtype(dtype)  # the model is affine-free
    assert sent.shape == expected.shape and sent.shape[0] == sum(len(r) for r in results)
    np.testing.assert_array_equal(sent.view(np.uint16 if dtype == np.float16 else np.uint32),
                                  expected.view(np.uint16 if dtype == np.float16 else np.uint32))
    got = np.concatenate([r.nan_fraction for r in results])
    np.testing.assert_array_equal(got, frac.astype(np.float32))
    assert np.any(got > 0) and np.any(got == 0)  # edges and the blank block are in the field


def test_tile_buffers_are_reused_bounded_and_all_given_back(model, field, monkeypatch):
    CountingBuffers.made = []
    monkeypatch.setattr(pipeline_module, "TileBuffers", CountingBuffers)
    _, results, sent, expected, _ = _scan(model, field, GridSource(9), core=64, batch=16,
                                          prefetch=1, slots=2)
    np.testing.assert_array_equal(sent, expected)
    (pool,) = CountingBuffers.made
    assert len(results) == 25  # 300 x 260 px in 64 px cores: 5 x 5 tiles, each read once
    assert pool.capacity == 2 * 1 + 1 + 2 * pipeline_module._PINNED_PER_SLOT
    assert 1 <= pool.allocated <= pool.capacity and pool.peak <= pool.capacity
    assert pool.allocated < len(results)  # reused, not one per tile
    assert pool.in_use == 0  # every reference (tiles, pinned slots) was given back


class _LatePending(Pending):
    """A batch still being copied and computed (as on a GPU): ``result`` takes a while."""

    def __init__(self, scores):
        self.scores, self.waited = scores, False

    def result(self):
        import time

        time.sleep(0.02)
        self.waited = True
        return self.scores


class AsyncRunner(RecordingRunner):
    """Every batch stays in flight until its ``result`` is asked for."""

    def __init__(self, spec):
        super().__init__(spec)
        self.pending: list[_LatePending] = []

    def _submit(self, batch):
        self.pending.append(_LatePending(self._infer(batch)))
        return self.pending[-1]


def test_a_scan_stopped_early_waits_for_every_batch_in_flight(model, field):
    """A scan that ends before its last batch (the consumer stops, an error) must not leave
    batches in flight: the next scan reuses the same slots, and a GPU copy still reading
    one would race with its refill."""
    runner = AsyncRunner(read_spec(model)[0])
    engine = Engine(model, runner=runner, batch_size=8, core=64)
    with Mosaic.open(field["paths"]) as mosaic:
        mosaic_, source_, plan = engine.prepare(mosaic, GridSource(6))
        results = engine.iter_results(mosaic_, source_, plan)
        next(results)
        results.close()  # the consumer stops after one tile: the pipeline is torn down
        assert len(runner.pending) > 1
        assert all(p.waited for p in runner.pending), \
            f"{sum(not p.waited for p in runner.pending)} batches left in flight"
        # The same engine (and slots) scans again, to the end.
        assert sum(len(r) for r in engine.iter_results(mosaic_, source_, plan)) > 0


def test_tile_buffers_take_hold_drop():
    pool = TileBuffers(2, 4, 5, capacity=2)
    a, view = pool.take((2, 3, 5))
    assert view.shape == (2, 3, 5) and view.dtype == np.float32 and view.flags.c_contiguous
    b, _ = pool.take((2, 4, 5))
    pool.hold(a)
    pool.drop(a)
    assert pool.in_use == 2 and pool.allocated == 2
    with pytest.raises(RuntimeError, match="all 2 tile buffers are held"):
        pool.take((1, 1, 1))  # never waits: a lost reference fails at once
    pool.drop(a)  # the last reference: buffer a is free again
    assert pool.take((1, 1, 1))[0] == a and pool.allocated == 2 and pool.peak == 2
    with pytest.raises(ValueError, match="does not fit in a tile buffer of 40 values"):
        pool.take((2, 5, 5))
    pool.drop(b)
    with pytest.raises(ValueError, match="tile buffer 1 is not held"):
        pool.drop(b)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        TileBuffers(1, 1, 1, capacity=0)


def test_mosaic_read_out_is_checked_and_fully_written(field):
    from pyengine.errors import ConfigError

    with Mosaic.open(field["paths"]) as mosaic:
        want = mosaic.read(-10, 40, 280, 310)  # past the top and right edges
        out = np.full((2, 50, 30), 7.0, np.float32)  # stale values from an earlier tile
        assert mosaic.read(-10, 40, 280, 310, out=out) is out
        np.testing.assert_array_equal(out, want)
        frozen = np.zeros((2, 50, 30), np.float32)
        frozen.flags.writeable = False
        with pytest.raises(ConfigError, match=r"out must be a writable float32 array of shape "
                                              r"\(2, 50, 30\), got float32 \(2, 50, 30\) "
                                              r"read-only"):
            mosaic.read(-10, 40, 280, 310, out=frozen)
        with pytest.raises(ConfigError, match="got list"):
            mosaic.read(0, 1, 0, 1, out=[[0.0]])
