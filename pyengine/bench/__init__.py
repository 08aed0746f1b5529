"""``pyengine bench``: each stage of a scan alone, then the whole scan, on one machine.

Stages, each against its own limit:

- ``read``: :meth:`Mosaic.read` of every tile (core + halo) in MPix/s, as a ratio to
  a plain NumPy copy of the same raw bytes out of a memory map of the same file
  (no byte swap, no scaling); compressed images have no such baseline;
- ``gather``: the C++ batcher (:class:`~pyengine.scan.batching.BatchRing`) cutting
  batches out of a tile in memory, in cutouts/s and GB/s written, for 1..N
  worker threads, as a ratio to one ``np.copyto`` of the same number of bytes;
- ``model_only``: each usable runner and precision at several batch sizes, the
  batches already prepared in the runner's own slots (``runner.in_flight``
  outstanding, as the engine submits them);
- ``end_to_end``: the real pipeline (:meth:`Engine.iter_results`: read, gather,
  infer, collect) over a grid of positions, and its ratio to the same runner's
  model-only figure at the same batch size.  Model-only sweeps and end-to-end
  runs alternate (A B A B ..., ``--pairs``, 3 by default), each end-to-end run
  at the best batch of the sweep just before it, so drift on a shared machine
  hits both sides of a ratio; the pair with the median ratio is reported (its
  sweep is ``model_only``), with every pair's ratio beside it;
- ``machine``: CPU, threads, GPUs and library versions.

Images are the user's (one per model band) or a synthetic g, i field made in
``--workdir``.  ``--quick`` (ONNX Runtime fp32, two batch sizes, a 1024 px
field) finishes within a minute on 2 CPU cores.  An int8 ONNX Runtime graph is
measured when ``--int8`` names one, or (not with ``--quick``) is made from the
model on half of the field's cutouts, with its decision agreement on the other
half.  The figures are wall-clock medians; on a shared machine compare ratios
measured in one run.

Modules: :mod:`~pyengine.bench.config` (options and defaults),
:mod:`~pyengine.bench.stages` (one measurement per stage), :mod:`~pyengine.bench.run`
(the whole bench, its report and plot), :mod:`~pyengine.bench.cli` (the command).

Thread safety: one bench per process (it times the whole machine).
"""
