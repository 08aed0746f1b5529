"""``pyengine demo``: a synthetic survey scanned as a survey, scored per field (the
default), or one field (``--single``)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from pyengine.cli import main


@pytest.mark.slow
def test_demo_survey_prints_per_field_and_total_completeness_and_purity(tmp_path):
    got = CliRunner().invoke(main, ["demo", "--size", "320", "--out", str(tmp_path / "d"),
                                    "--runner", "torch"])  # the default: a 2 x 2 survey
    assert got.exit_code == 0, got.output
    rows = re.findall(r"^  (F\d\d): completeness .*\((\d+)/(\d+)\), purity .*\((\d+)/(\d+)\)$",
                      got.output, re.M)
    assert [r[0] for r in rows] == ["F00", "F10", "F01", "F11"]
    total = re.search(r"^total: completeness .*\((\d+)/(\d+)\), purity .*\((\d+)/(\d+)\)",
                      got.output, re.M)
    assert total, got.output
    # each cluster and each candidate is counted in exactly one field
    for i in range(4):
        assert sum(int(r[i + 1]) for r in rows) == int(total.group(i + 1))
    assert "survey: 4 field(s) scanned" in got.output
    for name in ("candidates.fits", "candidates.reg", "footprints.png"):
        assert (tmp_path / "d" / name).exists(), name
    assert re.search(r"purity (\d+\.\d%|n/a) \(", got.output) and "nan%" not in got.output


@pytest.mark.slow
def test_demo_single_scans_one_field(tmp_path):
    got = CliRunner().invoke(main, ["demo", "--single", "--size", "256", "--out",
                                    str(tmp_path / "d"), "--runner", "torch"])
    assert got.exit_code == 0, got.output
    assert "completeness" in got.output and "survey:" not in got.output
    assert (tmp_path / "d" / "overview.png").exists()


def test_demo_survey_options_are_checked(tmp_path):
    for bad in ("2by2", "0x2", "7x1"):
        got = CliRunner().invoke(main, ["demo", "--survey", bad, "--out", str(tmp_path)])
        assert got.exit_code == 1
        assert got.output.startswith(f"Error: --survey {bad!r} is not accepted")
    got = CliRunner().invoke(main, ["demo", "--size", "5000", "--out", str(tmp_path)])
    assert got.exit_code == 1 and "accepted: 256..4096 pixels per field" in got.output
