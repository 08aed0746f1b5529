#!/usr/bin/env bash
# The one prepared GPU check (issue 12): one command, one call on a GPU machine.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (OUT=... for the results)
#   bash benchmarks/gpu_check.sh --rehearse   # here, on a CPU: every step but the CUDA calls
#
# Steps, in this order, each with its own time limit, none of which ends the check:
#   env      machine, GPU, Python, torch and the packages pyengine needs  -> env.txt
#   wheels   installs the wheels in $WHEELS (default .whl: astropy, pyerfa,
#            astropy-iers-data, fitsio, sep, regions: what the GPU image lacks; made by
#            `make gpu-wheels`) into $SITE with pip --no-index --no-deps
#   imports  every package and pyengine module the check uses, by name
#   build    pyengine._core for this Python with CMake + pybind11 (when not importable),
#            copied into pyengine/
#   field    the synthetic field for the scan sections, made in the background
#   tests    the GPU tests (pytest -m gpu: tests/test_runners_gpu.py, tests/test_runners.py)
#            -> junit.xml; in a rehearsal they collect and skip (no CUDA)
#   bench    benchmarks/bench_gpu.py, with the time left (--budget; its watchdog stops it
#            at --budget + --grace) -> bench_gpu.json; --smoke on the CPU in a rehearsal
# and last a short table: each step's status and seconds, then the bench's summary
# (model-only cutouts/s, end-to-end ratio, H2D GB/s, gather threads, M31 projection).
#
# A tree copied without .git names its commit in PYENGINE_COMMIT (recorded in env.txt and
# the JSON).  If pyengine._core cannot be built there (no Python headers, say), a prebuilt
# one in $WHEELS/core/ (gpu_rehearsal.sh puts the cp312 build it tests there) is tried.
#
# Everything lands in $OUT (default ./gpu-check-out): check.log (all output), env.txt,
# junit.xml, bench_gpu.json, summary.txt.  CHECK_SECONDS (default 450) bounds the whole
# check, so it fits one 10-minute device call with room to spare.  Exit status 0 when every
# step passed, 1 otherwise.
set -u -o pipefail

MODE=gpu
case "${1:-}" in
  --rehearse) MODE=rehearse ;;
  "") ;;
  *) echo "gpu_check.sh: unknown argument '$1'; accepted: --rehearse (or nothing)" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu-check-out}
WHEELS=${WHEELS:-$ROOT/.whl}
SITE=${SITE:-/tmp/pyengine-gpu-site}
WORK=${WORK:-/tmp/pyengine-gpu-work}
CHECK_SECONDS=${CHECK_SECONDS:-450}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/check.log
: >"$LOG"
START=$SECONDS
STEPS=()
FAILED=0
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

say() { printf '%s\n' "$*" | tee -a "$LOG"; }

# step NAME LIMIT_SECONDS COMMAND...: run it with a time limit, its output to the log too
step() {
  local name=$1 limit=$2 t0=$SECONDS rc status
  shift 2
  say ""
  say "==== [$((SECONDS - START)) s] $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ "$rc" -eq 0 ] || FAILED=1
  STEPS+=("$(printf '%-8s %-18s %5d s' "$name" "$status" $((SECONDS - t0)))")
  return "$rc"
}

left() { echo $((CHECK_SECONDS - (SECONDS - START))); }

