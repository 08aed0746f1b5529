"""pyengine train: data, split, augmentation, learning, determinism, resume, CLI, errors."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from astropy.table import Table
from click.testing import CliRunner

from pyengine import Mosaic
from pyengine.cli import main
from pyengine.errors import CatalogError, ConfigError, PyEngineError
from pyengine.metrics import roc_auc
from pyengine.models.checkpoint import load_model
from pyengine.models.resnet import resnet50
from pyengine.scan.cutouts import extract_cutouts
from pyengine.synth import DEFAULT_BANDS, SynthConfig, make_field
from pyengine.train import TrainConfig, train
from pyengine.training.augment import (
    PAD,
    Augment,
    _dihedral,
    _shifted,
    augment_batch,
    cubic_weights,
    epoch_batches,
)
from pyengine.training.data import (
    ClassPlan,
    TrainingSet,
    block_index,
    label_strings,
    load_training_set,
    plan_classes,
    split_indices,
)
from pyengine.training.loop import load_state
from pyengine.training.report import CURVE_POINTS, Progress, validation_metrics

S = 32  # cutout size of every test: ResNet-50 trains at ~150 cutouts/s at 32 px on 2 cores


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """A 1024 px field of bright extended clusters (r_h 2-5 pc) and stars, no disk."""
    root = tmp_path_factory.mktemp("field")
    bands = tuple(dataclasses.replace(b, disk_mu0=40.0) for b in DEFAULT_BANDS)
    config = SynthConfig(width=1024, height=1024, seed=4, bands=bands, rgb_density=0.0,
                         halo_rgb_density=0.0, galaxy_density=0.0, cluster_density=0.0,
                         halo_cluster_density=4e4, foreground_density=1e5, bright_limit=17.0,
                         star_limit=20.0, cluster_mag_range=(17.0, 20.0),
                         cluster_rh_range=(2.0, 5.0))
    result = make_field(root, config)
    truth = Table.read(result.truth)
    truth["class"] = [c.decode() if isinstance(c, bytes) else str(c) for c in truth["class"]]
    # A small balanced catalog (CSV) for the runs that only need to run.
    rng = np.random.default_rng(0)
    pick = np.sort(np.concatenate([rng.choice(np.flatnonzero(truth["class"] == c), 50,
                                              replace=False) for c in ("cluster", "star")]))
    small = truth[pick]["id", "ra", "dec", "x", "y", "class", "i_mag"]
    small.rename_column("class", "label")
    small.write(root / "small.csv")
    return {"images": (str(result.images["g"][0]), str(result.images["i"][0])),
            "truth": str(result.truth), "table": truth, "small": str(root / "small.csv"),
            "root": root}


def _config(field, out, **kw):
    base = {"images": field["images"], "catalog": field["small"], "output": str(out),
            "x_col": "x", "y_col": "y", "cutout_size": S, "epochs": 1, "batch_size": 16,
            "threads": 2}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(field, tmp_path_factory):
    """Three epochs on the whole truth catalog (clusters vs stars)."""
    out = tmp_path_factory.mktemp("trained") / "m31.safetensors"
    notes = []
    cfg = _config(field, out, catalog=field["truth"], epochs=3, batch_size=32,
                  target_purity=0.9)
    return cfg, train(cfg, log=notes.append), notes


def test_learns_extended_clusters_and_scores_like_a_scan(field, trained):
    cfg, result, notes = trained
    spec = result.spec
    m = spec.metrics
    assert m["roc_auc"] > 0.9, result.history
    assert m["pr_auc"] > 0.8
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert spec.class_names == ("cluster", "star") and spec.positive_classes == (0,)
    assert spec.threshold == m["threshold"]["value"]
    if m["target_purity"]["reached"]:
        assert m["threshold"]["rule"] == "target_purity" and m["threshold"]["precision"] >= 0.9
    (tn, fp), (fn, tp) = m["confusion_matrix"]["counts"]
    assert tn + fp + fn + tp == m["validation"]["n"] and fn + tp == m["validation"]["n_cluster"]
    assert "class_confusion_matrix" not in m  # binary
    prov = spec.provenance
    assert prov["label_column"] == "class" and prov["seed"] == 0 and prov["epochs"] == 3
    assert prov["catalog"].endswith("truth.fits") and len(prov["catalog_sha256"]) == 64
    assert prov["rows"]["used"] == len(field["table"])
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not cfg.checkpoint_path.exists()  # removed once the model is written
    assert any("training on" in n for n in notes)
    # The saved model scores the scan's own cutouts of the validation rows exactly as
    # training measured: the centre crop of the S + 2 store is the scan cutout.
    model = load_model(result.model_path)
    with Mosaic.open(list(field["images"])) as mosaic:
        data = load_training_set(cfg, mosaic, log=lambda s: None)
        _, val = split_indices(data, method="random", fraction=0.2, block=512, seed=0)
        cut = extract_cutouts(mosaic, data.x[val], data.y[val], S)
    with torch.inference_mode():
        _, score = model(torch.from_numpy(cut.pixels))
    assert roc_auc(data.is_positive[val], score.numpy()) == pytest.approx(m["roc_auc"], abs=1e-9)


class _Stop(Exception):
    pass


def _stop_after_first(epoch):
    raise _Stop


def test_same_seed_same_bytes_resume_equals_uninterrupted(field, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = train(_config(field, tmp_path / "a.safetensors", epochs=2))
    again = train(_config(field, tmp_path / "again.safetensors", epochs=2))
    assert a.model_path.read_bytes() == again.model_path.read_bytes()
    cfg = _config(field, tmp_path / "b.safetensors", epochs=2)
    with pytest.raises(_Stop):
        train(cfg, on_epoch_end=_stop_after_first)
    state = load_state(cfg.checkpoint_path)  # weights_only=True
    assert state["epoch"] == 1 and len(state["history"]) == 1
    with pytest.raises(ConfigError, match=r"other options or data \(lr"):
        train(dataclasses.replace(cfg, lr=2e-3, resume=True))
    notes = []
    b = train(dataclasses.replace(cfg, resume=True), log=notes.append)
    assert any("resuming" in n and "after epoch 1" in n for n in notes)
    assert b.model_path.read_bytes() == a.model_path.read_bytes()
    other = train(_config(field, tmp_path / "c.safetensors", epochs=2, seed=1))
    assert load_model(other.model_path).backbone.fc.weight.ne(
        load_model(a.model_path).backbone.fc.weight).any()


def test_mag_limit_filters_and_dropped_rows_are_counted(field, tmp_path):
    t = field["table"]["x", "y", "class", "i_mag"]
    t.add_row((-50.0, 10.0, "star", 17.5))  # off the image
    t.add_row((0.0, 0.0, "cluster", 17.5))  # corner: 75 % of the 32 px cutout blank
    t.write(tmp_path / "cat.fits")
    notes = []
    cfg = _config(field, tmp_path / "m.safetensors", catalog=str(tmp_path / "cat.fits"),
                  mag_limit=19.0)
    with Mosaic.open(list(field["images"])) as mosaic:
        data = load_training_set(cfg, mosaic, notes.append)
    assert data.mag_col == "i_mag"  # found without --mag-col
    assert np.all(np.asarray(t["i_mag"])[data.rows] < 19.0)
    assert data.counts["fainter"] == int(np.sum(np.asarray(t["i_mag"]) >= 19.0)) > 0
    assert data.counts["off_image"] == 1 and data.counts["blank"] == 1
    assert data.counts["used"] == int(np.sum(np.asarray(t["i_mag"]) < 19.0)) - 2
    assert any("--mag-limit 19" in n for n in notes)
    assert any("1 rows off the image and 1 more than 50% blank" in n for n in notes)


def test_shifted_views_crop_real_pixels_and_augmentations_are_dihedral(field, tmp_path):
    cfg = _config(field, tmp_path / "m.safetensors")
    with Mosaic.open(list(field["images"])) as mosaic:
        data = load_training_set(cfg, mosaic, lambda s: None)
        k = np.arange(5)
        for dy, dx in ((0, 0), (1, 1), (2, 0), (1, 2), (-2, 2)):
            shifted = extract_cutouts(mosaic, data.x[k] + dx, data.y[k] + dy, S)
            np.testing.assert_array_equal(
                data.pixels[k, :, PAD + dy:PAD + dy + S, PAD + dx:PAD + dx + S], shifted.pixels)
            if (dy, dx) == (-2, 2):  # a whole-pixel shift through the augmenter
                np.testing.assert_array_equal(_shifted(data.pixels[0], S, dx, dy),
                                              shifted.pixels[0])
    a = np.arange(16.0).reshape(1, 4, 4)
    views = [_dihedral(a, t) for t in range(8)]
    assert len({v.tobytes() for v in views}) == 8
    only_flips = Augment(shift=1.0, dim=0.0, blur=0.0, noise=0.0)
    out = augment_batch(data.pixels, data.sigma, k, S, np.random.default_rng(1),
                        augment=dataclasses.replace(only_flips, shift=0.0))
    for j, row in enumerate(k):
        options = [_dihedral(data.pixels[row, :, PAD:PAD + S, PAD:PAD + S], t) for t in range(8)]
        assert any(np.array_equal(out[j], o) for o in options)
    pix = data.pixels[:2].copy()
    pix[0, 0, 5, :] = np.nan
    clean = augment_batch(pix, data.sigma[:2], np.arange(2), S, np.random.default_rng(2),
                          augment=Augment.off())
    noisy = augment_batch(pix, data.sigma[:2], np.arange(2), S, np.random.default_rng(2),
                          augment=Augment(shift=0.0, dim=0.0, blur=0.0, noise=1.0,
                                          dihedral=False))
    assert np.isnan(clean).any()
    np.testing.assert_array_equal(np.isnan(noisy), np.isnan(clean))  # NaN stays NaN
    diff = (noisy - clean)[1]
    assert 0 < np.std(diff) < 1.5 * data.sigma[1].max()  # up to 1 x the cutout's own noise


def test_subpixel_shift_moves_the_light_and_keeps_the_flux():
    """A Gaussian star moved by a fractional shift: its centroid moves by that shift
    (cubic convolution is accurate to ~1e-2 px here) and its flux is kept."""
    n = S + 2 * PAD
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    star = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 2.0 ** 2)[None].astype(np.float32)
    np.testing.assert_allclose(cubic_weights(0.3).sum(), 1.0)
    for dx, dy in ((0.3, -0.4), (1.5, 0.25), (-1.7, 1.1)):
        view = _shifted(star, S, dx, dy)[0].astype(np.float64)
        cy, cx = (np.mgrid[0:S, 0:S] - (S - 1) / 2)
        # Moving the cutout's centre by +d moves the star by -d within it.
        assert abs((view * cx).sum() / view.sum() + dx) < 0.02
        assert abs((view * cy).sum() / view.sum() + dy) < 0.02
        assert abs(view.sum() / star.sum() - 1) < 1e-3


def test_dimming_and_blur_keep_the_noise_level(field, tmp_path):
    """Dimmed and blurred views keep the cutout's own noise (within 25 %) and lose light."""
    rng = np.random.default_rng(5)
    n = S + 2 * PAD
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    star = 200 * np.exp(-0.5 * (xx ** 2 + yy ** 2) / 1.5 ** 2)
    pixels = (100 + star + rng.standard_normal((40, 1, n, n)) * 5).astype(np.float32)
    sigma = np.full((40, 1), 5.0, np.float32)
    plain = augment_batch(pixels, sigma, np.arange(40), S, np.random.default_rng(0),
                          augment=Augment.off())
    for aug in (Augment(shift=0, dim=0.5, blur=0, noise=0, dihedral=False),
                Augment(shift=0, dim=0, blur=2.0, noise=0, dihedral=False)):
        out = augment_batch(pixels, sigma, np.arange(40), S, np.random.default_rng(0),
                            augment=aug)
        edge = np.r_[out[:, 0, :6, :].ravel(), out[:, 0, -6:, :].ravel()]
        assert abs(np.std(edge) / 5.0 - 1) < 0.25
        assert out[:, 0, S // 2, S // 2].mean() < plain[:, 0, S // 2, S // 2].mean() - 10


def test_balanced_sampler_and_plain_epochs():
    labels = np.r_[np.zeros(900, np.int64), np.ones(100, np.int64)]
    rng = np.random.default_rng(0)
    b = epoch_batches(labels, 2, 50, "sampler", rng)
    assert b.shape == (20, 50)
    assert abs(labels[b].mean() - 0.5) < 0.05
    p = epoch_batches(labels, 2, 64, "none", rng)
    assert p.shape == (15, 64) and np.unique(p).size == p.size
    assert abs(labels[p].mean() - 0.1) < 0.03


def _fake_set(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 2000, n)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    plan = ClassPlan(("non-cluster", "cluster"), (1,), ("0", "1"), ("1",), {"0": 0, "1": 1})
    return TrainingSet(np.zeros((n, 1, 1, 1), np.float32), np.zeros((n, 1), np.float32), labels,
                       x, y, np.arange(n), plan, "label", None, ("x", "y"), {})


def test_spatial_split_keeps_every_block_on_one_side():
    data = _fake_set()
    tr, va = split_indices(data, method="spatial", fraction=0.25, block=200, seed=3)
    blocks = block_index(data.x, data.y, 200)
    assert not set(blocks[tr]) & set(blocks[va])
    assert tr.size + va.size == 2000 and 0.2 < va.size / 2000 < 0.35
    tr2, va2 = split_indices(data, method="random", fraction=0.25, block=200, seed=3)
    assert set(blocks[tr2]) & set(blocks[va2])  # a random split shares blocks
    assert data.labels[va2].mean() == pytest.approx(data.labels.mean(), abs=0.01)  # stratified
    with pytest.raises(CatalogError, match="smaller --block-size than 5000 px"):
        split_indices(data, method="spatial", fraction=0.25, block=5000, seed=3)


def test_label_strings_and_class_plans():
    col = np.ma.MaskedArray([b" cluster", b"star ", b"", b"star"], mask=[0, 0, 0, 1])
    text, missing = label_strings(col, "t")
    assert list(text[:2]) == ["cluster", "star"] and list(missing) == [False, False, True, True]
    text, missing = label_strings(np.array([1.0, 2.0, np.nan, 2.5]), "t")
    assert list(text) == ["1", "2", "", "2.5"] and list(missing) == [False, False, True, False]
    assert list(label_strings(np.array([True, False]), "t")[0]) == ["True", "False"]
    p = plan_classes(["star", "cluster", "galaxy"], label_col="class")
    assert p.class_names == ("cluster", "galaxy", "star") and p.positive == (0,)
    p = plan_classes(["10", "2", "1", "4"], label_col="c")
    assert p.class_names == ("1", "2", "4", "10") and p.positive == (0,)
    p = plan_classes(["False", "True"], label_col="c")
    assert p.positive_values == ("True",)
    p = plan_classes(["1", "2", "3", "4"], label_col="c", positive=["1", "2", "3"], binary=True)
    assert p.class_names == ("non-cluster", "cluster") and p.value_to_class["4"] == 0
    p = plan_classes(["a", "b", "c"], label_col="c", classes=["c", "a"], positive=["A"])
    assert p.class_names == ("c", "a") and p.positive == (1,)
    with pytest.raises(ConfigError, match=r"--positive value 'x' .* accepted: a, b"):
        plan_classes(["a", "b"], label_col="c", positive=["x"])
    with pytest.raises(ConfigError, match=r"no value cluster, 1 or True; name .* --positive"):
        plan_classes(["a", "b"], label_col="c")
    with pytest.raises(CatalogError, match="one class"):
        plan_classes(["cluster"], label_col="c")
    with pytest.raises(ConfigError, match="every class a cluster"):
        plan_classes(["a", "b"], label_col="c", positive=["a", "b"])


def test_multiclass_labels_phangs_style(field, tmp_path):
    t = Table.read(field["small"])
    rng = np.random.default_rng(1)
    t["label"] = np.where(t["label"] == "cluster", rng.integers(1, 4, len(t)), 4)
    t.write(tmp_path / "phangs.ecsv")
    result = train(_config(field, tmp_path / "m.safetensors", catalog=str(tmp_path / "phangs.ecsv"),
                           positive=("1", "2", "3")))
    spec = result.spec
    assert spec.class_names == ("1", "2", "3", "4") and spec.positive_classes == (0, 1, 2)
    cm = np.array(spec.metrics["class_confusion_matrix"]["counts"])
    assert cm.shape == (4, 4) and cm.sum() == spec.metrics["validation"]["n"]
    assert spec.metrics["validation"]["n_cluster"] == cm[:3].sum()


def test_fine_tuning_from_torchvision_and_pyengine_weights(field, trained, tmp_path):
    torch.manual_seed(5)
    src = resnet50(in_channels=3, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    r = train(_config(field, tmp_path / "tv.safetensors", init_weights=str(tmp_path / "tv.pth"),
                      lr=1e-9, warmup=0.0))
    init = r.spec.provenance["init_weights"]
    assert init["kind"] == "torchvision" and sorted(init["fresh"]) == ["fc.bias", "fc.weight"]
    conv1 = src.conv1.weight.sum(dim=1, keepdim=True).repeat(1, 2, 1, 1) / 2
    torch.testing.assert_close(load_model(r.model_path).backbone.conv1.weight, conv1,
                               atol=1e-6, rtol=0)
    _, previous, _ = trained
    r = train(_config(field, tmp_path / "ft.safetensors", init_weights=str(previous.model_path),
                      classes=("cluster", "star"), lr=1e-9, warmup=0.0))
    assert r.spec.provenance["init_weights"]["kind"] == "pyengine"
    assert r.spec.provenance["init_weights"]["fresh"] == []
    torch.testing.assert_close(load_model(r.model_path).backbone.fc.weight,
                               load_model(previous.model_path).backbone.fc.weight,
                               atol=1e-6, rtol=0)


def test_cli_end_to_end(field, tmp_path):
    out = tmp_path / "cli.safetensors"
    args = ["train", *field["images"], "--catalog", field["small"], "-o", str(out),
            "--ra-col", "ra", "--dec-col", "dec", "--size", str(S), "--epochs", "1",
            "--batch-size", "16", "--threads", "2", "--split", "spatial", "--block-size", "256",
            "--target-purity", "0.893", "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: threshold" in res.stdout
    assert "wrote " + str(out.with_suffix(".pr.png")) in res.stdout
    assert out.with_suffix(".pr.png").read_bytes()[:4] == b"\x89PNG"
    assert not out.with_suffix(".train-state.pt").exists()
    spec = load_model(out).spec
    assert spec.provenance["command_line"].startswith("pyengine train ")
    assert "--split spatial" in spec.provenance["command_line"]
    assert spec.provenance["position_columns"] == ["ra", "dec"]
    assert spec.metrics["target_purity"]["target"] == 0.893
    json.dumps(spec.to_dict(), allow_nan=False)  # plain JSON, no NaN


@pytest.mark.parametrize(("extra", "message"), [
    (["--label-col", "nope"], "no column 'nope' for labels"),
    (["--positive", "galaxy"], "--positive value 'galaxy' is not a value of label column "
                               "'label'; accepted: cluster, star"),
    (["--classes", "star,cluster", "--positive", "star,cluster"], "every class a cluster"),
    (["--mag-limit", "5"], "no rows left after the cuts"),
    (["--mag-col", "i_mag"], "--mag-col 'i_mag' is not accepted; it needs --mag-limit"),
    (["--val-fraction", "0.9"], "--val-fraction 0.9 is not accepted; a fraction in (0, 0.5]"),
    (["--size", "8"], "--size 8 is not accepted; an integer from 16 to 256"),
    (["--init-weights", "missing.pth"], "missing.pth: no such file (--init-weights)"),
])
def test_cli_errors_are_one_line(field, tmp_path, extra, message):
    args = ["train", *field["images"], "--catalog", field["small"], "-o",
            str(tmp_path / "m.safetensors"), "--x-col", "x", "--y-col", "y", "-q", *extra]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], res.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_single_class_catalog_is_refused(field, tmp_path):
    t = Table.read(field["small"])
    t[t["label"] == "star"].write(tmp_path / "stars.csv")
    with pytest.raises(CatalogError, match="label column 'label' has one class"):
        train(_config(field, tmp_path / "m.safetensors", catalog=str(tmp_path / "stars.csv")))


def test_bad_config_values_name_the_option():
    base = {"images": ("g.fits",), "catalog": "c.fits", "output": "m.safetensors"}
    for key, value, text in [("epochs", 0, "--epochs 0"), ("batch_size", 1, "--batch-size 1"),
                             ("split", "blocks", "--split 'blocks'"), ("lr", -1.0, "--lr -1.0"),
                             ("balance", "oversample", "accepted: sampler, loss, none"),
                             ("target_purity", 1.5, "--target-purity 1.5"),
                             ("max_nan", 1.0, "--max-nan 1.0")]:
        with pytest.raises(PyEngineError, match=text):
            TrainConfig(**base, **{key: value})


def test_threshold_is_target_purity_when_reached_else_f1_optimal():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1000)  # classes 0, 1 (clusters) and 2
    plan = ClassPlan(("a", "b", "c"), (0, 1), ("a", "b", "c"), ("a", "b"), {})
    logits = rng.normal(size=(1000, 3)) + 2.0 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    t, rule, m = validation_metrics(probs, labels, plan, 0.9)
    score, truth = probs[:, :2].sum(axis=1), labels < 2
    assert rule == "target_purity" and m["target_purity"]["reached"]
    assert m["threshold"]["precision"] >= 0.9 and t == m["target_purity"]["threshold"]
    assert m["threshold"]["tp"] == int(np.sum((score >= t) & truth))
    assert len(m["pr_curve"]["threshold"]) <= CURVE_POINTS
    assert np.array(m["class_confusion_matrix"]["counts"]).trace() > 500
    probs[np.flatnonzero(~truth)[0]] = [0.5, 0.5, 0.0]  # a non-cluster scores 1, the top...
    t, rule, m = validation_metrics(probs, labels, plan, 1.0)  # ...so purity 1 is unreachable
    assert rule == "f1_optimal" and not m["target_purity"]["reached"]
    assert t == m["f1_optimal"]["threshold"] and m["target_purity"]["threshold"] is None


def test_progress_lines():
    plain = io.StringIO()
    p = Progress(plain)
    p.start(1, 2, 3)
    for _ in range(3):
        p.step(16, 0.5)
    p.end("loss 0.5000")
    assert plain.getvalue() == "epoch 1/2: loss 0.5000\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = Progress(tty)
    p.start(2, 2, 2)
    p.step(16, 0.25)
    p.step(16, 0.75)
    assert "\repoch 2/2 [" in tty.getvalue() and "2/2 loss 0.5000" in tty.getvalue()
    assert "cutouts/s" in tty.getvalue()
    quiet = io.StringIO()
    p = Progress(quiet, enabled=False)
    p.start(1, 1, 1)
    p.step(1, 1.0)
    p.end("x")
    assert quiet.getvalue() == ""
