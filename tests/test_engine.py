"""The scan engine end to end: every source mode, exactly-once scoring, invariance, resume."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from astropy.table import Table

from pyengine.errors import BandWarning, ConfigError, MosaicMismatchError, ResumeError
from pyengine.flags import BLANK, EDGE, OFF_IMAGE
from pyengine.io.mosaic import Mosaic
from pyengine.io.tiles import TilePlan
from pyengine.models.spec import ModelSpec
from pyengine.runners.base import Runner
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
    # Each tile's rows carry the sky position of their own pixel position...
    for t in tables:
        ra, dec = field["wcs"].pixel_to_world_values(np.asarray(t["x"]), np.asarray(t["y"]))
        np.testing.assert_allclose(t["ra"], ra, rtol=0, atol=1e-10)
        np.testing.assert_allclose(t["dec"], dec, rtol=0, atol=1e-10)
        assert np.all(np.asarray(t["tile"]) == t["tile"][0])
    # ... and are the rows of the whole-catalog scan (matched by input catalog row).
    with _mosaic(field) as mosaic:
        whole = engine.scan(mosaic, CatalogSource(catalog))
    rows = np.concatenate([np.asarray(t["row"]) for t in tables])
    assert sorted(rows.tolist()) == list(range(60))  # the 3 off-image rows come last
    for name in ("ra", "dec", "x", "y", "flags", "tile"):
        got = np.concatenate([np.asarray(t[name]) for t in tables])
        np.testing.assert_array_equal(got, np.asarray(whole[name])[rows], err_msg=name)
    got = np.concatenate([np.asarray(t["score"]) for t in tables])
    np.testing.assert_allclose(got, np.asarray(whole["score"])[rows], rtol=0, atol=2e-5)


def test_model_bands_must_match_the_mosaic(engine, field, tmp_path):
    with pytest.warns(BandWarning, match="FILTER = 'i' but given as band 'r'"):
        named_r = Mosaic.open(field["paths"], bands=["g", "r"])
    with named_r as mosaic, \
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
        with pytest.raises(ScanInterrupted, match="interrupted after") as interrupted:
            run_scan(engine, mosaic, CatalogSource(catalog), out, stop=stop, progress=progress)
        assert not out.exists()  # no half catalog presented as complete
        journal = out.with_name(out.name + ".journal")
        assert journal.is_dir()
        journalled = len(list(journal.glob("tile-*.npz")))
        stopped = (interrupted.value.done, interrupted.value.total)
        # The exception's traceback keeps run_scan's Journal (and its lock) alive: drop it
        # (see test_interrupted_run_scan_releases_its_journal_lock).
        del interrupted
        gc.collect()
        assert journalled == stopped[0] == len(seen) >= 2
        with pytest.raises(ResumeError):  # not resuming: the journal is never overwritten
            run_scan(engine, mosaic, CatalogSource(catalog), out)
        with pytest.raises(ResumeError, match=r"source|mag"):
            run_scan(engine, mosaic, CatalogSource(catalog, mag_col="mag", mag_limit=22.0), out,
                     resume=True)
        summary = run_scan(engine, mosaic, CatalogSource(catalog), out, resume=True)
        assert summary.tiles_resumed >= 2
        assert summary.tiles_resumed == journalled  # exactly the journalled tiles, no more
        assert summary.tiles == full.tiles == stopped[1]
        assert f"({journalled} resumed)" in summary.line()
        assert not journal.exists()
        # A reference with no journal on its side: the in-memory scan.
        plain = engine.scan(mosaic, CatalogSource(catalog))
    a, b = Table.read(tmp_path / "full.fits"), Table.read(out)
    for name in a.colnames:
        np.testing.assert_array_equal(a[name], b[name])
    for name in ("ra", "dec", "x", "y", "flags", "tile", "name", "is_candidate"):
        np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(plain[name]),
                                      err_msg=name)
    np.testing.assert_allclose(b["score"], plain["score"], rtol=0, atol=2e-5)
    # Every row sits in the tile that owns its centre pixel.
    plan = TilePlan.for_cutout(scanfield.SHAPE, cutout=scanfield.CUTOUT, core=64)
    np.testing.assert_array_equal(b["tile"], plan.assign(b["x"], b["y"]))


def test_interrupted_run_scan_releases_its_journal_lock(model, field, catalog, tmp_path):
    stop = threading.Event()
    stop.set()  # stop before the first tile
    out = tmp_path / "part.fits"
    with Engine(model, runner="onnxruntime", batch_size=16, threads=1, core=64,
                cache_dir=tmp_path / "c") as engine, _mosaic(field) as mosaic:
        try:
            run_scan(engine, mosaic, CatalogSource(catalog), out, stop=stop)
        except ScanInterrupted as exc:
            kept = exc  # an embedding script that logs or re-raises it later
        summary = run_scan(engine, mosaic, CatalogSource(catalog), out, resume=True)
    assert kept.done == 0 and summary.tiles_resumed == 0


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


def test_max_nan_fraction_sets_blank_by_each_cutouts_own_nan_share(model, field, tmp_path):
    """A non-default max_nan_fraction decides BLANK: rows around the blank block, whose
    cutouts are NaN in every share from none to most, against extract_cutouts' count."""
    limit = 0.2
    gx, gy = np.meshgrid(np.arange(40.0, 100.0, 3.0), np.arange(170.0, 250.0, 4.0))
    positions = Table({"x": gx.ravel(), "y": gy.ravel()})
    path = tmp_path / "near_blank.csv"
    positions.write(path)
    with Engine(model, runner="onnxruntime", batch_size=16, threads=2, core=64,
                max_nan_fraction=limit, cache_dir=tmp_path / "c") as engine, \
            _mosaic(field) as mosaic:
        table = engine.scan(mosaic, CatalogSource(path))
        cut = extract_cutouts(mosaic, positions["x"], positions["y"], scanfield.CUTOUT,
                              core=64)
    assert table.meta["MAXNAN"] == limit
    frac = cut.nan_fraction
    # The field gives every kind of row: clean, some NaN below the limit, above the limit
    # but below the default 0.5 (BLANK only with this limit), and above the default.
    assert np.any(frac == 0)
    assert np.any((frac > 0) & (frac <= limit))
    assert np.any((frac > limit) & (frac <= 0.5))
    assert np.any(frac > 0.5)
    flags = np.asarray(table["flags"])
    np.testing.assert_array_equal((flags & BLANK) != 0, frac > limit)
    np.testing.assert_array_equal((flags & EDGE) != 0, frac > 0)
    assert not np.any(np.asarray(table["is_candidate"])[frac > limit])


