"""ONNX export agrees with torch on real cutouts; int8 is QDQ; TensorRT logic vs a fake API."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

from pyengine import Mosaic
from pyengine.errors import ConfigError, ModelFileError
from pyengine.export.onnx import export_onnx, onnx_metadata
from pyengine.export.quantize import quantize_int8
from pyengine.export.tensorrt import TensorRTUnavailable, build_engine
from pyengine.models.checkpoint import load_model, save_model
from pyengine.models.classifier import INPUT_NAME, OUTPUT_NAMES, ClusterClassifier
from pyengine.models.spec import ModelSpec
from pyengine.runners.onnxrt import decision_agreement, onnx_scores
from pyengine.scan.cutouts import extract_cutouts
from pyengine.synth import SynthConfig, make_field

SPEC = ModelSpec(cutout_size=32, threshold=0.5)


@pytest.fixture(scope="module")
def field_cutouts(tmp_path_factory):
    """Real cutouts: truth positions of a small synthetic field, through the scan path."""
    root = tmp_path_factory.mktemp("field")
    result = make_field(root, SynthConfig(width=400, height=400, seed=11, cluster_density=3e4))
    truth = Table.read(result.truth, mask_invalid=False)
    pick = np.argsort(truth["i_mag"])[:150]  # the brightest: stars, clusters, galaxies
    with Mosaic.open([result.images["g"][0], result.images["i"][0]]) as mosaic:
        cut = extract_cutouts(mosaic, truth["x"][pick], truth["y"][pick], SPEC.cutout_size)
    return cut.pixels


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = ClusterClassifier(SPEC).eval()
    return save_model(model, tmp_path_factory.mktemp("m") / "m.safetensors")


def test_fp32_onnx_agrees_with_torch_on_real_cutouts(tmp_path, model_file, field_cutouts):
    model = load_model(model_file)
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    meta = onnx_metadata(path)
    assert ModelSpec.from_json(meta["pyengine"]) == SPEC
    assert meta["pyengine_model_sha256"] == model.sha256
    assert meta["pyengine_precision"] == "fp32"
    with torch.no_grad():
        want = model(torch.from_numpy(field_cutouts))[1].numpy()
    got = onnx_scores(path, field_cutouts, batch=37)  # not the export batch
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_fp16_onnx_keeps_preprocessing_fp32_and_agrees(tmp_path, model_file, field_cutouts):
    model = load_model(model_file)
    path = export_onnx(model, tmp_path / "m16.onnx", precision="fp16")
    proto = onnx.load(str(path))
    fp16 = onnx.TensorProto.FLOAT16
    assert any(t.data_type == fp16 for t in proto.graph.initializer)  # the ResNet's weights
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    with torch.no_grad():
        want = model(torch.from_numpy(field_cutouts))[1].numpy()
    got = onnx_scores(path, field_cutouts)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-2)
    assert onnx_metadata(path)["pyengine_precision"] == "fp16"


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_int8_is_qdq_on_the_resnet_only(tmp_path, model_file, field_cutouts, target):
    import onnxruntime as ort
    from onnx import TensorProto, numpy_helper

    from pyengine.export.quantize import int8_target

    model = load_model(model_file)
    fp32 = export_onnx(model, tmp_path / "m.onnx")
    int8 = quantize_int8(fp32, tmp_path / "m8.onnx", field_cutouts[:64], target=target)
    proto = onnx.load(str(int8))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 50
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 53  # ResNet-50's convolutions, BatchNorm folded in
    assert all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs)
    # Preprocessing stays float: no preprocessing node is quantised.
    for node in proto.graph.node:
        if node.name.startswith("/preprocess/"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in node.input), node.name
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [consts[n.input[2]] for n in proto.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points
    adds = [n for n in proto.graph.node if n.op_type == "Add" and n.name.startswith("/backbone/")]
    assert len(adds) == 16  # the residual additions
    quantised = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    sums_quantised = [a.output[0] in quantised for a in adds]
    if target == "tensorrt":  # symmetric int8: zero point 0, as TensorRT requires
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
        assert not any(sums_quantised)
    else:  # uint8 activations; residual additions quantised too
        assert all(z.dtype == np.uint8 for z in zero_points)
        assert all(sums_quantised)
        # ONNX Runtime fuses every convolution into QLinearConv (the speed of this recipe).
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
        ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
        fused = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]
        assert fused.count("QLinearConv") == 53 and "Conv" not in fused
    assert TensorProto.INT8 in {t.data_type for t in proto.graph.initializer}
    meta = onnx_metadata(int8)
    assert meta["pyengine_precision"] == "int8"
    assert int8_target(meta) == target
    assert ModelSpec.from_json(meta["pyengine"]) == SPEC
    agree, diff = decision_agreement(fp32, int8, field_cutouts[64:], SPEC.threshold)
    assert 0.0 <= agree <= 1.0
    assert diff < 0.2  # untrained weights; the trained model's agreement is measured in benchmarks
    # The same figures computed here from each graph's own scores.
    ref, got = onnx_scores(fp32, field_cutouts[64:]), onnx_scores(int8, field_cutouts[64:])
    assert not np.array_equal(ref, got)  # int8 really is another graph
    assert agree == float(np.mean((ref >= SPEC.threshold) == (got >= SPEC.threshold)))
    assert diff == float(np.max(np.abs(ref - got)))


def test_decision_agreement_of_two_different_graphs_is_below_one(tmp_path, model_file,
                                                                  field_cutouts):
    """Two models (seeds 0 and 1) at a threshold between their scores of one cutout: that
    cutout is decided differently, so the agreement must come out below 1, and equal
    to the share computed here from the two graphs' scores."""
    torch.manual_seed(1)
    other = ClusterClassifier(SPEC).eval()
    a = export_onnx(load_model(model_file), tmp_path / "a.onnx")
    b = export_onnx(other, tmp_path / "b.onnx")
    cutouts = field_cutouts[:48]
    sa, sb = onnx_scores(a, cutouts), onnx_scores(b, cutouts)
    i = int(np.argmax(np.abs(sa - sb)))
    assert sa[i] != sb[i]
    threshold = float((sa[i] + sb[i]) / 2)
    agree, diff = decision_agreement(a, b, cutouts, threshold)
    assert agree < 1.0
    assert agree == float(np.mean((sa >= threshold) == (sb >= threshold)))
    assert diff == float(np.max(np.abs(sa - sb)))
    assert decision_agreement(a, a, cutouts, threshold) == (1.0, 0.0)


