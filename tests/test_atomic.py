"""pyengine.atomic: the one atomic file replacement every writer uses."""

import os
import re
import stat
from pathlib import Path

import pytest

from pyengine import atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def fsyncs(monkeypatch):
    """Count os.fsync calls by kind (file or folder) of what they sync."""
    seen = {"file": 0, "dir": 0}
    real = os.fsync

    def counting(fd):
        seen["dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"] += 1
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", counting)
    return seen


def test_temporary_name_is_hidden_beside_the_destination(tmp_path):
    tmp = atomic.temporary_beside(tmp_path / "cat.fits")
    assert tmp.parent == tmp_path
    assert re.fullmatch(rf"\.cat\.fits\.{os.getpid()}\.[0-9a-f]{{8}}\.part", tmp.name)
    assert atomic.temporary_beside(tmp_path / "t.npz", suffix=".tmp").name.endswith(".tmp")
    assert tmp != atomic.temporary_beside(tmp_path / "cat.fits")


def test_atomic_path_success_publishes_and_syncs(tmp_path, fsyncs):
    dest = tmp_path / "out.bin"
    dest.write_bytes(b"old")
    with atomic.atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
        tmp.write_bytes(b"new")
        assert dest.read_bytes() == b"old"     # untouched until the block ends
    assert dest.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.bin"]
    assert fsyncs == {"file": 1, "dir": 1}


def _fail_inside(dest: Path) -> None:
    with atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")


def test_atomic_path_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside(dest)
    assert _names(tmp_path) == []
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        _fail_inside(dest)
    assert dest.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_failed_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def no_rename(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", no_rename)
    with pytest.raises(PermissionError):
        atomic.atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert _names(tmp_path) == []


def test_write_bytes_and_text(tmp_path, fsyncs):
    assert atomic.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic.atomic_write_text(tmp_path / "t.json", "{\"a\": \"\u00e9\"}\n")
    assert (tmp_path / "t.json").read_bytes() == "{\"a\": \"\u00e9\"}\n".encode()
    assert fsyncs == {"file": 2, "dir": 2}
    assert _names(tmp_path) == ["b.bin", "t.json"]


def test_publish_syncs_every_file_before_the_first_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(atomic.os, "replace",
                        lambda a, b: (events.append(f"replace {Path(b).name}"),
                                      real_replace(a, b)))
    pairs = []
    for name in ("cat.csv.meta.json", "cat.csv"):
        tmp = atomic.temporary_beside(tmp_path / name)
        tmp.write_text(name)
        pairs.append((tmp, tmp_path / name))
    atomic.publish(pairs)
    # Two file syncs, the renames in the given order (sidecar first), one folder sync.
    assert events == ["fsync", "fsync", "replace cat.csv.meta.json", "replace cat.csv", "fsync"]
    assert _names(tmp_path) == ["cat.csv", "cat.csv.meta.json"]


def test_publish_folder_refuses_to_replace(tmp_path):
    tmp = atomic.temporary_beside(tmp_path / "j.journal", suffix=".tmp")
    tmp.mkdir()
    (tmp / "fingerprint.json").write_text("{}")
    atomic.publish_folder(tmp, tmp_path / "j.journal")
    assert _names(tmp_path / "j.journal") == ["fingerprint.json"]
    other = atomic.temporary_beside(tmp_path / "j.journal", suffix=".tmp")
    other.mkdir()
    (other / "fingerprint.json").write_text("{}")
    with pytest.raises(OSError, match=r"j\.journal"):
        atomic.publish_folder(other, tmp_path / "j.journal")


def test_fsync_dir_tolerates_file_systems_without_folder_sync(tmp_path, monkeypatch):
    import errno

    def einval(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(atomic.os, "fsync", einval)
    atomic.fsync_dir(tmp_path)            # no error: the file system cannot do it

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output"):
        atomic.fsync_dir(tmp_path)


def test_only_one_rename_over_a_file_in_the_package():
    root = Path(atomic.__file__).parent
    sites = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py")
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "os.replace(" in line]
    assert [s.split(":")[0] for s in sites] == ["atomic.py"], sites
