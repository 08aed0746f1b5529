"""A survey scanned on a real Dask LocalCluster of worker processes (pyengine.survey.dask):
the same catalog as one process, also when a worker process is killed mid-survey."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from astropy.table import Table

distributed = pytest.importorskip("distributed")

from pyengine.errors import ConfigError  # noqa: E402
from pyengine.scan.engine import Engine  # noqa: E402
from pyengine.sources.catalog import CatalogSource  # noqa: E402
from pyengine.sources.grid import GridSource  # noqa: E402
from pyengine.survey.dask import open_client  # noqa: E402
from pyengine.survey.scan import scan_survey  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from tests.makedata import make_survey_2x2

    return make_survey_2x2(tmp_path_factory.mktemp("survey"), 200, 160, seed=7)[0]


@pytest.fixture(scope="module")
def config(model):
    return {"model": str(model), "runner": "torch", "device": "cpu", "batch_size": 16,
            "core": 64, "threads": 1}


@pytest.fixture(scope="module")
def client():
    client, cluster = open_client("local:2")
    yield client
    client.close()
    cluster.close()


def _same(a_path, b_path):
    a, b = (Table.read(p, mask_invalid=False) for p in (a_path, b_path))
    assert a.colnames == b.colnames and len(a) == len(b) and len(a) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)


@pytest.mark.parametrize("kind", ["grid", "catalog"])
def test_a_cluster_writes_the_catalog_one_process_writes(survey, config, client, tmp_path,
                                                         kind):
    from tests.test_survey_scan import _catalog

    cat, _, _ = _catalog(tmp_path / "cat.fits", survey)
    make = (lambda: GridSource(25)) if kind == "grid" else (lambda: CatalogSource(cat))
    local = tmp_path / "local.fits"
    scan_survey(Engine(**config), survey, local, make_source=make)
    remote = tmp_path / "dask.fits"
    summary = scan_survey(None, survey, remote, make_source=make, client=client,
                          engine_config=config)
    assert set(summary.fields) == set("ABCD")
    _same(local, remote)
    # each worker process made one Engine and kept it: two pids ran the four fields
    pids = client.run(os.getpid)
    assert len(pids) == 2


def test_a_worker_killed_mid_survey_changes_nothing(survey, config, client, tmp_path):
    make = lambda: GridSource(10)  # noqa: E731  (more work per field: time to kill one)
    local = tmp_path / "local.fits"
    scan_survey(Engine(**config), survey, local, make_source=make)
    killed = []

    def kill_one():
        pids = sorted(client.run(os.getpid).values())
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    timer = threading.Timer(1.0, kill_one)
    timer.start()
    try:
        remote = tmp_path / "dask.fits"
        scan_survey(None, survey, remote, make_source=make, client=client,
                    engine_config=config)
    finally:
        timer.join()
    assert killed
    _same(local, remote)
    client.wait_for_workers(2, timeout=60)


def test_an_address_with_no_scheduler_is_one_line_within_seconds():
    import time

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^--dask tcp://127.0.0.1:9: no Dask scheduler "
                                          r"answers there"):
        open_client("tcp://127.0.0.1:9")
    assert time.perf_counter() - t0 < 30
    for bad in ("local:0", "local:x"):
        with pytest.raises(ConfigError, match=r"is not accepted; accepted: local:N"):
            open_client(bad)


def test_pyengine_scan_dask_local_from_the_command_line(survey, model, tmp_path):
    from click.testing import CliRunner

    from pyengine.cli import main

    manifest = survey.described().write(tmp_path / "s.ecsv")
    common = ["scan", str(manifest), "--grid", "25", "--model", str(model), "--runner",
              "torch", "--tile-size", "64", "-q"]
    local = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "l.fits")])
    assert local.exit_code == 0, local.output
    got = CliRunner().invoke(main, [*common, "--dask", "local:2", "--out",
                                    str(tmp_path / "d.fits")])
    assert got.exit_code == 0, got.output
    assert "survey: 4 field(s) scanned" in got.output
    _same(tmp_path / "l.fits", tmp_path / "d.fits")
    bad = CliRunner().invoke(main, [*common, "--dask", "tcp://127.0.0.1:9", "--out",
                                    str(tmp_path / "x.fits")])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: --dask tcp://127.0.0.1:9: no Dask scheduler answers")


def test_engine_scan_takes_a_survey_and_a_client_the_user_has(survey, config, client,
                                                               tmp_path):
    """The embedding API: Engine.scan of a Survey (or its manifest) returns the survey's
    catalog; with client= the parts run on that cluster, with this Engine's settings."""
    engine = Engine(**config)
    local = tmp_path / "local.fits"
    scan_survey(engine, survey, local, make_source=lambda: GridSource(25))
    want = Table.read(local, mask_invalid=False)
    for name in want.colnames:  # Engine.scan gives text columns as str, FITS as bytes
        if want[name].dtype.kind == "S":
            want[name] = want[name].astype(str)
    manifest = survey.described().write(tmp_path / "s.ecsv")
    for got in (engine.scan(survey, GridSource(25), client=client),
                engine.scan(str(manifest), GridSource(25))):
        assert got.colnames == want.colnames and len(got) == len(want)
        for name in want.colnames:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]),
                                          err_msg=name)
    centre = want[len(want) // 2]
    inside = engine.scan(survey, GridSource(25), within=f"{centre['ra']},{centre['dec']},0.002")
    assert 0 < len(inside) < len(want)
    with pytest.raises(ConfigError, match="apply to surveys"):
        engine.scan(survey.fields[0].images, GridSource(25), client=client)


def test_resume_after_the_client_itself_is_killed(survey, model, tmp_path):
    """``pyengine scan MANIFEST --dask local:2`` killed (SIGKILL, its local cluster with
    it) once some parts are written: ``--resume`` keeps them and finishes the same
    catalog a single process writes."""
    import subprocess
    import sys
    import time

    from pyengine.survey.scan import parts_folder
    from pyengine.survey.units import done_units

    manifest = survey.described().write(tmp_path / "s.ecsv")
    out = tmp_path / "d.fits"
    common = ["scan", str(manifest), "--grid", "10", "--model", str(model), "--runner",
              "torch", "--tile-size", "64", "-q"]
    cmd = [sys.executable, "-m", "pyengine.cli", *common, "--dask", "local:2", "--out", str(out)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    from pyengine.survey.geometry import SurveyGeometry

    geo = SurveyGeometry(survey)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if parts_folder(out).is_dir() and done_units(parts_folder(out), geo, range(4)):
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = done_units(parts_folder(out), geo, range(4))
    assert 0 < len(kept) < 64 and not out.exists()
    from click.testing import CliRunner

    from pyengine.cli import main

    local = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "l.fits")])
    assert local.exit_code == 0, local.output
    again = CliRunner().invoke(main, [*common, "--dask", "local:2", "--out", str(out),
                                      "--resume"])
    assert again.exit_code == 0, again.output
    _same(tmp_path / "l.fits", out)