def test_int8_target_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="int8 target 'cpu' is not accepted; accepted: "
                                          "onnxruntime, tensorrt"):
        quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((1, 2, 32, 32)),
                      target="cpu")


def test_bad_export_options(tmp_path, model_file):
    model = load_model(model_file)
    with pytest.raises(ConfigError, match="ONNX precision 'int8' is not accepted"):
        export_onnx(model, tmp_path / "x.onnx", precision="int8")
    with pytest.raises(ConfigError, match="at least one cutout"):
        quantize_int8(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((0, 2, 32, 32)))


# -- TensorRT: the code around the API, against a recorded fake ------------------------

class _Recorder:
    def __init__(self, version, parse_ok=True):
        self.calls = []
        self.version = version
        self.parse_ok = parse_ok

    def module(self):
        rec = self

        class Builder:
            def __init__(self, logger):
                rec.calls.append(("Builder",))

            def create_network(self, flags):
                rec.calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build",))
                return b"ENGINE"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", size))

            def set_flag(self, flag):
                rec.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                rec.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                rec.calls.append(("add_profile",))

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.calls.append(("set_shape", name, lo, opt, hi))

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = 0 if rec.parse_ok else 1

            def parse_from_file(self, path):
                return rec.parse_ok

            def get_error(self, i):
                return "Unsupported operator TopK with k > 3840"

        logger_cls = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        return types.SimpleNamespace(
            __version__=self.version, Logger=logger_cls, Builder=Builder, OnnxParser=Parser,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
            BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32"))


GPU = ("NVIDIA H100 80GB HBM3", "9.0", "12.8")


GPU = ("NVIDIA H100 80GB HBM3", "9.0", "12.8")


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, model_file, field_cutouts):
    root = tmp_path_factory.mktemp("onnx")
    model = load_model(model_file)
    return {"fp32": export_onnx(model, root / "m.onnx"),
            "fp16": export_onnx(model, root / "m16.onnx", precision="fp16"),
            "int8": quantize_int8(root / "m.onnx", root / "m8.onnx", field_cutouts[:32],
                                  target="tensorrt"),
            "int8_cpu": quantize_int8(root / "m.onnx", root / "m8c.onnx", field_cutouts[:32])}


def test_tensorrt_refuses_the_onnxruntime_int8_recipe(tmp_path, onnx_files):
    with pytest.raises(ModelFileError, match=r"quantised for ONNX Runtime \(uint8 activations\), "
                                             "which TensorRT does not build"):
        build_engine(onnx_files["int8_cpu"], tmp_path, trt=_Recorder("10.13.0").module(),
                     identity=GPU)


