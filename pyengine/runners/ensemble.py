"""An ensemble of models scanned as one runner: every batch goes through every member.

The released PHANGS-HST cluster catalogs take each object's class from several
independently trained networks and give, as its quality, the share of them that agree
with the modal class (Hannon et al. 2023, MNRAS 526, 2991; their catalogs use 10
models).  :class:`EnsembleRunner` wraps one runner per member model file and satisfies
the runner contract (:mod:`pyengine.runners.base`), so the scan engine, its slots, its
resume journal and its catalogs treat an ensemble as one model scanned in one pass over
the pixels: the gather stage fills a batch once and ``submit`` hands that same batch to
every member (GPU members queue their runs behind each other on their own streams;
``result()`` waits for all of them).

Members must agree on what the pixels mean: bands and their order, cutout size, pixel
scale, in-graph preprocessing, class names and which classes count as cluster (one-line
:class:`~pyengine.errors.ModelFileError` naming the member file and the field that
differs).  They may differ in weights, calibration temperature and threshold.  Their
runners must be of one kind and precision (the catalog's ``RUNNER`` and ``PRECISN``).

What the ensemble gives per cutout (:func:`combine`, one batch of M members' outputs):

* ``score``: the mean of the members' scores;
* ``probabilities`` (B, K): each class's mean probability over the members;
* ``class_index``: the modal class of the members' predicted classes (each member votes
  for its most probable class; a tie between classes with as many votes goes to the
  higher mean probability, then to the lower class index);
* ``class_agreement``: the share of members voting for the modal class (PHANGS'
  quality: 1 when all agree);
* ``score_std``: the standard deviation of the members' scores (population, ddof 0: one
  member gives 0), the spread that marks uncertain candidates for vetting.

Means are taken in float64 over the members in their given order and rounded once to
float32, so an ensemble's values equal what the member scans give, combined this way.
The threshold of the ensemble is the mean of the members' thresholds
(:func:`ensemble_spec`) unless the scan is given one.

On a GPU, only the first member's slots are pinned for it; the other members copy each
batch through their own pinned staging ring (one host copy per member and batch).

Thread safety: see :mod:`pyengine.runners.base`; the members are driven from the one
thread that drives the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pyengine.errors import ConfigError, ModelFileError
from pyengine.models.spec import ModelSpec
from pyengine.runners.base import Pending, Runner

__all__ = ["ENSEMBLE_FIELDS", "EnsemblePending", "EnsembleRunner", "combine", "ensemble_spec"]

#: (spec field, how messages name it) of what every member must share.
_SHARED = (("bands", "bands"), ("cutout_size", "cutout size"), ("pixel_scale", "pixel scale"),
           ("preprocess", "preprocessing"), ("class_names", "class names"),
           ("positive_classes", "positive classes"))
#: Per-row outputs of an ensemble besides ``probabilities`` (name -> dtype).
ENSEMBLE_FIELDS = {"class_index": np.dtype(np.int32), "class_agreement": np.dtype(np.float32),
                   "score_std": np.dtype(np.float32)}


def combine(probabilities: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, dict]:
    """(mean score (B,), outputs) of M members' ``probabilities`` (M, B, K) and ``scores``
    (M, B): the ensemble's values described in the module docstring."""
    probabilities = np.asarray(probabilities, np.float32)
    scores = np.asarray(scores, np.float32)
    m, b, k = probabilities.shape
    mean = probabilities.mean(axis=0, dtype=np.float64).astype(np.float32)
    votes = np.zeros((b, k), np.int64)
    rows = np.arange(b)
    for member in range(m):
        np.add.at(votes, (rows, np.argmax(probabilities[member], axis=1)), 1)
    most = votes.max(axis=1, keepdims=True)
    # among the classes with the most votes, the highest mean probability (argmax: the
    # lowest index of equal ones)
    modal = np.argmax(np.where(votes == most, mean, -np.inf), axis=1).astype(np.int32)
    agreement = (votes[rows, modal] / m).astype(np.float32)
    score = scores.mean(axis=0, dtype=np.float64).astype(np.float32)
    spread = scores.std(axis=0, dtype=np.float64).astype(np.float32)
    return score, {"probabilities": mean, "class_index": modal,
                   "class_agreement": agreement, "score_std": spread}


