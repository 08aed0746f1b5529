"""The ONNX Runtime runner: the default on a CPU.

Takes an exported ONNX file (``pyengine export``: fp32, fp16 or int8 QDQ; its
spec and precision come from its metadata, its graph is checked against its
stored checksum) or a pyengine model file (its tensors checked against theirs),
which is exported to fp32 ONNX once and cached by the model's SHA-256 (needs
torch; a cache entry that is damaged or made from another file is exported
again: :func:`pyengine.runners.loaders.cached_export`).  A file ONNX Runtime
cannot load (``InvalidProtobuf``, ``InvalidGraph``, ...) is a one-line
``ModelFileError``.  An int8 graph is calibrated on cutouts, so it is never made
silently here: export it with ``pyengine export MODEL --precision int8`` and give
the .onnx, or let ``pyengine scan --precision int8`` calibrate one on the scan's own
cutouts (:mod:`pyengine.scan.int8`, which gives the scan its .onnx).

``submit`` computes synchronously (ONNX Runtime's CPU session; one run gives both
graph outputs, the scores and the class probabilities); slots are
page-aligned NumPy arrays.  ``input_dtype`` is the graph's input dtype: float32,
or float16 for an export made with a float16 input (``pyengine export
--input-dtype float16``, meant for TensorRT; its metadata ``pyengine_input_dtype``
says so before activation, the session's input type after).  Batches of the
other float dtype are converted on the host (float32 to float16 rounds them, and
saturates finite values beyond 65504 there, as the scan's gather does:
:func:`pyengine.runners.base.to_half`).

Thread safety: see :mod:`pyengine.runners.base`; ONNX Runtime's session runs
its own intra-op threads (``threads``) with the GIL released.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pyengine.errors import ConfigError, ModelFileError
from pyengine.models.spec import INPUT_NAME, OUTPUT_NAMES
from pyengine.runners.base import Runner
from pyengine.runners.loaders import cached_export, model_file_export
from pyengine.runners.probe import unavailable

__all__ = ["Int8Check", "OnnxRuntimeRunner", "calibrate_int8", "decision_agreement",
           "default_cache_dir", "onnx_scores"]


# Whether ONNX Runtime's intra-op threads busy-wait between runs (see _activate).
ALLOW_SPINNING = False


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyengine" / "onnx"


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model: Path | None, *, precision: str | None = None,
                 threads: int | None = None, cache_dir=None, batch_size: int | None = None):
        if threads is not None and threads < 1:
            raise ConfigError(f"threads = {threads}; a positive number is needed")
        self._model = model
        self._threads = threads
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._session = None
        self._source = None
        self._verified = False
        if model is not None and model.suffix.lower() == ".onnx":
            from pyengine.export.onnx import read_export

            # The graph's checksum (a full read of ~100 MB) is checked at activation, which
            # pyengine scan overlaps with its own start-up (scan/cli.py).
            spec, stored = read_export(model, precision, verify=False)
            from pyengine.export.onnx import input_dtype_of, onnx_metadata

            self._onnx = model
            self._dtype = np.dtype(input_dtype_of(onnx_metadata(model), model))
            super().__init__(spec, stored, batch_size)
            return
        self._source, spec, precision, dtype, self._onnx = model_file_export(
            model, precision, self._cache_dir, ("fp32",))
        self._dtype = np.dtype(dtype)
        super().__init__(spec, precision, batch_size)

    @property
    def input_dtype(self) -> np.dtype:
        """The graph input's dtype (float32, or float16 for a float16-input export)."""
        return self._dtype

    def onnx_file(self) -> Path:
        """The ONNX file this runner runs (a model file is exported on the first call)."""
        return self._ensure_onnx()

    def _ensure_onnx(self) -> Path:
        if self._source is None:  # an .onnx given: its spec read in __init__, its weights here
            if not self._verified:
                from pyengine.export.onnx import verify_graph

                verify_graph(self._onnx)
                self._verified = True
            return self._onnx
        return cached_export(self._source, self._onnx, self.precision, str(self._dtype))

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise unavailable("onnxruntime", "onnxruntime is not installed (pip install "
                              "onnxruntime)") from None
        path = self._ensure_onnx()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        # ONNX Runtime's intra-op threads spin after each run, waiting for the next one;
        # in a scan that steals the cores the read and gather stages need between
        # batches (2-core machines: benchmarks/RESULTS.md).  Waking them costs far less
        # than one batch's compute.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if ALLOW_SPINNING else "0")
        try:
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        except _load_errors(ort) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: ONNX Runtime cannot load this graph ({reason}); "
                                 "accepted: an ONNX graph written by pyengine export") from None
        inputs = self._session.get_inputs()
        kind = inputs[0].type if len(inputs) == 1 else ""
        if kind in _ORT_TYPES:  # the graph's own input type rules (metadata could be stale)
            self._dtype = np.dtype(_ORT_TYPES[kind])

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Both graph outputs of one run: the softmax is computed for the score anyway.
        probabilities, scores = self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return probabilities, scores

    def _deactivate(self) -> None:
        self._session = None


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


