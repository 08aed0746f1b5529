"""``pyengine scan --precision int8`` with a model file (pyengine.scan.int8): calibrated on
the scan's own cutouts, judged on held-out ones, cached by model and inputs, and shared by
a survey's shards and Dask workers.

The sample is cut to 32 cutouts (16 calibrate, 16 are held out) so that each calibration
of the demo model's ResNet-50 costs seconds; one fp32 export is shared by every test
through a module-wide cache folder (``XDG_CACHE_HOME``).
"""

from __future__ import annotations

import shutil

import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.scan import int8

SMALL = 32  # cutouts drawn in these tests (users get int8.CUTOUTS = 512)


@pytest.fixture(scope="module", autouse=True)
def small_sample():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8, "CUTOUTS", SMALL)
        yield


@pytest.fixture(scope="module")
def xdg(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


def _onnx_cache(xdg):
    return xdg / "pyengine" / "onnx"


def _entries(xdg):
    return sorted(_onnx_cache(xdg).glob("*-int8-*.onnx"))


def _scan(args, xdg):
    res = CliRunner().invoke(main, ["scan", *(str(a) for a in args)],
                             env={"XDG_CACHE_HOME": str(xdg)}, catch_exceptions=False)
    return res


def _int8_lines(res):
    return [line for line in res.output.splitlines() if line.startswith("int8: ")]


def _fresh_cache(xdg, tmp_path):
    """Another cache folder holding only the fp32 export already made (no int8 entry)."""
    other = tmp_path / "xdg"
    _onnx_cache(other).mkdir(parents=True)
    for path in _onnx_cache(xdg).glob("*-fp32-*.onnx"):
        shutil.copy(path, _onnx_cache(other) / path.name)
    return other


@pytest.fixture(scope="module")
def calibrated(field, catalog, xdg, tmp_path_factory):
    """The first int8 scan of the small field (catalog positions, 64 px tiles)."""
    out = tmp_path_factory.mktemp("first") / "c.fits"
    res = _scan([*field["paths"], "--catalog", catalog, "--precision", "int8", "--tile-size",
                 64, "-q", "--out", out], xdg)
    return res, out


def _base(field, catalog, out):
    return [*field["paths"], "--catalog", catalog, "--precision", "int8", "--tile-size", 64,
            "-q", "--out", out]


def test_an_int8_scan_calibrates_on_its_cutouts_then_reuses_the_cache(calibrated, field,
                                                                       catalog, xdg,
                                                                       tmp_path):
    from pyengine.export.onnx import graph_damage, onnx_metadata
    from pyengine.hashing import file_sha256
    from pyengine.models.checkpoint import DEMO_MODEL

    res, out = calibrated
    assert res.exit_code == 0, res.output
    lines = _int8_lines(res)
    assert len(lines) == 1, res.output
    (entry,) = _entries(xdg)
    assert lines[0].startswith(f"int8: calibrated on {SMALL // 2} cutouts of g.fits, i.fits "
                               "(catalog positions in ")
    assert f"decisions agree with fp32 on 100.0 % of {SMALL // 2} held-out cutouts " \
           f"(threshold {_demo_threshold():g}, 99.5 % required;" in lines[0]
    assert lines[0].endswith(f"cached at {entry}")
    table = Table.read(out)
    assert table.meta["PRECISN"] == "int8" and table.meta["RUNNER"] == "onnxruntime"
    assert table.meta["MODELSHA"] == file_sha256(DEMO_MODEL)  # the model, not the graph
    assert table.meta["MODEL"] == str(entry)  # the graph scanned
    # Again on the same inputs: no calibration, the entry untouched.
    before = entry.stat()
    again = _scan(_base(field, catalog, tmp_path / "again.fits"), xdg)
    assert again.exit_code == 0, again.output
    (reused,) = _int8_lines(again)
    assert reused.startswith(f"int8: reusing cached int8 graph {entry} (calibrated on "
                             f"{SMALL // 2} cutouts of g.fits, i.fits (catalog positions in ")
    assert reused.endswith(f"; decisions agreed with fp32 on 100.0 % of {SMALL // 2} held-out "
                           "cutouts)")
    after = entry.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _entries(xdg) == [entry]
    # A damaged entry is made again (same name, a new file), never run.
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    assert graph_damage(entry, onnx_metadata(entry)) is not None
    remade = _scan(_base(field, catalog, tmp_path / "remade.fits"), xdg)
    assert remade.exit_code == 0, remade.output
    assert _int8_lines(remade)[0].startswith("int8: calibrated on ")
    assert _entries(xdg) == [entry] and entry.stat().st_ino != after.st_ino
    assert graph_damage(entry, onnx_metadata(entry)) is None


def _demo_threshold() -> float:
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec

    return read_spec(DEMO_MODEL)[0].threshold


def test_int8_below_the_agreement_bar_is_refused_in_one_line_writing_nothing(
        field, xdg, tmp_path, monkeypatch):
    monkeypatch.setattr(int8, "MIN_AGREEMENT", 1.01)  # no graph can pass
    before = _entries(xdg)
    out = tmp_path / "grid.fits"
    res = _scan([*field["paths"], "--grid", 40, "--precision", "int8", "-q", "--out", out], xdg)
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith(f"Error: --precision int8: calibrated on {SMALL // 2} cutouts of "
                               "g.fits, i.fits (grid points in 1 tile), the int8 graph takes the "
                               f"fp32 decision (threshold {_demo_threshold():g}) on ")
    assert (f"% of {SMALL // 2} held-out cutouts, below the 101 % a scan requires; scan with "
            "--precision fp32, or make the graph with pyengine export ") in lines[0]
    assert "--precision int8 --images ... --cutouts 4096" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no catalog, journal or score map
    assert _entries(xdg) == before  # nothing cached
    assert not list(_onnx_cache(xdg).glob(".*"))  # nor a temporary file left


def test_a_resume_runs_the_same_cached_graph_and_refuses_another(calibrated, field, catalog,
                                                                 xdg, tmp_path):
    """The fingerprint names the int8 graph run: the cached one resumes; a graph made anew
    for the same key (other bytes) is refused, as any other graph of the model is."""
    import onnx

    from pyengine.export.onnx import onnx_metadata, set_metadata
    from pyengine.io.mosaic import Mosaic
    from pyengine.output.journal import Journal
    from pyengine.scan.engine import Engine
    from pyengine.scan.run import scan_fingerprint
    from pyengine.sources.catalog import CatalogSource

    assert calibrated[0].exit_code == 0
    (entry,) = _entries(xdg)
    with Engine(entry, runner="onnxruntime", core=64) as engine, \
            Mosaic.open([str(p) for p in field["paths"]]) as mosaic, \
            engine.prepared(mosaic, CatalogSource(str(catalog))) as (m, source, plan):
        fingerprint = scan_fingerprint(engine, m, source, plan)

    def interrupted(out):  # the journal a scan of ``entry`` stopped before its first tile leaves
        journal = Journal(out)
        journal.start(fingerprint, resume=False)
        journal.close()

    out = tmp_path / "o.fits"
    interrupted(out)
    resumed = _scan([*_base(field, catalog, out), "--resume"], xdg)
    assert resumed.exit_code == 0, resumed.output
    assert _int8_lines(resumed)[0].startswith(f"int8: reusing cached int8 graph {entry}")
    assert out.exists()
    saved = tmp_path / "saved.onnx"
    shutil.copy(entry, saved)
    try:
        proto = onnx.load(str(entry))
        meta = onnx_metadata(entry)
        set_metadata(proto, meta["pyengine"], meta["pyengine_model_sha256"], "int8",
                     extra={"note": "calibrated anew"})  # same key, checksum, other bytes
        onnx.save(proto, str(entry))
        other = tmp_path / "p.fits"
        interrupted(other)
        refused = _scan([*_base(field, catalog, other), "--resume"], xdg)
        assert _int8_lines(refused)[0].startswith(f"int8: reusing cached int8 graph {entry}")
        assert refused.exit_code == 1 and "model_file" in refused.output, refused.output
        assert not other.exists()
    finally:
        shutil.copy(saved, entry)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from tests.makedata import make_survey_2x2

    root = tmp_path_factory.mktemp("survey")
    survey = make_survey_2x2(root, 200, 160, seed=7)[0]
    return survey.described().write(root / "s.ecsv")


def test_a_survey_calibrates_once_over_its_fields_and_every_shard_gets_that_graph(
        manifest, xdg, tmp_path):
    from pyengine.hashing import file_sha256

    common = [manifest, "--grid", 25, "--precision", "int8", "--tile-size", 64, "-q"]
    whole = _scan([*common, "--out", tmp_path / "s.fits"], xdg)
    assert whole.exit_code == 0, whole.output
    (line,) = _int8_lines(whole)
    assert line.startswith(f"int8: calibrated on {SMALL // 2} cutouts of 4 fields of s.ecsv "
                           "(grid points in ")
    entry = _onnx_cache(xdg) / line.rsplit("cached at ", 1)[1]
    assert entry.exists() and Table.read(tmp_path / "s.fits").meta["PRECISN"] == "int8"
    # A shard reuses it: the sample is the survey's, whichever fields the shard scans.
    shard = _scan([*common, "--shard", "0/2", "--out", tmp_path / "s0.fits"], xdg)
    assert shard.exit_code == 0, shard.output
    assert _int8_lines(shard)[0].startswith(f"int8: reusing cached int8 graph {entry} ")
    # Another shard calibrating on its own (another machine) makes the very same graph.
    elsewhere = _fresh_cache(xdg, tmp_path)
    alone = _scan([*common, "--shard", "1/2", "--out", tmp_path / "s1.fits"], elsewhere)
    assert alone.exit_code == 0, alone.output
    assert _int8_lines(alone)[0].startswith("int8: calibrated on ")
    (made,) = _entries(elsewhere)
    assert made.name == entry.name and file_sha256(made) == file_sha256(entry)


def test_the_sample_is_deterministic(field, catalog):
    """Same inputs, same cutouts (they decide the graph, which the cache key names)."""
    import numpy as np

    from pyengine.io.mosaic import Mosaic
    from pyengine.models.checkpoint import DEMO_MODEL, read_spec
    from pyengine.sources.catalog import CatalogSource
    from pyengine.sources.detect import DetectSource

    spec, _ = read_spec(DEMO_MODEL)
    with Mosaic.open([str(p) for p in field["paths"]]) as mosaic:
        for make in (DetectSource, lambda: CatalogSource(catalog)):
            fields = [int8.SampleField("f", tuple(mosaic.paths), tuple(mosaic.bands),
                                       tuple(mosaic.shape), make)]
            (a, where), (b, again) = (int8.sample_cutouts(fields, spec, 64) for _ in range(2))
            assert 0 < len(a) <= SMALL and where == again
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_dask_workers_run_the_graph_the_client_calibrated(manifest, xdg, tmp_path):
    pytest.importorskip("distributed")
    cache = _fresh_cache(xdg, tmp_path)
    out = tmp_path / "d.fits"
    res = _scan([manifest, "--grid", 20, "--precision", "int8", "--tile-size", 64, "-q",
                 "--dask", "local:2", "--out", out], cache)
    assert res.exit_code == 0, res.output
    calibrations = [line for line in _int8_lines(res) if line.startswith("int8: calibrated")]
    assert len(calibrations) == 1, res.output
    (entry,) = _entries(cache)
    table = Table.read(out)
    assert table.meta["MODEL"] == str(entry) and table.meta["PRECISN"] == "int8"
    assert "survey: 4 field(s) scanned" in res.output
