"""ResNet-50 v1.5, architecture only, with torchvision-compatible parameter names.

The network Zhang et al. (2025) used to classify PAndAS cutouts.  Parameter
names match torchvision's ``resnet50`` exactly (``conv1``, ``bn1``,
``layer1.0.downsample.0``, ``fc`` ...), so a torchvision state dict loads with
:func:`adapt_torchvision_state_dict`: conv1 goes from 3 (RGB) channels to the
model's bands and the 1000-class head is replaced.  "v1.5" puts the stride-2
of each down-sampling bottleneck in the 3x3 convolution rather than the first
1x1, as torchvision does (He et al. 2016; NVIDIA's ResNet-50 v1.5 notes);
it is ~0.5 % more accurate on ImageNet for slightly more compute.

The stem is torchvision's (7x7 stride-2 convolution, then 3x3 stride-2 max
pool), so a 64 px cutout reaches layer4 at 2 x 2.  That keeps imported weights
meaningful and the cost per cutout 12x below a 224 px image.

Thread safety: a module's forward may run from several threads in eval mode
(torch releases the GIL in its kernels); training mutates state and must run
on one thread.
"""

from __future__ import annotations

import torch
from torch import nn

from pyengine.errors import ModelFileError

__all__ = ["Bottleneck", "ResNet", "adapt_torchvision_state_dict", "load_torchvision_weights",
           "resnet50"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand x4, plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A bottleneck ResNet; use :func:`resnet50`."""

    def __init__(self, layers: tuple[int, int, int, int], in_channels: int = 3,
                 num_classes: int = 1000, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * Bottleneck.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al. 2017): helps small-batch training.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's feature map (B, 2048, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> logits (B, num_classes)."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resnet50(in_channels: int = 2, num_classes: int = 2, **kwargs) -> ResNet:
    """ResNet-50 v1.5: bottleneck stages of 3, 4, 6, 3 blocks (23.5 M parameters at 2 x 2)."""
    return ResNet((3, 4, 6, 3), in_channels=in_channels, num_classes=num_classes, **kwargs)


def adapt_torchvision_state_dict(state: dict, model: ResNet) -> tuple[dict, list[str]]:
    """A torchvision-style state dict made to fit ``model``.

    conv1's RGB filters are summed and spread evenly over the model's bands,
    so a uniform input produces the same response as before (the rule timm uses
    to adapt input convolutions).  A head of another size is dropped and keeps
    ``model``'s fresh initialisation.  Returns the state and the keys left to
    the model's own initialisation.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    want = model.state_dict()
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise ModelFileError("weights: no conv1.weight of shape (64, C, 7, 7); not a ResNet")
    bands = want["conv1.weight"].shape[1]
    if conv1.shape[1] != bands:
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True).repeat(1, bands, 1, 1) / bands
    kept_fresh = []
    for key in ("fc.weight", "fc.bias"):
        if key in state and state[key].shape != want[key].shape:
            del state[key]
            kept_fresh.append(key)
    missing = sorted(set(want) - set(state) - set(kept_fresh))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ModelFileError(
            f"weights do not match a torchvision ResNet-50: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}")
    bad = [k for k in state if state[k].shape != want[k].shape]
    if bad:
        raise ModelFileError(
            f"weights do not match a ResNet-50: {bad[0]} has shape {tuple(state[bad[0]].shape)}, "
            f"expected {tuple(want[bad[0]].shape)}")
    for key in kept_fresh:
        state[key] = want[key]
    return state, kept_fresh


def load_torchvision_weights(model: ResNet, path) -> list[str]:
    """Load a torchvision ResNet-50 checkpoint (.pth) into ``model``; returns fresh keys.

    Only tensors are unpickled (``torch.load(weights_only=True)``): a file that
    needs arbitrary code to load is refused.  A dict holding the weights under
    ``state_dict`` or ``model`` (training checkpoints) is accepted too.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, ...)
        raise ModelFileError(
            f"{path}: not loadable as plain tensors with weights_only=True ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}); give a torchvision-style state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    try:
        state, fresh = adapt_torchvision_state_dict(obj, model)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    model.load_state_dict(state, strict=True)
    return fresh
