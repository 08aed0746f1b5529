"""TilePlan: cores partition the image, ownership is unique on every border."""

from __future__ import annotations

import numpy as np
import pytest

from pyengine import TilePlan
from pyengine.coords import centre_pixel
from pyengine.errors import ConfigError


def reference_owner(plan: TilePlan, x: float, y: float) -> int:
    """Plain-Python ownership: the tile whose core contains the centre pixel."""
    if not (np.isfinite(x) and np.isfinite(y)):
        return -1
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    for tile in plan:
        if tile.y0 <= cy < tile.y1 and tile.x0 <= cx < tile.x1:
            return tile.index
    return -1


@pytest.mark.parametrize(("shape", "core"), [((100, 130), 32), ((64, 64), 64), ((7, 300), 50),
                                            ((1, 1), 2048)])
def test_cores_partition_the_image(shape, core):
    plan = TilePlan(shape, core=core, halo=5)
    cover = np.zeros(shape, dtype=np.int32)
    for tile in plan:
        cover[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
        assert tile.shape == (tile.y1 - tile.y0, tile.x1 - tile.x0)
    assert (cover == 1).all()
    assert len(plan) == plan.nrows * plan.ncols


def test_tiles_iterate_in_file_order():
    plan = TilePlan((100, 130), core=32)
    starts = [(t.y0, t.x0) for t in plan]
    assert starts == sorted(starts)  # row of tiles by row of tiles, left to right
    assert [t.index for t in plan] == list(range(len(plan)))
    assert plan[-1] == plan[len(plan) - 1]
    with pytest.raises(IndexError):
        plan[len(plan)]


def test_ownership_on_borders_matches_reference():
    plan = TilePlan((100, 130), core=32, halo=8)
    edges = []
    for v in (0, 31, 32, 63, 64, 99, 100, 129, 130):
        edges += [v - 0.5, v - 0.5 - 1e-9, v - 0.5 + 1e-9, float(v), v + 0.49999]
    xs, ys = np.meshgrid(np.array([*edges, -1e+300, 1e+300, np.nan, np.inf]),
                         np.array([*edges, np.nan, -np.inf]))
    x, y = xs.ravel(), ys.ravel()
    got = plan.assign(x, y)
    want = np.array([reference_owner(plan, a, b) for a, b in zip(x, y, strict=True)])
    np.testing.assert_array_equal(got, want)
    # The half-pixel rule: -0.5 is on the image, just below is not.
    assert plan.assign([-0.5], [0.0])[0] == 0
    assert plan.assign([np.nextafter(-0.5, -1)], [0.0])[0] == -1
    assert plan.assign([31.5], [0.0])[0] == 1  # centre pixel 32 starts tile 1
    assert plan.assign([np.nextafter(31.5, 0)], [0.0])[0] == 0


def test_random_positions_owned_exactly_once_and_cutouts_fit_the_window():
    rng = np.random.default_rng(5)
    shape, cutout = (517, 389), 16
    plan = TilePlan.for_cutout(shape, cutout=cutout, core=100)
    x = rng.uniform(-20, shape[1] + 20, 20000)
    y = rng.uniform(-20, shape[0] + 20, 20000)
    x[:50] = np.round(x[:50]) - 0.5  # exact pixel borders
    tile = plan.assign(x, y)
    cx, cy = centre_pixel(x), centre_pixel(y)
    on_image = (cx >= 0) & (cx < shape[1]) & (cy >= 0) & (cy < shape[0])
    np.testing.assert_array_equal(tile >= 0, on_image)
    half = cutout // 2
    for t in plan:
        mine = tile == t.index
        assert np.all((cx[mine] >= t.x0) & (cx[mine] < t.x1))
        assert np.all((cy[mine] >= t.y0) & (cy[mine] < t.y1))
        wy0, wy1, wx0, wx1 = t.window
        # Every owned cutout [c - half, c - half + cutout) lies inside the read window.
        assert np.all(cx[mine] - half >= wx0) and np.all(cx[mine] - half + cutout <= wx1)
        assert np.all(cy[mine] - half >= wy0) and np.all(cy[mine] - half + cutout <= wy1)


def test_group_is_a_stable_partition():
    rng = np.random.default_rng(2)
    plan = TilePlan((90, 90), core=30)
    x = rng.uniform(-5, 95, 3000)
    y = rng.uniform(-5, 95, 3000)
    tile, order, starts = plan.group(x, y)
    assert sorted(order.tolist()) == list(range(3000))
    assert len(starts) == len(plan) + 2
    for t in range(len(plan)):
        members = order[starts[t] : starts[t + 1]]
        assert (tile[members] == t).all()
        assert (np.diff(members) > 0).all()  # input order kept within a tile
    off = order[starts[-2] : starts[-1]]
    assert (tile[off] == -1).all()
    assert len(off) == int((tile == -1).sum())


def test_bad_plans_are_refused():
    with pytest.raises(ConfigError, match="core size 0"):
        TilePlan((10, 10), core=0)
    with pytest.raises(ConfigError, match="empty"):
        TilePlan((0, 10))
    with pytest.raises(ConfigError, match="1 x values but 2 y"):
        TilePlan((10, 10)).assign([1.0], [1.0, 2.0])


def test_tile_owns_agrees_with_assign_on_half_pixel_borders():
    """One rule, two implementations: Tile.owns (one tile, NumPy) and TilePlan.assign
    (the plan, Numba) give every position the same owner; a .5 rounds up (floor(v + 0.5))."""
    plan = TilePlan((130, 200), core=64, halo=8)
    edges = np.array([-0.5000001, -0.5, 0.0, 63.4999999, 63.5, 64.0, 127.5, 128.0, 191.5,
                      199.4999999, 199.5, 129.5, np.nan, np.inf, -np.inf, 1e300])
    x, y = (a.ravel() for a in np.meshgrid(edges, edges))
    rng = np.random.default_rng(0)
    x = np.concatenate([x, rng.uniform(-2, 202, 2000)])
    y = np.concatenate([y, rng.uniform(-2, 132, 2000)])
    owner = plan.assign(x, y)
    owns = np.array([plan[t].owns(x, y) for t in range(len(plan))])
    assert np.all(owns.sum(axis=0) == (owner >= 0))  # at most one owner, none off the image
    for t in range(len(plan)):
        np.testing.assert_array_equal(owns[t], owner == t)
    first, right = plan[0], plan[1]
    assert first.owns(63.4999999, 0.0) and not first.owns(63.5, 0.0) and right.owns(63.5, 0.0)
    assert first.owns(-0.5, -0.5) and not first.owns(-0.5000001, 0.0)
    assert not any(plan[t].owns(np.nan, 1.0) for t in range(len(plan)))


_CONCURRENT_ASSIGN = """
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from pyengine import TilePlan
from pyengine.kernels.pool import POOL
from pyengine.kernels.tiling import _PARALLEL_MIN

plan = TilePlan((3000, 2000), core=256, halo=16)
rng = np.random.default_rng(1)
x, y = rng.uniform(-10, 2010, 4 * _PARALLEL_MIN), rng.uniform(-10, 3010, 4 * _PARALLEL_MIN)
with POOL:  # the pool busy: the serial kernel
    serial = plan.assign(x, y)
barrier = threading.Barrier(6)

def work(_):
    barrier.wait()
    return all(np.array_equal(plan.assign(x, y), serial) for _ in range(20))

with ThreadPoolExecutor(6) as pool:
    same = all(pool.map(work, range(6)))
print(numba.threading_layer(), same, POOL.locked())
"""


def test_assign_from_many_threads_equals_serial():
    """The parallel kernel runs under the process-wide pool lock and callers finding it
    busy run the serial kernel: under Numba's workqueue layer, which terminates the
    process on concurrent parallel regions, six threads assigning at once agree."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _CONCURRENT_ASSIGN], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", "True", "False"], done.stdout
