"""Fault injection: every way a scan can be stopped or damaged, then ``--resume``.

Each test starts a real ``pyengine scan`` process on a small field (20 tiles, a grid
of positions), hurts it at a known point and checks three things: the process ends
with a one-line message (never a traceback or a bare signal death), the work already
done is kept (the journal holds its tiles), and after the cause is removed a
``--resume`` gives a catalog and score map identical, bit for bit, to those of an
uninterrupted scan of the same inputs.

The faults: SIGKILL, SIGINT, SIGTERM, a full disk (a small tmpfs, where this machine
lets the tests mount one), a band file truncated or rewritten while the scan reads
it, and damaged journal entries (truncated, bit-flipped, another tile's file, a tile
outside the plan).  A process is frozen with SIGSTOP at the point of injection and
let go with SIGCONT, so the fault lands mid-scan whatever the machine's speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tests import scanfield

pytestmark = pytest.mark.slow

GRID = "8"
TILE = "64"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A field of its own (another seed than the shared one), never modified."""
    return scanfield.make_field(tmp_path_factory.mktemp("pristine"), seed=11)


@pytest.fixture
def bands(pristine, tmp_path):
    """A private copy of the field's band files, which a test may damage."""
    folder = tmp_path / "bands"
    folder.mkdir()
    paths = []
    for p in pristine["paths"]:
        paths.append(folder / p.name)
        shutil.copyfile(p, paths[-1])
    return paths


