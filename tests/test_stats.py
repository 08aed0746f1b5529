"""pyengine.stats: the one robust sigma (1.4826 x MAD), same numbers and dtypes as before."""

import numpy as np
import pytest

from pyengine.stats import MAD_TO_SIGMA, median_and_sigma, nan_robust_sigma, robust_sigma


def test_constant_is_one_over_the_gaussian_quartile():
    from statistics import NormalDist

    assert MAD_TO_SIGMA == 1.4826
    assert MAD_TO_SIGMA == pytest.approx(1 / NormalDist().inv_cdf(0.75), rel=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_and_dtypes_are_the_hand_written_formula(dtype):
    v = np.random.default_rng(3).normal(10.0, 2.0, 10_001).astype(dtype)
    med, sigma = median_and_sigma(v)
    expect = 1.4826 * np.median(np.abs(v - np.median(v)))
    assert sigma == expect and np.asarray(sigma).dtype == np.asarray(expect).dtype == dtype
    assert med == np.median(v)
    assert robust_sigma(v) == expect
    assert robust_sigma(v, 10.0) == 1.4826 * np.median(np.abs(v - 10.0))
    assert sigma == pytest.approx(2.0, rel=0.03)   # a sigma estimate of Gaussian noise


def test_nan_version_along_an_axis():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, (5, 2, 400)).astype(np.float32)
    x[0, 1, ::3] = np.nan
    x[2, 0] = np.nan
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning, match="All-NaN"):
        out = nan_robust_sigma(x, axis=2)
    assert out.shape == (5, 2) and out.dtype == np.float32
    assert np.isnan(out[2, 0])
    finite = x[0, 1][np.isfinite(x[0, 1])]
    assert out[0, 1] == np.float32(robust_sigma(finite))
    assert out[1, 0] == robust_sigma(x[1, 0])
