"""Fixtures shared by the scan tests (tests/test_engine.py, tests/test_scan_cli.py).

``field``, ``model`` and ``catalog`` are the small field, model and catalog of
:mod:`tests.scanfield`, made once per session.  Test modules that define fixtures
of the same names (e.g. the training tests) use their own.
"""

from __future__ import annotations

import pytest

from tests import scanfield


@pytest.fixture(scope="session")
def field(tmp_path_factory):
    return scanfield.make_field(tmp_path_factory.mktemp("field"))


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return scanfield.make_model(tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="session")
def catalog(tmp_path_factory, field):
    return scanfield.write_catalog(tmp_path_factory.mktemp("cat") / "cat.fits", field)
