"""A scan's fixed cost: the runner probe asks for a GPU without importing torch, and an
exported model's metadata is read without the onnx package."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.table import Table

from pyengine import devices
from pyengine.errors import ModelFileError
from pyengine.export.onnx import export_onnx, onnx_metadata
from pyengine.models.checkpoint import load_model
from pyengine.runners import probe
from tests.scanfield import scan_in_fresh_process

NO_NVIDIA = probe.nvidia_device_problem() is not None


@pytest.fixture(scope="module")
def onnx_model(model, tmp_path_factory):
    return export_onnx(load_model(model), tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.skipif(not NO_NVIDIA, reason="an NVIDIA device is here: auto may pick a GPU runner")
def test_auto_scan_of_an_exported_model_imports_neither_torch_nor_onnx(tmp_path, field, catalog,
                                                                       onnx_model):
    out = tmp_path / "cat.fits"
    printed = scan_in_fresh_process(
        tmp_path, field, catalog, onnx_model, out, "auto",
        then=("from pathlib import Path\n"
              "from pyengine.runners.select import make_runner\n"
              f"runner = make_runner('auto', Path({str(onnx_model)!r}))\n"
              "print(runner.name, '|', runner.chosen_because)\n"
              "print('torch' in sys.modules, 'onnx' in sys.modules)\n"))
    chosen, imported = printed[-2:]
    assert chosen == "onnxruntime | no CUDA GPU (no NVIDIA device found)"
    assert imported == "False False"
    assert len(Table.read(out)) > 0


def test_nvidia_device_problem_looks_at_device_nodes_and_nvidia_smi(monkeypatch):
    nodes, smi = [], None
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: list(nodes))
    monkeypatch.setattr(devices.shutil, "which", lambda name: smi)
    assert probe.nvidia_device_problem() == "no NVIDIA device found"
    nodes = ["/dev/nvidia0"]
    assert probe.nvidia_device_problem() is None
    nodes, smi = [], "/usr/bin/nvidia-smi"
    assert probe.nvidia_device_problem() is None


def test_the_cheap_probe_never_hides_what_an_imported_torch_says(monkeypatch):
    """torch is imported here, so its (faked) answer wins over "no NVIDIA device"."""
    monkeypatch.setattr(probe, "nvidia_device_problem", lambda: "no NVIDIA device found")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert probe.torch_cuda_problem() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert probe.torch_cuda_problem() in ("no CUDA device is visible to torch",
                                          f"this torch build ({torch.__version__}) has no CUDA")


def test_onnx_metadata_reads_the_wire_format_like_onnx(onnx_model, tmp_path):
    import onnx

    proto = onnx.load(str(onnx_model))
    assert onnx_metadata(onnx_model) == {p.key: p.value for p in proto.metadata_props}
    assert set(onnx_metadata(onnx_model)) >= {"pyengine", "pyengine_precision"}
    # Fields before and after the graph, unknown fields and fixed-width ones are skipped.
    proto.doc_string = "x" * 300
    proto.metadata_props.add(key="extra", value="ü" * 200)
    proto.graph.initializer[0].raw_data = np.ones(3, np.float32).tobytes()
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    assert onnx_metadata(other)["extra"] == "ü" * 200
    assert onnx_metadata(other) == {p.key: p.value for p in onnx.load(str(other)).metadata_props}
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_model.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=r"truncated\.onnx: not a readable ONNX file \("):
        onnx_metadata(truncated)
    text = tmp_path / "text.onnx"
    text.write_text("hello world, not a protobuf")
    with pytest.raises(ModelFileError, match=r"text\.onnx: not a readable ONNX file \("):
        onnx_metadata(text)
    with pytest.raises(ModelFileError, match=r"missing\.onnx: not a readable ONNX file \("):
        onnx_metadata(tmp_path / "missing.onnx")
