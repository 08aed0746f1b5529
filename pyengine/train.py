"""Train (or fine-tune) the cluster classifier on labelled catalog positions.

>>> from pyengine.train import TrainConfig, train
>>> result = train(TrainConfig(images=("g.fits", "i.fits"), catalog="phat.fits",
...                            output="m31.safetensors", mag_limit=21.0,
...                            target_purity=0.893))  # doctest: +SKIP

Steps: labelled rows -> cuts -> cutouts through the scan's path
(:mod:`pyengine.training.data`) -> a stratified random or spatial-block validation
split -> AdamW with warm-up + cosine over augmented, class-balanced batches
(:mod:`~pyengine.training.augment`, :mod:`~pyengine.training.loop`) -> validation
metrics and the decision threshold (:mod:`~pyengine.training.report`) -> the model
file (weights, spec, provenance, metrics) and a PNG of the PR curve beside it.

The threshold stored in the model is the target-purity threshold when
``target_purity`` is given and some threshold reaches it on the validation set,
else the F1-optimal one.  The last epoch's model is saved (no selection on the
validation set, so its metrics are not optimistically biased).

Reproducibility: the seed fixes the model initialisation, the split, the batch
order and every augmentation; deterministic algorithms are switched on while
training.  With the same data, options and thread count, the same seed gives
bit-identical weights; set ``SOURCE_DATE_EPOCH`` to pin the provenance date too,
and the model file's bytes are identical.  A different ``threads`` changes the
order of floating-point sums and hence the last bits.

Resume: after every epoch a checkpoint (``<output stem>.train-state.pt``) is
written atomically; ``resume=True`` continues from it and ends with the same model
as an uninterrupted run.  It is refused if the options or data changed.  It is
removed once the model is written, unless ``keep_checkpoint``.

Thread safety: one training per process (torch's global RNG, thread count and
determinism flag are set while it runs and restored after).
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports
from pyengine.training.config import BALANCES, SPLITS, TrainConfig, TrainResult

__all__ = ["BALANCES", "SPLITS", "TrainConfig", "TrainResult", "train"]  # noqa: F822

# train() imports torch: loaded on first use, so the options import cheaply.
__getattr__, __dir__ = lazy_exports(__name__, globals(), {"train": "pyengine.training.run"})
