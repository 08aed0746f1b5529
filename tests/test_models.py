"""ResNet-50, torchvision weight import, model files and their refusals."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyengine.errors import ModelFileError
from pyengine.models.checkpoint import load_model, read_spec, save_model
from pyengine.models.classifier import OUTPUT_NAMES, ClusterClassifier
from pyengine.models.resnet import adapt_torchvision_state_dict, load_torchvision_weights, resnet50
from pyengine.models.spec import ModelSpec, PreprocessSpec


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet50_sizes_match_torchvision_and_two_bands():
    assert _count(resnet50(in_channels=3, num_classes=1000)) == 25_557_032  # torchvision's
    assert _count(resnet50(in_channels=2, num_classes=2)) == 23_508_994  # ~23.5 M
    model = resnet50(in_channels=2, num_classes=4).eval()
    x = torch.randn(3, 2, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (3, 2048, 2, 2)
    torch.testing.assert_close(model.forward_head(features), model(x), rtol=0, atol=0)


def test_v1_5_puts_the_stride_in_the_3x3():
    block = resnet50().layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def _torchvision_like_checkpoint(tmp_path):
    """A state dict with torchvision's names and shapes (3 channels, 1000 classes)."""
    torch.manual_seed(0)
    src = resnet50(in_channels=3, num_classes=1000)
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    return src, path


def test_torchvision_weights_import_with_conv1_adapted(tmp_path):
    src, path = _torchvision_like_checkpoint(tmp_path)
    model = resnet50(in_channels=2, num_classes=2)
    fresh_fc = model.fc.weight.detach().clone()
    kept = load_torchvision_weights(model, path)
    assert sorted(kept) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(model.fc.weight, fresh_fc, rtol=0, atol=0)
    for name in ("layer3.2.conv2.weight", "layer4.0.downsample.1.running_var", "bn1.bias"):
        torch.testing.assert_close(model.state_dict()[name], src.state_dict()[name], rtol=0, atol=0)
    # A uniform image gives conv1 the same response with 3 RGB or 2 band channels.
    with torch.no_grad():
        rgb = src.conv1(torch.full((1, 3, 16, 16), 0.7))
        bands = model.conv1(torch.full((1, 2, 16, 16), 0.7))
    torch.testing.assert_close(bands, rgb, rtol=1e-5, atol=1e-5)


def test_torchvision_import_refuses_pickled_code_and_foreign_weights(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": object()}, path)
    with pytest.raises(ModelFileError, match="weights_only=True"):
        load_torchvision_weights(resnet50(), path)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(ModelFileError, match="missing"):
        load_torchvision_weights(resnet50(), tmp_path / "partial.pth")
    with pytest.raises(ModelFileError, match="no such file"):
        load_torchvision_weights(resnet50(), tmp_path / "nope.pth")
    state = resnet50(3, 1000).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ModelFileError, match=r"layer1\.0\.conv1\.weight has shape"):
        adapt_torchvision_state_dict(state, resnet50())


# -- model files -----------------------------------------------------------------

SPEC = ModelSpec(bands=("g", "i"), cutout_size=32, threshold=0.669,
                 provenance={"seed": 1, "data": "synthetic"}, metrics={"f1": 0.8})


def _cutouts(n=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 5.0, size=(n, 2, size, size)).astype(np.float32)
    x[0, :, :, :10] = np.nan  # off the image's left edge
    return torch.from_numpy(x)


@pytest.fixture(scope="module")
def trained_like():
    torch.manual_seed(3)
    model = ClusterClassifier(SPEC)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model.logits(_cutouts(8, seed=1))
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path, trained_like):
    path = save_model(trained_like, tmp_path / "m.safetensors")
    again = save_model(trained_like, tmp_path / "again.safetensors")
    assert path.read_bytes() == again.read_bytes()  # same model, same bytes, same hash
    loaded = load_model(path)
    assert loaded.spec == SPEC
    assert loaded.weights == "float32"
    assert len(loaded.sha256) == 64
    for key, value in trained_like.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    with torch.no_grad():
        a, b = trained_like(_cutouts()), loaded(_cutouts())
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert len(OUTPUT_NAMES) == len(a)
    assert a[1].shape == (5,)
    torch.testing.assert_close(a[1], a[0][:, 1])


