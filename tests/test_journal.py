"""Tests of the resume journal (pyengine.output.journal)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from pyengine.errors import ResumeError
from pyengine.hashing import arrays_sha256
from pyengine.output.journal import Journal

FP = {"inputs": ["g.fits", "i.fits"], "model": "ab12" * 16, "cutout": 64, "threshold": 0.669}


def tile_arrays(tile: int, n: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(tile)
    return {"id": np.arange(n, dtype=np.int64) + 1000 * tile,
            "score": rng.random(n).astype(np.float32),
            "flags": np.full(n, tile % 3, dtype=np.int32),
            "label": np.array([f"t{tile}"] * 3)}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_start_record_load_round_trip(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    assert j.path == tmp_path / "scan.fits.journal"
    assert j.start(FP, resume=False) == set()
    stored = json.loads((j.path / "fingerprint.json").read_text())
    assert stored == FP
    text = (j.path / "fingerprint.json").read_text()
    assert text.index('"cutout"') < text.index('"inputs"') < text.index('"model"')  # sorted
    for tile in (5, 0, 12):
        j.record(tile, tile_arrays(tile))
    assert (j.path / "tile-000012.npz").is_file()
    assert j.completed() == {0, 5, 12}
    assert_same(j.load(5), tile_arrays(5))
    got = list(j.load_all())
    assert [t for t, _ in got] == [0, 5, 12]
    for tile, arrays in got:
        assert_same(arrays, tile_arrays(tile))
    assert [t for t, _ in j.load_all([12, 0])] == [0, 12]
    j.record(5, {"score": np.zeros(2, np.float32)})   # a tile recorded again is replaced
    assert_same(j.load(5), {"score": np.zeros(2, np.float32)})
    with np.load(j.path / "tile-000000.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["__entry__", "flags", "id", "label", "score"]
        identity = json.loads(z["__entry__"].tobytes())
    assert identity["tile"] == 0 and identity["format"] == 1
    assert identity["sha256"] == arrays_sha256(tile_arrays(0))
    with pytest.raises(ResumeError, match=r"tile-000007\.npz: tile 7 is not in the journal"):
        j.load(7)
    j.finish()
    assert not j.path.exists()


def test_resume_returns_completed_tiles(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    j.record(1, tile_arrays(1))
    j.record(3, tile_arrays(3))
    j.close()   # the scan stops; the journal stays
    again = Journal(tmp_path / "scan.fits")
    fp = {**FP, "inputs": ("g.fits", "i.fits")}  # tuples and lists are the same JSON
    assert again.start(fp, resume=True) == {1, 3}
    again.record(2, tile_arrays(2))
    assert again.completed() == {1, 2, 3}
    assert_same(dict(again.load_all([3]))[3], tile_arrays(3))
    again.finish()


def test_mismatched_fingerprint_names_the_keys(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    j.close()
    changed = {**FP, "model": "cd34" * 16, "stride": 8}
    del changed["cutout"]
    with pytest.raises(ResumeError) as info:
        Journal(tmp_path / "scan.fits").start(changed, resume=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{tmp_path / 'scan.fits.journal'}: resume refused, ")
    assert "model: sha256 ab12ab12… → sha256 cd34cd34…" in msg
    assert "cutout: 64 → (none)" in msg and "stride: (none) → 8" in msg
    assert "inputs" not in msg and "threshold" not in msg
    assert msg.endswith("to start over")
    # The refused resume left the journal as it was.
    assert Journal(tmp_path / "scan.fits").start(FP, resume=True) == set()


def test_new_scan_refuses_an_existing_journal(tmp_path):
    Journal(tmp_path / "scan.fits").start(FP, resume=False)
    with pytest.raises(ResumeError, match=r"scan\.fits\.journal: a journal of an unfinished "
                                          r"scan exists; rerun with --resume .* or delete"):
        Journal(tmp_path / "scan.fits").start(FP, resume=False)


def test_resume_without_journal_is_refused(tmp_path):
    with pytest.raises(ResumeError, match=r"nothing to resume at .*scan\.fits\.journal; run "
                                          "without --resume"):
        Journal(tmp_path / "scan.fits").start(FP, resume=True)
    (tmp_path / "scan.fits").write_text("done")
    with pytest.raises(ResumeError, match="the scan may have finished"):
        Journal(tmp_path / "scan.fits").start(FP, resume=True)


def test_second_process_or_object_cannot_share_a_journal(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    with pytest.raises(ResumeError, match=rf"another scan \(PID {os.getpid()}\) is running on "
                                          "this output"):
        Journal(tmp_path / "scan.fits").start(FP, resume=True)
    j.close()
    Journal(tmp_path / "scan.fits").start(FP, resume=True)


def test_leftover_temporary_files_are_ignored_and_cleaned(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    j.record(4, tile_arrays(4))
    j.close()
    stray = j.path / ".tile-000009.npz.12345.deadbeef.tmp"
    stray.write_bytes(b"PK\x03\x04 half a zip")
    assert j.completed() == {4}
    assert Journal(tmp_path / "scan.fits").start(FP, resume=True) == {4}
    assert not stray.exists()
    # A half-made journal folder of a dead process (killed inside start) is removed.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    half = tmp_path / f".new.fits.journal.{dead}.0badf00d.tmp"
    half.mkdir()
    live = tmp_path / f".new.fits.journal.{os.getpid()}.0badf00d.tmp"
    live.mkdir()
    Journal(tmp_path / "new.fits").start(FP, resume=False)
    assert not half.exists() and live.exists()


def test_record_from_another_thread_and_argument_checks(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    with pytest.raises(RuntimeError, match=r"record\(\) before start\(\)"):
        j.record(0, tile_arrays(0))
    j.start(FP, resume=False)
    errors = []

    def worker(tiles):
        try:
            for t in tiles:
                j.record(t, tile_arrays(t))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(k, 40, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert j.completed() == set(range(40))
    for tile, arrays in j.load_all():
        assert_same(arrays, tile_arrays(tile))
    with pytest.raises(ValueError, match="plain NumPy arrays only"):
        j.record(1, {"obj": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="integer >= 0"):
        j.record(-1, {})
    with pytest.raises(ValueError, match="JSON"):
        Journal(tmp_path / "other.fits").start({"x": object()}, resume=False)
    assert [p.name for p in j.path.iterdir() if p.name.startswith(".")] == []


def test_damaged_tile_is_reported(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    (j.path / "tile-000002.npz").write_bytes(b"not a zip")
    with pytest.raises(ResumeError, match=r"tile-000002\.npz: damaged journal entry .*; delete "
                                          "this file and rerun with --resume"):
        j.load(2)


_CHILD = r"""
import sys
import numpy as np
from pyengine.output.journal import Journal

