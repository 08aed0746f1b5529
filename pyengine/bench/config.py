"""Options of ``pyengine bench`` and its default batch sizes and precisions."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CPU_BATCHES", "GPU_BATCHES", "QUICK_BATCHES", "BenchConfig"]

CPU_BATCHES = (8, 16, 32, 64, 128)
GPU_BATCHES = (256, 512, 1024, 2048, 4096)
QUICK_BATCHES = (16, 32)
# Precisions measured per runner when none are asked for (CPU, GPU).  torch fp16 on
# a CPU has no fast kernels; TensorRT int8 needs an int8 export given with --int8.
_CPU_PRECISIONS = {"onnxruntime": ("fp32", "int8"), "torch": ("fp32", "bf16")}
_GPU_PRECISIONS = {"torch": ("fp16", "bf16"), "tensorrt": ("fp16", "int8"),
                   "onnxruntime": ("fp32", "int8")}


@dataclass
class BenchConfig:
    images: tuple[str, ...] = ()
    model: str | None = None
    runners: tuple[str, ...] = ()  # () = every usable runner
    precisions: tuple[str, ...] = ()  # () = each runner's defaults
    batches: tuple[int, ...] = ()  # () = CPU or GPU defaults
    threads: int | None = None
    positions: int | None = None  # end-to-end positions (grid); None = by mode
    int8: str | None = None  # an int8 ONNX export to measure
    size: int | None = None  # synthetic field edge
    workdir: str | None = None
    quick: bool = False
    min_time: float | None = None  # seconds per measurement
    pairs: int = 3  # model-only sweeps interleaved with end-to-end runs (median pair reported)
    gather_batch: int = 256
    seed: int = 7
    notes: list[str] = field(default_factory=list)
