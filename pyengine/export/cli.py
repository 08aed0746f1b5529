"""``pyengine export``: a model file to ONNX (fp32, fp16, int8) or a TensorRT engine.

Every export is checked on real cutouts: from ``--images`` (named by
``--bands``, else by FILTER keys or file names, and matched to the model's
bands; positions from ``--catalog``, else a grid over the image) or, with no images, from a small
synthetic field made on the spot (for g,i models).  It prints the largest
score difference from torch, and for int8 the decision agreement at the
model's threshold.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from pyengine.bands import BANDS_HELP, match_order, parse_band_list

__all__ = ["export"]


def _check_cutouts(spec, images, catalog, count: int, seed: int, bands=None):
    """(cutouts, description) to check and calibrate on.

    ``bands`` names the ``images`` (default: FILTER keys or file names); they are
    matched to the model's bands by the rule of :mod:`pyengine.bands`, in any order.
    """
    import numpy as np

    from pyengine import Mosaic
    from pyengine.errors import ConfigError
    from pyengine.scan.cutouts import extract_cutouts

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
            cut = extract_cutouts(mosaic, x[pick], y[pick], spec.cutout_size)
    keep = cut.on_image & (cut.nan_fraction < 0.5)
    pixels = cut.pixels[keep][:, order]  # the model's band order
    return np.ascontiguousarray(pixels), f"{int(keep.sum())} cutouts from {where}"


@click.command()
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
@click.option("--batch", type=(int, int, int), default=(1, 256, 1024), show_default=True,
              help="TensorRT optimisation profile: min, opt, max batch.")
@click.option("--int8-target", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="int8 recipe: uint8 activations for ONNX Runtime on CPUs, or symmetric int8 "
              "for TensorRT [tensorrt with --format tensorrt, else onnxruntime].")
@click.option("--seed", type=int, default=1, show_default=True)
def export(model, fmt, precision, out, images, band_names, catalog, count, cache_dir, batch,
           int8_target, seed):
    """Export MODEL (a pyengine model file) to ONNX or TensorRT, checked on real cutouts."""
    import numpy as np
    import torch

    from pyengine.export.onnx import export_onnx
    from pyengine.export.quantize import quantize_int8
    from pyengine.models.checkpoint import load_model
    from pyengine.runners.onnxrt import decision_agreement, onnx_scores

    bands = parse_band_list(band_names)
    net = load_model(model)
    spec = net.spec
    cutouts, where = _check_cutouts(spec, images, catalog, count, seed, bands)
    if fmt == "tensorrt":
        out_dir = Path(cache_dir).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / f"{Path(model).stem}-{precision}.onnx"
    else:
        onnx_path = Path(out) if out else Path(model).with_suffix(
            ".onnx" if precision == "fp32" else f".{precision}.onnx")
    with torch.no_grad():
        reference = net(torch.from_numpy(cutouts))[1].numpy()
    if precision == "int8":
        fp32_path = onnx_path.with_name(onnx_path.stem + ".fp32.onnx")
        export_onnx(net, fp32_path)
        # Calibrate on half the cutouts, check on the other half: agreement on the
        # calibration set itself would flatter the int8 graph.
        calibration, held_out = cutouts[0::2], cutouts[1::2]
        target = int8_target or ("tensorrt" if fmt == "tensorrt" else "onnxruntime")
        if fmt == "tensorrt" and target != "tensorrt":
            from pyengine.errors import ConfigError

            raise ConfigError("--int8-target onnxruntime makes uint8 activations, which TensorRT "
                              "does not build; use --int8-target tensorrt with --format tensorrt")
        quantize_int8(fp32_path, onnx_path, calibration, target=target)
        agree, diff = decision_agreement(fp32_path, onnx_path, held_out, spec.threshold)
        fp32_path.unlink()
        click.echo(f"wrote {onnx_path} (int8 QDQ for {target}, calibrated on half of {where})")
        click.echo(f"int8 vs fp32 on the other {len(held_out)} cutouts: decision agreement at "
                   f"threshold {spec.threshold:g}: {100 * agree:.2f} %; largest score difference "
                   f"{diff:.3g}")
    else:
        export_onnx(net, onnx_path, precision=precision)
        diff = float(np.max(np.abs(onnx_scores(onnx_path, cutouts) - reference)))
        click.echo(f"wrote {onnx_path} ({precision}; onnx.checker full check passed)")
        click.echo(f"ONNX Runtime vs torch on {where}: largest score difference {diff:.3g}")
    if fmt == "tensorrt":
        from pyengine.export.tensorrt import build_engine

        engine = build_engine(onnx_path, out_dir, batch=batch)
        click.echo(f"TensorRT engine: {engine}")
