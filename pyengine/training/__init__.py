"""The pieces of ``pyengine train``; the public entry point is :func:`pyengine.train.train`.

* :mod:`~pyengine.training.data`: catalog labels and cuts, cutouts through the scan
  path (:func:`pyengine.scan.cutouts.extract_cutouts`), validation splits.
* :mod:`~pyengine.training.augment`: dihedral flips/rotations, +-1 px jitter from real
  pixels, noise, the class-balanced batch order.
* :mod:`~pyengine.training.loop`: optimiser, schedule, epochs, prediction, checkpoints.
* :mod:`~pyengine.training.report`: validation metrics, the PR-curve PNG, the progress bar.
"""
