"""``pyengine demo --survey``: a synthetic survey scanned as a survey, scored per field."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from pyengine.cli import main


@pytest.mark.slow
def test_demo_survey_prints_per_field_and_total_completeness_and_purity(tmp_path):
    got = CliRunner().invoke(main, ["demo", "--survey", "2x2", "--size", "320", "--out",
                                    str(tmp_path / "d"), "--runner", "torch"])
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
    assert (tmp_path / "d" / "candidates.fits").exists()


def test_demo_survey_options_are_checked(tmp_path):
    for bad in ("2by2", "0x2", "7x1"):
        got = CliRunner().invoke(main, ["demo", "--survey", bad, "--out", str(tmp_path)])
        assert got.exit_code == 1
        assert got.output.startswith(f"Error: --survey {bad!r} is not accepted")
