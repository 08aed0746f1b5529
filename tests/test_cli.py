"""The CLI: cheap to import, one-line errors, info report."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import click
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError


def test_help_imports_no_heavy_modules():
    code = (
        "import sys; from click.testing import CliRunner; from pyengine.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'numba', 'astropy') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == ""


def test_help_imports_no_numpy():
    """Every subcommand module defers its work's imports: ``pyengine --help`` loads no NumPy
    (each command's package ``__init__`` imports lazily)."""
    code = ("import sys; from click.testing import CliRunner; from pyengine.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "print('numpy' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_help_lists_commands():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    assert "info" in res.output
    assert "synth" in res.output
    assert "inject" in res.output


def test_info_reports_runners_and_machine():
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    assert "CPU:" in res.output
    for name in ("onnxruntime", "torch", "tensorrt"):
        assert name in res.output
    assert "tensorrt" in res.output and ("usable" in res.output or "unusable" in res.output)


def test_info_json():
    res = CliRunner().invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["threads"] >= 1
    assert report["packages"]["numpy"]
    names = {r["name"]: r for r in report["runners"]}
    assert set(names) == {"onnxruntime", "torch", "tensorrt"}
    for r in names.values():
        assert r["detail"]  # every unusable runner says why


@contextmanager
def temporary_command(name, error):
    """Register a subcommand that raises ``error``, for the length of a test."""

    @main.command(name)
    def _raise():
        raise error

    try:
        yield
    finally:
        main.commands.pop(name)


def test_user_error_is_one_line_and_exit_1():
    with temporary_command("raise-config-error-for-test",
                           ConfigError("--foo: value 3 is out of range; accepted: 1..2")):
        res = CliRunner().invoke(main, ["raise-config-error-for-test"])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: --foo: value 3 is out of range; accepted: 1..2"
    assert "Traceback" not in res.output


def test_usage_error_exit_2():
    res = CliRunner().invoke(main, ["info", "--no-such-option"])
    assert res.exit_code == 2


def test_bug_keeps_its_traceback():
    with temporary_command("raise-bug-for-test", RuntimeError("a bug")):
        res = CliRunner().invoke(main, ["raise-bug-for-test"])
    assert isinstance(res.exception, RuntimeError)
    assert not isinstance(res.exception, click.ClickException)