out, resume = sys.argv[1], sys.argv[2] == "1"
j = Journal(out)
done = j.start({"fp": 1}, resume=resume)
print("ready", flush=True)
tile = 0
while True:
    if tile not in done:
        rng = np.random.default_rng(tile)
        j.record(tile, {"a": rng.random(60_000), "tile": np.array([tile])})
    tile += 1
"""


def test_sigkill_never_leaves_a_partial_tile(tmp_path):
    out = tmp_path / "scan.fits"
    rng = np.random.default_rng(7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])])}
    recorded = set()
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(int(round_ > 0))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", line + proc.stderr.read()
            time.sleep(rng.uniform(0.05, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        j = Journal(out)
        tiles = j.completed()
        assert tiles >= recorded   # nothing recorded is ever lost
        for tile in tiles:         # every visible tile is whole
            with np.load(j.path / f"tile-{tile:06d}.npz", allow_pickle=False) as z:
                assert int(z["tile"][0]) == tile
                np.testing.assert_array_equal(z["a"], np.random.default_rng(tile).random(60_000))
        assert j.start({"fp": 1}, resume=True) == tiles
        assert [p.name for p in j.path.iterdir() if p.name.endswith(".tmp")] == []
        j.close()
        recorded = tiles
    assert len(recorded) > 0


def test_dropped_journal_releases_its_lock(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    j.record(0, tile_arrays(0))
    del j   # an interrupted scan drops its journal without close()
    assert Journal(tmp_path / "scan.fits").start(FP, resume=True) == {0}


def _rewrite(path, arrays):
    """Write ``arrays`` (identity member included, as given) as the tile file ``path``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, a in arrays.items():
            with zf.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(a), allow_pickle=False)


