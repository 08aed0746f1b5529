"""Catalog assembly: per-tile results -> the catalog of DESIGN.md §4.

:func:`assemble_catalog` turns per-tile results into one row per position
(off-image positions flagged, not dropped), ``id, ra, dec, x, y, score,
is_candidate, flags, tile`` (an ensemble: ``score_std`` after ``score``), the class
columns ``p_<class>``, ``class`` (and an ensemble's ``class_agreement``) where the scan
keeps them (:mod:`pyengine.scan.classes`), one ``nan_frac_<band>`` per model band (the
share of the cutout's pixels that are NaN in that band; 1 off the image), the source's own columns
and the input catalog's columns (renamed ``in_<name>`` where they collide), with
metadata in ``table.meta``; :func:`tile_table` is one tile's rows, for
``Engine.iter_scan``.  :func:`scan_warnings` names whole-field problems (a band with no
data, a band that is all zero, every position off the image) for the scan's summary.

Thread safety: pure functions of their arguments; called from one thread per scan.
"""

from __future__ import annotations

import datetime

import numpy as np

from pyengine import __version__
from pyengine.flags import NOT_CANDIDATE, OFF_IMAGE_FLAGS, describe_flags
from pyengine.io.skyframe import pixel_to_icrs
from pyengine.scan.classes import class_columns, score_columns
from pyengine.scan.results import TileResult

__all__ = ["STANDARD", "assemble_catalog", "band_nan", "candidates", "catalog_meta",
           "scan_warnings", "tile_table"]

STANDARD = ("id", "ra", "dec", "x", "y", "score", "is_candidate", "flags", "tile")


# -- per-tile and whole catalogs --------------------------------------------------------
def _sky(mosaic, x, y):
    """ICRS RA/Dec, whatever the frame of the mosaic's WCS (the catalog says RADESYS ICRS)."""
    return pixel_to_icrs(mosaic.wcs, x, y)


def band_nan(result: TileResult, nband: int) -> np.ndarray:
    """(n, nband) float32 NaN share per band of a result; a result journalled without
    them (an older pyengine) repeats its pooled ``nan_fraction`` in every band."""
    if result.band_nan is not None:
        return np.asarray(result.band_nan, np.float32).reshape(len(result), nband)
    return np.repeat(np.asarray(result.nan_fraction, np.float32).reshape(-1, 1), nband, 1)


def _band_columns(engine, values: np.ndarray) -> dict[str, np.ndarray]:
    return {f"nan_frac_{b}": values[:, k] for k, b in enumerate(engine.spec.bands)}


def _outputs(engine, results: list[TileResult]) -> dict[str, np.ndarray]:
    """The results' per-row outputs the scan kept (``engine.row_outputs``), concatenated;
    a result without one (off-image rows) holds NaN, or -1 for integers, there."""
    out = {}
    for name, (shape, dtype) in getattr(engine, "row_outputs", {}).items():
        fill = np.nan if np.dtype(dtype).kind == "f" else -1
        parts = [np.asarray(r.outputs[name], dtype) if name in r.outputs else
                 np.full((len(r), *shape), fill, dtype) for r in results]
        out[name] = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype)
    return out


def _class_columns(engine, outputs) -> dict[str, np.ndarray]:
    return class_columns(engine.spec.class_names, outputs)


def candidates(engine, score, flags):
    with np.errstate(invalid="ignore"):
        return (score >= engine.threshold) & ((flags & NOT_CANDIDATE) == 0)


def tile_table(engine, mosaic, result: TileResult):
    """One tile's rows as an astropy Table (no ids: those number the whole catalog)."""
    from astropy.table import Table

    ra, dec = _sky(mosaic, result.x, result.y)
    table = Table()
    table["ra"], table["dec"] = ra, dec
    table["x"], table["y"] = result.x, result.y
    table["score"] = result.score
    outputs = _outputs(engine, [result])
    for name, values in score_columns(outputs).items():
        table[name] = values
    table["is_candidate"] = candidates(engine, result.score, result.flags)
    table["flags"] = result.flags
    table["tile"] = np.full(len(result), result.tile, np.int64)
    classes = _class_columns(engine, outputs)
    for name, values in classes.items():
        table[name] = values
    for name, values in _band_columns(engine, band_nan(result, mosaic.nband)).items():
        table[name] = values
    for name, values in result.columns.items():
        table[name if name not in classes else f"det_{name}"] = values
    if np.any(result.row >= 0):
        table["row"] = result.row
    return table


