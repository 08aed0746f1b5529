"""The training set of a run: one field's images, or every field of a survey manifest.

``training_data`` opens each field (a manifest's fields in order), cuts its labelled
cutouts (:func:`pyengine.training.data.load_training_set`, catalog or detection
positions) and stacks them with the field index of each (the spatial split keeps
blocks of one field together).  A label row is used by the first field that holds it
(overlapping fields would otherwise train on one object twice and could split it
across training and validation).  ``fewer_negatives`` keeps every cluster and a seeded
random subset of the others (``--negative-ratio``).

Thread safety: functions of their arguments (they read the images).
"""

from __future__ import annotations

import numpy as np

from pyengine.errors import CatalogError
from pyengine.io.mosaic import Mosaic
from pyengine.training.data import TrainingSet, load_training_set, pixel_scale_of

__all__ = ["fewer_negatives", "training_data"]


def training_data(cfg, log):
    """(TrainingSet, band names, pixel scale): of the images, or of every field of a survey
    manifest (each label row used by the first field that holds it)."""
    if not cfg.is_survey:
        with Mosaic.open(list(cfg.images), bands=cfg.bands) as mosaic:
            data = load_training_set(cfg, mosaic, log)
            return data, mosaic.bands, pixel_scale_of(mosaic)
    from pyengine.survey.manifest import read_manifest

    survey = read_manifest(cfg.images[0])
    bands = list(cfg.bands) if cfg.bands else list(survey.bands)
    sets, scales, used = [], [], None
    for k, f in enumerate(survey.fields):
        with f.open(bands) as mosaic:
            got = load_training_set(cfg, mosaic, lambda msg, fid=f.id: log(f"field {fid}: {msg}"),
                                    exclude=used, allow_empty=True)
            scales.append(pixel_scale_of(mosaic))
        if got is None:
            continue
        if used is None:
            used = np.zeros(got.counts["catalog"], bool)
        used[got.rows[got.rows >= 0]] = True
        sets.append((k, got))
    if not sets:
        raise CatalogError(f"{cfg.catalog}: no labelled position lies on any field of "
                           f"{cfg.images[0]} ({len(survey.fields)} fields)")
    first = sets[0][1]
    counts = {key: sum(int(d.counts.get(key, 0)) for _, d in sets)
              for key in dict.fromkeys(k for _, d in sets for k in d.counts)}
    counts["catalog"] = first.counts["catalog"]
    data = TrainingSet(
        np.concatenate([d.pixels for _, d in sets]), np.concatenate([d.sigma for _, d in sets]),
        np.concatenate([d.labels for _, d in sets]), np.concatenate([d.x for _, d in sets]),
        np.concatenate([d.y for _, d in sets]), np.concatenate([d.rows for _, d in sets]),
        first.plan, first.label_col, first.mag_col, first.position_columns, counts,
        np.concatenate([np.full(d.labels.size, k, np.int64) for k, d in sets]))
    per_class = np.bincount(data.labels, minlength=len(data.plan.class_names))
    empty = [n for n, c in zip(data.plan.class_names, per_class, strict=True) if c == 0]
    if empty:
        raise CatalogError(f"{cfg.catalog}: no {', '.join(map(repr, empty))} rows on any field "
                           f"of {cfg.images[0]}; every class needs examples")
    log(f"survey {cfg.images[0]}: {data.labels.size} cutouts from {len(sets)} of "
        f"{len(survey.fields)} fields")
    return data, tuple(bands), float(np.mean(scales))


def fewer_negatives(data: TrainingSet, ratio: float, seed: int, log) -> TrainingSet:
    """All clusters and a seeded random subset of at most ``ratio`` x as many others."""
    pos = data.is_positive
    neg = np.flatnonzero(~pos)
    want = round(float(ratio * pos.sum()))
    if want >= neg.size:
        return data
    rng = np.random.default_rng([seed, 2])  # stream 2: this subset
    keep = np.sort(np.r_[np.flatnonzero(pos), rng.choice(neg, want, replace=False)])
    log(f"--negative-ratio {ratio:g}: kept {want} of {neg.size} non-cluster positions "
        f"with the {int(pos.sum())} clusters")
    counts = {**data.counts, "negatives_left_out": int(neg.size - want), "used": int(keep.size)}
    return TrainingSet(data.pixels[keep], data.sigma[keep], data.labels[keep], data.x[keep],
                       data.y[keep], data.rows[keep], data.plan, data.label_col, data.mag_col,
                       data.position_columns, counts,
                       None if data.field is None else data.field[keep])