@pytest.mark.parametrize(("version", "precision", "flags", "set_flags"), [
    ("10.13.0", "fp32", 0, []),
    ("10.13.0", "fp16", 1 << 5, []),
    ("10.13.0", "int8", 0, ["INT8", "FP16"]),
    ("11.4.1", "fp16", 0, []),
    ("11.4.1", "int8", 0, []),
])
def test_tensorrt_builder_follows_each_versions_precision_rules(tmp_path, onnx_files, version,
                                                                precision, flags, set_flags):
    rec = _Recorder(version)
    path = build_engine(onnx_files[precision], tmp_path, batch=(1, 64, 512), trt=rec.module(),
                        identity=GPU)
    assert path.read_bytes() == b"ENGINE"
    assert ("create_network", flags) in rec.calls
    assert [c[1] for c in rec.calls if c[0] == "set_flag"] == set_flags
    shapes = [c for c in rec.calls if c[0] == "set_shape"]
    assert shapes == [("set_shape", INPUT_NAME, (1, 2, 32, 32), (64, 2, 32, 32), (512, 2, 32, 32))]
    assert precision in path.name


def test_tensorrt_cache_key_and_reuse(tmp_path, onnx_files):
    rec = _Recorder("10.13.0")
    first = build_engine(onnx_files["fp16"], tmp_path, trt=rec.module(), identity=GPU)
    again = build_engine(onnx_files["fp16"], tmp_path, trt=rec.module(), identity=GPU)
    assert first == again
    assert sum(c[0] == "build" for c in rec.calls) == 1  # the second call used the cache
    other_gpu = build_engine(onnx_files["fp16"], tmp_path, trt=rec.module(),
                             identity=("NVIDIA H200", "9.0", "12.8"))
    other_batch = build_engine(onnx_files["fp16"], tmp_path, batch=(1, 8, 64), trt=rec.module(),
                               identity=GPU)
    other_precision = build_engine(onnx_files["fp32"], tmp_path, trt=rec.module(), identity=GPU)
    assert len({first, other_gpu, other_batch, other_precision}) == 4
    assert first.with_suffix(".json").exists()


def test_tensorrt_errors(tmp_path, onnx_files):
    with pytest.raises(ModelFileError, match="TensorRT cannot parse it: Unsupported operator"):
        build_engine(onnx_files["fp32"], tmp_path, trt=_Recorder("10.0.1", False).module(),
                     identity=GPU)
    with pytest.raises(TensorRTUnavailable, match="too old"):
        build_engine(onnx_files["fp32"], tmp_path, trt=_Recorder("8.6.1").module(), identity=GPU)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        build_engine(onnx_files["fp32"], tmp_path, batch=(8, 4, 16), trt=_Recorder("10.1").module(),
                     identity=GPU)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
            build_engine(onnx_files["fp32"], tmp_path, identity=GPU)


