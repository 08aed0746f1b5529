"""What a runner given a model file (not an exported graph) loads: Polygraphy-style
loaders below the runners, which call the exporters and never the reverse.

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

from pathlib import Path

from pyengine.errors import RunnerUnavailable

__all__ = ["model_file_export"]


def model_file_export(model: Path | None, precision: str | None, cache_dir: Path,
                      exportable: tuple[str, ...]):
    """(source model file, its spec, precision, cached ONNX path) for a runner given a model
    file (None: the shipped demo model) rather than an exported graph.  The ONNX is named by
    the file's SHA-256 and the precision; precisions outside ``exportable`` (int8, which is
    calibrated on real cutouts) are refused with the command that makes them."""
    from pyengine.models.checkpoint import DEMO_MODEL, file_sha256, read_spec

    source = model if model is not None else DEMO_MODEL
    spec, _ = read_spec(source)
    precision = precision or "fp32"
    if precision not in exportable:
        raise RunnerUnavailable(
            f"{source}: an {precision} graph is calibrated on real cutouts; make it with "
            f"pyengine export {source} --precision {precision} --images ... and give the .onnx")
    return source, spec, precision, Path(cache_dir) / f"{file_sha256(source)[:32]}-{precision}.onnx"
