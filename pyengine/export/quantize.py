"""int8 ONNX (QDQ) by ONNX Runtime static quantisation, calibrated on real cutouts.

Only the ResNet's convolutions and the final Gemm are quantised, per output
channel, with symmetric int8 activations and weights (zero point 0, which
TensorRT requires for explicit Q/DQ quantisation).  The preprocessing ops
(sort, gather, asinh, ...) stay float32, so int8 sees exactly the preprocessed
inputs fp32 sees.  ``quant_pre_process`` first folds BatchNorm into the
convolutions and infers shapes, as ONNX Runtime recommends.

Thread safety: one quantisation per output path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.export.onnx import finish_onnx, onnx_metadata, onnx_scores, temporary_beside
from pyengine.models.classifier import INPUT_NAME

__all__ = ["decision_agreement", "quantize_int8"]


def quantize_int8(fp32_path, out_path, calibration: np.ndarray, *, batch: int = 32,
                  method: str = "minmax") -> Path:
    """Write a QDQ int8 copy of the fp32 ONNX graph, calibrated on ``calibration`` cutouts."""
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
    tmp = temporary_beside(out_path)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        try:
            quantize_static(str(prepared), str(tmp), _Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "Gemm"], per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method],
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return finish_onnx(tmp, out_path, meta.get("pyengine", ""),
                       meta.get("pyengine_model_sha256", ""), "int8")


def decision_agreement(reference_path, int8_path, cutouts: np.ndarray, threshold: float
                       ) -> tuple[float, float]:
    """(share of cutouts on the same side of ``threshold``, largest |score difference|)."""
    ref = onnx_scores(reference_path, cutouts)
    got = onnx_scores(int8_path, cutouts)
    agree = float(np.mean((ref >= threshold) == (got >= threshold))) if len(ref) else 1.0
    return agree, float(np.max(np.abs(ref - got))) if len(ref) else 0.0
