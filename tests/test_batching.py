"""The C++ window gather equals the NumPy reference exactly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pyengine import _core
from pyengine.batching import gather, gather_reference


def test_extension_imports():
    assert "GIL" in _core.__doc__
    assert callable(_core.gather)


@pytest.mark.parametrize("size", [1, 2, 7, 16, 64])
def test_gather_equals_reference(size):
    rng = np.random.default_rng(size)
    tile = rng.standard_normal((2, 57, 83)).astype(np.float32)
    tile[0, 10:13, 20:22] = np.nan
    cx = np.concatenate([rng.integers(-size - 3, 83 + size + 3, 300), [0, 82, -10**15, 10**15]])
    cy = np.concatenate([rng.integers(-size - 3, 57 + size + 3, 300), [0, 56, 10**15, -10**15]])
    offset = np.array([0.5, -2.0], np.float32)
    scale = np.array([2.0, 0.25], np.float32)
    ours = gather(tile, cx, cy, size, offset=offset, scale=scale)
    ref = gather_reference(tile, cx, cy, size, offset=offset, scale=scale)
    assert ours.shape == (len(cx), 2, size, size)
    np.testing.assert_array_equal(ours, ref)


def test_window_contract_centre_and_nan_outside():
    tile = np.arange(20 * 30, dtype=np.float32).reshape(1, 20, 30)
    out = gather(tile, [5], [4], 4)
    # rows [4 - 2, 4 + 2), columns [5 - 2, 5 + 2)
    np.testing.assert_array_equal(out[0, 0], tile[0, 2:6, 3:7])
    edge = gather(tile, [0], [0], 4)[0, 0]
    assert np.isnan(edge[:2]).all() and np.isnan(edge[:, :2]).all()
    np.testing.assert_array_equal(edge[2:, 2:], tile[0, :2, :2])


def test_out_is_fully_written():
    tile = np.ones((3, 10, 10), np.float32)
    out = np.full((2, 3, 8, 8), 123.0, np.float32)
    gather(tile, [5, 100], [5, 100], 8, out=out)
    assert not (out == 123.0).any()


def test_bad_arguments_raise_value_error():
    tile = np.zeros((1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="tile must be a C-contiguous float32"):
        _core.gather(tile.astype(np.float64), np.zeros(1, np.int64), np.zeros(1, np.int64), 4,
                     np.zeros(1, np.float32), np.ones(1, np.float32),
                     np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="out must be a writable"):
        _core.gather(tile, np.zeros(1, np.int64), np.zeros(1, np.int64), 4,
                     np.zeros(1, np.float32), np.ones(1, np.float32),
                     np.zeros((1, 1, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"cutout size must be in 1\.\.4096"):
        _core.gather(tile, np.zeros(1, np.int64), np.zeros(1, np.int64), 0,
                     np.zeros(1, np.float32), np.ones(1, np.float32),
                     np.zeros((1, 1, 0, 0), np.float32))


def test_concurrent_gathers_equal_serial():
    rng = np.random.default_rng(1)
    tile = rng.standard_normal((2, 300, 300)).astype(np.float32)
    jobs = [(rng.integers(-40, 340, 2000), rng.integers(-40, 340, 2000)) for _ in range(8)]
    serial = [gather(tile, cx, cy, 32) for cx, cy in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda j: gather(tile, j[0], j[1], 32), jobs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
