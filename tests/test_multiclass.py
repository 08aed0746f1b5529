"""Multi-class catalogs: runners give class probabilities, scans carry them through tiles,
the journal and the outputs, and catalogs gain p_<class> and class columns
(pyengine/scan/classes.py), on a five-band field of four PHANGS-like classes
(tests/multifield.py)."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError, ResumeError
from pyengine.io.mosaic import Mosaic
from pyengine.runners.base import Ready, Runner
from pyengine.scan.classes import class_columns, column_names
from pyengine.scan.engine import Engine
from pyengine.scan.results import ScanInterrupted, TileResult
from pyengine.scan.run import run_scan
from pyengine.sources.catalog import CatalogSource
from tests import multifield

P_COLUMNS = ["p_symmetric", "p_asymmetric", "p_multi_peaked", "p_non_cluster"]


@pytest.fixture(scope="module")
def mfield(tmp_path_factory):
    return multifield.make_field(tmp_path_factory.mktemp("five"), per_side=10)


@pytest.fixture(scope="module")
def four(tmp_path_factory, mfield):
    return multifield.make_model(tmp_path_factory.mktemp("m4") / "four.safetensors", seed=3,
                                 centre_on=multifield.field_cutouts(mfield))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _source(mfield):
    return CatalogSource(mfield["positions"], x_col="x", y_col="y")


def _scan(model, mfield, cache, **kw):
    options = {"runner": "onnxruntime", "batch_size": 32, "threads": 2, "core": 128,
               "cache_dir": cache, **kw}
    with Engine(model, **options) as engine:
        return engine.scan(mfield["images"], _source(mfield))


def test_class_column_names_are_safe_and_distinct():
    assert column_names(multifield.CLASSES) == P_COLUMNS
    assert column_names(["a-b", "a_b", "+", "1", "x  y"]) == ["p_a_b", "p_a_b_1", "p_class2",
                                                              "p_1", "p_x_y"]


def test_a_four_class_model_gets_probability_and_class_columns(four, mfield, cache):
    table = _scan(four, mfield, cache)
    names = table.colnames
    assert names[: names.index("class") + 1] == [
        "id", "ra", "dec", "x", "y", "score", "is_candidate", "flags", "tile", *P_COLUMNS,
        "class"]
    assert "score_std" not in names and "class_agreement" not in names  # one model
    assert table.meta["CLASSES"] == ",".join(multifield.CLASSES) and "NMEMBERS" not in table.meta
    scored = np.isfinite(np.asarray(table["score"]))
    assert scored.sum() == 100 and (~scored).sum() == 2  # the two rows off the image
    probs = np.stack([np.asarray(table[c]) for c in P_COLUMNS], axis=1)
    np.testing.assert_allclose(probs[scored].sum(axis=1), 1.0, rtol=0, atol=1e-5)
    # class is the most probable class; score the positive classes' sum, as before
    want = np.asarray(multifield.CLASSES)[np.argmax(probs[scored], axis=1)]
    np.testing.assert_array_equal(np.asarray(table["class"])[scored], want)
    np.testing.assert_allclose(np.asarray(table["score"])[scored],
                               probs[scored][:, :2].sum(axis=1), rtol=0, atol=1e-6)
    assert np.isnan(probs[~scored]).all() and set(np.asarray(table["class"])[~scored]) == {""}
    assert len(set(want)) >= 3  # a model whose classes differ across the field
    # the columns are those of the runner's own probabilities for the same cutouts
    with Engine(four, runner="onnxruntime", batch_size=32, cache_dir=cache) as engine, \
            Mosaic.open(mfield["images"]) as mosaic:
        from pyengine.scan.cutouts import extract_cutouts

        cutouts = extract_cutouts(mosaic, np.asarray(table["x"])[scored],
                                  np.asarray(table["y"])[scored], 32)
        got = engine.predict(cutouts.pixels)
    np.testing.assert_allclose(got["probabilities"], probs[scored], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["score"], np.asarray(table["score"])[scored], rtol=0,
                               atol=1e-6)


def test_torch_gives_the_probabilities_onnx_runtime_gives(four, mfield, cache):
    onnx = _scan(four, mfield, cache, batch_size=64)
    torch = _scan(four, mfield, cache, runner="torch", device="cpu", batch_size=64)
    for name in (*P_COLUMNS, "score"):
        np.testing.assert_allclose(np.asarray(torch[name]), np.asarray(onnx[name]), rtol=0,
                                   atol=2e-5, err_msg=name)


def test_two_class_catalogs_are_unchanged_unless_class_columns_are_asked_for(field, model,
                                                                             catalog, cache):
    options = {"runner": "onnxruntime", "batch_size": 16, "core": 128, "cache_dir": cache}
    with Engine(model, **options) as engine:
        plain = engine.scan(field["paths"], CatalogSource(catalog))
    with Engine(model, class_columns=True, **options) as engine:
        more = engine.scan(field["paths"], CatalogSource(catalog))
    assert not [c for c in plain.colnames if c.startswith("p_") or c == "class"]
    assert "CLASSES" not in plain.meta
    assert [c for c in more.colnames if c not in plain.colnames] == [
        "p_non_cluster", "p_cluster", "class"]
    for name in plain.colnames:
        np.testing.assert_array_equal(np.asarray(more[name]), np.asarray(plain[name]), name)
    np.testing.assert_array_equal(np.asarray(more["p_cluster"]), np.asarray(more["score"]))
    with pytest.raises(ConfigError, match="class_columns"):
        Engine(model, class_columns="yes", **options)


def test_class_columns_survive_the_journal_and_a_resume(four, mfield, cache, tmp_path):
    options = {"runner": "onnxruntime", "batch_size": 8, "threads": 1, "core": 64,
               "cache_dir": cache}
    with Engine(four, **options) as engine, Mosaic.open(mfield["images"]) as mosaic:
        run_scan(engine, mosaic, _source(mfield), tmp_path / "full.fits")
        stop = threading.Event()

        def progress(event):
            if event["event"] == "tile" and event["tiles_done"] == 2:
                stop.set()

        out = tmp_path / "part.fits"
        with pytest.raises(ScanInterrupted):
            run_scan(engine, mosaic, _source(mfield), out, stop=stop, progress=progress)
        gc.collect()
        entries = sorted((tmp_path / "part.fits.journal").glob("tile-*.npz"))
        assert entries
        with np.load(entries[0]) as entry:
            assert entry["out_probabilities"].shape[1] == 4
        result = TileResult.from_arrays(0, dict(np.load(entries[0])))
        assert result.outputs["probabilities"].shape == (len(result), 4)
        # the columns kept are part of what a resume must match
        with Engine(four, class_columns=False, **options) as other, pytest.raises(
                ResumeError, match="--class-columns"):
            run_scan(other, mosaic, _source(mfield), out, resume=True)
        summary = run_scan(engine, mosaic, _source(mfield), out, resume=True)
        assert summary.tiles_resumed >= 2
    full, resumed = Table.read(tmp_path / "full.fits"), Table.read(out)
    assert full.colnames == resumed.colnames and "class" in full.colnames
    for name in full.colnames:
        np.testing.assert_array_equal(np.asarray(resumed[name]), np.asarray(full[name]), name)


def test_the_cli_writes_class_columns_in_every_format(four, mfield, cache, tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    tables = {}
    for suffix in (".fits", ".ecsv", ".parquet", ".csv"):
        out = tmp_path / f"c{suffix}"
        res = CliRunner().invoke(main, ["scan", *mfield["images"], "--catalog",
                                        mfield["positions"], "--x-col", "x", "--y-col", "y",
                                        "--model", str(four), "-q", "--out", str(out)], env=env)
        assert res.exit_code == 0, res.output
        if suffix == ".parquet":  # astropy's parquet reader needs pandas; pyarrow's does not
            import pyarrow.parquet as pq

            tables[suffix] = Table({k: np.asarray(v) for k, v in
                                    pq.read_table(out).to_pydict().items()})
        else:
            tables[suffix] = Table.read(out)
    first = tables[".fits"]
    for suffix, table in tables.items():
        assert table.colnames == first.colnames, suffix
        column = table["class"]  # ECSV and CSV readers give "" back as masked
        classes = np.asarray(column.filled("") if hasattr(column, "filled") else column)
        classes = np.char.strip(classes.astype(str))
        np.testing.assert_array_equal(classes, np.asarray(first["class"]).astype(str), suffix)
        np.testing.assert_allclose(np.asarray(table["p_multi_peaked"], float),
                                   np.asarray(first["p_multi_peaked"], float), rtol=1e-6,
                                   err_msg=suffix)
    res = CliRunner().invoke(main, ["scan", *mfield["images"], "--catalog", mfield["positions"],
                                    "--x-col", "x", "--y-col", "y", "--model", str(four), "-q",
                                    "--no-class-columns", "--out", str(tmp_path / "n.fits")],
                             env=env)
    assert res.exit_code == 0, res.output
    bare = Table.read(tmp_path / "n.fits")
    assert "class" not in bare.colnames and not any(c.startswith("p_") for c in bare.colnames)
    np.testing.assert_array_equal(np.asarray(bare["score"]), np.asarray(first["score"]))


class _ScoresOnly(Runner):
    """A runner written before the outputs existed: scores, no probabilities."""

    name = "scores-only"

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, batch):
        return np.nanmean(batch.reshape(batch.shape[0], -1), axis=1).astype(np.float32)


def test_runner_contract_outputs_and_a_runner_without_them(four, mfield):
    from pyengine.models.checkpoint import read_spec

    spec, _ = read_spec(four)
    ready = Ready(np.zeros(2, np.float32))
    assert ready.outputs() == {}
    runner = _ScoresOnly(spec, "fp32").activate()
    scores, outputs = runner.infer_outputs(np.ones((3, 5, 32, 32), np.float32))
    assert scores.shape == (3,) and outputs == {}
    assert runner.output_fields == {"probabilities": ((4,), np.dtype(np.float32))}
    empty = runner.submit(np.ones((0, 5, 32, 32), np.float32))
    assert empty.outputs()["probabilities"].shape == (0, 4)
    with Engine(runner=runner, core=128) as engine, pytest.raises(
            ConfigError, match="gives no 'probabilities' output"):  # four classes: columns
        engine.scan(mfield["images"], _source(mfield))
    with Engine(runner=_ScoresOnly(spec, "fp32"), core=128, class_columns=False) as engine:
        table = engine.scan(mfield["images"], _source(mfield))
    assert "class" not in table.colnames and np.isfinite(np.asarray(table["score"])).sum() == 100


def test_class_columns_of_outputs_with_unscored_rows():
    names = ("a", "b", "c")
    probs = np.array([[0.2, 0.5, 0.3], [np.nan] * 3, [0.4, 0.4, 0.2]], np.float32)
    cols = class_columns(names, {"probabilities": probs})
    assert list(cols) == ["p_a", "p_b", "p_c", "class"]
    assert list(cols["class"]) == ["b", "", "a"]  # equal ones: the first
    cols = class_columns(names, {"probabilities": probs, "class_index": np.array([2, -1, 1]),
                                 "class_agreement": np.array([1.0, np.nan, 0.5], np.float32)})
    assert list(cols["class"]) == ["c", "", "b"] and list(cols)[-1] == "class_agreement"
    assert class_columns(names, {}) == {}
