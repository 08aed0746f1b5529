"""Checks of a scan's inputs that are cheap, so that ``pyengine scan`` refuses a bad
model file or catalog in well under a second, before loading a model or a runtime
(which costs seconds and hundreds of MB).  Band images are checked by
:meth:`pyengine.io.mosaic.Mosaic.open` (headers only) and outputs by
:func:`pyengine.scan.run.output_paths`; the full checks happen again where the files
are read, so these only move the common failures earlier.

Nothing here imports torch, onnx, onnxruntime or tensorrt.

Thread safety: pure functions that read files.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyengine.errors import ModelFileError

__all__ = ["check_catalog", "check_model_file"]

#: Model file suffixes a scan takes (pyengine.runners.select decides the runner).
MODEL_SUFFIXES = (".safetensors", ".onnx", ".engine", ".plan", ".trt")


def check_model_file(model) -> None:
    """Refuse a ``--model`` that is missing, unreadable, of an unknown suffix, or whose
    first bytes are not of its format: a safetensors header (read in full, it is small),
    an ONNX protobuf (it opens with field 1, ``ir_version``: byte 0x08) or a non-empty
    TensorRT engine.  None (the shipped demo model) passes."""
    if model is None:
        return
    path = Path(model)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ModelFileError(f"--model {path}: unknown model format {suffix or '(no suffix)'!r};"
                             f" accepted suffixes: {', '.join(MODEL_SUFFIXES)}")
    if not path.exists():
        raise ModelFileError(f"--model {path}: no such model file")
    if path.is_dir():
        raise ModelFileError(f"--model {path}: is a directory; give a model file")
    if not os.access(path, os.R_OK):
        raise ModelFileError(f"--model {path}: not readable (permission denied)")
    if suffix == ".safetensors":
        from pyengine.models.checkpoint import read_spec

        read_spec(path)
        return
    with open(path, "rb") as fh:
        head = fh.read(1)
    accepted = ("accepted: an ONNX graph written by pyengine export" if suffix == ".onnx"
                else "accepted: a TensorRT engine built by pyengine export --format tensorrt")
    if not head:
        raise ModelFileError(f"{path}: an empty file (0 bytes); {accepted}")
    if suffix == ".onnx" and head != b"\x08":
        raise ModelFileError(f"{path}: not an ONNX file (it does not start as an ONNX model "
                             f"does); {accepted}")


def check_catalog(source, wcs) -> None:
    """Refuse, from its first row, a catalog a :class:`~pyengine.sources.catalog.CatalogSource`
    cannot use: missing, unreadable or empty, without position columns (or with the
    columns named by --ra-col, --x-col, ... missing), or without the magnitude column a
    --mag-limit needs.  Row values are checked when the source is bound."""
    from pyengine.io.catalog import catalog_positions, read_catalog_head

    head = read_catalog_head(source.spec)
    source.check_columns(head)
    catalog_positions(head, wcs, where=source.spec, ra_col=source.ra_col,
                      dec_col=source.dec_col, x_col=source.x_col, y_col=source.y_col,
                      refuse_unusable=False)
