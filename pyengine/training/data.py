"""Training data: labelled catalog rows -> clean cutouts, class indices and a split.

Labels: every value of the label column becomes a string (bytes decoded, integral
floats as integers, booleans as ``True``/``False``); each distinct value is a class,
ordered numerically when all are integers, else alphabetically, unless ``--classes``
lists the values to train on (rows with other values are left out and counted).
``--positive`` names the values that count as cluster; by default the first of
``cluster``, ``1``, ``True`` (case-insensitive) present among the values.
``--binary`` merges the classes into ``non-cluster`` / ``cluster``.

Cutouts are extracted once at size S + 2 PAD through
:func:`pyengine.scan.cutouts.extract_cutouts` (the scan's own TilePlan/gather path) so
augmentation can shift by up to +-2 px with real pixels; the central S x S crop is
exactly the cutout a scan sees.  Rows whose centre
is off the image or whose central crop is more than ``max_nan`` blank are dropped and
counted (training data must be clean), never silently.

Thread safety: functions build new arrays from their arguments.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.errors import CatalogError, ConfigError
from pyengine.io.catalog import catalog_positions, find_column, read_catalog
from pyengine.scan.cutouts import extract_cutouts
from pyengine.stats import nan_robust_sigma
from pyengine.training.augment import PAD
from pyengine.training.config import SPLITS

__all__ = ["ClassPlan", "TrainingSet", "block_index", "label_strings", "load_training_set",
           "plan_classes", "robust_sigma", "split_indices"]

LABEL_NAMES = ("label", "class", "labels", "type")
MAG_NAMES = ("mag", "i_mag", "mag_i", "imag")
DEFAULT_POSITIVE = ("cluster", "1", "true")
_INT = re.compile(r"^[+-]?\d+$")


def label_strings(column, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's label as a string, and a mask of rows without a label."""
    data = np.asarray(column)
    if data.ndim != 1:
        raise CatalogError(f"{where}: label column has shape {data.shape[1:]} per row; "
                           "one value per row is needed")
    missing = np.ma.getmaskarray(column).copy()
    kind = data.dtype.kind
    if kind == "S":
        text = np.char.strip(np.char.decode(data, "utf-8", errors="replace"))
    elif kind == "U":
        text = np.char.strip(data)
    elif kind == "b":
        text = np.where(data, "True", "False")
    elif kind in "iu":
        text = data.astype(str)
    elif kind == "f":
        finite = np.isfinite(data)
        missing |= ~finite
        text = np.array([("" if not ok else str(int(v)) if float(v).is_integer()
                          else repr(float(v))) for v, ok in zip(data, finite, strict=True)],
                        dtype=str)
    elif kind == "O":
        missing |= np.array([v is None for v in data], dtype=bool)
        text = np.array([(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip()
                         for v in data], dtype=str)
    else:
        raise CatalogError(f"{where}: labels of type {data.dtype} are not accepted; "
                           "strings, integers or booleans are needed")
    text = np.asarray(text, dtype=str)
    missing |= text == ""
    return text, missing


def _sorted_values(values) -> list[str]:
    values = sorted(set(values))
    if values and all(_INT.match(v) for v in values):
        return sorted(values, key=int)
    return values


@dataclass(frozen=True)
class ClassPlan:
    """How catalog label values become the model's classes."""

    class_names: tuple[str, ...]
    positive: tuple[int, ...]  # indices into class_names
    label_values: tuple[str, ...]  # catalog values trained on
    positive_values: tuple[str, ...]
    value_to_class: dict = field(default_factory=dict)


def _match(value: str, values, option: str, label_col: str) -> str:
    if value in values:
        return value
    folded = [v for v in values if v.lower() == value.lower()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(f"{option} value {value!r} is not a value of label column {label_col!r}; "
                      f"accepted: {', '.join(values)}")


def plan_classes(present, *, label_col: str, classes=None, positive=None,
                 binary: bool = False) -> ClassPlan:
    """Class names and positive classes from the label values present (see module doc)."""
    present = _sorted_values(str(v) for v in present)
    if classes:
        values = [_match(str(c), present, "--classes", label_col) for c in classes]
        if len(set(values)) != len(values):
            raise ConfigError(f"--classes lists a value twice: {', '.join(map(str, classes))}")
    else:
        values = present
    if len(values) < 2:
        raise CatalogError(f"label column {label_col!r} has one class ({', '.join(values)}); "
                           "training needs at least two")
    if positive:
        pos = list(dict.fromkeys(_match(str(p), values, "--positive", label_col)
                                 for p in positive))
    else:
        pos = next(([v for v in values if v.lower() == d] for d in DEFAULT_POSITIVE
                    if any(v.lower() == d for v in values)), [])
        if not pos:
            raise ConfigError(f"label column {label_col!r} has no value cluster, 1 or True; "
                              f"name the cluster values with --positive (values: "
                              f"{', '.join(values)})")
    if len(pos) == len(values):
        raise ConfigError(f"--positive {','.join(pos)} makes every class a cluster; at least "
                          "one class must be non-cluster")
    if binary:
        names = ("non-cluster", "cluster")
        mapping = {v: int(v in pos) for v in values}
        return ClassPlan(names, (1,), tuple(values), tuple(pos), mapping)
    mapping = {v: i for i, v in enumerate(values)}
    return ClassPlan(tuple(values), tuple(mapping[v] for v in pos), tuple(values), tuple(pos),
                     mapping)


def robust_sigma(pixels: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(n, C) float32: 1.4826 x MAD of each cutout band's finite pixels, 0 if none."""
    n, nband = pixels.shape[:2]
    out = np.zeros((n, nband), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands: handled below
        for lo in range(0, n, chunk):
            flat = pixels[lo:lo + chunk].reshape(min(chunk, n - lo), nband, -1)
            out[lo:lo + chunk] = np.nan_to_num(nan_robust_sigma(flat, axis=2), nan=0.0)
    return out


@dataclass(frozen=True)
class TrainingSet:
    """Clean labelled cutouts in memory, ready for splitting and augmentation."""

    pixels: np.ndarray  # (n, C, S + 2 PAD, S + 2 PAD) float32, NaN blank
    sigma: np.ndarray  # (n, C) float32 robust noise of the central crop
    labels: np.ndarray  # (n,) int64 class index
    x: np.ndarray  # (n,) 0-based pixel positions
    y: np.ndarray
    rows: np.ndarray  # (n,) catalog row of each cutout
    plan: ClassPlan
    label_col: str
    mag_col: str | None
    position_columns: tuple[str, str]
    counts: dict  # catalog rows, and rows left out per reason
    field: np.ndarray | None = None  # (n,) field index of each cutout (survey training)

    @property
    def is_positive(self) -> np.ndarray:
        return np.isin(self.labels, self.plan.positive)

    @property
    def fields(self) -> np.ndarray:
        return self.field if self.field is not None else np.zeros(self.labels.size, np.int64)


def load_training_set(cfg, mosaic, log: Callable[[str], None], *, exclude=None,
                      allow_empty: bool = False) -> TrainingSet | None:
    """Read the catalog, apply the label/magnitude cuts and cut clean S + 2 PAD cutouts.

    ``exclude``: catalog rows not to use (an earlier field of a survey used them);
    ``allow_empty``: return None rather than refuse when no row is left (a field of a
    survey that holds no label)."""
    where = str(cfg.catalog)
    table = read_catalog(cfg.catalog)
    label_col = find_column(table, LABEL_NAMES, given=cfg.label_col, where=where,
                            what="labels (--label-col)")
    if label_col is None:
        raise CatalogError(f"{where}: no label column ({', '.join(LABEL_NAMES)}); name it with "
                           f"--label-col; columns: {', '.join(table.colnames)}")
    values, missing = label_strings(table[label_col], f"{where}: column {label_col!r}")
    counts = {"catalog": len(table), "no_label": int(missing.sum())}
    keep = ~missing
    if not keep.any():
        raise CatalogError(f"{where}: label column {label_col!r} is empty in every row")
    plan = plan_classes(values[keep], label_col=label_col, classes=cfg.classes,
                        positive=cfg.positive, binary=cfg.binary)
    other = keep & ~np.isin(values, plan.label_values)
    counts["other_class"] = int(other.sum())
    keep &= ~other
    mag_col = None
    if cfg.mag_limit is not None and cfg.positions == "catalog":
        mag_col = find_column(table, MAG_NAMES, given=cfg.mag_col, where=where,
                              what="magnitudes (--mag-col)")
        if mag_col is None:
            raise CatalogError(f"{where}: --mag-limit needs a magnitude column; none of "
                               f"{', '.join(MAG_NAMES)}; name it with --mag-col")
        if table[mag_col].dtype.kind not in "fiu":
            raise CatalogError(f"{where}: magnitude column {mag_col!r} holds "
                               f"{table[mag_col].dtype} values; numbers are needed")
        mag = np.ma.filled(np.ma.asarray(table[mag_col], dtype=np.float64), np.nan)
        with np.errstate(invalid="ignore"):
            faint = keep & ~(mag < cfg.mag_limit)  # NaN magnitudes are not brighter
        counts["fainter"] = int(faint.sum())
        keep &= ~faint
        log(f"--mag-limit {cfg.mag_limit:g}: kept {int(keep.sum())} rows with {mag_col} < "
            f"{cfg.mag_limit:g}, left out {counts['fainter']} fainter or without a magnitude")
    pos = catalog_positions(table, mosaic.wcs, where=where, ra_col=cfg.ra_col,
                            dec_col=cfg.dec_col, x_col=cfg.x_col, y_col=cfg.y_col)
    columns = pos.columns
    if exclude is not None and cfg.positions == "catalog":  # rows an earlier field used
        counts["other_field"] = int((keep & exclude).sum())
        keep &= ~exclude
    if cfg.positions == "detect":
        x, y, values, rows, det_counts = _detections(cfg, mosaic, pos, values, keep, plan, where,
                                                     log)
        counts.update(det_counts)
        # A detection of an object an earlier field of a survey used is left out (not a
        # negative: its label is known, it is only not used twice).
        keep = np.ones(x.size, bool) if exclude is None else ~((rows >= 0) &
                                                               exclude[np.maximum(rows, 0)])
        counts["other_field"] = int((~keep).sum())
        columns = ("x_detect", "y_detect")
    else:
        x, y, rows = pos.x, pos.y, np.arange(len(table))
    index = np.flatnonzero(keep)
    size = cfg.cutout_size
    # S + 2 PAD: shifted views crop real neighbouring pixels (see augment._shifted).
    cut = extract_cutouts(mosaic, x[index], y[index], size + 2 * PAD)
    centre = cut.pixels[:, :, PAD:size + PAD, PAD:size + PAD]
    nan_fraction = np.isnan(centre).mean(axis=(1, 2, 3)) if index.size else np.zeros(0)
    off = ~cut.on_image
    blank = cut.on_image & (nan_fraction > cfg.max_nan)
    counts.update(off_image=int(off.sum()), blank=int(blank.sum()))
    if off.any() or blank.any():
        log(f"dropped {int(off.sum())} rows off the image and {int(blank.sum())} more than "
            f"{cfg.max_nan:.0%} blank (of {index.size} labelled rows in the cuts)")
    good = ~off & ~blank
    index = index[good]
    labels = np.array([plan.value_to_class[v] for v in values[index]], dtype=np.int64)
    counts["used"] = int(index.size)
    if index.size == 0 and allow_empty:
        return None
    if index.size == 0:
        raise CatalogError(f"{where}: no rows left after the cuts ({_describe(counts)}); "
                           "check the positions, --mag-limit and --max-nan")
    per_class = np.bincount(labels, minlength=len(plan.class_names))
    empty = [n for n, c in zip(plan.class_names, per_class, strict=True) if c == 0]
    if empty and not allow_empty:
        raise CatalogError(f"{where}: no {', '.join(repr(e) for e in empty)} rows left after "
                           f"the cuts ({_describe(counts)}); every class needs examples "
                           "(choose classes with --classes, or --binary)")
    pixels = np.ascontiguousarray(cut.pixels[good])
    return TrainingSet(pixels, robust_sigma(pixels[:, :, PAD:size + PAD, PAD:size + PAD]), labels,
                       x[index], y[index], rows[index], plan, label_col, mag_col, columns,
                       counts)


def _detections(cfg, mosaic, pos, values, keep, plan, where, log):
    """Detections of the scan's detection step on ``mosaic``, labelled by the catalog."""
    from pyengine.training.positions import detect_positions, label_detections

    scale = pixel_scale_of(mosaic)
    unmatched = cfg.unmatched_label
    negatives = [v for v in plan.label_values if v not in plan.positive_values]
    if unmatched is None:
        unmatched = negatives[0]
    elif unmatched not in plan.label_values:
        raise ConfigError(f"--unmatched-label {unmatched!r} is not a value of the label column "
                          f"(accepted: {', '.join(plan.label_values)})")
    detect = {"threshold": cfg.detect_threshold, "min_area": cfg.min_area,
              "band": cfg.detect_band, "mag_limit": cfg.mag_limit}
    det_x, det_y = detect_positions(mosaic, cfg.cutout_size, detect)
    lab = np.flatnonzero(keep)
    got = label_detections(det_x, det_y, pos.x[lab], pos.y[lab], values[lab],
                           radius_px=cfg.match_radius / scale, unmatched=unmatched,
                           where=where, radius_arcsec=cfg.match_radius)
    c = got.counts
    log(f"--positions detect: {c['detections']} detections; {c['matched']} matched a label "
        f"within {cfg.match_radius:g}\", {c['negatives']} unmatched ({unmatched!r}), "
        f"{c['ambiguous']} ambiguous left out; {c['labels_not_detected']} of {lab.size} labels "
        "not detected")
    rows = np.where(got.label_row >= 0, lab[np.maximum(got.label_row, 0)], -1)
    return got.x, got.y, got.values, rows, {f"detect_{k}": v for k, v in c.items()}


def pixel_scale_of(mosaic) -> float:
    """Mean pixel scale of ``mosaic``'s celestial WCS, arcsec / px (1 without one)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    wcs = getattr(mosaic, "wcs", None)
    if wcs is None or not wcs.has_celestial:
        return 1.0
    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def _describe(counts: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if v)


def block_index(x, y, block: int) -> np.ndarray:
    """Spatial block of each position: blocks of ``block`` x ``block`` pixels, by centre pixel."""
    bx = np.floor_divide(centre_pixel(x), block)
    by = np.floor_divide(centre_pixel(y), block)
    # A collision-free int64 key from (by, bx); offsets keep negatives apart.
    return (by + (1 << 30)) * (1 << 31) + (bx + (1 << 30))


def split_indices(data: TrainingSet, *, method: str, fraction: float, block: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: stratified random, or whole spatial blocks."""
    rng = np.random.default_rng([seed, 0])  # stream 0: the split (epochs use [seed, 1, e])
    n = data.labels.size
    if method == "random":
        val = []
        for k in range(len(data.plan.class_names)):
            members = rng.permutation(np.flatnonzero(data.labels == k))
            take = min(max(round(fraction * members.size), 1), members.size - 1)
            val.append(members[:take])
        val_idx = np.sort(np.concatenate(val))
    elif method == "spatial":
        blocks = block_index(data.x, data.y, block) + data.fields * (1 << 62 >> 8)
        ids, inverse, sizes = np.unique(blocks, return_inverse=True, return_counts=True)
        order = rng.permutation(ids.size)
        before = np.cumsum(sizes[order]) - sizes[order]
        chosen = order[before < fraction * n]
        if chosen.size == ids.size:  # keep at least one block for training
            chosen = chosen[:-1]
        val_idx = np.flatnonzero(np.isin(inverse, chosen))
    else:
        raise ConfigError(f"--split {method!r} is not accepted; accepted: {', '.join(SPLITS)}")
    train_mask = np.ones(n, dtype=bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    pos = data.is_positive
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        if not (pos[idx].any() and (~pos[idx]).any()):
            hint = (f"use smaller --block-size than {block} px or a larger --val-fraction"
                    if method == "spatial" else "more labelled rows are needed")
            raise CatalogError(f"the {name} set ({idx.size} rows, {method} split) lacks "
                               f"{'clusters' if not pos[idx].any() else 'non-clusters'}; {hint}")
    return train_idx, val_idx
