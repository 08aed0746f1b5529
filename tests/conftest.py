"""Fixtures shared by the scan tests (tests/test_engine.py, tests/test_scan_cli.py).

``field``, ``model`` and ``catalog`` are the small field, model and catalog of
:mod:`tests.scanfield`, made once per session.  Test modules that define fixtures
of the same names (e.g. the training tests) use their own.

``accept``: true with ``pytest --accept`` or ``PYENGINE_ACCEPT=1``; golden-output
tests (tests/test_golden.py) then rewrite their files under tests/expect/ instead
of comparing with them, as torchvision's test/expect does.

Every test run loads this module, the GPU machine's too, whose image has torch
and numpy but no astropy, fitsio or SEP and no built ``pyengine._core``.  So it
imports only the standard library and pytest at module level; :mod:`tests.scanfield`
(which needs astropy) is imported inside the fixtures that use it, which skip
with a reason where astropy is absent.
tests/test_gpu_collection.py checks that tests/test_runners_gpu.py collects with
those imports made to fail.
"""

from __future__ import annotations

import os

import pytest


def _scanfield():
    """:mod:`tests.scanfield`, imported on first use (it writes FITS with astropy)."""
    pytest.importorskip("astropy", reason="the scan fixtures (field, model, catalog) "
                                          "write FITS files with astropy")
    from tests import scanfield

    return scanfield


def pytest_addoption(parser):
    parser.addoption("--accept", action="store_true", default=False,
                     help="rewrite the golden outputs under tests/expect/ (as "
                          "PYENGINE_ACCEPT=1) instead of comparing with them")


@pytest.fixture(scope="session")
def accept(request) -> bool:
    return bool(request.config.getoption("--accept")) or os.environ.get("PYENGINE_ACCEPT") == "1"


@pytest.fixture(scope="session")
def field(tmp_path_factory):
    return _scanfield().make_field(tmp_path_factory.mktemp("field"))


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return _scanfield().make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="session")
def catalog(tmp_path_factory, field):
    return _scanfield().write_catalog(tmp_path_factory.mktemp("cat") / "cat.fits", field)


@pytest.fixture(scope="session")
def survey_2x2(tmp_path_factory):
    """Four overlapping 200 px fields A, B, C, D on a 2 x 2 grid (tests.makedata)."""
    from tests.makedata import make_survey_2x2

    return make_survey_2x2(tmp_path_factory.mktemp("survey"), 200, 160, seed=7)[0]


@pytest.fixture(scope="session")
def engine_64(model):
    """The test model on torch's CPU, tiles of 64 px (16 per 200 px field)."""
    from pyengine.scan.engine import Engine

    return Engine(model, runner="torch", device="cpu", batch_size=16, core=64)
