#!/usr/bin/env bash
# Rehearse benchmarks/gpu_check.sh on a CPU machine, in environments that hold only what
# the GPU machine's image holds (no astropy, fitsio, SEP or regions: those come from the
# carried wheels, as there).  Two parts:
#
# 1. Python 3.11 with torch (the CPU build; the image has torch 2.11 on Python 3.12, and
#    torch for 3.12 is not available here without its CUDA packages): the whole check in
#    --rehearse mode, every step but the CUDA calls: wheels, build, imports, field, the
#    GPU tests' collection (they skip without CUDA), the bench's smoke run.
# 2. Python 3.12 without torch: the very wheels the device call carries (.whl, from
#    `make gpu-wheels`) install and import next to numpy 2.5.2 (the image's), pyengine._core
#    builds for 3.12, and a field is synthesised, read and gathered into batches.  That
#    build is copied into .whl/core/, where gpu_check.sh falls back to it if it cannot
#    build one on the GPU machine.
#
# Usage: bash benchmarks/gpu_rehearsal.sh  (environments under $REHEARSAL, default
# /tmp/pyengine-gpu-rehearsal, made once; results in $REHEARSAL/out-311, out-312).
set -u -o pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
REHEARSAL=${REHEARSAL:-/tmp/pyengine-gpu-rehearsal}
# A python3.X that runs: on PATH, or one of pyenv's versions (whose shims may not be active).
find_python() {
  local candidate
  for candidate in "python$1" "$(pyenv root 2>/dev/null)"/versions/"$1".*/bin/"python$1"; do
    if "$candidate" --version >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  echo "python$1"
}
PY311=${PY311:-$(find_python 3.11)}
PY312=${PY312:-$(find_python 3.12)}
WHEELS_TXT=$ROOT/benchmarks/gpu_wheels.txt
# What the image has that pyengine and the check use (KINDS.md's package list), by name.
IMAGE="numpy numba safetensors onnx onnxruntime click psutil matplotlib pytest pytest-timeout
pybind11 scikit-build-core cmake ninja pyyaml packaging"
mkdir -p "$REHEARSAL"
status=0

venv() {  # venv DIR PYTHON PACKAGES...: made once
  local dir=$1 py=$2
  shift 2
  if [ ! -x "$dir/bin/python" ]; then
    "$py" -m venv "$dir" && "$dir/bin/python" -m pip install -q --disable-pip-version-check \
      -c "$ROOT/ci/constraints.txt" "$@" || { rm -rf "$dir"; return 1; }
  fi
}

wheels_for() {  # wheels_for PYTHON DIR: the carried wheels, for that Python
  local py=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir" &&
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$dir" -r "$WHEELS_TXT"
}

echo "== part 1: Python 3.11 with torch, gpu_check.sh --rehearse"
# shellcheck disable=SC2086  # IMAGE is a list of names
if venv "$REHEARSAL/py311" "$PY311" torch==2.13.0 $IMAGE &&
    wheels_for "$REHEARSAL/py311/bin/python" "$REHEARSAL/wheels-311"; then
  # the check builds pyengine._core itself when it does not import: move this checkout's
  # build aside for the rehearsal, and back after
  moved=()
  for so in "$ROOT"/pyengine/_core*.so; do
    [ -e "$so" ] && mv "$so" "$so.rehearsal" && moved+=("$so")
  done
  PYTHON=$REHEARSAL/py311/bin/python WHEELS=$REHEARSAL/wheels-311 OUT=$REHEARSAL/out-311 \
    SITE=$REHEARSAL/site-311 WORK=$REHEARSAL/work-311 bash benchmarks/gpu_check.sh --rehearse ||
    status=1
  rm -f "$ROOT"/pyengine/_core.cpython-311*.so
  for so in "${moved[@]}"; do mv "$so.rehearsal" "$so"; done
else
  echo "part 1: could not make the Python 3.11 environment"; status=1
fi

echo ""
echo "== part 2: Python 3.12 without torch, the carried wheels and a cp312 build"
# shellcheck disable=SC2086
if venv "$REHEARSAL/py312" "$PY312" numpy==2.5.2 $IMAGE; then
  if [ ! -d "$ROOT/.whl" ] || [ -z "$(ls "$ROOT"/.whl/*.whl 2>/dev/null)" ]; then
    make -C "$ROOT" gpu-wheels || status=1
  fi
  py=$REHEARSAL/py312/bin/python
  site=$REHEARSAL/site-312
  build=$REHEARSAL/build-312
  rm -rf "$site" "$REHEARSAL/out-312" && mkdir -p "$REHEARSAL/out-312/pkg"
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$site" "$ROOT"/.whl/*.whl &&
    "$REHEARSAL/py312/bin/cmake" -S "$ROOT" -B "$build" -G Ninja \
      -DCMAKE_MAKE_PROGRAM="$REHEARSAL/py312/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
      -DPython_EXECUTABLE="$py" -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null &&
    "$REHEARSAL/py312/bin/cmake" --build "$build" -j "$(nproc)" >/dev/null &&
    mkdir -p "$REHEARSAL/out-312/pkg/pyengine" "$ROOT/.whl/core" &&
    cp "$build"/_core*.so "$REHEARSAL/out-312/pkg/pyengine/" &&
    cp "$build"/_core*.so "$ROOT/.whl/core/" &&
    PYTHONPATH="$ROOT:$site" "$py" - "$REHEARSAL/out-312" <<'PYEOF' || status=1
import sys
from pathlib import Path

import pyengine

# this checkout's pyengine, with the cp312 extension built above beside it
pyengine.__path__.append(str(Path(sys.argv[1]) / "pkg" / "pyengine"))

import astropy
import fitsio
import numpy as np
import regions
import sep

import pyengine._core
from pyengine.coords import centre_pixel
from pyengine.io.mosaic import Mosaic
from pyengine.scan.batching import BatchRing, gather_reference, make_slots
from pyengine.synth.config import SynthConfig
from pyengine.synth.field import make_field

print(f"Python {sys.version.split()[0]}, numpy {np.__version__}, astropy {astropy.__version__}, "
      f"fitsio {fitsio.__version__}, sep {sep.__version__}, regions {regions.__version__}, "
      f"core {pyengine._core.__file__}")
out = Path(sys.argv[1]) / "field"
make_field(out, SynthConfig(width=256, height=256, seed=5))
with Mosaic.open([str(out / "g.fits"), str(out / "i.fits")]) as mosaic:
    pixels = mosaic.read(0, 256, 0, 256)
x = np.arange(40.0, 200.0, 16.0)
cx, cy = centre_pixel(x), centre_pixel(x)
slots = make_slots(2, x.size, 2, 64, np.float32)
with BatchRing(slots, threads=2) as ring:
    slot = ring.acquire()
    ring.fill(slot, 0, pixels, cx, cy)
    ring.wait(slot)
    got = ring.slots[slot][: x.size].copy()
    ring.release(slot)
want = gather_reference(pixels, cx, cy, 64)
assert np.array_equal(np.isnan(got), np.isnan(want)) and np.allclose(got, want, equal_nan=True)
print(f"field made and read ({pixels.shape}), {x.size} cutouts gathered by the cp312 core: "
      "identical to the reference")
PYEOF
else
  echo "part 2: could not make the Python 3.12 environment"; status=1
fi
echo ""
echo "== rehearsal $([ $status -eq 0 ] && echo passed || echo FAILED); results in $REHEARSAL/out-311"
exit $status
