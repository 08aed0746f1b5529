"""``pyengine scan`` from the command line: outputs, bad input, signals, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.io.tiles import TilePlan
from tests import scanfield


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


def _run(args, cache, **kw):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return CliRunner().invoke(main, ["scan", *(str(a) for a in args)], env=env, catch_exceptions=False,
                              **kw)


def _bands(field):
    return [str(p) for p in field["paths"]]


def test_scan_catalog_writes_catalog_regions_and_json_log(field, model, catalog, cache, tmp_path):
    out = tmp_path / "cands.ecsv"
    reg = tmp_path / "cands.reg"
    res = _run([*_bands(field), "--catalog", catalog, "--model", model, "--out", out,
                "--regions", reg, "--tile-size", 64, "--batch-size", 16, "--threshold", 0.3,
                "--log-json"], cache)
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert lines[-1]["event"] == "summary"
    assert lines[-1]["positions"] == 63 and lines[-1]["off_image"] == 3
    assert lines[0]["event"] == "start" and lines[0]["runner"] == "onnxruntime"
    assert all(e["event"] == "tile" for e in lines[1:-1]) and len(lines) > 3
    table = Table.read(out)
    assert len(table) == 63
    assert table.meta["THRESH"] == 0.3
    assert table.meta["RUNNER"] == "onnxruntime"
    ncand = int(np.count_nonzero(table["is_candidate"]))
    assert ncand == lines[-1]["candidates"]
    from regions import Regions

    assert len(Regions.read(str(reg), format="ds9")) == ncand


def test_log_json_help_names_the_events_it_writes():
    res = CliRunner().invoke(main, ["scan", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "--log-json JSON lines on stdout: a start event, one per tile, then a summary." in text


def test_scan_grid_writes_a_score_map(field, model, cache, tmp_path):
    from astropy.io import fits

    out = tmp_path / "grid.fits"
    res = _run([*_bands(field), "--grid", 25, "--model", model, "--out", out, "--tile-size", 64,
                "--quiet"], cache)
    assert res.exit_code == 0, res.output
    scoremap = tmp_path / "grid_scoremap.fits"
    with fits.open(scoremap) as hdul:
        data = hdul[0].data
    ny, nx = scanfield.SHAPE
    assert data.shape == (len(range(12, ny, 25)), len(range(12, nx, 25)))
    table = Table.read(out)
    assert np.isfinite(data).sum() == np.isfinite(table["score"]).sum() == len(table)


def _error_line(res):
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_bad_inputs_give_one_line(field, model, catalog, cache, tmp_path):
    bands = _bands(field)
    out = tmp_path / "o.fits"
    empty = tmp_path / "empty.csv"
    empty.write_text("ra,dec\n")
    nopos = tmp_path / "nopos.csv"
    nopos.write_text("a,b\n1,2\n")
    both = tmp_path / "both.csv"
    both.write_text("ra,dec,x,y\n10.68,41.27,5,5\n")
    badcat = tmp_path / "sources.cat"
    badcat.write_text("not a catalog\n")
    cases = [
        (["--catalog", empty], "empty"),
        (["--catalog", nopos], "no usable position columns"),
        (["--catalog", both, "--ra-col", "ra", "--x-col", "x"], "not both"),
        (["--catalog", badcat], f"{badcat}: unknown catalog format; accepted: FITS binary "
                                "tables and FITS_LDAC (recognised by content"),
        (["--catalog", catalog, "--runner", "fast"], "runner 'fast' is not known"),
        (["--catalog", catalog, "--precision", "fp8"], "precision 'fp8'"),
        (["--catalog", catalog, "--runner", "tensorrt"], "tensorrt"),
    ]
    for extra, expect in cases:
        line = _error_line(_run([*bands, "--model", model, "--out", out, *extra], cache))
        assert expect in line, line
    # i.fits (FILTER = 'i') named r: said in a warning line, then refused by the model.
    res = _run([*bands, "--model", model, "--out", out, "--catalog", catalog, "--bands", "g,r"],
               cache)
    warning, error = [line for line in res.output.splitlines() if line.strip()]
    assert warning == (f"Warning: {bands[1]}: FILTER = 'i' but given as band 'r'; scanning it "
                       "as 'r' (check the order of --bands)")
    assert res.exit_code == 1 and error.startswith("Error: ") and \
        "needs bands g, i but the mosaic has g, r" in error, res.output
    line = _error_line(_run([*bands, "--model", model, "--out", "/nonexistent/dir/o.fits"], cache))
    assert "/nonexistent/dir" in line
    line = _error_line(_run([*bands, "--model", model, "--out", tmp_path / "o.txt"], cache))
    assert ".fits" in line
    assert not out.exists()


def _scan_cmd(field, model, out, *extra):
    return [sys.executable, "-m", "pyengine.cli", "scan", *_bands(field), "--grid", "6",
            "--model", str(model), "--out", str(out), "--tile-size", "64", "--batch-size", "8",
            "--threads", "1", "--quiet", *extra]


def _wait_for_tiles(journal: Path, proc, count: int, timeout: float = 120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if journal.is_dir() and len(list(journal.glob("tile-*.npz"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"scan ended before {count} tiles: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("no tiles journalled in time")


def test_sigkill_then_resume_equals_an_uninterrupted_scan(field, model, cache, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    full = tmp_path / "full.fits"
    subprocess.run(_scan_cmd(field, model, full), env=env, check=True, capture_output=True)
    out = tmp_path / "killed.fits"
    proc = subprocess.Popen(_scan_cmd(field, model, out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    journal = out.with_name(out.name + ".journal")
    _wait_for_tiles(journal, proc, 2)
    proc.kill()
    proc.communicate()
    assert not out.exists()
    journalled = len(list(journal.glob("tile-*.npz")))  # complete tiles only (atomic renames)
    done = subprocess.run(_scan_cmd(field, model, out, "--resume"), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = re.search(r"\((\d+) resumed\)", done.stdout)
    assert resumed and int(resumed.group(1)) >= 2, done.stdout
    assert int(resumed.group(1)) == journalled, done.stdout
    a, b = Table.read(full), Table.read(out)
    assert len(a) == len(b) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(a[name], b[name])
    # Both sides above went through a journal: check ownership on its own too.
    plan = TilePlan.for_cutout(scanfield.SHAPE, cutout=scanfield.CUTOUT, core=64)
    np.testing.assert_array_equal(b["tile"], plan.assign(b["x"], b["y"]))
    assert not journal.exists()


def test_sigint_finishes_the_batch_prints_resume_and_exits_130(field, model, cache, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = tmp_path / "int.fits"
    proc = subprocess.Popen(_scan_cmd(field, model, out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_tiles(out.with_name(out.name + ".journal"), proc, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists()
    # Changed options are refused on resume, with the reason.
    changed = subprocess.run(_scan_cmd(field, model, out, "--resume", "--max-nan", "0.9"),
                             env=env, capture_output=True, text=True)
    assert changed.returncode == 1
    assert changed.stderr.startswith("Error: ") and "--max-nan: 0.5 → 0.9" in changed.stderr
    done = subprocess.run(_scan_cmd(field, model, out, "--resume"), env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_onnxruntime_scan_of_an_exported_model_imports_no_torch(tmp_path, field, model, catalog):
    """An ONNX-only install (no torch) scans exported models; torch also costs ~1 s to import."""
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import load_model

    onnx_path = export_onnx(load_model(model), tmp_path / "m.onnx")
    out = tmp_path / "cat.fits"
    printed = scanfield.scan_in_fresh_process(tmp_path, field, catalog, onnx_path, out,
                                              "onnxruntime",
                                              then="print('torch' in sys.modules)\n")
    assert printed[-1] == "False"
    assert len(Table.read(out)) > 0


def test_model_file_and_its_onnx_export_give_one_modelsha(tmp_path, field, model, catalog, cache):
    """MODELSHA names the model, not the form scanned: the model file and its .onnx agree."""
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import file_sha256, load_model

    onnx_path = export_onnx(load_model(model), tmp_path / "m.onnx")
    assert file_sha256(onnx_path) != file_sha256(model)
    shas = []
    for name, given in (("file", model), ("onnx", onnx_path)):
        out = tmp_path / f"{name}.fits"
        res = _run([*_bands(field), "--catalog", catalog, "--model", given, "--runner",
                    "onnxruntime", "--tile-size", 64, "-q", "--out", out], cache)
        assert res.exit_code == 0, res.output
        shas.append(Table.read(out).meta["MODELSHA"])
    assert shas == [file_sha256(model)] * 2


def test_resume_with_another_graph_of_the_same_model_is_refused(tmp_path, field, model, catalog,
                                                                cache):
    """Two exports of one model share MODELSHA, but a resume must not mix their scores: the
    graph scanned is in the fingerprint too (a byte-identical copy still resumes)."""
    import shutil

    import onnx

    from pyengine.export.onnx import export_onnx, set_metadata
    from pyengine.models.checkpoint import file_sha256, load_model

    first = export_onnx(load_model(model), tmp_path / "a.onnx")
    proto = onnx.load(str(first))
    meta = {p.key: p.value for p in proto.metadata_props}
    set_metadata(proto, meta["pyengine"], meta["pyengine_model_sha256"], "fp32",
                 extra={"note": "another graph of the same model"})
    other = tmp_path / "b.onnx"
    onnx.save(proto, str(other))
    copy = tmp_path / "copy.onnx"
    shutil.copy(first, copy)
    assert file_sha256(other) != file_sha256(first)
    out = tmp_path / "o.fits"
    base = [*_bands(field), "--catalog", catalog, "--runner", "onnxruntime", "--tile-size", 64,
            "-q", "--out", out]
    # The journal an interrupted scan of graph a leaves (its fingerprint, no tile yet).
    from pyengine.io.mosaic import Mosaic
    from pyengine.output.journal import Journal
    from pyengine.scan.engine import Engine
    from pyengine.scan.run import scan_fingerprint
    from pyengine.sources.catalog import CatalogSource

    with Engine(first, runner="onnxruntime", core=64, cache_dir=cache) as engine, \
            Mosaic.open([str(p) for p in field["paths"]]) as mosaic, \
            engine.prepared(mosaic, CatalogSource(str(catalog))) as (m, source, plan):
        fingerprint = scan_fingerprint(engine, m, source, plan)
    j = Journal(out)
    j.start(fingerprint, resume=False)
    j.close()
    refused = _run([*base, "--model", other, "--resume"], cache)
    assert refused.exit_code == 1 and "model_file" in refused.output, refused.output
    resumed = _run([*base, "--model", copy, "--resume"], cache)
    assert resumed.exit_code == 0, resumed.output