def _load_errors(ort) -> tuple[type[BaseException], ...]:
    """ONNX Runtime's exceptions for a file it cannot parse or build a session from
    (``InvalidProtobuf``, ``InvalidGraph``, ``Fail``, ...): a bad file, not a bug here."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("InvalidProtobuf", "InvalidGraph", "Fail", "NoSuchFile", "NoModel",
             "NotImplemented", "InvalidArgument")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def onnx_scores(path, cutouts: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """Scores of ``cutouts`` (float32, or float16) from a pyengine ONNX file under ONNX
    Runtime (CPU)."""
    cutouts = np.asarray(cutouts)
    if cutouts.dtype != np.float16:  # float16 is taken as is (a float16-input graph's own)
        cutouts = cutouts.astype(np.float32, copy=False)
    with OnnxRuntimeRunner(Path(path)) as runner:
        out = [runner.infer(cutouts[i : i + batch]) for i in range(0, len(cutouts), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def decision_agreement(reference_path, other_path, cutouts: np.ndarray, threshold: float
                       ) -> tuple[float, float]:
    """(share of cutouts on the same side of ``threshold``, largest |score difference|)
    between two ONNX files (an fp32 reference and its int8 or fp16 export)."""
    ref = onnx_scores(reference_path, cutouts)
    got = onnx_scores(other_path, cutouts)
    agree = float(np.mean((ref >= threshold) == (got >= threshold))) if len(ref) else 1.0
    return agree, float(np.max(np.abs(ref - got))) if len(ref) else 0.0


class Int8Check(NamedTuple):
    """How an int8 graph was made and judged (:func:`calibrate_int8`)."""

    calibrated: int  # cutouts it was calibrated on
    held_out: int  # cutouts it was judged on (none of them calibrated it)
    agreement: float  # share of held-out cutouts with the fp32 graph's decision
    largest_difference: float  # largest |int8 score - fp32 score| on them


def calibrate_int8(fp32_path, int8_path, cutouts: np.ndarray, threshold: float, *,
                   target: str = "onnxruntime") -> Int8Check:
    """Quantise the fp32 ONNX graph ``fp32_path`` to int8 at ``int8_path``
    (:func:`pyengine.export.quantize.quantize_int8`, recipe ``target``), calibrated on the
    even-numbered ``cutouts``, and judge it against ``fp32_path`` at ``threshold`` on the
    odd-numbered ones: agreement on the calibration set itself would flatter the int8
    graph.  The one recipe of ``pyengine export --precision int8`` and of a scan's own
    calibration (:mod:`pyengine.scan.int8`); the caller decides what agreement passes."""
    from pyengine.export.quantize import quantize_int8

    calibration, held_out = cutouts[0::2], cutouts[1::2]
    quantize_int8(fp32_path, int8_path, calibration, target=target)
    agree, diff = decision_agreement(fp32_path, int8_path, held_out, threshold)
    return Int8Check(len(calibration), len(held_out), agree, diff)
