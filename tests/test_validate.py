"""pyengine.validate (option checks) and the CLI defaults read from the library."""

import inspect

import numpy as np
import pytest

from pyengine.errors import ConfigError
from pyengine.validate import choice, integer, is_int, is_number, need, number


def test_predicates_refuse_bools_and_non_finite_numbers():
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int(np.int64(3))
    assert is_number(2.5) and is_number(2) and not is_number(False)
    assert not is_number(float("nan")) and not is_number(float("inf")) and not is_number("1")


def test_integer():
    assert integer(5, "--n", 1, 10) == 5 and type(integer(np.int32(5), "--n", 1, 10)) is int
    assert integer(8.0, "--n", 1, 10, whole_floats=True) == 8
    with pytest.raises(ConfigError, match=r"^--n 8\.0 is not accepted; an integer 1\.\.10 is "
                                          r"needed$"):
        integer(8.0, "--n", 1, 10)
    with pytest.raises(ConfigError, match=r"^--n 0 is not accepted; an integer >= 1 is needed$"):
        integer(0, "--n", 1)
    with pytest.raises(ConfigError, match=r"^--n True is not accepted"):
        integer(True, "--n", 0, 10, whole_floats=True)
    with pytest.raises(ConfigError, match=r"^--n 2\.5 is not accepted; say so$"):
        integer(2.5, "--n", whole_floats=True, accepted="say so")


def test_number():
    assert number(np.float32(0.5), "--f", 0, 1) == 0.5
    assert number(None, "--f", allow_none=True) is None
    assert number(1, "--f", 0, 1) == 1.0
    with pytest.raises(ConfigError, match=r"^--f 1 is not accepted; a number in \[0, 1\) is "
                                          r"needed$"):
        number(1, "--f", 0, 1, hi_open=True)
    with pytest.raises(ConfigError, match=r"^--f 0 is not accepted; a number in \(0, inf\) is"):
        number(0, "--f", 0, lo_open=True)
    with pytest.raises(ConfigError, match=r"^--f nan is not accepted; a finite number is needed"):
        number(float("nan"), "--f")
    with pytest.raises(ConfigError, match=r"^--f None is not accepted"):
        number(None, "--f")


def test_choice_and_need():
    assert choice("b", "--kind", ("a", "b")) == "b"
    with pytest.raises(ConfigError, match=r"^--kind 'c' is not accepted; accepted: a, b$"):
        choice("c", "--kind", ("a", "b"))
    need(True, "--x", 1, "anything")
    with pytest.raises(ConfigError, match=r"^--x 1 is not accepted; it needs --y$"):
        need(False, "--x", 1, "it needs --y")


def test_engine_refuses_bad_options_in_one_line():
    from pyengine.scan.engine import Engine

    for kwargs, match in [({"batch_size": 0}, r"batch size 0 is not accepted; an integer 1\.\."),
                          ({"threads": 0}, "threads 0 is not accepted; a positive integer"),
                          ({"max_nan_fraction": 1.5}, r"max NaN fraction 1\.5 is not accepted"),
                          ({"threshold": -0.1}, r"threshold -0\.1 is not accepted; a probab"),
                          ({"core": 32}, r"tile core 32 is not accepted; an integer 64\.\.65536")]:
        with pytest.raises(ConfigError, match=match):
            Engine(**kwargs)


def test_scan_cli_defaults_are_the_librarys():
    from pyengine.scan.cli import scan
    from pyengine.scan.engine import Engine
    from pyengine.sources.detect import DetectSource

    shown = {p.name: p.default for p in scan.params}
    engine = inspect.signature(Engine).parameters
    detect = inspect.signature(DetectSource).parameters
    assert shown["tile_size"] == engine["core"].default == 2048
    assert shown["max_nan"] == engine["max_nan_fraction"].default == 0.5
    assert shown["detect_threshold"] == detect["threshold"].default == 3.0
    assert shown["min_area"] == detect["min_area"].default == 5
    assert shown["detect_band"] == detect["band"].default == "sum"
    assert shown["aperture"] == detect["aperture"].default == 8.0