def _cmd(bands, model, out, *extra):
    return [sys.executable, "-m", "pyengine.cli", "scan", *map(str, bands), "--grid", GRID,
            "--model", str(model), "--out", str(out), "--tile-size", TILE, "--batch-size", "8",
            "--threads", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(pristine, model, env, tmp_path_factory):
    """The uninterrupted scan every resumed one must equal."""
    out = tmp_path_factory.mktemp("reference") / "ref.fits"
    done = subprocess.run(_cmd(pristine["paths"], model, out), env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return out


def _journal(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def _tiles(out: Path) -> list[Path]:
    return sorted(_journal(out).glob("tile-*.npz"))


def _start(bands, model, out, env, *extra):
    return subprocess.Popen(_cmd(bands, model, out, *extra), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _freeze_after(proc, out: Path, count: int, timeout: float = 180.0) -> None:
    """SIGSTOP ``proc`` once ``count`` tiles are journalled."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if len(_tiles(out)) >= count:
            proc.send_signal(signal.SIGSTOP)
            return
        if proc.poll() is not None:
            pytest.fail(f"scan ended before {count} tiles: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no tiles journalled in time")


def _finish(proc, timeout: float = 300.0) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def _one_line_failure(code: int, stderr: str, *names: str) -> str:
    """The process failed with an ``Error: ...`` line (no traceback, no signal death)."""
    assert code not in (0, 130) and code > 0, (code, stderr)
    assert "Traceback" not in stderr and "Bus error" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr
    for name in names:
        assert name in errors[0], errors[0]
    return errors[0]


def _resume(bands, model, out, env) -> subprocess.CompletedProcess:
    done = subprocess.run(_cmd(bands, model, out, "--resume"), env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done


def _assert_same_as(reference: Path, out: Path) -> None:
    a, b = Table.read(reference), Table.read(out)
    assert a.colnames == b.colnames
    assert len(a) == len(b) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    ref_map = reference.with_name(reference.stem + "_scoremap.fits")
    out_map = out.with_name(out.stem + "_scoremap.fits")
    with fits.open(ref_map) as x, fits.open(out_map) as y:
        np.testing.assert_array_equal(x[0].data, y[0].data)
    assert not _journal(out).exists()


# -- signals ----------------------------------------------------------------------------------
def test_sigkill_keeps_every_journalled_tile(bands, model, env, reference, tmp_path):
    out = tmp_path / "killed.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 3)
    kept = _tiles(out)
    proc.kill()
    proc.communicate()
    assert not out.exists()
    assert _tiles(out) == kept  # a kill loses nothing journalled, adds nothing half-made
    done = _resume(bands, model, out, env)
    assert f"({len(kept)} resumed)" in done.stdout
    _assert_same_as(reference, out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_polite_signal_stops_cleanly_and_resumes_exactly(bands, model, env, reference,
                                                           tmp_path, signum):
    out = tmp_path / "stopped.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 2)
    proc.send_signal(signum)  # delivered when the process runs again
    proc.send_signal(signal.SIGCONT)
    code, _, stderr = _finish(proc)
    assert code == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not out.exists() and len(_tiles(out)) >= 2
    _resume(bands, model, out, env)
    _assert_same_as(reference, out)


# -- a full disk --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and a kernel that lets this process mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` to the last byte, then give back ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for block in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            try:
                while True:
                    fh.write(block)
            except OSError:
                pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_disk_full_mid_scan_keeps_the_tiles_and_resumes_exactly(bands, model, env, reference,
                                                                small_disk):
    out = small_disk / "full.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 3)
    filler = _fill(small_disk)
    kept = _tiles(out)
    proc.send_signal(signal.SIGCONT)
    code, _, stderr = _finish(proc)
    line = _one_line_failure(code, stderr)
    assert "--resume" in line, line
    assert not out.exists()
    assert set(kept) <= set(_tiles(out))
    filler.unlink()
    _resume(bands, model, out, env)
    _assert_same_as(reference, out)


def test_disk_full_writing_the_catalog_keeps_every_tile_and_resumes_exactly(
        bands, model, env, reference, small_disk):
    out = small_disk / "last.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 19)  # of the field's 20 tiles
    biggest = max(p.stat().st_size for p in _tiles(out))
    filler = _fill(small_disk, leave=2 * biggest + 8192)  # the last tile fits, the catalog not
    proc.send_signal(signal.SIGCONT)
    code, _, stderr = _finish(proc)
    line = _one_line_failure(code, stderr)
    assert "--resume" in line, line
    assert not out.exists() and len(_tiles(out)) == 20
    filler.unlink()
    done = _resume(bands, model, out, env)
    assert "(20 resumed)" in done.stdout
    _assert_same_as(reference, out)


def test_disk_full_before_the_start_leaves_no_journal(bands, model, env, small_disk):
    out = small_disk / "none.fits"
    _fill(small_disk)
    proc = _start(bands, model, out, env)
    code, _, stderr = _finish(proc)
    _one_line_failure(code, stderr)
    assert not _journal(out).exists() and not out.exists()
    assert [p.name for p in small_disk.iterdir()] == ["filler"]


# -- inputs that change under the scan ------------------------------------------------------------
def test_a_band_truncated_mid_scan_stops_with_a_message_and_resumes_after_a_copy(
        bands, model, env, pristine, reference, tmp_path):
    out = tmp_path / "trunc.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 3)
    os.truncate(bands[0], bands[0].stat().st_size * 6 // 10)
    kept = _tiles(out)
    proc.send_signal(signal.SIGCONT)
    code, _, stderr = _finish(proc)
    _one_line_failure(code, stderr, bands[0].name)
    assert set(kept) <= set(_tiles(out))
    # Restoring the same bytes with a plain copy (a new mtime) lets the scan resume.
    shutil.copyfile(pristine["paths"][0], bands[0])
    _resume(bands, model, out, env)
    _assert_same_as(reference, out)


def test_a_band_rewritten_in_place_mid_scan_is_refused(bands, model, env, pristine, reference,
                                                       tmp_path):
    out = tmp_path / "rewritten.fits"
    proc = _start(bands, model, out, env)
    _freeze_after(proc, out, 3)
    size = bands[1].stat().st_size
    with open(bands[1], "r+b") as fh:  # the last rows of the image: not read yet
        fh.seek(size - 40_000)
        fh.write(np.full(5_000, 7.5, ">f4").tobytes())
    proc.send_signal(signal.SIGCONT)
    code, _, stderr = _finish(proc)
    _one_line_failure(code, stderr, bands[1].name)
    # A resume with the changed file is refused; with the original bytes back, it resumes.
    refused = subprocess.run(_cmd(bands, model, out, "--resume"), env=env, capture_output=True,
                             text=True)
    _one_line_failure(refused.returncode, refused.stderr)
    shutil.copyfile(pristine["paths"][1], bands[1])
    _resume(bands, model, out, env)
    _assert_same_as(reference, out)


# -- a damaged journal ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def killed_journal(pristine, model, env, tmp_path_factory):
    """The journal of a scan killed after 4 tiles (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("killed") / "k.fits"
    proc = _start(pristine["paths"], model, out, env)
    _freeze_after(proc, out, 4)
    proc.kill()
    proc.communicate()
    return _journal(out)


def _damage_truncate(tiles):
    data = tiles[1].read_bytes()
    tiles[1].write_bytes(data[: len(data) // 2])
    return tiles[1].name


def _damage_flip(tiles):
    data = bytearray(tiles[2].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    tiles[2].write_bytes(bytes(data))
    return tiles[2].name


def _damage_swap(tiles):
    shutil.copyfile(tiles[0], tiles[3])  # tile 3's file now holds tile 0's rows
    return tiles[3].name


def _damage_outside(tiles):
    stranger = tiles[0].with_name("tile-009999.npz")  # no such tile in the plan
    shutil.copyfile(tiles[0], stranger)
    return stranger.name


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_flip, _damage_swap,
                                    _damage_outside],
                         ids=["truncated", "bit-flipped", "another-tiles-rows", "outside-plan"])
def test_a_damaged_journal_entry_is_named_and_rescanned(pristine, model, env, reference,
                                                        killed_journal, tmp_path, damage):
    out = tmp_path / "k.fits"
    shutil.copytree(killed_journal, _journal(out))
    tiles = _tiles(out)
    assert len(tiles) >= 4
    name = damage(tiles)
    done = _resume(pristine["paths"], model, out, env)
    assert name in done.stderr + done.stdout
    _assert_same_as(reference, out)