def ensemble_spec(specs: Sequence[ModelSpec], paths: Sequence[str]) -> ModelSpec:
    """The spec an ensemble of members ``specs`` (files ``paths``) scans with: the first
    member's, with the mean of the members' thresholds; refuses members that differ in
    what their pixels mean."""
    first = specs[0]
    for path, spec in zip(paths[1:], specs[1:], strict=True):
        for name, label in _SHARED:
            mine, theirs = getattr(first, name), getattr(spec, name)
            if mine != theirs:
                raise ModelFileError(
                    f"{path}: its {label} ({_show(theirs)}) differ from those of {paths[0]} "
                    f"({_show(mine)}); the members of an ensemble must agree on bands, "
                    "cutout size, pixel scale, preprocessing, class names and positive "
                    "classes")
    threshold = float(np.mean([s.threshold for s in specs], dtype=np.float64))
    provenance = {"ensemble": {"members": [str(p) for p in paths],
                               "thresholds": [float(s.threshold) for s in specs],
                               "threshold_rule": "mean of the members' thresholds"}}
    return first.replace(threshold=threshold, provenance=provenance, metrics={})


def _show(value) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


class EnsemblePending(Pending):
    """One batch submitted to every member; combined when first asked for."""

    __slots__ = ("_members", "_outputs", "_scores", "_where")

    def __init__(self, members: list[Pending], where: Sequence[str]):
        self._members, self._where = members, where
        self._scores, self._outputs = None, {}

    def result(self) -> np.ndarray:
        if self._scores is None:
            scores = [p.result() for p in self._members]  # waits for every member
            probs = []
            for pending, path in zip(self._members, self._where, strict=True):
                got = pending.outputs().get("probabilities")
                if got is None:
                    raise ConfigError(f"{path}: its runner gives no class probabilities; an "
                                      "ensemble needs them (use the onnxruntime, torch or "
                                      "tensorrt runner)")
                probs.append(got)
            self._scores, self._outputs = combine(np.stack(probs), np.stack(scores))
            self._members = []
        return self._scores

    def outputs(self) -> dict[str, np.ndarray]:
        self.result()
        return self._outputs


class EnsembleRunner(Runner):
    """Runners of M member models behind one runner (see the module docstring)."""

    def __init__(self, members: Sequence[Runner], paths: Sequence[str]):
        members, paths = list(members), [str(p) for p in paths]
        if len(members) < 2 or len(members) != len(paths):
            raise ConfigError(f"an ensemble needs two or more members, one per model file; got "
                              f"{len(members)} runner(s) for {len(paths)} file(s)")
        for path, runner in zip(paths[1:], members[1:], strict=True):
            if (runner.name, runner.precision) != (members[0].name, members[0].precision):
                raise ConfigError(f"{path}: runs on {runner.name} {runner.precision}, but "
                                  f"{paths[0]} on {members[0].name} {members[0].precision}; "
                                  "the members of an ensemble run on one runner at one "
                                  "precision (give --runner and --precision)")
        spec = ensemble_spec([r.spec for r in members], paths)
        self.members, self.paths = members, paths
        self.name = members[0].name
        super().__init__(spec, members[0].precision, getattr(members[0], "_batch_size", None))
        self.chosen_because = members[0].chosen_because

    # -- what the engine asks before activate ------------------------------------------
    @property
    def input_dtype(self) -> np.dtype:
        kinds = {np.dtype(r.input_dtype) for r in self.members}
        return kinds.pop() if len(kinds) == 1 else np.dtype(np.float32)

    @property
    def preferred_batch_size(self) -> int:
        return self.members[0].preferred_batch_size

    @property
    def max_batch_size(self) -> int | None:
        limits = [r.max_batch_size for r in self.members if r.max_batch_size is not None]
        return min(limits) if limits else None

    @property
    def in_flight(self) -> int:
        return self.members[0].in_flight

    @property
    def output_fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {**super().output_fields, **{name: ((), dtype)
                                            for name, dtype in ENSEMBLE_FIELDS.items()}}

    # -- life cycle ----------------------------------------------------------------------
    def _activate(self) -> None:
        done = []
        try:
            for runner in self.members:
                runner.activate()
                done.append(runner)
        except BaseException:
            for runner in done:
                runner.deactivate()
            raise

    def _deactivate(self) -> None:
        for runner in self.members:
            runner.deactivate()

    # -- memory and inference ------------------------------------------------------------
    def _allocate_slots(self, count: int, batch_size: int, dtype: np.dtype) -> list[np.ndarray]:
        return self.members[0].allocate_slots(count, batch_size, dtype)

    def _convert(self, batch: np.ndarray) -> np.ndarray:
        return batch  # each member converts for itself

    def _submit(self, batch: np.ndarray) -> Pending:
        return EnsemblePending([runner.submit(batch) for runner in self.members], self.paths)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pending = self._submit(batch)
        return pending.outputs()["probabilities"], pending.result()