def test_export_cli_onnx_int8_and_tensorrt_message(tmp_path, model_file):
    import shutil

    from click.testing import CliRunner

    from pyengine.cli import main

    src = tmp_path / "model.safetensors"
    shutil.copy(model_file, src)
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(src), "--cutouts", "64"])
    assert res.exit_code == 0, res.output
    assert "largest score difference" in res.output
    assert "synthetic 1024 px field" in res.output
    assert (tmp_path / "model.onnx").exists()
    # Untrained weights agree with their int8 graph on ~94 % of decisions only: accept any.
    res = runner.invoke(main, ["export", str(src), "--precision", "int8", "--cutouts", "64",
                               "--min-agreement", "0"])
    assert res.exit_code == 0, res.output
    assert "decision agreement at threshold 0.5" in res.output
    assert "int8 QDQ for onnxruntime" in res.output
    assert (tmp_path / "model.int8.onnx").exists()
    assert not (tmp_path / "model.int8.fp32.onnx").exists()
    res = runner.invoke(main, ["export", str(src), "--format", "tensorrt", "--precision", "int8",
                               "--int8-target", "onnxruntime", "--cutouts", "16"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith(
        "Error: --int8-target onnxruntime makes uint8 activations")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = runner.invoke(main, ["export", str(src), "--format", "tensorrt", "--cutouts", "16",
                                   "--cache-dir", str(tmp_path / "engines")])
        assert res.exit_code == 1
        assert res.output.strip().splitlines()[-1].startswith("Error: TensorRT is not installed")
    res = runner.invoke(main, ["export", str(tmp_path / "missing.safetensors")])
    assert res.exit_code == 1
    assert "no such model file" in res.output


def test_export_bands_name_images_whose_files_are_not_band_names(tmp_path, model_file, field):
    """--bands (scan's syntax and help) names g_f32.fits / i_f32.fits, in any order."""
    from click.testing import CliRunner

    from pyengine.cli import main
    from pyengine.export.cli import _check_cutouts

    images = {}
    for src in field["paths"]:  # the scan field, without FILTER keys
        with fits.open(src) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data.copy()
        del header["FILTER"]
        images[src.stem] = tmp_path / f"{src.stem}_f32.fits"
        fits.PrimaryHDU(data, header).writeto(images[src.stem])
    spec = load_model(model_file).spec
    g_i, i_g = [images["g"], images["i"]], [images["i"], images["g"]]
    with pytest.raises(ConfigError, match=r"the images' bands \['g_f32', 'i_f32'\] differ from "
                                          r"the model's \['g', 'i'\]; .* --bands"):
        _check_cutouts(spec, g_i, None, 32, 1)
    a, _ = _check_cutouts(spec, g_i, None, 32, 1, ["g", "i"])
    b, where = _check_cutouts(spec, i_g, None, 32, 1, ["i", "g"])
    assert a.shape[1:] == (2, 32, 32) and len(a) > 16 and "2 band image(s)" in where
    np.testing.assert_array_equal(a, b)  # put in the model's band order
    runner = CliRunner()
    src = tmp_path / "model.safetensors"
    src.write_bytes(model_file.read_bytes())
    args = ["export", str(src), "--images", str(i_g[0]), "--images", str(i_g[1]),
            "--cutouts", "16"]
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "name them with --bands" in res.output
    res = runner.invoke(main, [*args, "--bands", "i,g"])
    assert res.exit_code == 0, res.output
    assert "cutouts from 2 band image(s)" in res.output and (tmp_path / "model.onnx").exists()
    res = runner.invoke(main, ["export", str(src), "--bands", "g,i", "--cutouts", "16"])
    assert res.exit_code == 1 and "names the --images, and none were given" in res.output


def _last_line(res):
    return res.output.strip().splitlines()[-1]


def test_export_cli_fails_when_onnx_runtime_and_torch_disagree(tmp_path, model_file,
                                                              monkeypatch):
    """A graph whose scores are off by 0.27 is refused (exit 1, one line) and not left
    under the output name; a good export already there is kept."""
    import shutil

    from click.testing import CliRunner

    import pyengine.runners.onnxrt as onnxrt
    from pyengine.cli import main

    src = tmp_path / "model.safetensors"
    shutil.copy(model_file, src)
    out = tmp_path / "model.onnx"
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(src), "--cutouts", "32"])
    assert res.exit_code == 0, res.output
    assert "(tolerance 0.0001)" in res.output
    good = out.read_bytes()
    scores = onnxrt.onnx_scores
    monkeypatch.setattr(onnxrt, "onnx_scores", lambda *a, **k: scores(*a, **k) + 0.27)
    for precision, name, tolerance in [("fp32", "model.onnx", "0.0001"),
                                       ("fp16", "model.fp16.onnx", "0.02"),
                                       ("int8", "model.int8.fp32.onnx", "0.0001")]:
        res = runner.invoke(main, ["export", str(src), "--cutouts", "32", "--precision",
                                   precision])
        assert res.exit_code == 1, res.output
        line = _last_line(res)
        assert line.startswith(f"Error: {tmp_path / name}: ONNX Runtime and torch scores differ "
                               "by up to 0.27 on 32 cutouts from a synthetic 1024 px field"), line
        expect = "fp32" if precision == "int8" else precision  # int8: its fp32 source graph
        assert line.endswith(f"beyond the {expect} tolerance {tolerance}; the export was not "
                             "written"), line
        assert "Traceback" not in res.output
    assert out.read_bytes() == good  # the earlier good export was not overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.safetensors"]


def test_export_cli_refuses_int8_below_the_decision_agreement(tmp_path, model_file,
                                                             monkeypatch):
    import shutil

    from click.testing import CliRunner

    import pyengine.runners.onnxrt as onnxrt
    from pyengine.cli import main

    src = tmp_path / "model.safetensors"
    shutil.copy(model_file, src)
    monkeypatch.setattr(onnxrt, "decision_agreement", lambda *a, **k: (0.9375, 0.3))
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(src), "--precision", "int8", "--cutouts", "32"])
    assert res.exit_code == 1, res.output
    assert _last_line(res) == (
        f"Error: {tmp_path / 'model.int8.onnx'}: int8 and fp32 take the same decision at "
        "threshold 0.5 on 93.75 % of 16 held-out cutouts, below --min-agreement 99 %; the "
        "export was not written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    res = runner.invoke(main, ["export", str(src), "--precision", "int8", "--cutouts", "32",
                               "--min-agreement", "0.9"])
    assert res.exit_code == 0, res.output
    assert "decision agreement at threshold 0.5: 93.75 %" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.safetensors"]
