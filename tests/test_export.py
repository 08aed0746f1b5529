"""ONNX export agrees with torch on real cutouts; int8 is QDQ; TensorRT logic vs a fake API."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from astropy.io import fits
from astropy.table import Table

from pyengine import Mosaic
from pyengine.errors import ConfigError, ModelFileError
from pyengine.export.onnx import export_onnx, input_dtype_of, onnx_metadata, verify_graph
from pyengine.export.quantize import quantize_int8
from pyengine.export.tensorrt import (
    TensorRTUnavailable,
    build_engine,
    engine_key,
    engine_metadata,
    sidecar_path,
)
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


def _float16_cutouts(field_cutouts):
    """Field cutouts as float16 holds them, with NaN pixels (a blank corner, a whole
    blank band, scattered NaN) and bright pixels up to 6e4 (a saturated star's core)."""
    x = field_cutouts[:48].astype(np.float16)
    x[0, :, :8, :8] = np.nan
    x[1, 1] = np.nan
    x[2, 0, ::3, ::5] = np.nan
    x[3, :, 14:18, 14:18] = 6e4
    x[4, 0, 16, 16] = 6e4
    x[5, 1, 10:20, 10:20] = np.linspace(1e4, 6e4, 100, dtype=np.float32).reshape(10, 10)
    x[6, :, :, :12] = np.nan
    x[6, :, 16, 16] = 6e4
    return x


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_float16_input_export_casts_first_and_scores_as_the_float32_export(
        tmp_path, model_file, field_cutouts, precision):
    """input_dtype float16: the graph's input is float16, its only use a Cast to float32,
    the outputs float32; ONNX Runtime fed np.float16 scores as the float32-input export
    fed the same values, NaN and bright pixels included."""
    model = load_model(model_file)
    ref = export_onnx(model, tmp_path / "m32.onnx", precision=precision)
    half = export_onnx(model, tmp_path / "m16.onnx", precision=precision, input_dtype="float16")
    proto = onnx.load(str(half))
    (x,) = proto.graph.input
    assert (x.name, x.type.tensor_type.elem_type) == (INPUT_NAME, onnx.TensorProto.FLOAT16)
    dims = [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim]
    assert dims == ["batch", 2, 32, 32]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == \
        [onnx.TensorProto.FLOAT] * 2
    users = [n for n in proto.graph.node if INPUT_NAME in n.input]
    assert [n.op_type for n in users] == ["Cast"]
    assert onnx.helper.get_attribute_value(users[0].attribute[0]) == onnx.TensorProto.FLOAT
    meta, ref_meta = onnx_metadata(half), onnx_metadata(ref)
    assert meta["pyengine_input_dtype"] == "float16" and input_dtype_of(meta, half) == "float16"
    assert ref_meta["pyengine_input_dtype"] == "float32"
    assert meta["pyengine_precision"] == precision
    verify_graph(half)  # its checksum is the graph's (a mismatch raises, none warns)
    assert onnx.load(str(ref)).graph.input[0].type.tensor_type.elem_type == \
        onnx.TensorProto.FLOAT
    cutouts = _float16_cutouts(field_cutouts)
    got = onnx_scores(half, cutouts)
    want = onnx_scores(ref, cutouts.astype(np.float32))
    assert np.isfinite(got).all() and np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
    # The tolerance tells NaN from a number: NaN read as 0 moves these scores beyond it.
    zeroed = onnx_scores(half, np.nan_to_num(cutouts, nan=0.0))
    assert (np.abs(zeroed - got)[[0, 1, 2, 6]] > 1e-3).all()


def test_int8_and_default_exports_record_float32_input(onnx_files):
    for name in ("fp32", "fp16", "int8", "int8_cpu"):
        meta = onnx_metadata(onnx_files[name])
        assert meta["pyengine_input_dtype"] == "float32", name
        assert onnx.load(str(onnx_files[name])).graph.input[0].type.tensor_type.elem_type == \
            onnx.TensorProto.FLOAT
    assert input_dtype_of({}, "old.onnx") == "float32"  # exports before the key
    with pytest.raises(ModelFileError, match=r"^x.onnx: pyengine_input_dtype = 'int8' is not "
                                             r"accepted; accepted: float32, float16$"):
        input_dtype_of({"pyengine_input_dtype": "int8"}, "x.onnx")


def test_onnxruntime_runner_takes_a_float16_input_export(tmp_path, model_file, field_cutouts):
    """The runner's input_dtype is the graph's (float16), before activation (metadata) and
    after (the session's input type, also when the metadata lacks the key); float32
    batches are converted to float16 on the host."""
    from pyengine.export.onnx import INPUT_DTYPE_KEY
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    model = load_model(model_file)
    half = export_onnx(model, tmp_path / "m16.onnx", precision="fp16", input_dtype="float16")
    ref = export_onnx(model, tmp_path / "m32.onnx", precision="fp16")
    cutouts = _float16_cutouts(field_cutouts)[:16]
    with OnnxRuntimeRunner(ref) as runner:
        assert runner.input_dtype == np.float32
        want = runner.infer(cutouts.astype(np.float32))
    runner = OnnxRuntimeRunner(half)
    assert runner.input_dtype == np.float16
    with runner:
        assert runner.input_dtype == np.float16
        slots = runner.allocate_slots(2, 16)
        assert slots[0].dtype == np.float16
        slots[0][:] = cutouts
        np.testing.assert_allclose(runner.infer(slots[0]), want, rtol=0, atol=1e-3)
        np.testing.assert_allclose(runner.infer(cutouts.astype(np.float32)), want, rtol=0,
                                   atol=1e-3)
        # float32 to float16 on the host saturates as the scan's gather does: 1e5 is read
        # as 65504 (the brightest float16), not as inf (which the graph takes for blank).
        bright, saturated, blank = (cutouts.astype(np.float32) for _ in range(3))
        bright[0, 0, 16, 16], saturated[0, 0, 16, 16], blank[0, 0, 16, 16] = 1e5, 65504, np.nan
        got = runner.infer(bright)[0]
        assert got == runner.infer(saturated)[0] and got != runner.infer(blank)[0]
    # Without the key (metadata outside the graph's checksum) it reads as float32 until
    # the session shows the graph's own input type.
    proto = onnx.load(str(half))
    keep = [p for p in proto.metadata_props if p.key != INPUT_DTYPE_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    runner = OnnxRuntimeRunner(bare)
    assert runner.input_dtype == np.float32
    with runner:
        assert runner.input_dtype == np.float16
        np.testing.assert_allclose(runner.infer(cutouts.astype(np.float32)), want, rtol=0,
                                   atol=1e-3)


def test_cached_export_is_not_reused_across_input_dtypes(tmp_path, model_file):
    """The cached ONNX of a model file is named by its input dtype too, and an entry with
    the other input dtype under that name is exported again, either way."""
    import shutil

    from pyengine.runners.loaders import cached_export, model_file_export

    both = ("fp32", "fp16")
    source, _, _, dtype16, path16 = model_file_export(model_file, "fp16", tmp_path, both,
                                                      half=True)
    _, _, _, dtype32, path32 = model_file_export(model_file, "fp16", tmp_path, both)
    _, _, _, fp32_dtype, fp32_path = model_file_export(model_file, "fp32", tmp_path, both,
                                                       half=True)
    assert (dtype16, dtype32, fp32_dtype) == ("float16", "float32", "float32")
    assert path16.name.endswith("-fp16-float16.onnx")
    assert path32.name.endswith("-fp16-float32.onnx")
    assert fp32_path.name.endswith("-fp32-float32.onnx")

    def elem(path):
        return onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type

    cached_export(source, path32, "fp16", "float32")
    assert elem(path32) == onnx.TensorProto.FLOAT
    shutil.copy(path32, path16)  # a float32-input entry under the float16 name
    cached_export(source, path16, "fp16", "float16")
    assert elem(path16) == onnx.TensorProto.FLOAT16
    assert onnx_metadata(path16)["pyengine_input_dtype"] == "float16"
    shutil.copy(path16, path32)  # and the other way round
    cached_export(source, path32, "fp16", "float32")
    assert elem(path32) == onnx.TensorProto.FLOAT
    before = path16.stat().st_mtime_ns
    assert cached_export(source, path16, "fp16", "float16") == path16
    assert path16.stat().st_mtime_ns == before  # the right entry is reused


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
    with pytest.raises(ConfigError, match=r"^ONNX input dtype 'bfloat16' is not accepted; "
                                          r"accepted: float32, float16$"):
        export_onnx(model, tmp_path / "x.onnx", input_dtype="bfloat16")
    assert not (tmp_path / "x.onnx").exists()
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
            "fp16_half": export_onnx(model, root / "m16h.onnx", precision="fp16",
                                     input_dtype="float16"),
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


def test_tensorrt_engine_key_and_sidecar_carry_the_input_dtype(tmp_path, onnx_files):
    rec = _Recorder("10.13.0")
    half = build_engine(onnx_files["fp16_half"], tmp_path, trt=rec.module(), identity=GPU)
    full = build_engine(onnx_files["fp16"], tmp_path, trt=rec.module(), identity=GPU)
    assert half != full
    assert engine_metadata(half)["input_dtype"] == "float16"
    assert engine_metadata(full)["input_dtype"] == "float32"
    assert ("create_network", 1 << 5) in rec.calls  # fp16: strongly typed, either input
    # The key itself differs by input dtype, all else equal.
    keys = {dtype: engine_key(onnx_files["fp16"], precision="fp16", spec=SPEC,
                              batch=(1, 8, 64), trt_version="10.13.0", identity=GPU,
                              input_dtype=dtype) for dtype in ("float32", "float16")}
    assert keys["float32"].digest() != keys["float16"].digest()
    assert keys["float16"].input_dtype == "float16"
    # A cached engine whose sidecar names the other input dtype is built again.
    builds = sum(c == ("build",) for c in rec.calls)
    side = sidecar_path(half)
    data = json.loads(side.read_text())
    side.write_text(json.dumps({**data, "input_dtype": "float32"}))
    assert build_engine(onnx_files["fp16_half"], tmp_path, trt=rec.module(), identity=GPU) == half
    assert sum(c == ("build",) for c in rec.calls) == builds + 1
    assert engine_metadata(half)["input_dtype"] == "float16"
    assert build_engine(onnx_files["fp16_half"], tmp_path, trt=rec.module(), identity=GPU) == half
    assert sum(c == ("build",) for c in rec.calls) == builds + 1  # now reused
    # A sidecar of an older pyengine, without the key: float32; a bad value is refused.
    data = json.loads(side.read_text())
    del data["input_dtype"]
    side.write_text(json.dumps(data))
    assert engine_metadata(half)["input_dtype"] == "float32"
    side.write_text(json.dumps({**data, "input_dtype": "int8"}))
    with pytest.raises(ModelFileError, match=r"\.json: input_dtype = 'int8' is not accepted; "
                                             r"accepted: float32, float16$"):
        engine_metadata(half)


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


def test_export_cli_input_dtype_option_and_refusals(tmp_path, model_file, monkeypatch):
    """--input-dtype: float16 by default for --format tensorrt --precision fp16 (the fake
    tensorrt builds the engine), float32 otherwise; float16 without fp16 is refused in one
    line, before anything is exported."""
    import shutil
    import sys

    from click.testing import CliRunner

    import pyengine.export.tensorrt as export_trt
    from pyengine.cli import main
    from pyengine.runners.tensorrt import TensorRTRunner

    src = tmp_path / "model.safetensors"
    shutil.copy(model_file, src)
    runner = CliRunner()
    for args, precision in [(["--input-dtype", "float16"], "fp32"),
                            (["--precision", "int8", "--input-dtype", "float16"], "int8"),
                            (["--format", "tensorrt", "--precision", "fp32", "--input-dtype",
                              "float16"], "fp32")]:
        res = runner.invoke(main, ["export", str(src), "--cutouts", "16", *args])
        assert res.exit_code == 1, res.output
        assert res.output.strip().splitlines() == [
            f"Error: --input-dtype float16 needs --precision fp16: {precision} graphs take "
            "float32 input (float16 would round the raw pixels)"], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]

    def input_dtype(path):
        elem = onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type
        names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
        assert onnx_metadata(path)["pyengine_input_dtype"] == names[elem]
        return names[elem]

    res = runner.invoke(main, ["export", str(src), "--cutouts", "16", "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    assert input_dtype(tmp_path / "model.fp16.onnx") == "float32"  # ONNX: float32 by default
    res = runner.invoke(main, ["export", str(src), "--cutouts", "16", "--precision", "fp16",
                               "--input-dtype", "float16"])
    assert res.exit_code == 0, res.output
    assert "(fp16, float16 input; onnx.checker full check passed)" in res.output
    assert "field (seed 1) (as float16 input): largest score difference" in res.output
    assert input_dtype(tmp_path / "model.fp16.float16.onnx") == "float16"

    monkeypatch.setitem(sys.modules, "tensorrt", _Recorder("10.13.0").module())
    monkeypatch.setattr(export_trt, "_gpu_identity", lambda device: GPU)
    engines = tmp_path / "engines"
    built = {}
    for args, want in [(["--precision", "fp16"], "float16"),
                       (["--precision", "fp16", "--input-dtype", "float32"], "float32"),
                       (["--precision", "fp32"], "float32")]:
        res = runner.invoke(main, ["export", str(src), "--cutouts", "16", "--format", "tensorrt",
                                   "--cache-dir", str(engines), *args])
        assert res.exit_code == 0, res.output
        assert f"{want} input" in res.output
        engine = Path(res.output.strip().splitlines()[-1].removeprefix("TensorRT engine: "))
        onnx_path = engines / f"model-{args[1]}-{want}.onnx"
        assert input_dtype(onnx_path) == want
        assert engine_metadata(engine)["input_dtype"] == want
        assert TensorRTRunner(engine).input_dtype == np.dtype(want)
        built[tuple(args)] = engine
    assert len(set(built.values())) == 3
