"""int8 ONNX (QDQ) by ONNX Runtime static quantisation, calibrated on real cutouts.

Only the ResNet (``/backbone`` nodes) is quantised, per output channel for the
weights; the preprocessing ops (sort, gather, asinh, ...) stay float32, so int8
sees exactly the preprocessed inputs fp32 sees.  ``quant_pre_process`` first
folds BatchNorm into the convolutions and infers shapes, as ONNX Runtime
recommends.  Two recipes, recorded in the metadata key ``pyengine_int8_target``:

- ``onnxruntime`` (the default, for CPUs): uint8 activations with a zero point
  and int8 symmetric weights (U8S8), and the convolutions, residual additions,
  ReLUs, max and average pooling and the final Gemm all quantised.  ONNX Runtime
  then runs every convolution as one QLinearConv with the ReLU folded into the
  zero point: 2.9x the fp32 graph on the benchmark machine (benchmarks/RESULTS.md).
- ``tensorrt``: symmetric int8 activations and weights (zero point 0, which
  TensorRT's explicit quantisation requires) on the convolutions and the Gemm.
  ONNX Runtime runs this graph no faster than fp32 (its ReLUs stay float between
  DequantizeLinear and QuantizeLinear, and 20 of the 53 convolutions are not
  fused), so it is for TensorRT only, which refuses the uint8 recipe.

Thread safety: one quantisation per output path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.export.onnx import finish_onnx, onnx_metadata, temporary_beside, verify_graph
from pyengine.models.spec import INPUT_NAME

__all__ = ["INT8_TARGETS", "int8_target", "quantize_int8"]

INT8_TARGETS = ("onnxruntime", "tensorrt")
# ONNX op types quantised by each recipe (backbone nodes only).
_OPS = {"onnxruntime": ["Conv", "Gemm", "Add", "Relu", "MaxPool", "GlobalAveragePool"],
        "tensorrt": ["Conv", "Gemm"]}


def quantize_int8(fp32_path, out_path, calibration: np.ndarray, *, target: str = "onnxruntime",
                  batch: int = 32, method: str = "minmax") -> Path:
    """Write a QDQ int8 copy of the fp32 ONNX graph, calibrated on ``calibration`` cutouts,
    with the recipe for ``target`` (``onnxruntime`` or ``tensorrt``, see the module)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ConfigError(f"calibration method {method!r} is not accepted; accepted: "
                          f"{', '.join(methods)}")
    if target not in INT8_TARGETS:
        raise ConfigError(f"int8 target {target!r} is not accepted; accepted: "
                          f"{', '.join(INT8_TARGETS)}")
    if len(calibration) == 0:
        raise ConfigError("int8 calibration needs at least one cutout; got none")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._starts = iter(range(0, len(calibration), batch))

        def get_next(self):
            start = next(self._starts, None)
            return None if start is None else {INPUT_NAME: calibration[start : start + batch]}

    out_path = Path(out_path)
    meta = onnx_metadata(fp32_path)
    verify_graph(fp32_path, meta)  # a damaged fp32 graph must not become a checksummed int8 one
    tmp = temporary_beside(out_path)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        import onnx

        outside = [n.name for n in onnx.load(str(prepared)).graph.node
                   if not n.name.startswith("/backbone/")]
        symmetric = target == "tensorrt"
        try:
            quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=_OPS[target], nodes_to_exclude=outside,
                            per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method],
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options={"ActivationSymmetric": symmetric,
                                           "WeightSymmetric": True})
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return finish_onnx(tmp, out_path, meta.get("pyengine", ""),
                       meta.get("pyengine_model_sha256", ""), "int8",
                       extra={"pyengine_int8_target": target})


def int8_target(meta: dict[str, str]) -> str | None:
    """The recipe an int8 export was made for (None for other precisions).  Exports made
    before the key existed were symmetric int8, the ``tensorrt`` recipe."""
    if meta.get("pyengine_precision") != "int8":
        return None
    return meta.get("pyengine_int8_target", "tensorrt")

