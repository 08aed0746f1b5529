"""``pyengine export``: a model file to ONNX (fp32, fp16, int8) or a TensorRT engine.

Every export is checked on real cutouts: from ``--images`` (named by
``--bands``, else by FILTER keys or file names, and matched to the model's
bands; positions from ``--catalog``, else a grid over the image) or, with no images, from a small
synthetic field made on the spot (for g,i models).  It prints the largest
score difference from torch, and for int8 the decision agreement at the
model's threshold, and fails (:class:`pyengine.errors.ExportCheckError`, exit 1)
when they are beyond the tolerances below.

The graph is written under a hidden temporary name beside ``--out`` and renamed
onto it only once the check passes, so a failed check leaves no graph (and an
older good export at that name is kept).

``--input-dtype``: the dtype of the graph's input (see :mod:`pyengine.export.onnx`).
float16 is the default for ``--format tensorrt --precision fp16`` (when the
model's preprocessing is affine-invariant, so the scan sends float16 batches:
half the copy to the GPU), float32 otherwise; float16 needs ``--precision fp16``.
A float16-input graph is checked on the check cutouts as a scan feeds it: each
mapped to sky 0 and noise 1 (per band, as the scan maps each tile) and converted
to float16, torch scoring the same values.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from pyengine.atomic import publish, temporary_beside
from pyengine.bands import BANDS_HELP, match_order, parse_band_list
from pyengine.defaults import DEFAULT_TENSORRT_PROFILE

__all__ = ["MIN_INT8_AGREEMENT", "SCORE_TOLERANCE", "export"]

#: Largest |ONNX Runtime score - torch score| accepted per exported precision.  fp32
#: differs from torch only by operator order (1.8e-6 measured for the demo model on 512
#: synthetic cutouts; 1e-4 leaves room for other CPUs' kernels, while a wrong output or a
#: broken graph differs by ~0.1 or more).  fp16 rounds weights and activations to 11 bits:
#: 4.1e-3 measured for the demo model, so 2e-2.
#: int8 is judged by decisions instead (MIN_INT8_AGREEMENT); the fp32 graph it is
#: quantised from must pass the fp32 tolerance first.
SCORE_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
#: Default least share of held-out cutouts on which int8 and fp32 take the same decision
#: at the model's threshold (``--min-agreement``; 0 accepts any graph).
MIN_INT8_AGREEMENT = 0.99


def _check_scores(path: Path, got, want, precision: str, where: str) -> float:
    """Largest score difference; ExportCheckError beyond the precision's tolerance."""
    import numpy as np

    from pyengine.errors import ExportCheckError

    diff = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
    tolerance = SCORE_TOLERANCE[precision]
    if not diff <= tolerance:  # NaN fails too
        raise ExportCheckError(
            f"{path}: ONNX Runtime and torch scores differ by up to {diff:.3g} on {where}, "
            f"beyond the {precision} tolerance {tolerance:g}; the export was not written")
    return diff


def _as_fed_in_float16(spec, cutouts):
    """``cutouts`` as a scan feeds a float16-input graph: each band of each cutout mapped
    to sky 0 and noise 1 (``tile_affine``, which the scan applies per tile) when the
    model's preprocessing is invariant to it, then converted to float16 as the scan's
    gather converts (:func:`pyengine.runners.base.to_half`)."""
    import numpy as np

    from pyengine.runners.base import to_half

    if spec.preprocess.affine_invariant:
        from pyengine.scan.pipeline import tile_affine

        mapped = np.empty_like(cutouts)
        for i, cutout in enumerate(cutouts):
            offset, scale = tile_affine(cutout, sample=1)
            mapped[i] = (cutout - offset[:, None, None]) * scale[:, None, None]
        cutouts = mapped
    return to_half(cutouts)


