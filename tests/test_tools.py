"""Developer tools run on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.makedata import write_image

TOOLS = Path(__file__).parent.parent / "tools"


def test_fits_layout_marks_the_hdu_mosaic_reads(tmp_path):
    write_image(tmp_path / "a.fits", "i16_scaled_blank", ext=True)
    res = subprocess.run([sys.executable, str(TOOLS / "fits_layout.py"), str(tmp_path / "a.fits"),
                          str(tmp_path / "missing.fits")], capture_output=True, text=True,
                         check=False)
    lines = res.stdout.splitlines()
    assert lines[0].endswith("a.fits: 2 HDU(s)")
    assert "empty" in lines[1]
    assert "image" in lines[2] and "37 x 53" in lines[2] and "BSCALE=0.037" in lines[2]
    assert lines[2].endswith("<- read")
    assert res.stderr.strip().endswith("missing.fits: no such file")
    assert res.returncode == 1