def _off_image_result(source, nband: int) -> TileResult | None:
    off = source.off_image()
    n = len(off.x)
    if n == 0:
        return None
    return TileResult(-1, np.asarray(off.x, np.float64), np.asarray(off.y, np.float64),
                      np.asarray(off.row, np.int64), np.full(n, np.nan, np.float32),
                      np.ones(n, np.float32), np.full(n, OFF_IMAGE_FLAGS, np.int32),
                      {k: np.asarray(v) for k, v in off.columns.items()},
                      np.ones((n, nband), np.float32), np.zeros((n, nband), bool))


def assemble_catalog(engine, mosaic, source, results: list[TileResult], *,
                     meta: dict | None = None):
    """The catalog of a scan from its tile results (any order given; tile order kept)."""
    from astropy.table import Table

    results = sorted(results, key=lambda r: r.tile)
    off = _off_image_result(source, mosaic.nband)
    if off is not None:
        results.append(off)
    names = sorted({k for r in results for k in r.columns})

    def cat(get, dtype):
        parts = [np.asarray(get(r)) for r in results]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    x, y = cat(lambda r: r.x, np.float64), cat(lambda r: r.y, np.float64)
    row = cat(lambda r: r.row, np.int64)
    score, flags = cat(lambda r: r.score, np.float32), cat(lambda r: r.flags, np.int32)
    tile = cat(lambda r: np.full(len(r), r.tile, np.int64), np.int64)
    nans = (np.concatenate([band_nan(r, mosaic.nband) for r in results]) if results
            else np.zeros((0, mosaic.nband), np.float32))
    extra = {}
    for name in names:
        dtypes = [r.columns[name].dtype for r in results if name in r.columns]
        dtype = np.result_type(*dtypes)
        fill = np.nan if dtype.kind == "f" else 0
        extra[name] = cat(lambda r, n=name, d=dtype, f=fill:
                          r.columns.get(n, np.full(len(r), f, d)), dtype)
    passthrough = source.passthrough()
    # Catalog mode: input order.  Otherwise tile order, then each tile's own order.
    order = np.argsort(row, kind="stable") if passthrough is not None else np.arange(x.size)
    x, y, row, score, flags, tile, nans = (a[order] for a in
                                           (x, y, row, score, flags, tile, nans))
    extra = {k: v[order] for k, v in extra.items()}
    outputs = {k: v[order] for k, v in _outputs(engine, results).items()}
    ra, dec = _sky(mosaic, x, y)
    table = Table()
    table["id"] = np.arange(1, x.size + 1, dtype=np.int64)
    table["ra"], table["dec"], table["x"], table["y"] = ra, dec, x, y
    table["score"] = score
    for name, values in score_columns(outputs).items():
        table[name] = values
    table["is_candidate"] = candidates(engine, score, flags)
    table["flags"], table["tile"] = flags, tile
    classes = _class_columns(engine, outputs)
    for name, values in classes.items():
        table[name] = values
    for name, values in _band_columns(engine, nans).items():
        table[name] = values
    for name, values in extra.items():
        table[name if name not in STANDARD and name not in classes else f"det_{name}"] = values
    if passthrough is not None:
        taken = set(table.colnames)
        rows = passthrough[row] if row.size else passthrough[:0]
        for name in passthrough.colnames:
            out = name if name.lower() not in {t.lower() for t in taken} else f"in_{name}"
            table[out] = rows[name]
            taken.add(out)
    if getattr(source, "kind", None) == "detect":  # one object, one candidate
        from pyengine.output.grouping import DEFAULT_GROUP_RADIUS, group_candidates

        radius = getattr(engine, "group_radius", None)
        group_candidates(table, DEFAULT_GROUP_RADIUS if radius is None else radius,
                         _pixel_scale(mosaic))
    table.meta.update(catalog_meta(engine, mosaic, source, table))
    if meta:
        table.meta.update(meta)
    return table


