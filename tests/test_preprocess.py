"""Preprocess (torch) equals its NumPy reference, handles missing pixels, and exports
to an ONNX graph that ONNX Runtime runs identically and TensorRT can build.
"""

from __future__ import annotations

import io
import itertools
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pyengine.errors import ConfigError, ModelFileError  # noqa: E402
from pyengine.models.preprocess import (  # noqa: E402
    TOPK_LIMIT,
    Preprocess,
    preprocess_reference,
    ring_mask,
)
from pyengine.models.spec import STRETCHES, PreprocessSpec  # noqa: E402

# torch float32 vs the reference (float32 elementwise, float64 statistics): the
# stretches differ only by summation order and a few ulp of Log/Sqrt.
RTOL, ATOL = 1e-5, 1e-6
SIZES = (64, 33)
COMBOS = list(itertools.product(STRETCHES, ("none", "border_median"), ("none", "border_mad")))


# -- data ------------------------------------------------------------------------
def _sky(rng, size, level, sigma, star=0.0, width=2.0, offset=(0.0, 0.0)):
    """Sky level + Gaussian noise + a Gaussian star near the centre (float32)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = (size - 1) / 2
    r2 = (xx - c - offset[0]) ** 2 + (yy - c - offset[1]) ** 2
    img = level + sigma * rng.standard_normal((size, size)) + star * np.exp(-r2 / (2 * width**2))
    return img.astype(np.float32)


def make_cutouts(size: int, seed: int = 0) -> np.ndarray:
    """(8, 2, S, S) cutouts: realistic sky + stars, with every missing-pixel case."""
    rng = np.random.default_rng(seed)
    ring = ring_mask(PreprocessSpec(), size)
    x = np.empty((8, 2, size, size), np.float32)
    for b in range(8):
        x[b, 0] = _sky(rng, size, 20.0 + b, 3.0, star=200.0)
        x[b, 1] = _sky(rng, size, -4.0, 0.5, star=15.0, width=3.0, offset=(1.5, -2.0))
    x[1, :, :, : size // 3] = np.nan  # left third off the image (mosaic border)
    x[2, 0][ring] = np.nan  # whole ring blank: background 0, scale 1
    x[2, 1][0, 5] = np.nan  # one ring pixel blank: odd finite count in the ring
    x[3] = np.nan  # whole cutout blank
    x[4, 0] = 7.3  # constant cutout
    x[4, 1] = -1.7  # constant with a blank corner
    x[4, 1, :9, :9] = np.nan
    x[5, 0, size // 2, 3] = np.inf  # saturated/overflowed pixels count as missing
    x[5, 0, 2, size // 2] = -np.inf
    x[5, 0, :, size // 2 + 2] = np.nan  # a blank column (chip gap)
    x[5, 1] = np.nan  # one band blank, the other not: bands are independent
    only = np.flatnonzero(ring.reshape(-1))[[0, 7, 100, 200]]
    blank = x[6, 0].reshape(-1)
    keep = blank[only].copy()
    blank[ring.reshape(-1)] = np.nan  # ring with 4 finite pixels (even count)
    blank[only] = keep
    x[6, 1, :, size - size // 4:] = np.nan  # right quarter off the image
    x[7, 1, size // 2:, :] = np.nan  # bottom half off the image
    return x


def run_torch(spec: PreprocessSpec, x: np.ndarray) -> np.ndarray:
    module = Preprocess(spec, x.shape[-1]).eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# -- torch equals the reference ----------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("clip", [(-10.0, 10.0), None], ids=["clip", "noclip"])
@pytest.mark.parametrize(("stretch", "background", "scale"), COMBOS)
def test_torch_equals_reference(stretch, background, scale, clip, size):
    spec = PreprocessSpec(background=background, scale=scale, stretch=stretch, clip=clip,
                          softening=2.5, nan_fill=-0.5)
    x = make_cutouts(size, seed=size)
    ours = run_torch(spec, x)
    ref = preprocess_reference(x, spec)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    # the spread of the values is substantial, so the tolerance is tight in relative terms
    assert np.ptp(ref) > 0.5


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stretch", STRETCHES)
def test_finite_and_nan_fill(stretch, size):
    spec = PreprocessSpec(stretch=stretch, clip=None, nan_fill=-2.5)
    x = make_cutouts(size)
    out = run_torch(spec, x)
    missing = ~np.isfinite(x)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[missing], -2.5)
    np.testing.assert_array_equal(out[3], -2.5)  # the blank cutout is nan_fill everywhere
    assert (out[~missing] != -2.5).mean() > 0.99  # and real pixels are not


def _ring_only(size, values, fill=5.0):
    """One (1, 1, S, S) cutout: NaN ring except `values` on its first pixels, inner `fill`."""
    ring = ring_mask(PreprocessSpec(), size).reshape(-1)
    img = np.full(size * size, fill, np.float32)
    img[ring] = np.nan
    img[np.flatnonzero(ring)[: len(values)]] = values
    return img.reshape(1, 1, size, size)


@pytest.mark.parametrize(("values", "median", "mad"), [
    ([1.0, 2.0, 3.0, 10.0], 2.5, 1.0),  # even: mean of the two middle values
    ([10.0, 1.0, 2.0], 2.0, 1.0),  # odd: the middle value
    ([4.0], 4.0, 0.0),  # one value: MAD 0, scale floored at eps
])
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_median_convention(values, median, mad, impl):
    spec = PreprocessSpec(stretch="linear", clip=None, eps=1e-3)
    x = _ring_only(33, values)
    out = run_torch(spec, x) if impl == "torch" else preprocess_reference(x, spec)
    assert np.isnan(x[0, 0, 0, len(values)])  # the rest of the ring is blank
    scale = max(1.4826 * mad, 1e-3)
    np.testing.assert_allclose(out[0, 0, 16, 16], (5.0 - median) / scale, rtol=1e-6)


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_degenerate_cases(impl):
    def run(spec, x):
        return run_torch(spec, x) if impl == "torch" else preprocess_reference(x, spec)

    size = 33
    x = _ring_only(size, [])  # no finite ring pixel
    x[0, 0, 10, 12] = 8.0
    spec = PreprocessSpec(stretch="linear", clip=None)
    out = run(spec, x)
    inner = ~ring_mask(spec, size)
    np.testing.assert_array_equal(out[0, 0][inner], x[0, 0][inner])  # background 0, scale 1
    np.testing.assert_array_equal(out[0, 0][~inner], 0.0)
    constant = np.full((2, 2, size, size), 0.1, np.float32)  # 0.1 * n rounds
    constant[1] = np.nan
    constant[0, 1, :4] = np.nan
    constant[1, 1, 0, 0] = 1e30  # a single finite pixel is constant too
    for stretch in ("minmax", "zscore"):
        for background, scale in [("none", "none"), ("border_median", "border_mad")]:
            spec = PreprocessSpec(stretch=stretch, background=background, scale=scale,
                                  clip=None, nan_fill=9.0)
            out = run(spec, constant)
            finite = np.isfinite(constant)
            np.testing.assert_array_equal(out[finite], 0.0)
            np.testing.assert_array_equal(out[~finite], 9.0)


def test_minmax_range_and_clip():
    x = make_cutouts(64)
    out = run_torch(PreprocessSpec(stretch="minmax", clip=None), x)
    finite = np.isfinite(x)
    assert out[finite].min() == 0.0 and out[finite].max() == 1.0
    out = run_torch(PreprocessSpec(stretch="linear", clip=(-1.0, 2.0)), x)
    assert out.min() == -1.0 and out.max() == 2.0


def test_asinh_helper_accuracy():
    # The stretch builds asinh from Log/Sqrt (no aten::asinh in the ONNX exporter).
    z = np.logspace(-44, 38.5, 50001).astype(np.float32)
    z = np.concatenate([-z, [0.0, 1e4, np.nextafter(np.float32(1e4), np.float32(1e5))], z])
    got = Preprocess._asinh(torch.from_numpy(z)).numpy()
    exact = np.arcsinh(z.astype(np.float64))
    assert np.isfinite(got).all()
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert (np.abs(got - exact) <= 4 * ulp).all()


def test_half_input_is_upcast():
    x = make_cutouts(33)
    spec = PreprocessSpec()
    ours = Preprocess(spec, 33)(torch.from_numpy(x).half()).numpy()
    assert ours.dtype == np.float32
    ref = preprocess_reference(x.astype(np.float16).astype(np.float32), spec)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)


def test_ring_buffer():
    spec = PreprocessSpec(border=4)
    module = Preprocess(spec, 64)
    assert module.ring_index.dtype == torch.int64
    assert module.ring_index.numel() == spec.ring_size(64) == 960
    np.testing.assert_array_equal(module.ring_index.numpy(),
                                  np.flatnonzero(ring_mask(spec, 64).reshape(-1)))
    # derived from the metadata, so never stored in a checkpoint
    assert "ring_index" not in module.state_dict()
    assert "ring_size=960" in repr(module)


def test_concurrent_forward():
    module = Preprocess(PreprocessSpec(stretch="zscore"), 64).eval()
    inputs = [torch.from_numpy(make_cutouts(64, seed=s)) for s in range(8)]
    with torch.no_grad():
        serial = [module(x) for x in inputs]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(module, inputs))
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- errors ----------------------------------------------------------------------
def test_bad_arguments():
    spec = PreprocessSpec()
    with pytest.raises(ConfigError, match="a PreprocessSpec is needed"):
        Preprocess({"stretch": "asinh"}, 64)
    for size in ("64", 64.0, True, None):
        with pytest.raises(ConfigError, match=r"cutout_size .* an integer is needed"):
            Preprocess(spec, size)
    with pytest.raises(ConfigError, match=r"cutout_size = 0 .* positive"):
        Preprocess(spec, 0)
    with pytest.raises(ModelFileError, match=r"preprocess\.stretch = 'log'"):
        Preprocess(PreprocessSpec(stretch="log"), 64)
    with pytest.raises(ModelFileError, match="inner region of the 8 px cutout"):
        Preprocess(spec, 8)
    with pytest.raises(ModelFileError, match="TensorRT sorts at most 3840"):
        Preprocess(PreprocessSpec(border=9), 128)  # ring of 4284 pixels
    Preprocess(PreprocessSpec(border=8), 128)  # 3840: exactly the limit
    Preprocess(PreprocessSpec(border=9, background="none", scale="none"), 128)  # no sort

    module = Preprocess(spec, 64)
    with pytest.raises(ConfigError, match=r"shape \(2, 64, 64\); \(batch, band, 64, 64\)"):
        module(torch.zeros(2, 64, 64))
    with pytest.raises(ConfigError, match=r"shape \(1, 2, 33, 33\)"):
        module(torch.zeros(1, 2, 33, 33))
    with pytest.raises(ConfigError, match=r"dtype torch\.int16; a floating dtype"):
        module(torch.zeros(1, 2, 64, 64, dtype=torch.int16))
    with pytest.raises(ConfigError, match=r"a torch\.Tensor"):
        module(np.zeros((1, 2, 64, 64), np.float32))


# -- ONNX --------------------------------------------------------------------------
# Every op the exported graph may contain; each is in ONNX Runtime's CPU provider and
# in TensorRT 10's ONNX parser (onnx-tensorrt operators.md), with static shapes:
#   elementwise  Abs Add Sub Mul Div Sqrt Log Sign Floor Clip Cast Less Greater Equal
#                Where (value selection only: same shapes in and out)
#   reductions   ReduceSum ReduceMin ReduceMax over the last axis, constant axes
#   ring         Gather (constant index initializer), TopK (constant K <= 3840),
#                GatherElements (picks the middle of the sorted ring)
#   shapes       Reshape, and Shape read from the input only for the final reshape
#   Constant     scalars
# Absent on purpose: NonZero, Compress, Loop, If, Scan, Range, ConstantOfShape, Expand,
# Tile, Unique: anything whose output size could depend on pixel values.
ALLOWED_OPS = {
    "Abs", "Add", "Cast", "Clip", "Constant", "Div", "Equal", "Floor", "Gather",
    "GatherElements", "Greater", "Less", "Log", "Mul", "ReduceMax", "ReduceMin",
    "ReduceSum", "Reshape", "Shape", "Sign", "Sqrt", "Sub", "TopK", "Where",
}
EXPORT_BATCH, RUN_BATCH = 2, 8


def export_onnx(module: Preprocess, nband: int = 2) -> bytes:
    """Export with a dynamic batch axis, opset 17.

    The TorchScript exporter (dynamo=False): the torch.export-based one needs
    onnxscript, which pyengine does not depend on.  Its deprecation notices are the
    only warnings tolerated; any other (e.g. a TracerWarning) fails the test.
    """
    s = module.cutout_size
    example = torch.from_numpy(make_cutouts(s)[:EXPORT_BATCH, :nband].copy())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", message=r"The feature will be removed")
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=17,
                          input_names=["cutouts"], output_names=["normalised"],
                          dynamic_axes={"cutouts": {0: "batch"}, "normalised": {0: "batch"}})
    return buf.getvalue()


def _constants(model) -> dict[str, np.ndarray]:
    out = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    return out


def check_graph(model, module: Preprocess, nband: int = 2) -> None:
    graph = model.graph
    ops = [n.op_type for n in graph.node]
    assert "NonZero" not in ops
    assert set(ops) <= ALLOWED_OPS, sorted(set(ops) - ALLOWED_OPS)
    constants = _constants(model)
    ring = module.ring_size
    topks = [n for n in graph.node if n.op_type == "TopK"]
    uses_ring = module.spec.background != "none" or module.spec.scale != "none"
    assert len(topks) == (0 if not uses_ring else 1 if module.spec.scale == "none" else 2)
    for node in topks:
        k = constants[node.input[1]]  # K must be a constant, not computed from shapes
        assert k.shape == (1,) and 1 <= int(k[0]) <= TOPK_LIMIT
        assert int(k[0]) == ring // 2 + 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["largest"] == 0 and attrs["axis"] in (-1, 1)
    for node in graph.node:
        if node.op_type == "Gather":  # the ring: a constant index list
            assert constants[node.input[1]].shape == (ring,)
        if node.op_type == "Shape":  # read from the input, only to restore its shape
            assert node.input[0] == "cutouts"
            users = [(u.op_type, list(u.input).index(node.output[0]))
                     for u in graph.node if node.output[0] in u.input]
            assert users == [("Reshape", 1)]
        if node.op_type.startswith("Reduce"):
            axes = (constants[node.input[1]] if len(node.input) > 1 else
                    onnx.helper.get_attribute_value(node.attribute[0]))
            assert list(np.atleast_1d(axes)) in ([-1], [1])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    s = module.cutout_size
    (output,) = inferred.graph.output
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [nband, s, s]
    # float32 throughout: no double (or half) tensor anywhere in the graph
    elem = {v.type.tensor_type.elem_type for v in
            [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    assert elem <= {onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.INT64}


EXPORT_CASES = [(st, bg, sc, 64) for st, bg, sc in COMBOS] + [
    (st, "border_median", "border_mad", 33) for st in STRETCHES]


@pytest.mark.parametrize(("stretch", "background", "scale", "size"), EXPORT_CASES)
def test_onnx_export_matches_torch(stretch, background, scale, size):
    spec = PreprocessSpec(stretch=stretch, background=background, scale=scale, nan_fill=-0.5)
    module = Preprocess(spec, size)
    data = export_onnx(module)
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    check_graph(model, module)
    x = make_cutouts(size, seed=7)
    assert x.shape[0] == RUN_BATCH != EXPORT_BATCH
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"cutouts": x})
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[~np.isfinite(x)], -0.5)


def test_graph_check_rejects_data_dependent_ops():
    """The graph check can fail: a module with a NonZero gather does not pass it."""
    module = Preprocess(PreprocessSpec(), 33)

    class MaskIndexing(torch.nn.Module):
        def forward(self, x):
            flat = x.reshape(-1)
            return module(x) + flat[torch.isfinite(flat)].sum()

    wrapped = MaskIndexing()
    wrapped.cutout_size = 33
    model = onnx.load_from_string(export_onnx(wrapped))
    with pytest.raises(AssertionError):
        check_graph(model, module)


def test_torch_export_dynamic_batch():
    """torch.export (what the dynamo ONNX exporter and torch.compile trace) sees a graph
    with a symbolic batch and no graph break, ready for when onnxscript is available."""
    module = Preprocess(PreprocessSpec(stretch="zscore"), 33).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.from_numpy(make_cutouts(33)[:EXPORT_BATCH].copy())
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    x = torch.from_numpy(make_cutouts(33, seed=3))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), module(x), rtol=0, atol=0)