# -- env ----------------------------------------------------------------------------------------
env_report() {
  echo "mode: $MODE; date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD 2>/dev/null || echo "${PYENGINE_COMMIT:-unknown}")"
  echo "host: $(uname -srm); CPUs: $(nproc); memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not on PATH"
  fi
  echo "python: $(command -v "$PY") $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  "$PY" - <<'EOF'
import importlib.metadata as md
names = ["torch", "numpy", "numba", "llvmlite", "astropy", "pyerfa", "fitsio", "sep", "regions",
         "safetensors", "onnx", "onnxruntime", "click", "psutil", "matplotlib", "pytest",
         "pytest-timeout", "pybind11", "scikit-build-core", "cmake", "ninja"]
for name in names:
    try:
        print(f"  {name:<18} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:<18} (not installed)")
try:
    import torch
    print(f"torch {torch.__version__}: CUDA build {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, CUDA available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"GPU 0: {p.name}, capability {p.major}.{p.minor}, "
              f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
except Exception as exc:
    print(f"torch: {type(exc).__name__}: {exc}")
EOF
}
step env 30 bash -c "$(declare -f env_report); MODE='$MODE' PY='$PY' env_report | tee '$OUT/env.txt'"

# -- wheels -------------------------------------------------------------------------------------
install_wheels() {
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in $WHEELS: nothing to install (make gpu-wheels makes them)"
    return 0
  fi
  printf '  %s\n' "${wheels[@]##*/}"
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --disable-pip-version-check --target "$SITE" "${wheels[@]}"
}
if step wheels 90 bash -c "$(declare -f install_wheels); WHEELS='$WHEELS' SITE='$SITE' PY='$PY' install_wheels"; then
  [ -d "$SITE" ] && export PYTHONPATH="$PYTHONPATH:$SITE"
fi

# -- build --------------------------------------------------------------------------------------
build_core() {
  if "$PY" -c "import pyengine._core" 2>/dev/null; then
    echo "pyengine._core imports already: $("$PY" -c 'import pyengine._core as c; print(c.__file__)')"
    return 0
  fi
  local bin tag dir cmake ninja
  bin=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
  cmake=$(command -v cmake || echo "$bin/cmake")
  ninja=$(command -v ninja || echo "$bin/ninja")
  tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  dir=$ROOT/build/gpu-check-$tag
  if "$cmake" -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_MAKE_PROGRAM="$ninja" \
      -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$("$PY" -c 'import sys; print(sys.executable)')" \
      -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" >/dev/null &&
      "$cmake" --build "$dir" -j "$(nproc)" &&
      cp "$dir"/_core*.so "$ROOT/pyengine/" &&
      "$PY" -c "import pyengine._core as c; print('built', c.__file__)"; then
    return 0
  fi
  shopt -s nullglob
  local prebuilt=("$WHEELS"/core/_core.${tag/cp/cpython-}*.so)
  if [ ${#prebuilt[@]} -eq 0 ]; then
    echo "the build failed and $WHEELS/core/ holds no prebuilt _core for $tag"
    return 1
  fi
  echo "the build failed: trying the prebuilt ${prebuilt[0]##*/}"
  cp "${prebuilt[0]}" "$ROOT/pyengine/" &&
    "$PY" -c "import pyengine._core as c; print('prebuilt', c.__file__)"
}
step build 150 bash -c "$(declare -f build_core); ROOT='$ROOT' PY='$PY' WHEELS='$WHEELS' build_core"

# -- imports ------------------------------------------------------------------------------------
step imports 60 "$PY" - <<'EOF'
import importlib
import sys

need = ["numpy", "torch", "numba", "safetensors", "click", "psutil", "astropy", "fitsio",
        "sep", "regions", "pytest", "pyengine", "pyengine._core", "pyengine.runners.torch",
        "pyengine.runners.tensorrt", "pyengine.scan.engine", "pyengine.synth.field",
        "pyengine.io.mosaic", "pyengine.sources"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(name)
        print(f"  {name}: {type(exc).__name__}: {exc}")
print(f"{len(need) - len(missing)} of {len(need)} imports work"
      + (f"; missing: {', '.join(missing)}" if missing else ""))
sys.exit(1 if missing else 0)
EOF

# -- field (background) -------------------------------------------------------------------------
FIELD_ARGS=()
[ "$MODE" = rehearse ] && FIELD_ARGS=(--smoke)
(timeout 240 "$PY" benchmarks/bench_gpu.py "${FIELD_ARGS[@]}" --field-only --workdir "$WORK" \
  >"$WORK/field.log" 2>&1; echo $? >"$WORK/field.rc") &
FIELD_PID=$!

# -- tests --------------------------------------------------------------------------------------
TESTS=(tests/test_runners_gpu.py tests/test_runners.py)
run_tests() {
  local collected
  collected=$("$PY" -m pytest --collect-only -q -p no:cacheprovider -m gpu "${TESTS[@]}" 2>&1 |
    grep -c '::') || true
  echo "GPU tests collected: $collected"
  if [ "$collected" -lt 20 ]; then
    echo "too few GPU tests collected (an import failed?):"
    "$PY" -m pytest --collect-only -q -p no:cacheprovider -m gpu "${TESTS[@]}" 2>&1 | tail -20
    return 1
  fi
  "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml="$OUT/junit.xml" "${TESTS[@]}"
}
step tests 150 bash -c "$(declare -f run_tests); TESTS=(${TESTS[*]}); PY='$PY' OUT='$OUT' run_tests"

# -- bench --------------------------------------------------------------------------------------
wait "$FIELD_PID"
say ""
say "field: $(tail -1 "$WORK/field.log") (exit $(cat "$WORK/field.rc" 2>/dev/null || echo '?'))"
GRACE=20
BUDGET=$(($(left) - GRACE - 25))
[ "$BUDGET" -gt 240 ] && BUDGET=240
[ "$BUDGET" -lt 45 ] && BUDGET=45
BENCH_ARGS=(--json "$OUT/bench_gpu.json" --workdir "$WORK" --budget "$BUDGET" --grace "$GRACE")
[ "$MODE" = rehearse ] && BENCH_ARGS+=(--smoke)
step bench $((BUDGET + GRACE + 20)) "$PY" benchmarks/bench_gpu.py "${BENCH_ARGS[@]}"

# -- the short table, last ----------------------------------------------------------------------
{
  echo ""
  echo "==== gpu_check ($MODE) in $((SECONDS - START)) s; results in $OUT"
  printf '   %s\n' "${STEPS[@]}"
  if [ -s "$OUT/bench_gpu.json" ]; then
    "$PY" - "$OUT/bench_gpu.json" <<'EOF'
import json
import sys

sys.path.insert(0, "benchmarks")
from _gpu_report import print_summary

data = json.load(open(sys.argv[1]))
if data.get("summary"):
    print_summary(data["summary"], data)
EOF
  fi
} | tee "$OUT/summary.txt" | tee -a "$LOG"
exit $FAILED
