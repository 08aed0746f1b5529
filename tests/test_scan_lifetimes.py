"""Lifetimes and concurrency of scans: nothing left open on any path; engines in threads.

The file-descriptor checks keep the exception of a failed scan alive while they look
(as a caller that logs or re-raises it does): a leak hidden until garbage collection
is still a leak.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from pyengine.errors import CatalogError
from pyengine.io.mosaic import Mosaic
from pyengine.scan.engine import Engine
from pyengine.scan.run import run_scan
from pyengine.sources import CatalogSource, DetectSource, GridSource

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="counts open files in /proc/self/fd")


def _open_fds() -> dict[str, str]:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
    return fds


def _leaked(before: dict[str, str]) -> list[str]:
    return sorted(target for fd, target in _open_fds().items()
                  if before.get(fd) != target and not target.startswith(("pipe:", "anon_inode:",
                                                                          "socket:")))


class _FailingGrid(GridSource):
    """A grid source whose third tile raises inside the scan (the read stage)."""

    def positions(self, tile, pixels=None):
        if tile.index == 2:
            raise RuntimeError("source failed on tile 2")
        return super().positions(tile, pixels)


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory):
    with Engine(model, runner="onnxruntime", batch_size=16, threads=1, core=64,
                cache_dir=tmp_path_factory.mktemp("onnx")) as e:
        yield e


def test_no_files_left_open_after_failed_and_successful_scans(engine, field, catalog, tmp_path):
    paths = field["paths"]
    flipped = Mosaic.open(paths[::-1])  # bands i, g: the engine reopens them in model order
    try:
        engine.scan(paths, GridSource(60))  # warm up: sessions, kernels, caches
        before = _open_fds()
        # Successful scans: a mosaic the engine opened, and one it reopened in band order.
        engine.scan(paths, GridSource(60))
        engine.scan(flipped, GridSource(60))
        run_scan(engine, flipped, GridSource(60), tmp_path / "ok.fits")
        assert _leaked(before) == []
        # A bad catalog column, refused while the source is bound.
        with pytest.raises(CatalogError, match="no column 'nope'") as bad_column:
            run_scan(engine, paths, CatalogSource(catalog, ra_col="nope", dec_col="DEC"),
                     tmp_path / "bad.fits")
        assert _leaked(before) == [], bad_column.value
        # An exception raised by the source inside the scan, journal already started.
        out = tmp_path / "fail.fits"
        with pytest.raises(RuntimeError, match="source failed on tile 2") as failed:
            run_scan(engine, flipped, _FailingGrid(60), out)
        assert _leaked(before) == [], failed.value
        with pytest.raises(RuntimeError, match="source failed on tile 2") as failed_engine:
            engine.scan(paths, _FailingGrid(60))
        assert _leaked(before) == [], failed_engine.value
        # It failed before its first tile: the journal it made is gone, a new run starts.
        assert not out.with_name(out.name + ".journal").exists()
        summary = run_scan(engine, flipped, GridSource(60), out)
        assert summary.positions == 20 and out.exists()
        # An iterator given up half-way closes what it opened.
        tiles = engine.iter_scan(paths, GridSource(60))
        next(tiles)
        tiles.close()
        assert _leaked(before) == []
        # The caller's mosaic is never closed by the engine.
        assert flipped.read(0, 2, 0, 2).shape == (2, 2, 2)
    finally:
        flipped.close()


def test_prepare_closes_what_it_opened_when_binding_fails(engine, field, catalog):
    before = _open_fds()
    with pytest.raises(CatalogError) as info:
        engine.prepare(field["paths"], CatalogSource(catalog, x_col="nope", y_col="y"))
    assert _leaked(before) == [], info.value


def test_two_engines_scanning_in_two_threads_equal_serial(model, field, catalog, tmp_path):
    """Concurrent scans share Numba's pool (decode and tiling kernels take turns on it)
    and SEP; each gives the catalog a serial scan gives."""
    def make():  # 256 px cores: tile windows large enough for the parallel decode kernel
        return Engine(model, runner="onnxruntime", batch_size=16, threads=1, core=256,
                      cache_dir=tmp_path / "onnx")

    jobs = [lambda e: e.scan(field["paths"], CatalogSource(catalog)),
            lambda e: e.scan(field["paths"], DetectSource(threshold=5))]
    with make() as a, make() as b:
        serial = [job(e) for job, e in zip(jobs, (a, b), strict=True)]
        results, errors = [None, None], []
        barrier = threading.Barrier(2)

        def run(k, e):
            try:
                barrier.wait()
                for _ in range(3):
                    results[k] = jobs[k](e)
                    for name in ("x", "y", "score", "flags"):
                        np.testing.assert_array_equal(results[k][name], serial[k][name])
            except BaseException as exc:  # reported in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k, e)) for k, e in enumerate((a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(results[0]) == 63 and len(results[1]) > 20
