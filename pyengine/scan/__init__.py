"""The scan, pyengine's product: every position of a source scored on a mosaic.

* :mod:`~pyengine.scan.batching`: the Python face of the C++ batcher (``gather``,
  ``BatchRing``).
* :mod:`~pyengine.scan.cutouts`: cutouts of positions through the scan's own path
  (training, calibration and export checks use it).
* :mod:`~pyengine.scan.engine`: :class:`~pyengine.scan.engine.Engine`, the pipelined
  read -> gather -> infer -> collect stages.
* :mod:`~pyengine.scan.buffers`: the bounded, reference-counted pool of tile buffers
  the engine reads tiles into.
* :mod:`~pyengine.scan.results`: per-tile results, the run summary, the interruption.
* :mod:`~pyengine.scan.assembly`: per-tile results -> the catalog (DESIGN.md §4).
* :mod:`~pyengine.scan.run`: :func:`~pyengine.scan.run.run_scan`, a whole scan with its
  journal and output files.
* :mod:`~pyengine.scan.int8`: the int8 graph a scan of a model file at ``--precision
  int8`` calibrates on its own cutouts, checks and caches.
* :mod:`~pyengine.scan.cli`: ``pyengine scan``.

Nothing is imported here, so ``import pyengine.scan.cli`` stays cheap.
"""
