"""``pyengine survey init`` and ``pyengine survey show`` on MegaPipe-like files."""

from __future__ import annotations

import math
import shutil

import pytest
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.survey import read_manifest


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """Four overlapping 200 px pointings as MegaPipe names them, in one folder, with a
    truth table and a weight map beside them."""
    from pyengine.synth.config import SynthConfig
    from pyengine.synth.field import make_field

    root = tmp_path_factory.mktemp("megapipe")
    work = tmp_path_factory.mktemp("fields")
    dec0 = 41.5
    sd = 160 * 0.187 / 3600
    sr = sd / math.cos(math.radians(dec0))
    for k, (i, j) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        make_field(work / str(k), SynthConfig(width=200, height=200, seed=k, ra=11 + i * sr,
                                              dec=dec0 + j * sd))
        stem = f"G00{k}.011.000+41.{500 + j:03d}"
        shutil.copy(work / str(k) / "g.fits", root / f"{stem}.G.fits")
        shutil.copy(work / str(k) / "i.fits", root / f"{stem}.I.fits")
    shutil.copy(work / "0" / "g.fits", root / "G000.011.000+41.500.G.weight.fits")
    shutil.copy(work / "0" / "truth.fits", root / "truth.fits")  # a table: skipped
    return root


def _run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_init_pairs_bands_names_fields_and_finds_the_weight_map(flat, tmp_path):
    out = tmp_path / "s.ecsv"
    result = _run("survey", "init", flat, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"4 field(s), bands g, i, 0.2 Mpx per band -> {out}"
    survey = read_manifest(out)
    assert [f.id for f in survey.fields] == [f"G00{k}.011.000+41.{500 + j:03d}" for k, j in
                                             [(0, 0), (1, 0), (2, 1), (3, 1)]]
    assert survey.bands == ("g", "i")
    first = survey.fields[0]
    assert first.images[0].endswith(".G.fits") and first.images[1].endswith(".I.fits")
    assert first.weights[0].endswith(".G.weight.fits") and first.weights[1] is None
    assert all(f.described for f in survey.fields)
    # the same with a glob, bands in the model's order
    again = _run("survey", "init", f"{flat}/*.fits", "--bands", "i,g", "-o", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert read_manifest(out).bands == ("i", "g")


def test_init_refusals_are_one_line(flat, tmp_path):
    out = tmp_path / "s.ecsv"
    only_g = _run("survey", "init", f"{flat}/G000*.G.fits", "--bands", "g,i", "-o", out)
    assert only_g.exit_code == 1
    assert only_g.output.startswith("Error: the pointing of G000.011.000+41.500.G.fits has "
                                    "no image of band i (its bands: g)")
    assert only_g.output.count("\n") == 1
    # every band found is wanted: the pointing that lacks one is named
    files = sorted(p for p in flat.glob("G00*.fits") if "weight" not in p.name)
    files.remove(flat / "G003.011.000+41.501.I.fits")
    lacking = _run("survey", "init", *files, "-o", out)
    assert lacking.exit_code == 1
    assert lacking.output == ("Error: the pointing of G003.011.000+41.501.G.fits has no image "
                              "of band i (its bands: g); every field needs one per band\n")
    out.write_text("x")
    exists = _run("survey", "init", flat, "-o", out)
    assert exists.exit_code == 1
    assert exists.output == f"Error: -o {out}: the file exists; add --overwrite to replace it\n"
    named = _run("survey", "init", flat / "truth.fits", flat / "G000.011.000+41.500.I.fits",
                 "-o", tmp_path / "t.ecsv")
    assert named.exit_code == 1 and "no image HDU" in named.output
    none = _run("survey", "init", tmp_path / "nothing*.fits", "-o", tmp_path / "u.ecsv")
    assert none.exit_code == 1 and "no such file, folder or matching FITS files" in none.output


def test_show_lists_fields_area_overlaps_and_draws_the_footprints(flat, tmp_path):
    out = tmp_path / "s.ecsv"
    assert _run("survey", "init", flat, "-o", out).exit_code == 0
    png = tmp_path / "fp.png"
    result = _run("survey", "show", out, "--png", png, "--within", "11.0055,41.5042,0.002")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{out}: 4 field(s), bands g, i"
    assert len([ln for ln in lines if ln.startswith("G00")]) == 4
    area = next(ln for ln in lines if ln.startswith("area "))
    # four 37.4" fields overlapping by 7.5": union 67.3" square, 0.000349 deg^2
    assert area.startswith("area 0.000349 deg^2") or area.startswith("area 0.000348 deg^2")
    assert "6 overlapping pair(s)" in result.output
    assert "--within 11.0055,41.5042,0.002: 4 of 4 field(s) touch it" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    far = _run("survey", "show", out, "--within", "200,-30,0.5")
    assert far.exit_code == 1 and far.output.startswith("Error: --within 200,-30,0.5 touches "
                                                        "none of the survey's 4 fields")
    assert far.output.count("\n") == 1
    missing = _run("survey", "show", tmp_path / "none.ecsv")
    assert missing.exit_code == 1 and "no such survey manifest" in missing.output
