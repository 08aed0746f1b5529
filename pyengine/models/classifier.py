"""The scanned model: Preprocess -> ResNet-50 -> class probabilities and a cluster score.

:class:`ClusterClassifier` takes raw cutouts (B, nband, S, S) float32, NaN for
off-image or blank pixels, exactly as the batcher writes them, and returns the
class probabilities and the cluster score (the summed probability of the
spec's positive classes).  Everything between raw pixels and the score is in
this one graph, so torch, ONNX Runtime and TensorRT all compute the same thing,
and training sees what scanning sees.

The names of the graph's input and outputs are defined here once
(``INPUT_NAME``, ``OUTPUT_NAMES``) and used by export and every runner.

Thread safety: see :mod:`pyengine.models.resnet`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from pyengine.models.preprocess import Preprocess
from pyengine.models.resnet import resnet50
from pyengine.models.spec import INPUT_NAME, OUTPUT_NAMES, ModelSpec

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "PRECISION_DTYPES", "ClusterClassifier", "calibrated",
           "precision_graph"]



class ClusterClassifier(nn.Module):
    """Preprocess and ResNet-50 built from a :class:`ModelSpec`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec.validate()
        self.preprocess = Preprocess(spec.preprocess, spec.cutout_size)
        self.backbone = resnet50(in_channels=spec.nband, num_classes=spec.num_classes)
        positive = torch.zeros(spec.num_classes)
        positive[list(spec.positive_classes)] = 1.0
        self.register_buffer("positive", positive, persistent=False)

    def logits(self, cutouts: torch.Tensor) -> torch.Tensor:
        """Raw cutouts -> class logits (B, num_classes); what training optimises."""
        return self.backbone(self.preprocess(cutouts))

    def forward(self, cutouts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw cutouts -> (probabilities (B, num_classes), score (B,))."""
        probabilities = torch.softmax(calibrated(self.logits(cutouts), self.spec), dim=1)
        return probabilities, probabilities @ self.positive


def calibrated(logits: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Logits divided by the spec's calibration temperature, plus its per-class offsets
    (constants in the exported graph, so ONNX Runtime and TensorRT apply the same
    calibration); unchanged for an uncalibrated spec."""
    if spec.temperature != 1.0:
        logits = logits / float(spec.temperature)
    if spec.logit_bias:
        with warnings.catch_warnings():  # a constant of the exported graph, as intended
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            bias = torch.tensor(spec.logit_bias, dtype=logits.dtype, device=logits.device)
        logits = logits + bias
    return logits


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_graph(model: ClusterClassifier, precision: str) -> nn.Module:
    """The model with its ResNet in ``precision`` and the preprocessing kept in float32.

    Raw sky levels of thousands with a noise of a few counts would lose that noise in
    half precision, so only the network after the preprocessing runs in fp16/bf16;
    the outputs are float32.  Used by ONNX export and by the torch runner, so both
    run the same graph.
    """
    dtype = PRECISION_DTYPES[precision]

    class _Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.preprocess = model.preprocess
            self.backbone = copy.deepcopy(model.backbone).to(dtype).eval()
            self.register_buffer("positive", model.positive.clone())

        def forward(self, cutouts):
            logits = self.backbone(self.preprocess(cutouts).to(dtype)).float()
            probabilities = torch.softmax(calibrated(logits, model.spec), dim=1)
            return probabilities, probabilities @ self.positive

    return _Graph().eval()
