"""The scan engine end to end: every source mode, exactly-once scoring, invariance, resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from astropy.table import Table

from pyengine.errors import ConfigError, MosaicMismatchError, ResumeError
from pyengine.flags import BLANK, EDGE, OFF_IMAGE
from pyengine.io.mosaic import Mosaic
from pyengine.scan.cutouts import extract_cutouts
from pyengine.scan.engine import Engine
from pyengine.scan.results import ScanInterrupted
from pyengine.scan.run import run_scan
from pyengine.sources import CatalogSource, DetectSource, GridSource
from tests import scanfield


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory):
    with Engine(model, runner="onnxruntime", batch_size=16, threads=2, core=64,
                cache_dir=tmp_path_factory.mktemp("onnx")) as e:
        yield e


def _mosaic(field):
    return Mosaic.open(field["paths"])


def test_catalog_mode_scores_every_row_once_like_classify(engine, field, catalog):
    with _mosaic(field) as mosaic:
        table = engine.scan(mosaic, CatalogSource(catalog))
        source = Table.read(catalog)
        assert len(table) == len(source)  # one row per input position, off-image kept
        assert list(table["name"]) == list(source["name"])  # input order, passed through
        assert list(table["in_id"]) == list(source["id"])  # colliding names renamed
        np.testing.assert_array_equal(table["id"], np.arange(1, len(table) + 1))
        off = (np.asarray(table["flags"]) & OFF_IMAGE) != 0
        assert off.sum() == 3 and np.all(np.isnan(table["score"][off]))
        assert np.all(np.asarray(table["tile"])[off] == -1)
        assert np.all(np.isfinite(table["score"][~off]))
        assert not np.any(np.asarray(table["is_candidate"])[off])
        # Scores equal the runner on the same cutouts cut by the non-pipelined path.
        on = ~off
        cut = extract_cutouts(mosaic, np.asarray(table["x"])[on], np.asarray(table["y"])[on],
                              scanfield.CUTOUT, core=64)
        want = engine.classify(cut.pixels)
        np.testing.assert_allclose(np.asarray(table["score"])[on], want, atol=2e-5, rtol=0)
        frac = cut.nan_fraction
        flags = np.asarray(table["flags"])[on]
        np.testing.assert_array_equal((flags & EDGE) != 0, frac > 0)
        np.testing.assert_array_equal((flags & BLANK) != 0, frac > 0.5)
        assert np.any(frac > 0.5)  # the source inside the blank block
        blank = (flags & BLANK) != 0
        assert not np.any(np.asarray(table["is_candidate"])[on][blank])
        # Sky coordinates round-trip through the mosaic's WCS.
        ra, dec = field["wcs"].pixel_to_world_values(table["x"][on], table["y"][on])
        np.testing.assert_allclose(table["ra"][on], ra, atol=1e-10)
        np.testing.assert_allclose(table["dec"][on], dec, atol=1e-10)
        np.testing.assert_allclose(table["ra"][on], np.asarray(source["RA"])[on], atol=1e-9)
        n_in = field["x"].size  # the injected sources come first in the catalog
        np.testing.assert_allclose(np.asarray(table["x"])[:n_in], field["x"], atol=1e-6)
        np.testing.assert_allclose(np.asarray(table["y"])[:n_in], field["y"], atol=1e-6)


@pytest.mark.parametrize(("batch", "threads"), [(1, 1), (7, 2), (64, 1)])
def test_catalog_is_the_same_for_any_batch_size_and_thread_count(engine, model, field, catalog,
                                                                  batch, threads, tmp_path):
    with _mosaic(field) as mosaic:
        ref = engine.scan(mosaic, CatalogSource(catalog))
        with Engine(model, runner="onnxruntime", batch_size=batch, threads=threads, core=64,
                    cache_dir=tmp_path) as other:
            got = other.scan(mosaic, CatalogSource(catalog))
    for name in ("id", "ra", "dec", "x", "y", "flags", "tile", "name"):
        np.testing.assert_array_equal(got[name], ref[name])
    np.testing.assert_allclose(got["score"], ref["score"], atol=2e-5, rtol=0)


def test_pixel_catalog_equals_sky_catalog(engine, field, tmp_path):
    sky = scanfield.write_catalog(tmp_path / "sky.ecsv", field, form="sky")
    pix = scanfield.write_catalog(tmp_path / "pix.csv", field, form="pixel")
    with _mosaic(field) as mosaic:
        a = engine.scan(mosaic, CatalogSource(sky))
        b = engine.scan(mosaic, CatalogSource(pix))
    np.testing.assert_allclose(a["x"], b["x"], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(a["flags"], b["flags"])
    # A position exactly on a pixel boundary (x = 63.5) may come back from the sky as
    # 63.4999999999 and round to the other centre pixel: compare the rest.
    half = np.zeros(len(a), bool)
    for v in (np.asarray(b["x"]), np.asarray(b["y"])):
        with np.errstate(invalid="ignore"):
            half |= np.abs(v - np.floor(v) - 0.5) < 1e-6
    assert 0 < half.sum() <= 3
    np.testing.assert_allclose(a["score"][~half], b["score"][~half], atol=2e-5, equal_nan=True)


def test_grid_mode_scores_each_grid_point_once(engine, field):
    with _mosaic(field) as mosaic:
        table = engine.scan(mosaic, GridSource(20))
    ny, nx = scanfield.SHAPE
    xs = np.arange(10, nx, 20)
    ys = np.arange(10, ny, 20)
    assert len(table) == xs.size * ys.size
    pairs = set(zip(np.asarray(table["x"]).tolist(), np.asarray(table["y"]).tolist(),
                    strict=True))
    assert pairs == {(float(x), float(y)) for y in ys for x in xs}
    assert np.all(np.isfinite(table["score"]))


def test_detection_mode_finds_the_injected_sources(engine, field):
    with _mosaic(field) as mosaic:
        table = engine.scan(mosaic, DetectSource(threshold=5.0))
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    assert len(table) >= 30
    d = np.hypot(field["x"][5:, None] - x[None], field["y"][5:, None] - y[None]).min(axis=1)
    assert np.median(d) < 1.0
    assert {"flux", "npix"} <= set(table.colnames)


def test_iter_scan_yields_tile_tables_in_order(engine, field, catalog):
    with _mosaic(field) as mosaic:
        tables = list(engine.iter_scan(mosaic, CatalogSource(catalog)))
    tiles = [int(t["tile"][0]) for t in tables]
    assert tiles == sorted(tiles) and len(set(tiles)) == len(tiles) > 4
    assert sum(len(t) for t in tables) == 60  # the 3 off-image rows belong to no tile


def test_model_bands_must_match_the_mosaic(engine, field, tmp_path):
    with Mosaic.open(field["paths"], bands=["g", "r"]) as mosaic, \
            pytest.raises(MosaicMismatchError,
                          match="model needs bands g, i but the mosaic has g, r"):
        engine.scan(mosaic, GridSource(50))
    # Same bands in another order are put in the model's order.
    with Mosaic.open(field["paths"][::-1]) as flipped, _mosaic(field) as mosaic:
        a = engine.scan(flipped, GridSource(50))
        b = engine.scan(mosaic, GridSource(50))
    np.testing.assert_array_equal(a["score"], b["score"])


def test_classify_checks_shapes(engine):
    with pytest.raises(ConfigError, match=r"cutouts must be \(n, 2, 32, 32\)"):
        engine.classify(np.zeros((3, 2, 16, 16), np.float32))
    assert engine.classify(np.full((3, 2, 32, 32), np.nan, np.float32)).shape == (3,)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"threads": 0}, {"threshold": 2.0},
                                    {"runner": "nope"}, {"max_nan_fraction": -1}])
def test_engine_options_are_checked(model, kwargs):
    with pytest.raises(ConfigError):
        Engine(model, **kwargs)


def test_interrupted_scan_resumes_to_the_same_catalog(model, field, catalog, tmp_path):
    with Engine(model, runner="onnxruntime", batch_size=8, threads=1, core=64,
                cache_dir=tmp_path / "c") as engine, _mosaic(field) as mosaic:
        full = run_scan(engine, mosaic, CatalogSource(catalog), tmp_path / "full.fits")
        assert full.positions == 63 and full.off_image == 3
        stop = threading.Event()
        seen = []

        def progress(event):
            if event["event"] == "tile":
                seen.append(event["tiles_done"])
                if event["tiles_done"] == 2:
                    stop.set()

        out = tmp_path / "part.fits"
        with pytest.raises(ScanInterrupted, match="interrupted after"):
            run_scan(engine, mosaic, CatalogSource(catalog), out, stop=stop, progress=progress)
        assert not out.exists()  # no half catalog presented as complete
        journal = out.with_name(out.name + ".journal")
        assert journal.is_dir()
        with pytest.raises(ResumeError):  # not resuming: the journal is never overwritten
            run_scan(engine, mosaic, CatalogSource(catalog), out)
        with pytest.raises(ResumeError, match=r"source|mag"):
            run_scan(engine, mosaic, CatalogSource(catalog, mag_col="mag", mag_limit=22.0), out,
                     resume=True)
        summary = run_scan(engine, mosaic, CatalogSource(catalog), out, resume=True)
        assert summary.tiles_resumed >= 2
        assert not journal.exists()
    a, b = Table.read(tmp_path / "full.fits"), Table.read(out)
    for name in a.colnames:
        np.testing.assert_array_equal(a[name], b[name])


def test_scans_reuse_the_runners_slots_until_it_is_reactivated(model, field, catalog, tmp_path):
    """Slots (pinned memory on a GPU) are allocated once per runner activation, not once
    per scan: an engine embedded in a long reduction must not accumulate them."""
    engine = Engine(model, runner="onnxruntime", batch_size=16, cache_dir=tmp_path)
    calls = []
    allocate = engine.runner.allocate_slots

    def counting(count, batch, dtype=None):
        calls.append((count, batch, np.dtype(dtype).name))
        return allocate(count, batch, dtype)

    engine.runner.allocate_slots = counting
    first = engine.scan(field["paths"], CatalogSource(catalog))
    second = engine.scan(field["paths"], CatalogSource(catalog))
    assert len(calls) == 1 and calls[0][:2] == (engine.nslots, 16)
    np.testing.assert_array_equal(first["score"], second["score"])
    engine.close()
    engine.open()
    engine.scan(field["paths"], CatalogSource(catalog))
    assert len(calls) == 2  # a reactivated runner (a new CUDA feed on a GPU) gets new slots
    engine.close()