def _pixel_scale(mosaic) -> float | None:
    wcs = getattr(mosaic, "wcs", None)
    if wcs is None or not getattr(wcs, "has_celestial", False):
        return None
    from pyengine.survey.manifest import pixel_scale_arcsec

    return pixel_scale_arcsec(wcs)


def catalog_meta(engine, mosaic, source, table) -> dict:
    """Header metadata of a catalog (FITS-safe keys)."""
    from pyengine.models.checkpoint import DEMO_MODEL

    model = engine.model
    meta = {
        "PYENGVER": __version__,
        "DATE": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "MODEL": (",".join(map(str, model)) if isinstance(model, tuple | list) else
                  str(model if model is not None else DEMO_MODEL.name)),
        "MODELSHA": engine.model_sha256,
        "THRESH": engine.threshold,
        "RUNNER": engine.runner.name,
        "PRECISN": engine.runner.precision,
        "BANDS": ",".join(engine.spec.bands),
        "CUTOUT": engine.spec.cutout_size,
        "SOURCE": source.describe(),
        "MAXNAN": engine.max_nan_fraction,
        "NPOS": len(table),
        "NCAND": int(np.count_nonzero(table["is_candidate"])),
        "FLAGS": describe_flags(),
        "RADESYS": "ICRS",
    }
    members = getattr(engine, "members", 1)
    if members > 1:  # an ensemble: MODEL lists its member files, MODELSHA names them all
        meta["NMEMBERS"] = members
    if getattr(engine, "class_columns", False):
        meta["CLASSES"] = ",".join(engine.spec.class_names)
    for i, path in enumerate(mosaic.paths, 1):
        meta[f"BANDFIL{i}"] = str(path)
    return meta


def scan_warnings(mosaic, results: list[TileResult], table) -> list[str]:
    """One line per whole-field problem of a finished scan, naming the band and its file:
    every position off the image; a band with no data (NaN) in every cutout scanned; a
    band that is exactly 0 (or NaN) at the centre pixel of every position scanned, a
    broken stack's usual symptom.  ``results``: the scan's tile results (all tiles,
    journalled ones included); ``table``: its catalog.  Empty when all is well."""
    from pyengine.flags import OFF_IMAGE

    total = len(table)
    off = int(np.count_nonzero(np.asarray(table["flags"]) & OFF_IMAGE)) if total else 0
    files = ", ".join(str(p) for p in mosaic.paths)
    if total and off == total:
        return [f"all {total:,} positions are off the image of {files}: nothing was "
                "scored; check the positions (catalog columns, their units and frame) "
                "against the images' WCS and size"]
    scanned = [r for r in results if r.tile >= 0 and len(r)]
    if not scanned:
        return []
    nband = mosaic.nband
    nans = np.concatenate([band_nan(r, nband) for r in scanned])
    zero = np.concatenate([np.zeros((len(r), nband), bool) if r.band_zero is None else
                           np.asarray(r.band_zero, bool).reshape(len(r), nband)
                           for r in scanned])
    out = []
    for b, (name, path) in enumerate(zip(mosaic.bands, mosaic.paths, strict=True)):
        blank = nans[:, b] >= 1
        if blank.all():
            out.append(f"band {name} ({path}) has no data (all NaN) in every one of the "
                       f"{blank.size:,} cutouts scanned: all are flagged BLANK and none is "
                       "a candidate")
        elif (zero[:, b] | blank).all():
            out.append(f"band {name} ({path}) is exactly 0 at every one of the "
                       f"{blank.size:,} positions scanned (an empty or broken stack?): "
                       "its scores are not meaningful")
    return out