def test_resume_sets_aside_every_entry_it_cannot_trust(tmp_path):
    fp = {**FP, "plan_id": "7f" * 32}
    j = Journal(tmp_path / "scan.fits")
    j.start(fp, resume=False)
    for tile in range(6):
        j.record(tile, tile_arrays(tile))
    j.close()
    path = {t: j.path / f"tile-{t:06d}.npz" for t in range(6)}
    with np.load(path[1], allow_pickle=False) as z:
        members = {name: z[name] for name in z.files}
    _rewrite(path[1], {**members, "score": members["score"] + 1})  # sound zip, wrong values
    _rewrite(path[2], tile_arrays(2))                                # an older pyengine's entry
    (j.path / "tile-3.npz").write_bytes(path[3].read_bytes())        # not the canonical name
    other = Journal(tmp_path / "other.fits")                         # another scan's tile 4
    other.start({**fp, "cutout": 32}, resume=False)
    other.record(4, tile_arrays(4))
    other.close()
    path[4].write_bytes((other.path / "tile-000004.npz").read_bytes())
    again = Journal(tmp_path / "scan.fits")
    assert again.start(fp, resume=True, tiles=range(5)) == {0, 3}
    got = {r.path.name: r for r in again.rejected}
    assert sorted(got) == ["tile-000001.npz", "tile-000002.npz", "tile-000004.npz",
                           "tile-000005.npz", "tile-3.npz"]
    assert "fail their SHA-256 checksum" in got["tile-000001.npz"].reason
    assert "without identity (written by an older pyengine)" in got["tile-000002.npz"].reason
    assert "not a journal tile name" in got["tile-3.npz"].reason
    assert "journal entry of another scan" in got["tile-000004.npz"].reason
    assert got["tile-000005.npz"].reason == "tile 5 is not one of the 5 tiles this scan has to do"
    assert not got["tile-000005.npz"].rescanned and got["tile-000001.npz"].rescanned
    msg = got["tile-000001.npz"].message()
    assert msg == (f"{path[1]}: damaged journal entry (its arrays fail their SHA-256 "
                   f"checksum); moved to {j.path / 'rejected' / 'tile-000001.npz'}; tile 1 "
                   "will be scanned again")
    assert sorted(p.name for p in (j.path / "rejected").iterdir()) == sorted(got)
    assert_same(again.load(0), tile_arrays(0))
    again.finish()
    assert not j.path.exists()


def test_refusal_names_every_leaf_that_differs_by_its_option(tmp_path):
    fp = {"source": {"kind": "catalog", "mag_limit": 20.0, "file": {"path": "/a/" + "c" * 80}},
          "band_files": [{"size": 10}, {"size": 20}], "model_sha256": "ab" * 32}
    j = Journal(tmp_path / "scan.fits")
    j.start(fp, resume=False)
    j.close()
    changed = {"source": {"kind": "catalog", "mag_limit": 19.5,
                          "file": {"path": "/b/" + "c" * 80}},
               "band_files": [{"size": 10}, {"size": 21}], "model_sha256": "cd" * 32}
    labels = {"source.mag_limit": "--mag-limit", "band_files": "BAND_FITS",
              "model_sha256": "--model"}
    with pytest.raises(ResumeError) as info:
        Journal(tmp_path / "scan.fits").start(changed, resume=True, labels=labels)
    msg = str(info.value)
    assert "--mag-limit: 20 → 19.5" in msg
    assert "BAND_FITS [band_files[1].size]: 20 → 21" in msg and "band_files[0]" not in msg
    assert "--model: sha256 abababab… → sha256 cdcdcdcd…" in msg
    assert f'source.file.path: "/a/{"c" * 80}" → "/b/{"c" * 80}"' in msg  # whole, not cut


def test_discard_if_empty_only_removes_a_journal_it_created_without_tiles(tmp_path):
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    assert j.discard_if_empty() and not j.path.exists()
    j = Journal(tmp_path / "scan.fits")
    j.start(FP, resume=False)
    j.record(0, tile_arrays(0))
    assert not j.discard_if_empty() and j.completed() == {0}
    j.close()
    again = Journal(tmp_path / "scan.fits")
    again.start(FP, resume=True)
    (again.path / "tile-000000.npz").unlink()
    assert not again.discard_if_empty() and again.path.is_dir()  # a resumed journal stays
    again.close()
