"""Golden output of the demo scan: refactors cannot change results silently.

The demo's path (synthetic field, SEP detection cut at i < 21, the shipped demo
model, ONNX Runtime fp32 on a CPU, :func:`pyengine.scan.run.run_scan`) on a
512 px field of fixed seed, in 256 px tiles (the demo's default 2048 would make
one tile); its positions, tiles and flags must equal
tests/expect/demo_scan.npz exactly, and its scores within ``SCORE_ATOL``.

When a change is meant to change results, regenerate the file and commit it
with the change that explains it::

    PYENGINE_ACCEPT=1 python -m pytest tests/test_golden.py    # or: pytest --accept
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EXPECT = Path(__file__).parent / "expect" / "demo_scan.npz"
#: ONNX Runtime fp32 on a CPU.  Measured: identical scores (difference 0.0) for batch
#: sizes 7, 32, 64 and 1 or 2 threads on the CPU that made the file; other CPUs' kernels
#: (AVX2 vs AVX-512) round differently, ~1e-6.  1e-5 leaves room for that, while a change
#: of pixels, preprocessing or weights moves scores by far more.
SCORE_ATOL = 1e-5
SIZE, SEED, CORE = 512, 5, 256
EXACT = ("x", "y", "tile", "flags", "is_candidate")


def _demo_scan(root: Path) -> dict[str, np.ndarray]:
    from astropy.table import Table

    from pyengine.io.mosaic import Mosaic
    from pyengine.scan.engine import Engine
    from pyengine.scan.run import run_scan
    from pyengine.sources.detect import DetectSource
    from pyengine.synth import SynthConfig, make_field

    field = make_field(root / "field", SynthConfig(width=SIZE, height=SIZE, seed=SEED))
    bands = [field.images["g"][0], field.images["i"][0]]
    out = root / "candidates.fits"
    with Mosaic.open(bands) as mosaic, Engine(None, runner="onnxruntime", batch_size=32,
                                              threads=2, core=CORE,
                                              cache_dir=root / "onnx") as engine:
        # The demo's source (pyengine.demo.run.run_demo): detections with i < 21.
        run_scan(engine, mosaic, DetectSource(mag_limit=21.0, mag_band="i"), out)
    table = Table.read(out)
    got = {name: np.asarray(table[name]) for name in (*EXACT, "score")}
    got["is_candidate"] = got["is_candidate"].astype(bool)
    return got


def _versions() -> str:
    import onnxruntime

    import pyengine

    return f"pyengine {pyengine.__version__}, onnxruntime {onnxruntime.__version__}"


@pytest.mark.slow  # ~30 s on 2 busy cores: ONNX export of the demo model, 879 cutouts
def test_demo_scan_matches_its_golden_output(tmp_path, accept):
    got = _demo_scan(tmp_path)
    # A golden file of a degenerate scan would pin nothing: it must have sources in several
    # tiles, candidates and non-candidates.
    assert len(got["x"]) > 50 and len(np.unique(got["tile"])) == 4
    assert 0 < np.count_nonzero(got["is_candidate"]) < len(got["x"])
    assert np.all(np.isfinite(got["score"]))
    if accept:
        EXPECT.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(EXPECT, **got, versions=np.array(_versions()))
    if not EXPECT.exists():
        pytest.fail(f"{EXPECT} is missing: create it with `PYENGINE_ACCEPT=1 python -m pytest "
                    "tests/test_golden.py` (or `pytest --accept`), check the scan is right, "
                    "and commit it")
    with np.load(EXPECT, allow_pickle=False) as f:
        want = {k: f[k] for k in f.files}
    made_with = str(want.pop("versions"))
    assert sorted(want) == sorted(got), f"{EXPECT} holds {sorted(want)}"
    hint = (f" (golden file made with {made_with}; now {_versions()}; if the change is "
            "meant, regenerate it with PYENGINE_ACCEPT=1)")
    assert len(got["x"]) == len(want["x"]), \
        f"{len(got['x'])} positions, golden {len(want['x'])}" + hint
    for name in EXACT:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name + hint)
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=SCORE_ATOL,
                               err_msg="score" + hint)