def _check_cutouts(spec, images, catalog, count: int, seed: int, bands=None):
    """(cutouts, description) to check and calibrate on.

    ``bands`` names the ``images`` (default: FILTER keys or file names); they are
    matched to the model's bands by the rule of :mod:`pyengine.bands`, in any order.
    """
    import numpy as np

    from pyengine import Mosaic
    from pyengine.errors import ConfigError
    from pyengine.scan.cutouts import usable_cutouts

    columns = {}
    if bands is not None and not images:
        raise ConfigError(f"--bands {','.join(bands)} names the --images, and none were given; "
                          "give --images too, or leave --bands out")
    with tempfile.TemporaryDirectory() as tmp:
        if images:
            paths, where = list(images), f"{len(images)} band image(s)"
        else:
            if match_order(("g", "i"), spec.bands) is None:
                raise ConfigError(f"the model's bands are {list(spec.bands)}; give --images for "
                                  "them (a synthetic field has g and i only)")
            from pyengine.synth import SynthConfig, make_field

            result = make_field(tmp, SynthConfig(width=1024, height=1024, seed=seed))
            paths = [result.images["g"][0], result.images["i"][0]]
            where, catalog = f"a synthetic 1024 px field (seed {seed})", result.truth
            columns = {"x_col": "x", "y_col": "y"}  # its truth table has RA/Dec too
        with Mosaic.open(paths, bands=bands) as mosaic:  # a synthetic field: FILTER g, i
            order = match_order(mosaic.bands, spec.bands)
            if order is None:
                raise ConfigError(f"the images' bands {list(mosaic.bands)} differ from the "
                                  f"model's {list(spec.bands)}; give one image per model band, "
                                  "or name them with --bands (in image order)")
            if catalog is not None:
                from pyengine.io.catalog import catalog_positions, read_catalog

                table = read_catalog(catalog)
                pos = catalog_positions(table, mosaic.wcs, where=str(catalog), **columns)
                x, y = pos.x, pos.y
            else:
                ny, nx = mosaic.shape
                side = int(np.ceil(np.sqrt(count)))
                gx, gy = np.meshgrid(np.linspace(0, nx - 1, side), np.linspace(0, ny - 1, side))
                x, y = gx.ravel(), gy.ravel()
            rng = np.random.default_rng(seed)
            pick = rng.permutation(len(x))[:count]
            pixels = usable_cutouts(mosaic, x[pick], y[pick], spec.cutout_size, order)
    return pixels, f"{len(pixels)} cutouts from {where}"


@click.command(help=(
    "Export MODEL (a pyengine model file) to ONNX or TensorRT, checked on real cutouts.\n\n"
    "The export fails (exit 1, nothing written) when ONNX Runtime's scores differ from "
    f"torch's by more than {SCORE_TOLERANCE['fp32']:g} (fp32) or "
    f"{SCORE_TOLERANCE['fp16']:g} (fp16), or, for int8, when the int8 and fp32 graphs take "
    "the same decision on fewer than --min-agreement of the held-out cutouts."))
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt"]), default="onnx",
              show_default=True, help="ONNX graph, or a serialized TensorRT engine.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32",
              show_default=True, help="int8: ONNX Runtime static quantisation (QDQ).")
@click.option("--out", type=click.Path(dir_okay=False), help="Output file [default: MODEL "
              "with .onnx, or the engine cache for tensorrt].")
@click.option("--images", multiple=True, type=click.Path(dir_okay=False),
              help="Band images for the checks and int8 calibration (repeat, one per model band).")
@click.option("--bands", "band_names", default=None, help=BANDS_HELP)
@click.option("--catalog", type=click.Path(dir_okay=False), help="Positions for those cutouts.")
@click.option("--cutouts", "count", type=click.IntRange(16, 100000), default=512,
              show_default=True, help="Cutouts for the checks (and calibration).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="~/.cache/pyengine/engines",
              show_default=True, help="TensorRT engine cache.")
@click.option("--batch", type=(int, int, int), default=DEFAULT_TENSORRT_PROFILE, show_default=True,
              help="TensorRT optimisation profile: min, opt, max batch.")
@click.option("--int8-target", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="int8 recipe: uint8 activations for ONNX Runtime on CPUs, or symmetric int8 "
              "for TensorRT [tensorrt with --format tensorrt, else onnxruntime].")
@click.option("--min-agreement", type=click.FloatRange(0.0, 1.0),
              default=MIN_INT8_AGREEMENT, show_default=True,
              help="int8: least share of held-out cutouts with the fp32 graph's decision at "
              "the model's threshold; below it the export fails (0 accepts any).")
@click.option("--input-dtype", type=click.Choice(["float32", "float16"]), default=None,
              help="dtype of the graph's input cutouts; float16 halves the copy to the GPU "
              "and needs --precision fp16 [float16 for --format tensorrt --precision fp16, "
              "else float32].")