class _CentreRunner(Runner):
    """Scores each cutout with the value of its centre pixel (S // 2, S // 2) in band 0:
    on a field whose pixels encode their own (x, y), the score says which pixel the
    scan centred the cutout on."""

    name = "centre"

    def __init__(self, spec):
        super().__init__(spec, "fp32")

    def _activate(self):
        pass

    def _infer(self, batch):
        half = self.spec.cutout_size // 2
        return np.ascontiguousarray(batch[:, 0, half, half], dtype=np.float32)

    def _deactivate(self):
        pass


def _code(x, y):
    return x + 1000.0 * y  # exact in float32 for this field (< 2**24)


def test_half_pixel_positions_are_centred_and_owned_by_floor_v_plus_half(tmp_path):
    """End to end, the centre pixel of a position is floor(v + 0.5) (pyengine.coords): at
    k + 0.5 and k - 0.5 on both sides of the tile-core borders (64, 128) and of the image
    edge, the scan centres the cutout there and the tile owning that pixel reports it."""
    from astropy.io import fits

    from tests.makedata import make_wcs

    ny, nx = 200, 200
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    wcs = make_wcs((ny, nx))
    paths = []
    for name in ("g", "i"):
        header = wcs.to_header()
        header["FILTER"] = name
        fits.PrimaryHDU(_code(xx, yy).astype(np.float32), header).writeto(tmp_path / f"{name}.fits")
        paths.append(tmp_path / f"{name}.fits")
    values = np.array([-0.5, 0.5, 62.5, 63.5, 63.49, 64.5, 126.5, 127.5, 128.5, 198.5])
    gx, gy = np.meshgrid(values, values[::-1])
    x, y = gx.ravel(), gy.ravel()
    cat = tmp_path / "half.csv"
    Table({"x": x, "y": y}).write(cat)
    cx, cy = np.floor(x + 0.5), np.floor(y + 0.5)  # the rule, written out independently
    want_tile = (cy // 64) * 4 + cx // 64  # 200 px, core 64: 4 x 4 tiles
    spec = ModelSpec(cutout_size=16, threshold=0.5)
    engine = Engine(runner=_CentreRunner(spec), batch_size=7, core=64)
    with Mosaic.open(paths) as mosaic:
        table = engine.scan(mosaic, CatalogSource(cat))
        cut = extract_cutouts(mosaic, x, y, 16, core=64)
    assert len(table) == x.size and not np.any(np.asarray(table["flags"]) & OFF_IMAGE)
    np.testing.assert_array_equal(table["x"], x)
    np.testing.assert_array_equal(table["tile"], want_tile)
    np.testing.assert_array_equal(cut.tile, want_tile)
    np.testing.assert_array_equal(table["score"], _code(cx, cy))
    np.testing.assert_array_equal(cut.pixels[:, 0, 8, 8], _code(cx, cy))
    # One below the first half pixel is off the image (centre -1): flagged, not scored.
    off = tmp_path / "off.csv"
    Table({"x": [-0.51, 10.0], "y": [10.0, 199.5]}).write(off)
    with Mosaic.open(paths) as mosaic:
        table = engine.scan(mosaic, CatalogSource(off))
    np.testing.assert_array_equal(np.asarray(table["flags"]) & OFF_IMAGE, [OFF_IMAGE, OFF_IMAGE])


def test_scores_are_bit_identical_whatever_tiles_are_skipped(tmp_path):
    """A resumed scan skips the journalled tiles, so its batches are cut elsewhere and its
    last batch is short at another size; scores must still equal an uninterrupted scan's
    bit for bit (np.array_equal, not allclose).  The demo model under ONNX Runtime fp32 on
    a CPU scores a batch of 2 differently from one of 8 (measured, up to 1.2e-7), so the
    pipeline pads every batch to the batch size.  int16 BSCALE/BZERO data (the scaled
    decode); 64 px cutouts in 128 px cores, so segments of 3 or more windows are filled by
    the ring's workers and smaller ones by the gather thread, and the skip sets move
    positions between the two paths."""
    from pyengine.synth import SynthConfig, make_field

    synth = make_field(tmp_path / "f", SynthConfig(width=384, height=384, seed=7,
                                                   encoding="int16"))
    bands = [synth.images["g"][0], synth.images["i"][0]]
    assert fits_bscale(bands[0]) != 1.0
    sent = []
    with Engine(None, runner="onnxruntime", batch_size=8, threads=2, core=128,
                cache_dir=tmp_path / "c") as engine, Mosaic.open(bands) as mosaic:
        submit = engine.runner.submit

        def recording(batch):
            sent.append(batch.shape[0])
            return submit(batch)

        engine.runner.submit = recording
        mosaic, source, plan = engine.prepare(mosaic, GridSource(23))
        runs = {}
        for skip in [(), (0,), (1, 4), (2, 5), (0, 1, 2, 3, 4, 6)]:
            runs[skip] = {r.tile: r for r in engine.iter_results(mosaic, source, plan,
                                                                 skip=frozenset(skip))}
    full = runs[()]
    counts = [len(full[t]) for t in sorted(full)]
    # The runs end on short batches of several sizes (2 among them), which are padded.
    lasts = {(sum(c for t, c in enumerate(counts) if t not in skip)) % 8 for skip in runs}
    assert 2 in lasts and len(lasts) > 2, lasts
    assert set(sent) == {8}
    for skip, results in runs.items():
        assert sorted(results) == [t for t in sorted(full) if t not in skip]
        for t, r in results.items():
            assert np.array_equal(r.score, full[t].score), (skip, t)
            assert np.array_equal(r.flags, full[t].flags) and np.array_equal(r.x, full[t].x)


def fits_bscale(path):
    from astropy.io import fits

    return fits.getheader(path).get("BSCALE", 1.0)
