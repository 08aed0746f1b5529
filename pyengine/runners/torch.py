"""The torch runner (PyTorch on the CPU or a CUDA GPU) and the CUDA feeding it shares
with the TensorRT runner.

Runs :func:`pyengine.models.classifier.precision_graph`, the same graph the
ONNX export writes: the preprocessing in float32 and the ResNet in fp32, fp16 or
bf16 (``tf32``: the fp32 graph with TensorFloat-32 math on CUDA).  ``channels_last`` stores the ResNet's activations NHWC, which the CPU
(oneDNN) and GPU convolution kernels prefer.

CPU: ``submit`` computes synchronously; float16 batches are converted to float32
on the host; slots are page-aligned NumPy arrays (see :mod:`pyengine.runners.base`).

CUDA (``device`` cuda, cuda:N, or auto with a GPU) follows NVIDIA's MLPerf
harness, in :class:`CudaFeed`:

* slots from ``allocate_slots`` are pinned host memory allocated once; a batch
  that is one of them (or a leading slice of one, recognised by its address) is
  copied from there directly; any other batch is first copied into a pinned
  staging buffer (allocated once, reused);
* the host-to-device copy runs ``non_blocking`` on one of two copy streams
  (round robin) into a device input buffer (a ring of ``in_flight + 1``: the scan
  engine keeps ``GPU_IN_FLIGHT`` = 3 batches outstanding, so a submit never waits
  for a ring entry), an event is recorded, the compute stream waits for it; so
  batch k+1 is copied while batch k computes;
* ``cuda_graphs`` (default): one ``torch.cuda.CUDAGraph`` per batch size,
  captured (after warm-up iterations on the capture's side stream, as torch's
  documentation asks) the first time a batch does not fit an existing graph, and
  for ``batch_size`` at ``activate``/``allocate_slots``; a smaller batch (the last
  one of a scan) is copied into the first rows of the smallest graph that holds
  it, the other rows are stale and ignored.  Before the graph the input is copied
  into the graph's float32 static input, which is also where float16 input
  (``input_dtype`` float16 at fp16) becomes float32, on the GPU, so the
  preprocessing computes in float32;
* the scores and the class probabilities (the graph's two outputs) are copied
  back ``non_blocking`` into pinned output buffers (the probabilities' ring is
  allocated at the first batch that has them, when their width is known) and an
  event is recorded; ``Pending.result()`` waits for that event (blocking, not
  spinning) and returns a copy of the batch's scores, ``Pending.outputs()`` a copy
  of its probabilities.

Defaults for a GPU: batches of ``GPU_BATCH`` = 1024 cutouts, ``torch.backends.cudnn.benchmark``
on while the runner is active (set before any graph is captured, so the capture's
warm-up iterations choose the algorithms; restored at ``deactivate``;
``cudnn_benchmark=False`` leaves it alone).  ``pad_channels=8`` zero-pads the first
convolution's 2 input channels to 8 inside the graph (:func:`pad_stem`), a shape
tensor cores prefer; it is off by default until a GPU measurement shows it pays
(``benchmarks/bench_gpu.py`` times both).

fp32 on CUDA means IEEE float32: cuDNN convolutions and CUDA matmuls default to
TF32 (10-bit mantissa products, errors of ~5e-4..4e-3 on the scores), so while an
fp32 CUDA runner is active it sets ``torch.backends.cudnn.conv.fp32_precision`` and
``torch.backends.cuda.matmul.fp32_precision`` to ``"ieee"`` (``"tf32"`` at precision
tf32, which asks for TF32 on purpose), and ``deactivate`` restores the values it found
(:func:`set_fp32_math` / :func:`restore_fp32_math`; torch >= 2.9's API, not the
deprecated ``allow_tf32`` flags).  These settings are process-global: two CUDA runners
active at once with different math share the one set last; CUDA graphs keep the kernels
chosen when they were captured (at the runner's own setting).  fp16/bf16 runners leave
them alone.  tf32 is refused on the CPU (ConfigError): it is a CUDA math mode.

NOT RUN HERE: no GPU was lent to this project's workplace; the CUDA path is
written to torch's documented stream, event, pinned-memory and CUDA-graph APIs
and is exercised by ``tests/test_runners_gpu.py`` on a GPU.  The CPU path is tested.

Thread safety: see :mod:`pyengine.runners.base` (one thread submits and
collects).  ``threads`` sets torch's intra-op thread count, which is process-wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError, RunnerUnavailable
from pyengine.runners.base import (
    CPU_BATCH,
    CPU_IN_FLIGHT,
    GPU_BATCH,
    GPU_IN_FLIGHT,
    PRECISIONS,
    Pending,
    Runner,
)
from pyengine.runners.probe import unavailable

__all__ = ["CudaFeed", "CudaPending", "TorchRunner", "fp32_math", "pad_stem", "parse_device",
           "restore_fp32_math", "set_fp32_math"]

TORCH_PRECISIONS = PRECISIONS["torch"]
_TF32_ON_CPU = ("precision 'tf32' is a CUDA math mode (TensorFloat-32 convolutions) and is "
                "not accepted on the CPU; accepted on the CPU: fp32, fp16, bf16 (tf32 needs a "
                "CUDA GPU)")
MAX_GRAPHS = 8  # beyond this many batch sizes, new sizes run eagerly
WARMUP_ITERATIONS = 3


def parse_device(device) -> tuple[str, int | None]:
    """("auto" | "cpu" | "cuda", GPU index or None) of a device string."""
    if device in ("auto", "cpu", "cuda"):
        return device, None
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ConfigError(f"device {device!r} is not accepted; accepted: auto, cpu, cuda, cuda:N")


#: torch's float32 math settings this module sets (module path under torch.backends).
_FP32_MATH = (("cudnn", "conv"), ("cuda", "matmul"))


def fp32_math(precision: str) -> str | None:
    """The ``fp32_precision`` a CUDA runner at ``precision`` sets: "ieee" for fp32,
    "tf32" for tf32, None (leave torch's settings alone) otherwise."""
    return {"fp32": "ieee", "tf32": "tf32"}.get(precision)


def set_fp32_math(torch, mode: str) -> tuple[str, ...]:
    """Set cuDNN convolutions' and CUDA matmuls' ``fp32_precision`` to ``mode`` ("ieee"
    or "tf32"); the previous values, for :func:`restore_fp32_math`.  Process-global."""
    previous = []
    for backend, op in _FP32_MATH:
        setting = getattr(getattr(torch.backends, backend), op)
        previous.append(setting.fp32_precision)
        setting.fp32_precision = mode
    return tuple(previous)


def restore_fp32_math(torch, previous: tuple[str, ...]) -> None:
    """Put back the values :func:`set_fp32_math` returned."""
    for (backend, op), value in zip(_FP32_MATH, previous, strict=True):
        getattr(getattr(torch.backends, backend), op).fp32_precision = value


def pad_stem(graph, channels: int):
    """Give ``graph``'s ResNet (``graph.backbone``) a first convolution of ``channels``
    input channels: the model's bands, then zero channels with zero weights, so the
    scores are the same (up to the order of additions) while the convolution's channel
    count is one tensor-core kernels like (a multiple of 8 instead of 2).  The zero
    channels are appended inside the graph, after the preprocessing: nothing more is
    copied to the GPU.  A ResNet with that many channels already is left alone."""
    import torch
    from torch import nn

    conv = graph.backbone.conv1
    extra = int(channels) - conv.in_channels
    if extra <= 0:
        return graph
    wide = nn.Conv2d(int(channels), conv.out_channels, kernel_size=conv.kernel_size,
                     stride=conv.stride, padding=conv.padding, bias=conv.bias is not None,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)

    class _PaddedStem(nn.Module):
        """Zero channels appended to the input, then the widened convolution."""

        def __init__(self):
            super().__init__()
            self.conv = wide

        def forward(self, x):
            return self.conv(torch.nn.functional.pad(x, (0, 0, 0, 0, 0, extra)))

    graph.backbone.conv1 = _PaddedStem().eval()
    return graph


def _torch_dtype(torch, dtype: np.dtype):
    return {"float32": torch.float32, "float16": torch.float16}[np.dtype(dtype).name]


class CudaPending(Pending):
    """Scores (and probabilities) being copied back from the GPU: ``result()`` waits for
    the copy's event."""

    __slots__ = ("_event", "_outputs", "_probs_view", "_scores", "_view")

    def __init__(self, event, view: np.ndarray, probs_view: np.ndarray | None = None):
        self._event, self._view, self._probs_view = event, view, probs_view
        self._scores, self._outputs = None, {}

    def result(self) -> np.ndarray:
        if self._scores is None:
            self._event.synchronize()
            self._scores = self._view.copy()
            if self._probs_view is not None:
                self._outputs = {"probabilities": self._probs_view.copy()}
            self._event = self._view = self._probs_view = None
        return self._scores

    def outputs(self) -> dict[str, np.ndarray]:
        self.result()
        return self._outputs


class CudaFeed:
    """Pinned slots, copy streams, device input ring, compute stream and pinned output
    for one GPU runner (torch or TensorRT); NOT RUN HERE (see the module docstring).

    ``submit(batch, launch)`` copies ``batch`` to the GPU and calls
    ``launch(x, n)`` on the compute stream with the device tensor ``x`` (n rows, the
    batch's dtype; ``launch`` casts it if it needs another): it enqueues the model and
    returns a float32 device tensor whose first n entries are the scores, or
    (scores, probabilities), the probabilities a float32 (rows >= n, K) device tensor,
    both copied back.
    """

    def __init__(self, torch, device, item_shape, capacity: int, *,
                 depth: int = GPU_IN_FLIGHT + 1, copy_streams: int = 2):
        self.torch, self.device, self.item_shape = torch, device, tuple(item_shape)
        self.depth = max(2, depth)
        self.compute = torch.cuda.Stream(device=device)
        self.copy_streams = [torch.cuda.Stream(device=device) for _ in range(max(2, copy_streams))]
        self.capacity = 0
        self._device_in: dict = {}   # torch dtype -> [device tensor (capacity, *item)] * depth
        self._staging: dict = {}     # numpy dtype name -> [(pinned tensor, numpy view)] * depth
        self._out: list = []         # [(pinned float32 (capacity,), numpy view)] * depth
        self._out_probs: list = []   # [(pinned float32 (capacity, K), numpy view)] * depth
        self._pending: list = [None] * self.depth
        self._slots: list = []       # pinned tensors handed out by pinned_slots
        self._count = 0
        self.reserve(capacity)

    # -- memory ------------------------------------------------------------------------
    def reserve(self, rows: int) -> None:
        """Make every ring hold ``rows`` rows (waits for the work in flight first)."""
        if rows <= self.capacity:
            return
        torch = self.torch
        self.drain()
        self.capacity = rows
        device_dtypes, staging_dtypes = list(self._device_in), list(self._staging)
        self._device_in.clear()
        self._staging.clear()
        self._out = []
        for _ in range(self.depth):
            host = torch.zeros(rows, dtype=torch.float32, pin_memory=True)
            self._out.append((host, host.numpy()))
        classes = self._out_probs[0][0].shape[1] if self._out_probs else None
        self._out_probs = []
        if classes is not None:
            self._probs_ring(classes)
        for dtype in device_dtypes:
            self._device_ring(dtype)
        for name in staging_dtypes:
            self._staging_ring(np.dtype(name))

    def _device_ring(self, dtype) -> list:
        ring = self._device_in.get(dtype)
        if ring is None:
            torch = self.torch
            ring = [torch.zeros((self.capacity, *self.item_shape), dtype=dtype, device=self.device)
                    for _ in range(self.depth)]
            # zero-filled on the current stream; finish before other streams use them
            torch.cuda.current_stream(self.device).synchronize()
            self._device_in[dtype] = ring
        return ring

    def _probs_ring(self, classes: int) -> list:
        """The pinned (capacity, classes) float32 buffers probabilities are copied into
        (made once, when the first batch shows their width)."""
        if not self._out_probs or self._out_probs[0][0].shape[1] != classes:
            torch = self.torch
            self._out_probs = []
            for _ in range(self.depth):
                host = torch.zeros((self.capacity, classes), dtype=torch.float32,
                                   pin_memory=True)
                self._out_probs.append((host, host.numpy()))
        return self._out_probs

    def _staging_ring(self, dtype: np.dtype) -> list:
        ring = self._staging.get(dtype.name)
        if ring is None:
            torch = self.torch
            ring = []
            for _ in range(self.depth):
                host = torch.empty((self.capacity, *self.item_shape),
                                   dtype=_torch_dtype(torch, dtype), pin_memory=True)
                ring.append((host, host.numpy()))
            self._staging[dtype.name] = ring
        return ring

    def pinned_slots(self, count: int, batch_size: int, dtype: np.dtype) -> list[np.ndarray]:
        """``count`` pinned host arrays (batch_size, *item) kept referenced by the feed."""
        torch = self.torch
        self.reserve(batch_size)
        tensors = [torch.empty((batch_size, *self.item_shape), dtype=_torch_dtype(torch, dtype),
                               pin_memory=True) for _ in range(count)]
        self._slots.extend(tensors)
        return [t.numpy() for t in tensors]

    def find_slot(self, batch: np.ndarray):
        """The pinned tensor rows ``batch`` occupies, if it lies in one of our slots."""
        if not batch.flags.c_contiguous:
            return None
        start = batch.__array_interface__["data"][0]
        end = start + batch.nbytes
        row = batch.nbytes // batch.shape[0]
        for tensor in self._slots:
            base = tensor.data_ptr()
            if not base <= start < base + tensor.numel() * tensor.element_size():
                continue
            if end > base + tensor.numel() * tensor.element_size() or \
                    tuple(tensor.shape[1:]) != batch.shape[1:] or \
                    tensor.element_size() != batch.itemsize or \
                    np.dtype(str(tensor.dtype).removeprefix("torch.")) != batch.dtype or \
                    (start - base) % row:
                return None
            first = (start - base) // row
            return tensor[first : first + batch.shape[0]]
        return None

    # -- work --------------------------------------------------------------------------
    def submit(self, batch: np.ndarray, launch) -> CudaPending:
        """Copy ``batch`` (C-contiguous float32/float16) to the GPU and enqueue ``launch``."""
        torch = self.torch
        n = batch.shape[0]
        self.reserve(n)
        i = self._count % self.depth
        stream = self.copy_streams[self._count % len(self.copy_streams)]
        self._count += 1
        if self._pending[i] is not None:
            # the batch that last used ring entry i is finished: its staging, device
            # input and output buffers are free (with <= depth - 1 in flight: no wait)
            self._pending[i].result()
        source = self.find_slot(batch)
        if source is None:
            tensor, array = self._staging_ring(batch.dtype)[i]
            array[:n] = batch
            source = tensor[:n]
        target = self._device_ring(source.dtype)[i][:n]
        with torch.cuda.stream(stream):
            target.copy_(source, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        self.compute.wait_event(copied)
        host, array = self._out[i]
        probs_view = None
        with torch.cuda.stream(self.compute), torch.no_grad():
            scores = launch(target, n)
            if isinstance(scores, tuple):
                scores, probabilities = scores
                probs_host, probs_array = self._probs_ring(int(probabilities.shape[1]))[i]
                probs_host[:n].copy_(probabilities[:n], non_blocking=True)
                probs_view = probs_array[:n]
            host[:n].copy_(scores[:n], non_blocking=True)
            done = torch.cuda.Event(blocking=True)
            done.record(self.compute)
        pending = CudaPending(done, array[:n], probs_view)
        self._pending[i] = pending
        return pending

    def drain(self) -> None:
        """Wait for every batch in flight (their results stay available)."""
        for pending in self._pending:
            if pending is not None:
                pending.result()
        self._pending = [None] * self.depth
        if self.capacity:
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.drain()
        self._device_in.clear()
        self._staging.clear()
        self._out = []
        self._out_probs = []
        self._slots = []  # handed-out arrays keep their own tensors alive


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model: Path | None, *, precision: str | None = None,
                 device: str = "auto", threads: int | None = None, channels_last: bool = True,
                 batch_size: int | None = None, cuda_graphs: bool = True,
                 half_input: bool = True, cudnn_benchmark: bool = True,
                 pad_channels: int | None = None):
        """``half_input``: at fp16 on CUDA, take float16 batches (half the copy); the
        preprocessing still computes in float32 on the GPU.  ``cudnn_benchmark``: on CUDA,
        let cuDNN time its convolution algorithms for each input shape (on while the runner
        is active, set before any graph is captured; the scan engine's batches all have one
        shape).  ``pad_channels``: zero-pad the first convolution's input channels to this
        many (:func:`pad_stem`; None: the model's bands)."""
        from pyengine.models.checkpoint import DEMO_MODEL, read_spec

        if threads is not None and threads < 1:
            raise ConfigError(f"threads = {threads}; a positive number is needed")
        parse_device(device)
        if pad_channels is not None and (isinstance(pad_channels, bool) or
                                         not isinstance(pad_channels, int) or
                                         not 1 <= pad_channels <= 64):
            raise ConfigError(f"pad_channels = {pad_channels!r} is not accepted; accepted: None "
                              "or a channel count from 1 to 64")
        if precision is not None and precision not in TORCH_PRECISIONS:
            raise ConfigError(f"precision {precision!r} is not available with the torch runner; "
                              f"accepted: {', '.join(TORCH_PRECISIONS)}")
        if precision == "tf32" and device == "cpu":
            raise ConfigError(_TF32_ON_CPU)
        if model is not None and model.suffix.lower() == ".onnx":
            raise ConfigError(f"{model}: the torch runner takes a pyengine model file "
                              "(.safetensors); run ONNX files with --runner onnxruntime")
        self._source = model if model is not None else DEMO_MODEL
        spec, _ = read_spec(self._source)
        super().__init__(spec, precision or "fp32", batch_size)
        self._device_request, self._threads, self._channels_last = device, threads, channels_last
        self._cuda_graphs, self._half_input = bool(cuda_graphs), bool(half_input)
        self._cudnn_benchmark, self._pad_channels = bool(cudnn_benchmark), pad_channels
        self._graph = self._device = self._feed = self._torch = None
        self._math = None  # fp32_precision values found at activate, restored at deactivate
        self._benchmark_was = None  # torch.backends.cudnn.benchmark before activate
        self._graphs: dict = {}  # batch size -> (CUDAGraph, static input, (scores, probabilities))

    # -- what the engine asks before activate ------------------------------------------
    def _on_cuda(self) -> bool:
        if self._device is not None:
            return self._device.type == "cuda"
        kind, _ = parse_device(self._device_request)
        if kind != "auto":
            return kind == "cuda"
        try:
            import torch
        except ImportError:
            return False
        return torch.cuda.is_available()

    @property
    def input_dtype(self) -> np.dtype:
        half = self.precision == "fp16" and self._half_input and self._on_cuda()
        return np.dtype(np.float16 if half else np.float32)

    @property
    def preferred_batch_size(self) -> int:
        return self._batch_size or (GPU_BATCH if self._on_cuda() else CPU_BATCH)

    @property
    def in_flight(self) -> int:
        return GPU_IN_FLIGHT if self._on_cuda() else CPU_IN_FLIGHT

    # -- life cycle ---------------------------------------------------------------------
    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            raise unavailable("torch", "torch is not installed (pip install torch)") from None
        from pyengine.models.checkpoint import load_model
        from pyengine.models.classifier import precision_graph

        cuda = torch.cuda.is_available()
        request = self._device_request
        if request.startswith("cuda") and not cuda:
            why = "this torch build has no CUDA" if torch.version.cuda is None else \
                "no CUDA device is visible"
            raise RunnerUnavailable(f"torch runner on {request}: {why}; use --device cpu")
        device = torch.device("cuda" if request == "auto" and cuda else
                              "cpu" if request == "auto" else request)
        if device.type == "cuda" and device.index is not None and \
                device.index >= torch.cuda.device_count():
            raise RunnerUnavailable(f"torch runner on {request}: only "
                                    f"{torch.cuda.device_count()} CUDA device(s) are visible; "
                                    f"accepted: cuda:0..cuda:{torch.cuda.device_count() - 1}")
        if self.precision == "tf32" and device.type != "cuda":
            raise ConfigError(_TF32_ON_CPU)
        if self._threads is not None:
            torch.set_num_threads(self._threads)
        graph = precision_graph(load_model(self._source),
                                "fp32" if self.precision == "tf32" else self.precision)
        if self._pad_channels is not None:
            pad_stem(graph, self._pad_channels)
        if self._channels_last:
            graph.backbone = graph.backbone.to(memory_format=torch.channels_last)
        self._torch, self._device = torch, device
        self._graph = graph.to(device)
        if device.type == "cuda":
            mode = fp32_math(self.precision)
            if mode is not None:  # before any kernel is chosen or graph captured
                self._math = set_fp32_math(torch, mode)
            if self._cudnn_benchmark:
                self._benchmark_was = torch.backends.cudnn.benchmark
                torch.backends.cudnn.benchmark = True
            try:
                self._feed = CudaFeed(torch, device, self.input_shape, self.preferred_batch_size,
                                      depth=self.in_flight + 1)
                if self._cuda_graphs and self._batch_size is not None:
                    self._ensure_graph(self._batch_size)
            except BaseException:
                self._deactivate()  # not active: put torch's settings back here
                raise

    def _deactivate(self) -> None:
        if self._feed is not None:
            self._feed.close()
        self._feed = None
        self._graphs.clear()
        self._graph = self._device = None
        if self._math is not None:
            restore_fp32_math(self._torch, self._math)
            self._math = None
        if self._benchmark_was is not None:
            self._torch.backends.cudnn.benchmark = self._benchmark_was
            self._benchmark_was = None

    # -- memory ---------------------------------------------------------------------------
    def _allocate_slots(self, count: int, batch_size: int, dtype: np.dtype) -> list[np.ndarray]:
        if self._feed is None:
            return super()._allocate_slots(count, batch_size, dtype)
        slots = self._feed.pinned_slots(count, batch_size, dtype)
        if self._cuda_graphs:
            self._ensure_graph(batch_size)
        return slots

    # -- inference -------------------------------------------------------------------------
    def _convert(self, batch: np.ndarray) -> np.ndarray:
        if self._feed is not None:
            return batch  # float16 and float32 both go to the GPU as they are
        return super()._convert(batch)

    def _submit(self, batch: np.ndarray) -> Pending:
        if self._feed is None:
            return super()._submit(batch)
        if self._cuda_graphs:
            self._ensure_graph(batch.shape[0])
        return self._feed.submit(batch, self._launch)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._feed is not None:
            pending = self._submit(batch)
            return pending.outputs()["probabilities"], pending.result()
        import torch

        x = torch.from_numpy(batch)
        with torch.inference_mode():
            probabilities, score = self._graph(x)
        return probabilities.float().numpy(), score.float().numpy()

    # -- CUDA (not run here) ----------------------------------------------------------------
    def _graph_size(self, n: int) -> int | None:
        fits = [size for size in self._graphs if size >= n]
        return min(fits) if fits else None

    def _ensure_graph(self, n: int) -> None:
        if self._graph_size(n) is None and len(self._graphs) < MAX_GRAPHS:
            self._capture(n)

    def _capture(self, size: int) -> None:
        """Capture the model for batches of ``size`` rows on a side stream."""
        torch, device = self._torch, self._device
        self._feed.reserve(size)
        static_in = torch.zeros((size, *self.input_shape), dtype=torch.float32, device=device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        side.wait_stream(self._feed.compute)
        with torch.cuda.device(device), torch.no_grad():
            with torch.cuda.stream(side):
                for _ in range(WARMUP_ITERATIONS):
                    self._graph(static_in)
            side.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_probs, static_score = self._graph(static_in)
        self._feed.compute.wait_stream(side)
        self._graphs[size] = (graph, static_in, (static_score, static_probs))

    def _launch(self, x, n: int):
        """On the compute stream: the model on ``x`` (n rows); returns the (scores,
        probabilities) tensors."""
        size = self._graph_size(n) if self._cuda_graphs else None
        if size is None:
            probabilities, score = self._graph(x.float())
            return score, probabilities
        graph, static_in, static_out = self._graphs[size]
        static_in[:n].copy_(x)  # float16 -> float32 here, on the GPU
        graph.replay()
        return static_out