@click.option("--seed", type=int, default=1, show_default=True)
def export(model, fmt, precision, out, images, band_names, catalog, count, cache_dir, batch,
           int8_target, min_agreement, input_dtype, seed):
    """``pyengine export`` (help: the command's decorator, built from the tolerances)."""
    import numpy as np
    import torch

    from pyengine.errors import ConfigError
    from pyengine.export.onnx import export_onnx
    from pyengine.models.checkpoint import load_model
    from pyengine.runners.loaders import half_input
    from pyengine.runners.onnxrt import onnx_scores

    if input_dtype == "float16" and precision != "fp16":
        raise ConfigError(f"--input-dtype float16 needs --precision fp16: {precision} graphs "
                          "take float32 input (float16 would round the raw pixels)")
    bands = parse_band_list(band_names)
    net = load_model(model)
    spec = net.spec
    if input_dtype is None:
        half = fmt == "tensorrt" and half_input(spec, precision)
        input_dtype = "float16" if half else "float32"
    cutouts, where = _check_cutouts(spec, images, catalog, count, seed, bands)
    if fmt == "tensorrt":
        out_dir = Path(cache_dir).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / f"{Path(model).stem}-{precision}-{input_dtype}.onnx"
    else:
        named = "" if input_dtype == "float32" else f".{input_dtype}"
        onnx_path = Path(out) if out else Path(model).with_suffix(
            ".onnx" if precision == "fp32" else f".{precision}{named}.onnx")
    if input_dtype == "float16":
        cutouts = _as_fed_in_float16(spec, cutouts)
        where += " (as float16 input)"
    with torch.no_grad():
        reference = net(torch.from_numpy(cutouts.astype(np.float32)))[1].numpy()
    # Written under a hidden name until its check passes (ending in .onnx, which ONNX
    # Runtime's runner requires), then renamed onto --out.
    unchecked = temporary_beside(onnx_path, suffix=".onnx")
    try:
        if precision == "int8":
            _export_int8(net, spec, onnx_path, unchecked, cutouts, reference, where, fmt,
                         int8_target, min_agreement)
        else:
            export_onnx(net, unchecked, precision=precision, input_dtype=input_dtype)
            diff = _check_scores(onnx_path, onnx_scores(unchecked, cutouts), reference,
                                 precision, where)
            publish([(unchecked, onnx_path)])
            click.echo(f"wrote {onnx_path} ({precision}, {input_dtype} input; onnx.checker "
                       "full check passed)")
            click.echo(f"ONNX Runtime vs torch on {where}: largest score difference {diff:.3g} "
                       f"(tolerance {SCORE_TOLERANCE[precision]:g})")
    finally:
        unchecked.unlink(missing_ok=True)
    if fmt == "tensorrt":
        from pyengine.export.tensorrt import build_engine

        engine = build_engine(onnx_path, out_dir, batch=batch)
        click.echo(f"TensorRT engine: {engine}")


def _export_int8(net, spec, onnx_path, unchecked, cutouts, reference, where, fmt, int8_target,
                 min_agreement):
    """The int8 branch of ``export``: fp32 graph checked against torch, quantised on half
    the cutouts, judged by decision agreement on the other half, then renamed into place."""
    from pyengine.errors import ConfigError, ExportCheckError
    from pyengine.export.onnx import export_onnx
    from pyengine.runners.onnxrt import calibrate_int8, onnx_scores

    target = int8_target or ("tensorrt" if fmt == "tensorrt" else "onnxruntime")
    if fmt == "tensorrt" and target != "tensorrt":
        raise ConfigError("--int8-target onnxruntime makes uint8 activations, which TensorRT "
                          "does not build; use --int8-target tensorrt with --format tensorrt")
    fp32_path = onnx_path.with_name(onnx_path.stem + ".fp32.onnx")
    try:
        export_onnx(net, fp32_path)
        _check_scores(fp32_path, onnx_scores(fp32_path, cutouts), reference, "fp32", where)
        check = calibrate_int8(fp32_path, unchecked, cutouts, spec.threshold, target=target)
    finally:
        fp32_path.unlink(missing_ok=True)
    if not check.agreement >= min_agreement:
        raise ExportCheckError(
            f"{onnx_path}: int8 and fp32 take the same decision at threshold "
            f"{spec.threshold:g} on {100 * check.agreement:.2f} % of {check.held_out} held-out "
            f"cutouts, below --min-agreement {100 * min_agreement:g} %; the export was not "
            "written")
    publish([(unchecked, onnx_path)])
    click.echo(f"wrote {onnx_path} (int8 QDQ for {target}, calibrated on half of {where})")
    click.echo(f"int8 vs fp32 on the other {check.held_out} cutouts: decision agreement at "
               f"threshold {spec.threshold:g}: {100 * check.agreement:.2f} %; largest score "
               f"difference {check.largest_difference:.3g}")
