"""The catalog's class columns: one probability per class, the predicted class and, for an
ensemble, the members' agreement and the spread of the score.

A multi-class model (PHANGS-HST's four morphological classes, Hannon et al. 2023: 1
symmetric, 2 asymmetric, 3 multi-peaked, 4 non-cluster) says more than the cluster
score (the summed probability of its positive classes).  With class columns (by default
for a model of more than two classes and for an ensemble; ``--class-columns`` /
``--no-class-columns``, ``Engine(class_columns=...)``) a catalog gains, after its
standard columns:

* ``p_<class>``, one float32 column per class of the model's ``class_names``, in their
  order (:func:`column_names`: the name with every run of characters other than
  letters, digits and ``_`` made one ``_``, ``non-cluster`` -> ``p_non_cluster``;
  a name left empty becomes ``class<k>``, and a name that two classes would share gets
  the class index appended);
* ``class``: the predicted class's name (text): the most probable class (the first of
  equal ones), or for an ensemble the modal class of its members' votes; empty where the
  position was not scored (off the image);
* ``class_agreement`` (ensembles): the share of members voting for ``class``.

An ensemble's catalog always has ``score_std`` (the spread of the members' scores) after
``score``, class columns or not.  ``score`` is unchanged: the positive classes' summed
probability (an ensemble's: the members' mean).  Unscored rows hold NaN.

:func:`vetting_order` ranks a catalog's rows for the vetting loop (DESIGN.md §7: the
next objects to vet are chosen by uncertainty): an ensemble's by ``score_std``, the
members' disagreement, then by how near the score lies to the threshold; a single
model's by that nearness alone (the uncertainty sampling of active learning).

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["CLASS", "PREFIX", "class_columns", "column_names", "score_columns",
           "vetting_order"]

PREFIX, CLASS = "p_", "class"
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


def column_names(class_names) -> list[str]:
    """The ``p_<class>`` column of each class name, in order (see the module docstring)."""
    out: list[str] = []
    for k, name in enumerate(class_names):
        safe = _UNSAFE.sub("_", str(name)).strip("_") or f"class{k}"
        column = PREFIX + safe
        if column in out:
            column = f"{column}_{k}"
        out.append(column)
    return out


def score_columns(outputs: dict) -> dict[str, np.ndarray]:
    """The columns that follow ``score``: an ensemble's ``score_std``."""
    return {"score_std": np.asarray(outputs["score_std"], np.float32)} \
        if "score_std" in outputs else {}


def class_columns(class_names, outputs: dict) -> dict[str, np.ndarray]:
    """``p_<class>``, ``class`` and (ensembles) ``class_agreement`` from a scan's per-row
    ``outputs`` (:attr:`pyengine.scan.results.TileResult.outputs`, concatenated); {} when
    they hold no probabilities (a scan without class columns)."""
    probs = outputs.get("probabilities")
    if probs is None:
        return {}
    probs = np.asarray(probs, np.float32).reshape(-1, len(class_names))
    cols = {name: probs[:, k] for k, name in enumerate(column_names(class_names))}
    scored = np.isfinite(probs).all(axis=1)
    if "class_index" in outputs:
        index = np.asarray(outputs["class_index"], np.int64)
        scored &= index >= 0
    else:
        index = np.argmax(np.where(np.isfinite(probs), probs, -np.inf), axis=1)
    names = np.asarray([str(c) for c in class_names])
    cols[CLASS] = np.where(scored, names[np.clip(index, 0, len(names) - 1)], "")
    if "class_agreement" in outputs:
        cols["class_agreement"] = np.asarray(outputs["class_agreement"], np.float32)
    return cols


def vetting_order(table, threshold: float | None = None) -> np.ndarray:
    """Indices of ``table``'s scored rows (finite ``score``), most uncertain first: by
    ``score_std`` (an ensemble's catalog), largest first, then by |score - threshold|,
    smallest first (``threshold``: given, else the catalog's ``THRESH``); ties keep the
    catalog's order."""
    score = np.asarray(table["score"], np.float64)
    if threshold is None:
        meta = {str(k).upper(): v for k, v in table.meta.items()}
        if "THRESH" not in meta:
            from pyengine.errors import ConfigError

            raise ConfigError("vetting_order: the catalog has no THRESH keyword; give the "
                              "threshold")
        threshold = float(meta["THRESH"])
    rows = np.flatnonzero(np.isfinite(score))
    near = np.abs(score[rows] - threshold)
    if "score_std" in table.colnames:
        spread = np.nan_to_num(np.asarray(table["score_std"], np.float64)[rows], nan=0.0)
        return rows[np.lexsort((near, -spread))]
    return rows[np.argsort(near, kind="stable")]