def test_int8_storage_is_smaller_and_close(tmp_path, trained_like):
    full = save_model(trained_like, tmp_path / "f.safetensors")
    small = save_model(trained_like, tmp_path / "q.safetensors", weights="int8-per-channel")
    assert small.stat().st_size < full.stat().st_size / 3.2
    loaded = load_model(small)
    assert loaded.weights == "int8-per-channel"
    for key, value in trained_like.backbone.state_dict().items():
        got = loaded.backbone.state_dict()[key]
        if value.ndim >= 2:
            step = value.reshape(value.shape[0], -1).abs().amax(1) / 127
            err = (got - value).reshape(value.shape[0], -1).abs().amax(1)
            assert torch.all(err <= step / 2 * (1 + 1e-4)), key  # float32 rounding of q * scale
        else:
            assert torch.equal(got, value), key


def test_read_spec_needs_no_torch(tmp_path, trained_like):
    path = save_model(trained_like, tmp_path / "m.safetensors")
    code = ("import sys; from pyengine.models.checkpoint import read_spec; "
            f"s, w = read_spec({str(path)!r}); print(s.bands, s.threshold, w, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "('g', 'i') 0.669 float32 False"


def _write_safetensors(path, header: dict, payload: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


def test_bad_model_files(tmp_path, trained_like):
    good = save_model(trained_like, tmp_path / "good.safetensors")
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.safetensors")
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(ModelFileError, match="only 3 bytes"):
        read_spec(tmp_path / "tiny")
    (tmp_path / "junk").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="header length"):
        read_spec(tmp_path / "junk")
    raw = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="truncated model file"):
        load_model(tmp_path / "cut.safetensors")
    bare = _write_safetensors(tmp_path / "bare.safetensors", {"__metadata__": {}})
    with pytest.raises(ModelFileError, match="without pyengine metadata"):
        read_spec(bare)
    meta = {"pyengine": "{not json"}
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_spec(_write_safetensors(tmp_path / "j.safetensors", {"__metadata__": meta}))
    spec = SPEC.to_dict()
    for change, message in (({"format_version": 99}, "format_version = 99"),
                            ({"bands": []}, "bands = "),
                            ({"cutout_size": 7}, "cutout_size = 7"),
                            ({"threshold": 1.5}, "threshold = 1.5"),
                            ({"positive_classes": [5]}, "positive_classes")):
        meta = {"pyengine": json.dumps({**spec, **change})}
        path = _write_safetensors(tmp_path / "s.safetensors", {"__metadata__": meta})
        with pytest.raises(ModelFileError, match=message):
            read_spec(path)
    del spec["bands"]
    meta = {"pyengine": json.dumps(spec)}
    with pytest.raises(ModelFileError, match=r"lacks \['bands'\]"):
        read_spec(_write_safetensors(tmp_path / "k.safetensors", {"__metadata__": meta}))


def test_weights_that_do_not_fit_the_spec(tmp_path, trained_like):
    three = ClusterClassifier(SPEC.replace(bands=("g", "r", "i")))
    path = save_model(three, tmp_path / "three.safetensors")
    raw = bytearray(path.read_bytes())
    # Rewrite the spec to claim two bands: the conv1 weights no longer fit.
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["pyengine"] = SPEC.to_json()
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + bytes(raw[8 + n :]))
    with pytest.raises(ModelFileError, match=r"conv1\.weight has shape \(64, 3, 7, 7\)"):
        load_model(path)


def test_missing_demo_model_is_a_clear_error(monkeypatch, tmp_path):
    from pyengine.models import checkpoint

    monkeypatch.setattr(checkpoint, "DEMO_MODEL", tmp_path / "absent.safetensors")
    with pytest.raises(ModelFileError, match="ships no demo model"):
        load_model()


def test_spec_validation_messages():
    with pytest.raises(ModelFileError, match=r"preprocess\.stretch = 'log'"):
        PreprocessSpec(stretch="log").validate()
    with pytest.raises(ModelFileError, match="TensorRT sorts at most 3840"):
        PreprocessSpec(border=20).validate(128)
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC


def test_save_into_a_missing_folder_is_a_clear_error(tmp_path, trained_like):
    with pytest.raises(ModelFileError, match=r"folder .* does not exist"):
        save_model(trained_like, tmp_path / "no" / "such" / "m.safetensors")
