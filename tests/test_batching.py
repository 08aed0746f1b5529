"""The C++ window gather equals the NumPy reference exactly, in float32 and float16."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pyengine import _core
from pyengine.scan.batching import gather, gather_reference


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


def same_bits(a, b):
    """Bit-for-bit equality (NaN payloads included) of two float16 or float32 arrays."""
    assert a.dtype == b.dtype and a.shape == b.shape
    view = np.uint16 if a.dtype == np.float16 else np.uint32
    return np.array_equal(a.view(view), b.view(view))


@pytest.mark.parametrize("size", [1, 2, 7, 16, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("scale", [1.0, 3.0e4, 1.0e-6])
def test_gather_dtypes_and_nan_count_equal_reference(size, dtype, scale):
    """Edges, NaN pixels, fp16 overflow (scale 3e4) and subnormals (scale 1e-6), bit for bit."""
    rng = np.random.default_rng(size)
    tile = (rng.standard_normal((2, 41, 53)) * rng.choice([1e-3, 1.0, 10.0], (2, 41, 53)))
    tile = tile.astype(np.float32)
    tile[0, 10:13, 20:22] = np.nan
    tile[1, 5, 5] = np.inf
    cx = np.concatenate([rng.integers(-size - 3, 53 + size + 3, 120), [0, 52, -10**15, 10**15]])
    cy = np.concatenate([rng.integers(-size - 3, 41 + size + 3, 120), [0, 40, 10**15, -10**15]])
    offset = np.array([0.5, -2.0], np.float32)
    scales = np.array([scale, 0.25 * scale], np.float32)
    counts = np.full((len(cx), 2), -1, np.int32)
    ref_counts = np.full((len(cx), 2), -1, np.int32)
    ours = gather(tile, cx, cy, size, offset=offset, scale=scales, dtype=dtype, nan_count=counts)
    ref = gather_reference(tile, cx, cy, size, offset=offset, scale=scales, dtype=dtype,
                           nan_count=ref_counts)
    assert ours.dtype == ref.dtype == np.dtype(dtype)
    assert same_bits(ours, ref)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(counts, np.isnan(ours).sum(axis=(2, 3)))
    assert counts[-1].tolist() == [size * size] * 2  # entirely outside
    # Band 0's NaN block is counted in band 0 alone (band 1 has none there).
    inside = (np.abs(cx - 21) < size // 2) & (np.abs(cy - 11) < size // 2)
    assert np.all(counts[inside, 0] > counts[inside, 1]) or not inside.any()


def test_float16_rounding_matches_numpy_everywhere():
    """Every binary16 value, its float32 neighbours and rounding ties, and random bit patterns."""
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    exact = halves.astype(np.float32).view(np.uint32)
    steps = [0xFFFFFFFF, 0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF]  # -1 ulp .. +1 ulp, tie +- 1
    rng = np.random.default_rng(3)
    bits = np.concatenate([exact + np.uint32(d) for d in steps]
                          + [rng.integers(0, 1 << 32, 150_000, dtype=np.uint64).astype(np.uint32)])
    side = int(np.ceil(np.sqrt(bits.size)))
    values = np.zeros(side * side, np.uint32)
    values[: bits.size] = bits
    tile = values.view(np.float32).reshape(1, side, side)
    ours = gather(tile, [side // 2], [side // 2], side, dtype=np.float16)
    ref = gather_reference(tile, [side // 2], [side // 2], side, dtype=np.float16)
    assert same_bits(ours, ref)


def test_float16_special_values():
    tile = np.array([[[65504.0, 65519.0, 65520.0, 1e30, -1e30, np.inf, -np.inf, np.nan,
                       2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14, -2.0**-24, 0.0, -0.0]]],
                    np.float32)
    n = tile.shape[2]
    out = gather(tile, [n // 2], [0], n, dtype=np.float16)[0, 0, n // 2]
    # Finite values beyond the float16 range saturate (a bright pixel stays bright, where
    # inf would be a missing pixel to the model); inf and NaN stay what they are.
    want = np.array([65504.0, 65504.0, 65504.0, 65504.0, -65504.0, np.inf, -np.inf, np.nan,
                     2.0**-24, 0.0, 2.0**-24, 2.0**-14, -2.0**-24, 0.0, -0.0], np.float16)
    assert same_bits(out, want)


def test_out_dtype_decides_and_dtype_is_checked():
    tile = np.ones((1, 8, 8), np.float32)
    out = np.zeros((1, 1, 4, 4), np.float16)
    assert gather(tile, [4], [4], 4, out=out) is out
    assert (out == 1).all()
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        gather(tile, [4], [4], 4, dtype=np.float64)
    with pytest.raises(ValueError, match="out must be a writable C-contiguous float32 or float16"):
        gather(tile, [4], [4], 4, out=np.zeros((1, 1, 4, 4), np.float64))
    with pytest.raises(ValueError, match=r"nan_count must be None or a writable .* int32 array of shape \(1, 1\)"):
        gather(tile, [4], [4], 4, nan_count=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"shape \(1, 1\), got int32 \(1,\)"):
        gather(tile, [4], [4], 4, nan_count=np.zeros(1, np.int32))  # one count per band
    with pytest.raises(ValueError, match="nan_count must be None"):
        gather(tile, [4], [4], 4, nan_count=np.zeros((1, 1), np.int64))


def test_concurrent_gathers_equal_serial():
    rng = np.random.default_rng(1)
    tile = rng.standard_normal((2, 300, 300)).astype(np.float32)
    jobs = [(rng.integers(-40, 340, 2000), rng.integers(-40, 340, 2000)) for _ in range(8)]
    serial = [gather(tile, cx, cy, 32) for cx, cy in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda j: gather(tile, j[0], j[1], 32), jobs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
