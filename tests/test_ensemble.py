"""Ensembles (pyengine/runners/ensemble.py): several models scanned in one pass over the
pixels, their mean probabilities, modal class, agreement and score spread; resume,
ONNX members, survey shards and merge; and ``pyengine train --members N``."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError, ModelFileError, ResumeError
from pyengine.io.mosaic import Mosaic
from pyengine.runners.ensemble import combine
from pyengine.runners.loaders import model_identity
from pyengine.scan.engine import Engine
from pyengine.scan.results import ScanInterrupted
from pyengine.scan.run import run_scan
from pyengine.sources.catalog import CatalogSource
from tests import multifield

P_COLUMNS = ["p_symmetric", "p_asymmetric", "p_multi_peaked", "p_non_cluster"]


@pytest.fixture(scope="module")
def mfield(tmp_path_factory):
    return multifield.make_field(tmp_path_factory.mktemp("five"), per_side=10)


@pytest.fixture(scope="module")
def members(tmp_path_factory, mfield):
    """Two four-class members of different seeds and thresholds (0.3 and 0.6)."""
    root = tmp_path_factory.mktemp("members")
    cutouts = multifield.field_cutouts(mfield)
    return [multifield.make_model(root / f"e.m{k}.safetensors", seed=k, threshold=t,
                                  centre_on=cutouts) for k, t in enumerate((0.3, 0.6))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def _source(mfield):
    return CatalogSource(mfield["positions"], x_col="x", y_col="y")


def _engine(model, cache, **kw):
    return Engine(model, **{"runner": "onnxruntime", "batch_size": 32, "threads": 2,
                            "core": 128, "cache_dir": cache, **kw})


def _scan(model, mfield, cache, **kw):
    with _engine(model, cache, **kw) as engine:
        return engine.scan(mfield["images"], _source(mfield))


def test_combine_votes_ties_agreement_and_spread():
    # three members, four cutouts, three classes
    probs = np.array([
        [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]],
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]],
        [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]]], np.float32)
    scores = probs[:, :, 0]
    score, out = combine(probs, scores)
    np.testing.assert_allclose(out["probabilities"], probs.mean(axis=0), rtol=0, atol=1e-7)
    # cutout 0: two votes for class 0; cutout 1: one vote each, the highest mean (class 1:
    # 0.433) wins; cutout 2: all three for class 2; cutout 3: class 0 (member 0's first of
    # equals), 2 and 1 one each, mean 0.2 / 0.433 / 0.367 -> class 1
    np.testing.assert_array_equal(out["class_index"], [0, 1, 2, 1])
    np.testing.assert_allclose(out["class_agreement"], [2 / 3, 1 / 3, 1.0, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(score, scores.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["score_std"], scores.std(axis=0), rtol=1e-5)
    # a tie between classes of equal mean goes to the lower index
    even = np.array([[[0.5, 0.5]], [[0.5, 0.5]]], np.float32)
    assert combine(even, even[:, :, 1])[1]["class_index"].tolist() == [0]


def test_the_ensemble_is_its_members_combined_exactly(members, mfield, cache):
    alone = [_scan(m, mfield, cache) for m in members]
    table = _scan(members, mfield, cache)
    assert table.meta["NMEMBERS"] == 2 and table.meta["MODEL"] == ",".join(map(str, members))
    assert table.meta["MODELSHA"] == model_identity(members) != model_identity(members[0])
    names = table.colnames
    assert names[: names.index("class_agreement") + 1] == [
        "id", "ra", "dec", "x", "y", "score", "score_std", "is_candidate", "flags", "tile",
        *P_COLUMNS, "class", "class_agreement"]
    scored = np.isfinite(np.asarray(table["score"]))
    assert scored.sum() == 100
    probs = np.stack([np.stack([np.asarray(t[c])[scored] for c in P_COLUMNS], axis=1)
                      for t in alone])
    scores = np.stack([np.asarray(t["score"])[scored] for t in alone])
    score, want = combine(probs, scores)
    for k, column in enumerate(P_COLUMNS):
        np.testing.assert_array_equal(np.asarray(table[column])[scored],
                                      want["probabilities"][:, k], err_msg=column)
    np.testing.assert_array_equal(np.asarray(table["score"])[scored], score)
    np.testing.assert_array_equal(np.asarray(table["score_std"])[scored], want["score_std"])
    np.testing.assert_array_equal(np.asarray(table["class_agreement"])[scored],
                                  want["class_agreement"])
    np.testing.assert_array_equal(np.asarray(table["class"])[scored],
                                  np.asarray(multifield.CLASSES)[want["class_index"]])
    agreement = np.asarray(table["class_agreement"])[scored]
    assert set(agreement.tolist()) == {0.5, 1.0}  # the members disagree somewhere
    assert np.isnan(np.asarray(table["score_std"])[~scored]).all()
    assert set(np.asarray(table["class"])[~scored]) == {""}
    # the threshold: the members' mean, unless given
    assert table.meta["THRESH"] == pytest.approx(0.45)
    cand = np.asarray(table["is_candidate"])
    np.testing.assert_array_equal(cand[scored], score >= 0.45)
    given = _scan(members, mfield, cache, threshold=0.5)
    assert given.meta["THRESH"] == 0.5
    # Engine.predict of an ensemble: the members' predictions, combined
    cutouts = multifield.field_cutouts(mfield)
    with _engine(members, cache) as engine:
        got = engine.predict(cutouts)
        assert engine.describe()["threshold_rule"] == "the members' mean"
    each = []
    for m in members:
        with _engine(m, cache) as engine:
            each.append(engine.predict(cutouts))
    score, want = combine(np.stack([e["probabilities"] for e in each]),
                          np.stack([e["score"] for e in each]))
    np.testing.assert_array_equal(got["score"], score)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_one_pass_over_the_pixels_each_batch_through_every_member(members, mfield, cache,
                                                                  monkeypatch):
    reads = []
    real = Mosaic.read

    def counted(self, *args, **kw):
        reads.append(args[:4])
        return real(self, *args, **kw)

    monkeypatch.setattr(Mosaic, "read", counted)

    def counting(runner, calls):
        submit = runner.submit

        def wrapped(batch):
            calls.append(batch.ctypes.data)
            return submit(batch)

        runner.submit = wrapped

    with _engine(members[0], cache, batch_size=16) as engine:
        single = []
        counting(engine.runner, single)
        engine.scan(mfield["images"], _source(mfield))
    single_reads, reads[:] = list(reads), []
    with _engine(members, cache, batch_size=16) as engine:
        calls = [[], []]
        for runner, log in zip(engine.runner.members, calls, strict=True):
            counting(runner, log)
        engine.scan(mfield["images"], _source(mfield))
        slots = {slot.ctypes.data for slot in engine._slots}
    assert reads == single_reads and len(reads) == 16  # every tile read once (4 x 4 tiles)
    assert len(calls[0]) == len(calls[1]) == len(single) == 7  # 100 cutouts, batches of 16
    # the very batch the gather stage filled, in the ensemble's own slots, goes to each member
    assert calls[0] == calls[1] and set(calls[0]) <= slots


def test_members_must_agree_on_what_the_pixels_mean(members, mfield, cache, tmp_path):
    three = multifield.make_model(tmp_path / "three.safetensors",
                                  class_names=("a", "b", "c"), positive_classes=(0,))
    with pytest.raises(ModelFileError, match=r"three.safetensors: its class names \(a, b, c\) "
                                             r"differ from those of .*e.m0.safetensors"):
        _engine([members[0], three], cache)
    four_bands = multifield.make_model(tmp_path / "bands.safetensors",
                                       bands=multifield.BANDS[:4])
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    res = CliRunner().invoke(main, ["scan", *mfield["images"], "--catalog",
                                    mfield["positions"], "--x-col", "x", "--y-col", "y",
                                    "--model", str(members[0]), "--model", str(four_bands),
                                    "--out", str(tmp_path / "c.fits")], env=env)
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1
    assert "bands.safetensors: its bands (F275W, F336W, F438W, F555W) differ" in res.output
    with pytest.raises(ConfigError, match="empty list"):
        Engine([])


def test_an_interrupted_ensemble_scan_resumes_and_a_changed_member_is_refused(
        members, mfield, cache, tmp_path):
    options = {"batch_size": 8, "threads": 1, "core": 64}
    with _engine(members, cache, **options) as engine, \
            Mosaic.open(mfield["images"]) as mosaic:
        run_scan(engine, mosaic, _source(mfield), tmp_path / "full.fits")
        stop = threading.Event()

        def progress(event):
            if event["event"] == "tile" and event["tiles_done"] == 2:
                stop.set()

        out = tmp_path / "part.fits"
        with pytest.raises(ScanInterrupted):
            run_scan(engine, mosaic, _source(mfield), out, stop=stop, progress=progress)
        gc.collect()
        fingerprint = (tmp_path / "part.fits.journal" / "fingerprint.json").read_text()
        assert fingerprint.count("sha256_sampled") >= 2 + 5  # both members and five bands
        with _engine(members[::-1], cache, **options) as other, \
                pytest.raises(ResumeError, match="--model"):
            run_scan(other, mosaic, _source(mfield), out, resume=True)
        summary = run_scan(engine, mosaic, _source(mfield), out, resume=True)
        assert summary.tiles_resumed >= 2
    a, b = Table.read(tmp_path / "full.fits"), Table.read(out)
    assert a.colnames == b.colnames
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]), name)


def test_onnx_members_scan_like_their_model_files(members, mfield, cache, tmp_path):
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import load_model

    exports = [export_onnx(load_model(m), tmp_path / f"m{k}.onnx")
               for k, m in enumerate(members)]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    tables = []
    for models, out in ((members, "files.fits"), (exports, "onnx.fits")):
        args = ["scan", *mfield["images"], "--catalog", mfield["positions"], "--x-col", "x",
                "--y-col", "y", "--runner", "onnxruntime", "--out", str(tmp_path / out)]
        for m in models:
            args += ["--model", str(m)]
        res = CliRunner().invoke(main, args, env=env)
        assert res.exit_code == 0, res.output
        assert "an ensemble of 2 models, threshold 0.45 (the members' mean)" in res.output
        tables.append(Table.read(tmp_path / out))
    files, onnx = tables
    assert onnx.meta["MODELSHA"] == files.meta["MODELSHA"]  # the same models
    for name in (*P_COLUMNS, "score", "score_std", "class_agreement"):
        np.testing.assert_allclose(np.asarray(onnx[name]), np.asarray(files[name]), rtol=0,
                                   atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(np.asarray(onnx["class"]), np.asarray(files["class"]))


def test_survey_shards_and_merge_keep_the_ensembles_columns(survey_2x2, model, tmp_path):
    from tests.scanfield import make_model

    second = make_model(tmp_path / "second.safetensors", seed=2)
    manifest = survey_2x2.described().write(tmp_path / "s.ecsv")
    common = ["--grid", "25", "--model", str(model), "--model", str(second), "--runner",
              "torch", "--tile-size", "64", "-q"]
    whole = CliRunner().invoke(main, ["scan", str(manifest), *common, "--out",
                                      str(tmp_path / "whole.fits")])
    assert whole.exit_code == 0, whole.output
    for i in range(2):
        got = CliRunner().invoke(main, ["scan", str(manifest), *common, "--shard", f"{i}/2",
                                        "--out", str(tmp_path / f"p{i}.fits")])
        assert got.exit_code == 0, got.output
    merged = CliRunner().invoke(main, ["merge", str(tmp_path / "p0.fits"),
                                       str(tmp_path / "p1.fits"), "--out",
                                       str(tmp_path / "m.fits")])
    assert merged.exit_code == 0, merged.output
    a, b = (Table.read(tmp_path / p, mask_invalid=False) for p in ("whole.fits", "m.fits"))
    assert {"score_std", "p_non_cluster", "p_cluster", "class", "class_agreement"} <= \
        set(a.colnames)
    assert a.colnames == b.colnames and len(a) == len(b) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    assert set(np.char.decode(np.asarray(a["class"]))) <= {"non-cluster", "cluster", ""}


def test_train_members_writes_seeded_members_on_one_split(tmp_path):
    from pyengine.models.checkpoint import load_model, read_spec

    small = multifield.make_field(tmp_path / "f", per_side=6)
    out = tmp_path / "phangs.safetensors"
    opts = ["--catalog", small["labels"], "--output", str(out), "--x-col", "x", "--y-col",
            "y", "--classes", ",".join(multifield.CLASSES), "--positive",
            ",".join(multifield.POSITIVE), "--size", "32", "--epochs", "1", "--batch-size",
            "16", "--threads", "2", "--seed", "7", "--quiet"]
    res = CliRunner().invoke(main, ["train", *small["images"], *opts, "--members", "2"])
    assert res.exit_code == 0, res.output
    paths = [tmp_path / "phangs.m0.safetensors", tmp_path / "phangs.m1.safetensors"]
    assert not out.exists() and all(p.exists() for p in paths)
    specs = [read_spec(p)[0] for p in paths]
    records = [s.provenance["ensemble"] for s in specs]
    assert [(r["member"], r["members"], r["seed"], r["split_seed"]) for r in records] == [
        (0, 2, 7, 7), (1, 2, 8, 7)]
    assert [s.provenance["seed"] for s in specs] == [7, 8]
    assert [s.provenance["split"]["seed"] for s in specs] == [7, 7]  # one validation split
    assert specs[0].metrics["validation"]["n"] == specs[1].metrics["validation"]["n"]
    w = [load_model(p).backbone.fc.weight.detach().numpy() for p in paths]
    assert not np.array_equal(w[0], w[1])  # seeded apart
    assert "--model " + str(paths[0]) in res.output and "--model " + str(paths[1]) in res.output
    again = CliRunner().invoke(main, ["train", *small["images"], *opts, "--members", "2",
                                      "--resume"])
    assert again.exit_code == 0, again.output
    assert again.output.count("was trained before (--resume); kept") == 2
    bad = CliRunner().invoke(main, ["train", *small["images"], *opts, "--members", "0"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --members 0 is not accepted")
    # the members scan together
    scanned = CliRunner().invoke(main, ["scan", *small["images"], "--catalog",
                                        small["positions"], "--x-col", "x", "--y-col", "y",
                                        "--model", str(paths[0]), "--model", str(paths[1]),
                                        "-q", "--out", str(tmp_path / "c.fits")],
                                 env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "x")})
    assert scanned.exit_code == 0, scanned.output
    table = Table.read(tmp_path / "c.fits")
    assert {"class", "class_agreement", "score_std", *P_COLUMNS} <= set(table.colnames)
    assert table.meta["THRESH"] == pytest.approx(np.mean([s.threshold for s in specs]))


def test_vetting_order_puts_the_members_disagreement_first():
    from pyengine.scan.classes import vetting_order

    table = Table({"score": [0.9, 0.5, np.nan, 0.44, 0.1],
                   "score_std": np.array([0.0, 0.01, np.nan, 0.2, 0.2], np.float32)})
    table.meta["THRESH"] = 0.45
    assert vetting_order(table).tolist() == [3, 4, 1, 0]  # spread, then nearness
    del table["score_std"]
    assert vetting_order(table).tolist() == [3, 1, 4, 0]  # a single model: nearness
    assert vetting_order(table, threshold=0.85).tolist() == [0, 1, 3, 4]
    del table.meta["THRESH"]
    with pytest.raises(ConfigError, match="no THRESH"):
        vetting_order(table)


def test_an_ensembles_config_makes_the_same_ensemble_again(members, cache):
    """What a Dask worker does: ``Engine(**engine.config)``."""
    engine = _engine(members, cache, class_columns=True)
    again = Engine(**engine.config)
    assert engine.config["model"] == [str(m) for m in members]
    assert again.members == 2 and again.model == tuple(str(m) for m in members)
    assert again.model_sha256 == engine.model_sha256 and again.threshold == engine.threshold
    assert again.class_columns and again.row_outputs == engine.row_outputs
    one = Engine([members[0]], runner="onnxruntime", cache_dir=cache)  # a list of one: the file
    assert one.members == 1 and one.model == str(members[0])
    assert one.model_sha256 == model_identity(members[0])
