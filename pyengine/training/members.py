"""Ensemble members: ``pyengine train --members N --seed S`` trains N models of one
recipe that differ only in their seed, for an ensemble scan (:mod:`pyengine.runners.
ensemble`), as the PHANGS-HST catalogs take each object's class from independently
trained networks (Hannon et al. 2023).

Member k (0-based) is :func:`pyengine.training.run.train` of the same options with
``seed = S + k``: its own initialisation, batch order and augmentation.  All members
share one validation split, drawn with seed S (``TrainConfig.split_seed``): their
validation metrics and thresholds are then measured on the same held-out cutouts, and
an ensemble's threshold (the mean of its members') is not an average over different
splits.  (Bagging, a different split per member, would give each member other training
data too; with one labelled catalog split once, seeds alone are what varies, as in
Lakshminarayanan et al. 2017's deep ensembles.)

Files: ``OUTPUT`` names the ensemble, ``STEM.safetensors``; the members are written
beside it as ``STEM.m0.safetensors`` ... ``STEM.m<N-1>.safetensors`` (each with its
``STEM.mK.pr.png`` and, while training, ``STEM.mK.train-state.pt``), so every tool that
takes a model file (scan, export, int8 calibration) takes a member as it is; scan them
together with ``pyengine scan ... --model STEM.m0.safetensors --model STEM.m1.safetensors
...``.  Each member's provenance records ``ensemble``: the member index, the member
count, its seed, the split seed and the SHA-256 of its training options and data
(:func:`pyengine.training.config.config_hash`).  With ``--resume`` a member whose file
already carries that record is kept, and the first one that does not is trained (or
resumed from its checkpoint).

Thread safety: one training per process, as :mod:`pyengine.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pyengine.errors import ConfigError
from pyengine.training.config import TrainConfig, TrainResult, config_hash

__all__ = ["MAX_MEMBERS", "member_paths", "train_members"]

MAX_MEMBERS = 100
_SUFFIX = ".safetensors"


def member_paths(output, members: int) -> list[Path]:
    """The member files of an ensemble written as ``output`` (``STEM.safetensors``):
    ``STEM.m0.safetensors`` ... in its folder."""
    out = Path(output)
    stem = out.name[: -len(_SUFFIX)] if out.name.lower().endswith(_SUFFIX) else out.name
    return [out.with_name(f"{stem}.m{k}{_SUFFIX}") for k in range(members)]


def _member_config(config: TrainConfig, k: int, path: Path) -> TrainConfig:
    split = config.seed if config.split_seed is None else config.split_seed
    return replace(config, output=str(path), seed=config.seed + k, split_seed=split)


def _record(cfg: TrainConfig, k: int, members: int) -> dict:
    return {"member": k, "members": members, "seed": cfg.seed, "split_seed": cfg.split_seed,
            "config_sha256": config_hash(cfg.fingerprint())[1]}


def _trained_before(path: Path, record: dict) -> bool:
    """Whether ``path`` is this member, trained to the end by an earlier run."""
    from pyengine.errors import ModelFileError
    from pyengine.models.checkpoint import read_spec

    if not path.is_file():
        return False
    try:
        spec, _ = read_spec(path)
    except ModelFileError:
        return False
    return spec.provenance.get("ensemble") == record


def _stamp(path: Path, record: dict) -> None:
    """Add the member's ``ensemble`` record to the provenance of its model file."""
    from pyengine.models.checkpoint import load_model, save_model

    model = load_model(path)
    model.spec = model.spec.replace(provenance={**model.spec.provenance, "ensemble": record})
    save_model(model, path)


def train_members(config: TrainConfig, members: int, *, log: Callable[[str], None],
                  progress=None, command_line: str | None = None) -> list[TrainResult | Path]:
    """Train ``members`` models of ``config`` (see the module docstring); for each member,
    its :class:`TrainResult`, or the path of a member kept from an earlier run
    (``config.resume``)."""
    from pyengine.training.run import train

    if isinstance(members, bool) or not isinstance(members, int) or \
            not 2 <= members <= MAX_MEMBERS:
        raise ConfigError(f"--members {members!r} is not accepted; accepted: an integer from "
                          f"2 to {MAX_MEMBERS} (1: train one model)")
    if config.seed + members - 1 >= 2**63:
        raise ConfigError(f"--seed {config.seed} with --members {members}: the members' seeds "
                          f"{config.seed}..{config.seed + members - 1} must stay below 2**63")
    out = []
    for k, path in enumerate(member_paths(config.output, members)):
        cfg = _member_config(config, k, path)
        record = _record(cfg, k, members)
        if config.resume and _trained_before(path, record):
            log(f"member {k + 1}/{members}: {path} was trained before (--resume); kept")
            out.append(path)
            continue
        log(f"member {k + 1}/{members}: seed {cfg.seed}, split seed {cfg.split_seed} -> {path}")
        result = train(cfg, log=log, progress=progress, command_line=command_line)
        _stamp(result.model_path, record)
        out.append(result)
    return out
