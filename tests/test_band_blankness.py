"""Blankness is judged band by band; whole-field problems are named; resume is bit-exact.

* A band with no data at a position (all NaN in the cutout) flags it BLANK and it is never
  a candidate, even when the other band is complete (pooled over two bands it was only
  50 % blank) and even with ``max_nan_fraction`` 1.0.
* The C++ gather counts NaN pixels per band, as the NumPy reference does.
* ``pyengine scan`` ends with one ``Warning:`` line for a band blank in every cutout, a
  band that is 0 everywhere scanned, and a scan whose positions are all off the image.
* Scores do not depend on where batches were cut: scans that skip different tiles (as a
  resumed scan does) give bit-identical scores, on int16 BSCALE data, through both the
  dense (ring workers) and sparse (gather thread) paths.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.flags import BLANK, EDGE, OFF_IMAGE
from pyengine.io.mosaic import Mosaic
from pyengine.models.spec import ModelSpec
from pyengine.runners.base import Runner
from pyengine.scan.batching import gather, gather_reference
from pyengine.scan.engine import Engine
from pyengine.sources import CatalogSource
from tests import scanfield
from tests.makedata import make_wcs

SHAPE = (200, 240)
I_HOLE = (slice(60, 150), slice(80, 200))  # rows, columns where the i band is NaN


class _OneRunner(Runner):
    """Scores every cutout 1.0: every position not flagged is a candidate."""

    name = "one"

    def __init__(self, spec):
        super().__init__(spec, "fp32")

    def _activate(self):
        pass

    def _infer(self, batch):
        return np.ones(batch.shape[0], np.float32)

    def _deactivate(self):
        pass


def _write_bands(directory, g, i):
    wcs = make_wcs(g.shape)
    paths = []
    for name, image in (("g", g), ("i", i)):
        header = wcs.to_header()
        header["FILTER"] = name
        path = directory / f"{name}.fits"
        fits.PrimaryHDU(image.astype(np.float32), header).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def _sky(seed=0):
    rng = np.random.default_rng(seed)
    return 1000.0 + rng.normal(0.0, 10.0, SHAPE)


def test_a_band_blank_where_the_other_has_data_is_blank_and_never_a_candidate(tmp_path):
    g, i = _sky(1), _sky(2)
    i[I_HOLE] = np.nan
    paths = _write_bands(tmp_path, g, i)
    # Positions well inside the hole (i has no pixel in their 16 px cutouts), on its
    # border (i partly NaN) and far from it (complete).
    inside = [(140.0, 105.0), (120.0, 90.0), (160.0, 120.0)]
    border = [(80.0, 100.0)]
    clean = [(30.0, 30.0), (220.0, 180.0)]
    xy = np.array(inside + border + clean)
    cat = tmp_path / "pos.csv"
    Table({"x": xy[:, 0], "y": xy[:, 1]}).write(cat)
    spec = ModelSpec(cutout_size=16, threshold=0.5)
    for limit in (0.5, 1.0):
        engine = Engine(runner=_OneRunner(spec), batch_size=4, core=64, max_nan_fraction=limit)
        with Mosaic.open(paths) as mosaic:
            table = engine.scan(mosaic, CatalogSource(cat))
        flags = np.asarray(table["flags"])
        cand = np.asarray(table["is_candidate"])
        # No data in i: BLANK (and EDGE), never a candidate, whatever the limit.
        assert np.all(flags[:3] == BLANK | EDGE), (limit, flags)
        assert not cand[:3].any()
        np.testing.assert_array_equal(table["nan_frac_i"][:3], 1.0)
        np.testing.assert_array_equal(table["nan_frac_g"][:3], 0.0)
        # Half of the border cutout's i pixels are NaN: EDGE, and BLANK only above the limit.
        assert table["nan_frac_i"][3] == 0.5 and table["nan_frac_g"][3] == 0.0
        assert flags[3] == EDGE
        assert cand[3]
        assert np.all(flags[4:] == 0) and cand[4:].all()
        np.testing.assert_array_equal(table["nan_frac_i"][4:], 0.0)


def test_gather_counts_nan_per_band_like_numpy():
    rng = np.random.default_rng(4)
    tile = rng.standard_normal((3, 50, 60)).astype(np.float32)
    tile[1, :, 30:] = np.nan  # band 1 blank on the right half
    tile[2, 10:20, 5:15] = np.nan
    cx = np.concatenate([rng.integers(-20, 80, 200), [45, -500]])
    cy = np.concatenate([rng.integers(-20, 70, 200), [25, 25]])
    for dtype in (np.float32, np.float16):
        counts = np.full((cx.size, 3), -1, np.int32)
        ref = np.full((cx.size, 3), -1, np.int32)
        out = gather(tile, cx, cy, 16, dtype=dtype, nan_count=counts)
        gather_reference(tile, cx, cy, 16, dtype=dtype, nan_count=ref)
        np.testing.assert_array_equal(counts, ref)
        np.testing.assert_array_equal(counts, np.isnan(out).sum(axis=(2, 3)))
        assert counts[-2].tolist() == [0, 256, 0]  # only band 1 is blank there
        assert counts[-1].tolist() == [256, 256, 256]  # off the tile


# -- CLI: whole-field warnings -------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


def _scan(cache, paths, out, *args):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return CliRunner().invoke(main, ["scan", *map(str, paths), "-q", "-o", str(out),
                                     *map(str, args)], env=env, catch_exceptions=False)


def _warnings(res):
    return [line for line in res.stderr.splitlines() if line.startswith("Warning: ")]


def _field_with(tmp_path, band_i):
    g = _sky(5)
    return _write_bands(tmp_path, g, band_i)


@pytest.mark.parametrize("kind", ["nan", "zero"])
def test_scan_warns_of_a_band_with_no_data_or_all_zero(kind, model, cache, tmp_path):
    i = np.full(SHAPE, np.nan if kind == "nan" else 0.0)
    paths = _field_with(tmp_path, i)
    out = tmp_path / "cat.fits"
    res = _scan(cache, paths, out, "--grid", 40, "--model", model, "--runner", "onnxruntime")
    assert res.exit_code == 0, res.output
    lines = _warnings(res)
    assert len(lines) == 1, res.stderr
    if kind == "nan":
        assert lines[0] == (f"Warning: band i ({paths[1]}) has no data (all NaN) in every one "
                            "of the 30 cutouts scanned: all are flagged BLANK and none is a "
                            "candidate")
        table = Table.read(out)
        assert np.all(np.asarray(table["flags"]) & BLANK)
        assert not np.any(table["is_candidate"])
    else:
        assert lines[0] == (f"Warning: band i ({paths[1]}) is exactly 0 at every one of the 30 "
                            "positions scanned (an empty or broken stack?): its scores are "
                            "not meaningful")
    # The summary line is still printed, then the warning; --log-json carries it too.
    assert "30 positions, 30 scored" in res.stdout
    res = _scan(cache, paths, tmp_path / "cat2.fits", "--grid", 40, "--model", model,
                "--runner", "onnxruntime", "--log-json")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["warnings"] == [lines[0][9:]]


def test_scan_warns_when_every_position_is_off_the_image(field, model, cache, tmp_path):
    cat = tmp_path / "off.csv"
    Table({"x": [-100.0, 5000.0, np.nan], "y": [10.0, 10.0, 3.0]}).write(cat)
    res = _scan(cache, field["paths"], tmp_path / "cat.fits", "--catalog", cat, "--model",
                model, "--runner", "onnxruntime")
    assert res.exit_code == 0, res.output
    files = ", ".join(str(p) for p in field["paths"])
    assert _warnings(res) == [
        f"Warning: all 3 positions are off the image of {files}: nothing was scored; check "
        "the positions (catalog columns, their units and frame) against the images' WCS "
        "and size"]
    table = Table.read(tmp_path / "cat.fits")
    assert np.all(np.asarray(table["flags"]) & OFF_IMAGE)


def test_a_good_field_gives_no_warning(field, model, catalog, cache, tmp_path):
    res = _scan(cache, field["paths"], tmp_path / "cat.fits", "--catalog", catalog, "--model",
                model, "--runner", "onnxruntime")
    assert res.exit_code == 0, res.output
    assert _warnings(res) == []
    assert scanfield.BLANK_BOX  # the field's blank block is local: no whole-band warning
