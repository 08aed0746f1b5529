"""The scan engine: tiles -> positions -> pinned batches -> runner -> per-tile results.

``Engine`` scores every position of a source (catalog, detection, grid;
:mod:`pyengine.sources`) on a mosaic with a runner (:mod:`pyengine.runners`).
Four stages run at once, joined by bounded queues, so the runner is never
waiting for pixels (DESIGN.md §2):

1. **read** (up to two threads, tiles in file order, ``prefetch`` ahead; tiles
   resumed or known to own no position are not read): ``Mosaic.read`` of the
   tile window into a buffer of the tile-buffer pool
   (:class:`pyengine.scan.buffers.TileBuffers`), the source's positions in the
   tile core (SEP detection runs here), and, for a float16 transfer, the tile's
   per-band offset and scale;
2. **gather** (one thread): fills fixed-size batch slots with the windows of
   consecutive positions, spanning tile boundaries, so every batch but the last
   is full.  A dense segment (a tile's windows in one slot covering at least a
   quarter of the tile) is filled by the C++ worker pool of
   :class:`pyengine.scan.batching.BatchRing` straight from the tile buffer, which
   the slot then pins until it is waited on (at most ``_PINNED_PER_SLOT``, one,
   tile per slot); any other segment is gathered by this thread straight into the
   slot's rows (one copy, NaN counts into the ring's per-slot counts);
3. **infer** (one thread): waits for the slot's fills, lets go of its pinned tile
   buffers, and calls ``runner.submit`` with up to the runner's ``in_flight``
   batches outstanding (2 on a CPU; 3 on a GPU, where the copy of one overlaps the
   compute of another and the copy back of a third);
4. **collect** (the thread consuming :meth:`Engine.iter_results`, which
   ``scan`` and ``iter_scan`` wrap): copies each batch's scores and per-band NaN
   counts into its tiles' arrays, calls ``on_batch``, and yields a tile's
   :class:`TileResult` (per-band NaN shares and the flags they give, judged band by
   band, made here) once every position of
   it and of every tile read before it is scored, so results come in file order
   (a tile read but owning no position, as detection may find, gives an empty
   result).

The stages are :class:`pyengine.scan.pipeline.Pipeline` (which also holds
``_PINNED_PER_SLOT``); this module is the Engine around them.

Memory is bounded by configuration, not by the mosaic.  Pixels: at most
``2 * prefetch + 1 + slots * _PINNED_PER_SLOT`` tile buffers of nband x
(core + 2 halo)^2 float32 (``prefetch`` tiles being read, ``prefetch`` queued,
the one being gathered, one pinned per slot; allocated only as needed, reused
from tile to tile); batches: ``slots`` runner slots of batch x nband x S^2 in
the transfer dtype (allocated once per runner activation).  No per-segment
copy or strip is made.  Positions and per-tile results grow with the tiles
read but not yet complete.

Determinism: positions, their order and coordinates depend only on the inputs,
the tile plan and the source, never on thread count, batch size or resume.
Scores agree across batch sizes to float rounding of the runner; for one batch size
they are bit-identical wherever the batches were cut (a resumed scan's included),
because every batch sent is padded to one size (``Pipeline.run_size``: the batch size,
or a smaller known position count of the whole scan; ``pipeline._padded``).

Thread safety: an Engine owns one runner and runs one scan at a time (a lock
serialises ``scan``/``iter_scan``/``classify``); use one Engine per thread for
concurrent scans.  ``iter_scan`` must be consumed from one thread.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator

import numpy as np

from pyengine.bands import match_order
from pyengine.defaults import DEFAULT_CORE, DEFAULT_MAX_NAN  # re-exported here too
from pyengine.devices import usable_threads
from pyengine.errors import ConfigError, MosaicMismatchError
from pyengine.io.tiles import TilePlan
from pyengine.runners.base import Runner
from pyengine.runners.select import ensemble_members, make_runner
from pyengine.scan.pipeline import Pipeline
from pyengine.scan.results import TileResult
from pyengine.validate import integer, number

__all__ = ["Engine", "allocation_failure", "capped_threads", "match_bands"]

def _affine_invariant(spec) -> bool:
    return spec.preprocess.affine_invariant


class Engine:
    """Scores positions on mosaics with one model and one runner.

    ``model``: a pyengine model file, an exported ``.onnx`` (onnxruntime) or
    TensorRT engine, or None for the shipped demo model; a list of them is an ensemble
    scanned in one pass (:mod:`pyengine.runners.ensemble`: each batch goes through every
    member; the threshold is the members' mean unless ``threshold`` is given).
    ``runner``: a name (``auto``, ``onnxruntime``, ``torch``, ``tensorrt``) or a
    :class:`Runner`.  ``class_columns``: the catalog's ``p_<class>`` and ``class``
    columns (:mod:`pyengine.scan.classes`); None gives them to models of more than two
    classes and to ensembles.
    ``batch_size`` None takes the runner's preferred size; one whose slots and (on a
    CPU) activations cannot fit in the memory available is refused (ConfigError naming
    the largest that fits), and a runtime allocation failure during a scan becomes a
    one-line ConfigError suggesting a smaller one.  ``threads`` None lets each library
    choose; more than the CPUs usable is capped at them, with a warning on stderr
    (:func:`capped_threads`).  ``threshold`` None takes the model's decision threshold;
    ``prevalence`` (with ``target_purity``, default the model's calibration target)
    chooses it instead from a calibrated model's rates (:mod:`pyengine.models.operating`).
    ``group_radius`` (arcsec; None: :data:`pyengine.output.grouping.DEFAULT_GROUP_RADIUS`,
    0: none) groups detection-mode candidates into one per object.
    ``prefetch`` (at least 1) tiles are read ahead of the gather stage and
    ``slots`` (at least 2; None: the runner's ``in_flight`` + 2, at least 4, so the
    gather stage fills one and queues another while the runner holds its batches)
    batch slots circulate between gather and infer; with ``core`` they bound a
    scan's memory (see the module docstring).  ``gather_threads`` None: the C++
    batcher gets min(4, ``threads`` or the CPUs); a GPU may need more to be fed
    (``benchmarks/bench_gpu.py`` measures how many).
    """

    def __init__(self, model=None, runner: str | Runner = "auto", precision: str | None = None,
                 batch_size: int | None = None, threads: int | None = None, *,
                 threshold: float | None = None, core: int = DEFAULT_CORE,
                 max_nan_fraction: float = DEFAULT_MAX_NAN, device: str = "auto",
                 cache_dir=None, prefetch: int = 2, slots: int | None = None,
                 gather_threads: int | None = None, group_radius: float | None = None,
                 prevalence: float | None = None, target_purity: float | None = None,
                 class_columns: bool | None = None):
        if batch_size is not None:
            integer(batch_size, "batch size", 1, 65536, whole_floats=True)
        if threads is not None:
            threads = capped_threads(threads)
        if gather_threads is not None:  # more than the CPUs would only contend
            gather_threads = min(usable_threads(), integer(
                gather_threads, "gather threads", 1, accepted="a positive integer is needed",
                whole_floats=True))
        number(max_nan_fraction, "max NaN fraction", 0.0, 1.0, accepted="a fraction in [0, 1] "
               "is needed")
        number(threshold, "threshold", 0.0, 1.0, allow_none=True,
               accepted="a probability in [0, 1] is needed")
        integer(core, "tile core", 64, 1 << 16, whole_floats=True)
        number(group_radius, "group radius", 0.0, 3600.0, allow_none=True,
               accepted="a radius in arcsec >= 0 is needed (0: no grouping)")
        if class_columns is not None and not isinstance(class_columns, bool):
            raise ConfigError(f"class_columns = {class_columns!r} is not accepted; accepted: "
                              "True, False or None (the model decides)")
        members = ensemble_members(model)
        if members is not None:  # a list of model files: an ensemble (one: that file)
            model = members[0] if len(members) == 1 else tuple(members)
        # What another process needs to make this Engine again (a Dask worker of a
        # survey scan); None when the runner was given as an object.
        self.config = None if isinstance(runner, Runner) else {
            "model": None if model is None else list(model) if isinstance(model, tuple)
            else str(model), "runner": runner,
            "precision": precision, "batch_size": batch_size, "threads": threads,
            "threshold": threshold, "core": core, "max_nan_fraction": max_nan_fraction,
            "device": device, "cache_dir": None if cache_dir is None else str(cache_dir),
            "group_radius": group_radius, "class_columns": class_columns}
        if isinstance(runner, Runner):
            self.runner = runner
        else:
            self.runner = make_runner(runner, model, precision=precision, threads=threads,
                                      cache_dir=cache_dir, device=device, batch_size=batch_size)
        self.spec = self.runner.spec
        preferred = getattr(self.runner, "preferred_batch_size", 32) or 32
        self.batch_size = int(batch_size) if batch_size is not None else int(preferred)
        limit = getattr(self.runner, "max_batch_size", None)
        if limit is not None and self.batch_size > limit:
            raise ConfigError(f"batch size {self.batch_size} exceeds the {self.runner.name} "
                              f"runner's maximum {limit}")
        self.threads = int(threads) if threads is not None else None
        self._gather_threads = int(gather_threads) if gather_threads is not None else None
        wanted = max(1, int(getattr(self.runner, "in_flight", 2)))
        self.nslots = max(2, int(slots)) if slots is not None else max(4, wanted + 2)
        # The infer stage holds in_flight - 1 slots between submits: the gather stage
        # always has one to fill when in_flight <= slots.
        self.in_flight = min(wanted, self.nslots)
        self._check_batch_memory()
        if prevalence is not None:  # the threshold for a target purity at this prevalence
            from pyengine.models.operating import threshold_for_spec

            if threshold is not None:
                raise ConfigError("give threshold or prevalence, not both (prevalence "
                                  "chooses the threshold)")
            # an ensemble: the mean of its members' thresholds at this prevalence
            specs = [r.spec for r in getattr(self.runner, "members", ())] or [self.spec]
            threshold = float(np.mean([threshold_for_spec(s, prevalence, target_purity)
                                       ["value"] for s in specs]))
            if self.config is not None:
                self.config["threshold"] = threshold
        self.threshold = float(threshold) if threshold is not None else float(self.spec.threshold)
        self.group_radius = None if group_radius is None else float(group_radius)
        self._threshold_given = threshold is not None
        self.core = int(core)
        self.max_nan_fraction = float(max_nan_fraction)
        self.prefetch = max(1, int(prefetch))
        #: The model file scanned (None: the demo model), or an ensemble's member files (a
        #: tuple).  ``members``: how many models score each cutout (1, or the ensemble's).
        if model is None and isinstance(getattr(self.runner, "paths", None), list):
            model = tuple(self.runner.paths)  # an EnsembleRunner given as an object
        self.model = model
        self.members = len(getattr(self.runner, "members", ())) or 1
        #: Per-class probability columns and the predicted class in the catalog
        #: (:mod:`pyengine.scan.classes`): asked for, or by default for a model of more than
        #: two classes and for an ensemble.
        self.class_columns = (class_columns if class_columns is not None else
                              self.spec.num_classes > 2 or self.members > 1)
        self._lock = threading.Lock()
        self._slots_key, self._slots = None, None

    def _check_batch_memory(self) -> None:
        """Refuse, before any work, a batch size whose slots and (on a CPU) activations
        need more memory than this process may take (:mod:`pyengine.memory`)."""
        from pyengine.memory import available_bytes, batch_bytes

        free = available_bytes()
        if free is None:
            return
        # Activations count where the model runs on the CPU: ONNX Runtime (CPU provider)
        # and torch asked for the CPU; on a GPU they are in device memory, not here.
        on_cpu = self.runner.name == "onnxruntime" or (
            self.runner.name == "torch"
            and str(getattr(self.runner, "_device_request", "")) == "cpu")

        def need(batch):
            return batch_bytes(batch, self.spec.nband, self.spec.cutout_size,
                               slots=self.nslots, activations=on_cpu)

        if need(self.batch_size) <= free:
            return
        fits = free // max(1, need(1))
        raise ConfigError(
            f"--batch-size {self.batch_size} needs about {need(self.batch_size) / 2**30:.1f} GiB "
            f"for {self.nslots} batch slots{' and the model' if on_cpu else ''} but "
            f"{free / 2**30:.1f} GiB is available; "
            + (f"the largest that fits is {fits}" if fits >= 1 else "free some memory first"))

    @functools.cached_property
    def model_sha256(self) -> str:
        """The model's identity: the same SHA-256 for a model file and for its ONNX
        export or TensorRT engine (:func:`pyengine.runners.loaders.model_identity`)."""
        from pyengine.runners.loaders import model_identity

        return model_identity(self.model)

    # -- life cycle ------------------------------------------------------------
    def open(self) -> Engine:
        """Load the runner (model session or engine); called on first use anyway.

        Takes the scan lock, so it may run in another thread while the caller
        prepares a scan (the CLI does): a scan that starts meanwhile waits for it
        instead of loading the runner a second time."""
        with self._lock:
            self.runner.activate()
        return self

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    @property
    def transfer_dtype(self):
        """dtype of the batches handed to the runner (float16 halves the copy)."""
        dtype = np.dtype(getattr(self.runner, "input_dtype", np.float32))
        if dtype == np.float16 and not _affine_invariant(self.spec):
            return np.dtype(np.float32)  # the runner converts; no rescaling allowed
        return dtype

    @property
    def gather_threads(self) -> int:
        """The C++ batcher's worker threads: ``gather_threads`` if given, else
        min(4, ``threads`` or the CPUs usable)."""
        if self._gather_threads is not None:
            return self._gather_threads
        return max(1, min(4, self.threads or usable_threads()))

    @property
    def row_outputs(self) -> dict:
        """The runner's per-row outputs a scan keeps (name -> (row shape, dtype)): all of
        them with class columns; an ensemble's ``score_std`` always; otherwise none."""
        fields = dict(getattr(self.runner, "output_fields", {}))
        if self.class_columns:
            return fields
        return {k: v for k, v in fields.items() if k == "score_std"}

    @property
    def threshold_rule(self) -> str:
        """Where the threshold comes from: given, the model's, or an ensemble's mean."""
        if self._threshold_given:
            return "given"
        return "the members' mean" if self.members > 1 else "the model's"

    def describe(self) -> dict:
        """Runner, precision and batch settings, for logs and catalog metadata."""
        return {"runner": self.runner.name, "precision": self.runner.precision,
                "batch_size": self.batch_size, "threshold": self.threshold,
                "transfer_dtype": str(self.transfer_dtype),
                "chosen_because": getattr(self.runner, "chosen_because", ""),
                "members": self.members, "threshold_rule": self.threshold_rule,
                "class_columns": self.class_columns}

    def slots(self, batch: int, dtype) -> list[np.ndarray]:
        """The runner's batch slots (pinned on a GPU) for a scan, allocated once per runner
        activation and reused by later scans, so an engine that scans many mosaics does
        not accumulate pinned memory.  Scans hold ``_lock``, so one scan uses them at a time."""
        runner = self.runner
        key = (id(runner), runner.activations, self.nslots, int(batch), np.dtype(dtype).str)
        if key != self._slots_key:
            self._slots_key, self._slots = None, None  # drop the old ones first
            self._slots = runner.allocate_slots(self.nslots, int(batch), dtype)
            self._slots_key = key
        return self._slots

    # -- arrays the caller already has -------------------------------------------
    def classify(self, cutouts: np.ndarray) -> np.ndarray:
        """Scores (n,) float32 for raw cutouts (n, nband, S, S) (NaN allowed)."""
        return self.predict(cutouts, outputs=False)["score"]

    def predict(self, cutouts: np.ndarray, *, outputs: bool = True) -> dict[str, np.ndarray]:
        """``score`` (n,) float32 and the runner's other per-row outputs for raw cutouts
        (n, nband, S, S): ``probabilities`` (n, K); an ensemble's ``class_index``,
        ``class_agreement`` and ``score_std`` (:mod:`pyengine.runners.ensemble`).
        ``outputs=False``: the score alone."""
        cutouts = np.asarray(cutouts)
        want = (self.spec.nband, self.spec.cutout_size, self.spec.cutout_size)
        if cutouts.ndim != 4 or cutouts.shape[1:] != want:
            raise ConfigError(f"classify: cutouts must be (n, {', '.join(map(str, want))}) for "
                              f"this model (bands {', '.join(self.spec.bands)}), got "
                              f"{cutouts.shape}")
        cutouts = cutouts.astype(np.float32, copy=False)
        n = cutouts.shape[0]
        fields = getattr(self.runner, "output_fields", {}) if outputs else {}
        out = {"score": np.empty(n, np.float32),
               **{name: np.zeros((n, *shape), dtype) for name, (shape, dtype) in fields.items()}}
        with self._lock:
            self.runner.activate()
            for s in range(0, n, self.batch_size):
                pending = self.runner.submit(np.ascontiguousarray(cutouts[s : s + self.batch_size]))
                out["score"][s : s + self.batch_size] = pending.result()
                got = pending.outputs() if fields else {}
                for name in fields:
                    if name not in got:
                        raise ConfigError(f"the {self.runner.name} runner gives no {name!r} "
                                          "output; predict(outputs=False) gives the score")
                    out[name][s : s + self.batch_size] = got[name]
        return out

    # -- scanning ------------------------------------------------------------------
    def prepare(self, mosaic, sources=None, *, allow_pixel_scale_mismatch: bool | None = None):
        """(mosaic, source, plan) ready to scan: bands matched to the model, source bound.

        ``allow_pixel_scale_mismatch`` False or True: the pixel-scale guard runs once the
        mosaic is open, before the source is bound (:mod:`pyengine.scan.pixscale`); None
        (the default, as ``pyengine bench`` calls it): no check.

        ``mosaic`` is a :class:`Mosaic` or the band image paths.  The mosaic returned
        is the one given when its bands are already in the model's order; otherwise
        (paths given, or bands to reorder) it is one this call opened, and the caller
        closes it (``returned is not given``); :meth:`prepared` does that.  Nothing
        opened here stays open when this raises.  A Mosaic the caller passed is
        never closed here.
        """
        from pyengine.io.mosaic import Mosaic
        from pyengine.sources.detect import DetectSource

        given = mosaic
        opened = mosaic = mosaic if isinstance(mosaic, Mosaic) else Mosaic.open(mosaic)
        try:
            mosaic = match_bands(opened, self.spec.bands)
            if opened is not given and mosaic is not opened:
                opened.close()  # reopened in the model's order: the first one is not used
            if allow_pixel_scale_mismatch is not None:
                from pyengine.scan.pixscale import check_mosaic_scale

                check_mosaic_scale(self, mosaic, allow=allow_pixel_scale_mismatch,
                                   stacklevel=5)
            source = sources if sources is not None else DetectSource()
            plan = TilePlan.for_cutout(mosaic.shape, cutout=self.spec.cutout_size,
                                       core=self.core)
            source.bind(mosaic, plan)
        except BaseException:
            for m in (opened, mosaic):  # close() twice is harmless
                if m is not given:
                    m.close()
            raise
        return mosaic, source, plan

    @contextlib.contextmanager
    def prepared(self, mosaic, sources=None, *, allow_pixel_scale_mismatch: bool | None = None):
        """:meth:`prepare` as a context manager: closes on exit (error or not) the
        mosaic it opened, never the one given."""
        ready = self.prepare(mosaic, sources, allow_pixel_scale_mismatch=allow_pixel_scale_mismatch)
        try:
            yield ready
        finally:
            if ready[0] is not mosaic:
                ready[0].close()

    def scan(self, mosaic, sources=None, *, within=None, regions=None, client=None,
             allow_pixel_scale_mismatch: bool = False):
        """The whole catalog (astropy Table) of ``sources`` (default: detection) on ``mosaic``.

        An image (or survey field) whose pixel scale differs from the model's by more than
        5 % is refused before any work (PixelScaleError); ``allow_pixel_scale_mismatch``
        scans it with a PixelScaleWarning (:mod:`pyengine.scan.pixscale`).

        ``mosaic`` may be a survey (a :class:`pyengine.survey.Survey`, or a manifest's
        path): then the catalog of every field touching the area (``within``: a
        :class:`pyengine.survey.Cone` or ``"RA,DEC,RADIUS"``; ``regions``: sky regions),
        with its ``field`` column, as ``pyengine scan survey.ecsv`` writes it; ``sources``
        is then an unbound source, copied for each part; ``client`` (a
        ``dask.distributed.Client``) runs the parts on its workers, each making an Engine
        of this one's settings (:mod:`pyengine.survey.scan`)."""
        from pyengine.survey.manifest import as_survey

        survey = as_survey(mosaic)
        if survey is not None:
            from pyengine.survey.scan import scan_table

            return scan_table(self, survey, sources, within=within, regions=regions,
                              client=client,
                              allow_pixel_scale_mismatch=allow_pixel_scale_mismatch)
        if within is not None or regions is not None or client is not None:
            raise ConfigError("within=, regions= and client= apply to surveys (a Survey or "
                              "a manifest), not to one mosaic")
        from pyengine.scan.assembly import assemble_catalog

        with self.prepared(mosaic, sources, allow_pixel_scale_mismatch=bool(
                allow_pixel_scale_mismatch)) as (mosaic, source, plan):
            results = list(self.iter_results(mosaic, source, plan))
            return assemble_catalog(self, mosaic, source, results)

    def iter_scan(self, mosaic, sources=None, *, within=None, regions=None,
                  allow_pixel_scale_mismatch: bool = False):
        """Per-tile catalogs (astropy Tables), one per :meth:`iter_results` result: in
        tile order, each as soon as it and the tiles before it are scored.  A mosaic opened
        for the scan is closed when the iterator ends or is closed.

        A survey (a Survey or a manifest's path; ``within``, ``regions`` as for
        :meth:`scan`): one catalog per field, with its ``field`` column, as each field is
        done (:func:`pyengine.survey.scan.iter_tables`). The pixel-scale guard as in
        :meth:`scan`."""
        from pyengine.survey.manifest import as_survey

        survey = as_survey(mosaic)
        if survey is not None:
            from pyengine.survey.scan import iter_tables

            yield from iter_tables(self, survey, sources, within=within, regions=regions,
                                   allow_pixel_scale_mismatch=allow_pixel_scale_mismatch)
            return
        if within is not None or regions is not None:
            raise ConfigError("within= and regions= apply to surveys (a Survey or a "
                              "manifest), not to one mosaic")
        from pyengine.scan.assembly import tile_table

        with self.prepared(mosaic, sources, allow_pixel_scale_mismatch=bool(
                allow_pixel_scale_mismatch)) as (mosaic, source, plan):
            for result in self.iter_results(mosaic, source, plan):
                yield tile_table(self, mosaic, result)

    def iter_results(self, mosaic, source, plan: TilePlan, *, skip=frozenset(),
                     stop: threading.Event | None = None,
                     on_batch: Callable[[int], None] | None = None) -> Iterator[TileResult]:
        """The pipeline (module docstring): a :class:`TileResult` per tile read, in tile
        order, each yielded once it and every tile before it are fully scored.

        Tiles in ``skip`` (indices already done: resume) and tiles the source knows
        to own no position (``source.count(tile) == 0``) are not read and give no
        result; a tile read whose positions turn out empty (detection) gives an
        empty result.  ``stop``: when set, no new tile is read and no new batch
        started; the batch being filled is completed from tiles already read (or sent
        part-full when they run out), the batches gathered finish, the tiles they complete are still yielded, then
        the iterator ends (a partly scored tile is not yielded).  ``on_batch(n)`` is
        called in the consuming thread after each batch of n scores (progress).
        """
        with self._lock:
            try:
                self.runner.activate()
                yield from Pipeline(self, mosaic, source, plan, skip, stop, on_batch).run()
            except Exception as exc:
                if not allocation_failure(exc):
                    raise
                raise ConfigError(
                    f"out of memory running batches of {self.batch_size} on the "
                    f"{self.runner.name} runner ({_first_line(exc)}); "
                    f"retry with a smaller --batch-size, e.g. {max(1, self.batch_size // 4)}; "
                    "completed tiles are kept for --resume") from None


#: Exception class names of runtime allocation failures: ONNX Runtime's RuntimeException
#: and Fail (their message says what failed), torch's OutOfMemoryError.
_ALLOCATION_TYPES = ("RuntimeException", "Fail", "OutOfMemoryError", "RuntimeError")


def allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a runtime's failure to allocate memory (MemoryError, torch's
    OutOfMemoryError, ONNX Runtime's RuntimeException/Fail that mention allocation)."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ not in _ALLOCATION_TYPES:
        return False
    text = str(exc).lower()
    return "alloc" in text or "out of memory" in text or type(exc).__name__ == "OutOfMemoryError"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def capped_threads(threads) -> int:
    """``threads`` (a positive integer) capped at the CPUs this process may use
    (:func:`pyengine.devices.usable_threads`), with a warning on stderr when capped:
    more threads than CPUs only add contention (1000 threads on 2 CPUs turned a 1 s scan
    into 171 s)."""
    import sys

    threads = integer(threads, "--threads", 1, accepted="a positive integer is needed",
                      whole_floats=True)
    cpus = usable_threads()
    if threads > cpus:
        print(f"Warning: --threads {threads} exceeds the {cpus} CPUs available; using {cpus}",
              file=sys.stderr)
        return cpus
    return threads


def match_bands(mosaic, bands):
    """The mosaic with its bands in the model's order; refuses other band sets.

    Names compare by :func:`pyengine.bands.band_index` (case and MegaCam ``.MP``
    numbers ignored: FILTER ``g.MP9401`` is a model's band ``g``).  Bands already
    in order: the same mosaic.  Otherwise a new Mosaic of the same files in the
    model's order, keeping the mosaic's own band names; the caller closes it.
    """
    have = tuple(mosaic.bands)
    bands = tuple(bands)
    order = match_order(have, bands)
    if order is None:
        raise MosaicMismatchError(
            f"the model needs bands {', '.join(bands)} but the mosaic has "
            f"{', '.join(have)} ({', '.join(mosaic.paths)}); give one image per model band, "
            "or name them with --bands")
    if order == list(range(len(have))):
        return mosaic
    from pyengine.io.mosaic import Mosaic

    return Mosaic.open([mosaic.paths[i] for i in order], bands=[have[i] for i in order])
