"""Resume journal: finished tiles of a scan, kept on disk until its catalog is written.

A scan that writes ``OUT`` keeps its journal in the folder ``OUT.journal/``:

* ``fingerprint.json``: what the results depend on (inputs, model hash,
  options), JSON with sorted keys.  A resume must present an equal fingerprint.
* ``tile-000123.npz``: the result of tile 123, NumPy arrays only (``.npz``
  layout; object arrays are refused, files are read with ``allow_pickle=False``).
* ``lock``: held with ``flock`` while a scan uses the journal, so two processes
  never write one journal.

Protocol.  ``Journal(OUT).start(fingerprint, resume=False)`` creates the
folder, with its fingerprint, atomically (a temporary folder renamed into
place), and refuses if a journal already exists: unfinished work is never
thrown away silently.  ``start(..., resume=True)`` requires the journal, an
equal fingerprint (else :class:`ResumeError` naming the keys that differ),
and returns the tiles already done.  ``record(tile, arrays)`` stores one
tile; ``load_all(tiles)`` gives the stored results back in tile order;
``finish()`` deletes the folder once the final catalog is safely written.

Durability.  ``record`` writes a hidden temporary file, fsyncs it, renames it
to ``tile-NNNNNN.npz`` and fsyncs the folder; when it returns, the tile
survives a crash or SIGKILL, and a kill at any moment leaves either the whole
tile file or none (plus, perhaps, a hidden ``.tile-*.tmp`` that is ignored and
removed by the next ``start``; a half-made ``.OUT.journal.PID.*.tmp`` folder of
a process killed inside ``start`` is removed by the next new scan).

Thread safety: one Journal may be used from any thread (the scan's collector
thread records while the main thread started it); ``record``, ``finish`` and
``start`` are serialised by a lock, so there is one writer at a time.
``completed``, ``load`` and ``load_all`` only read finished files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from pyengine.atomic import publish, publish_folder, temporary_beside
from pyengine.errors import OutputError, ResumeError

try:  # POSIX advisory locks; elsewhere the journal is not protected against a second process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Journal"]

FINGERPRINT = "fingerprint.json"
LOCK = "lock"
_TILE = re.compile(r"tile-(\d+)\.npz")
_HASH = re.compile(r"[0-9a-fA-F]{32,}")


def _normal(fingerprint: Mapping) -> dict:
    """The fingerprint as JSON gives it back (tuples -> lists, keys -> str)."""
    try:
        return json.loads(json.dumps(dict(fingerprint), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal fingerprint must be JSON data without NaN ({exc})") from None


def _show(value) -> str:
    """A short rendering of a fingerprint value for messages."""
    if isinstance(value, str) and _HASH.fullmatch(value):
        kind = {64: "sha256 ", 40: "sha1 ", 32: "md5 "}.get(len(value), "")
        return f"{kind}{value[:8]}…"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


def _differences(old: dict, new: dict) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            parts.append(f"{key} is new (now {_show(new[key])})")
        elif key not in new:
            parts.append(f"{key} is gone (was {_show(old[key])})")
        elif old[key] != new[key]:
            parts.append(f"{key} changed (was {_show(old[key])}, now {_show(new[key])})")
    return "; ".join(parts)


class Journal:
    """The resume journal of the scan that writes ``out_path`` (folder ``OUT.journal``)."""

    def __init__(self, out_path):
        out = Path(out_path)
        self._out = out
        self._path = out.with_name(out.name + ".journal")
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._started = False

    @property
    def path(self) -> Path:
        """The journal folder."""
        return self._path

    def __repr__(self) -> str:
        return f"Journal({str(self._out)!r})"

    # ------------------------------------------------------------------ start

    def start(self, fingerprint: Mapping, *, resume: bool) -> set[int]:
        """Open the journal for a new scan (``resume=False``) or a resumed one.

        Returns the tiles already recorded (empty for a new scan).  Raises
        :class:`ResumeError` when resuming without a journal or with a
        different fingerprint, and when starting over would discard a journal.
        """
        fp = _normal(fingerprint)
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self._path}: journal already started")
            if resume:
                self._open_existing(fp)
            else:
                self._create(fp)
            self._started = True
        return self.completed()

    def _open_existing(self, fp: dict) -> None:
        file = self._path / FINGERPRINT
        if not file.is_file():
            done = f" ({self._out} exists: the scan may have finished)" if self._out.exists() else ""
            raise ResumeError(f"nothing to resume at {self._path}{done}; run without --resume")
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{file}: unreadable journal fingerprint ({exc}); delete "
                              f"{self._path} and run without --resume") from None
        self._acquire()
        if stored != fp:
            self._release()
            raise ResumeError(f"{self._path}: resume refused: {_differences(stored, fp)}; run "
                              f"without --resume (after deleting {self._path}) to start over")
        self._clean_temporaries()

    def _create(self, fp: dict) -> None:
        if self._path.exists():
            raise ResumeError(f"{self._path}: a journal of an unfinished scan exists; rerun "
                              f"with --resume to continue it, or delete {self._path} to start "
                              "over")
        parent = self._path.parent
        if not parent.is_dir():
            raise OutputError(f"{self._out}: folder {parent} does not exist; create it first")
        self._clean_dead_creations(parent)
        # The folder is made complete under a hidden name and renamed into place,
        # so a journal folder that exists always has its fingerprint and lock.
        tmp = temporary_beside(self._path, suffix=".tmp")
        try:
            tmp.mkdir()
            self._write_file(tmp / FINGERPRINT,
                             json.dumps(fp, sort_keys=True, indent=1).encode("utf-8") + b"\n")
            (tmp / LOCK).touch()
            publish_folder(tmp, self._path)  # fails if the journal appeared meanwhile
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ResumeError(f"{self._path}: another scan created this journal just now") \
                from None
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"{self._path}: cannot create the resume journal "
                              f"({exc.strerror or exc})") from None
        self._acquire()

    def _clean_dead_creations(self, parent: Path) -> None:
        """Remove half-made journal folders of processes killed while creating one."""
        for entry in parent.glob(f".{self._path.name}.*.tmp"):
            try:
                pid = int(entry.name.split(".")[-3])
                os.kill(pid, 0)          # raises if no such process
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except (ValueError, IndexError, PermissionError):
                continue                 # not ours, or another user's live process

    def _acquire(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self._path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResumeError(f"{self._path}: another running scan is using this journal") \
                from None
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _clean_temporaries(self) -> None:
        for entry in self._path.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)

    # ------------------------------------------------------------------ tiles

    def _tile_path(self, tile: int) -> Path:
        return self._path / f"tile-{tile:06d}.npz"

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        # Inside the hidden folder that start() renames into place: no rename of
        # its own, the folder's publication makes it visible (after this fsync).
        with open(path, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def record(self, tile: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Store the result of ``tile`` durably (replacing an earlier record of it)."""
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0:
            raise ValueError(f"tile must be an integer >= 0; got {tile!r}")
        tile = int(tile)
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        for name, a in arrays.items():
            if a.dtype.hasobject:
                raise ValueError(f"tile {tile}: array {name!r} holds Python objects; "
                                 "the journal stores plain NumPy arrays only")
        with self._lock:
            if not self._started:
                raise RuntimeError(f"{self._path}: record() before start()")
            final = self._tile_path(tile)
            # ".tmp", not ".part": the hidden names _clean_temporaries removes.
            tmp = temporary_beside(final, suffix=".tmp")
            try:
                # What np.savez does, minus its reserved keyword names.
                with open(tmp, "xb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
                    for name, a in arrays.items():
                        with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                            np.lib.format.write_array(member, a, allow_pickle=False)
                publish([(tmp, final)])
            except OSError as exc:
                raise OutputError(f"{final}: cannot write the journal "
                                  f"({exc.strerror or exc})") from None
            finally:
                tmp.unlink(missing_ok=True)

    def completed(self) -> set[int]:
        """Tiles recorded so far (finished files only)."""
        try:
            names = os.listdir(self._path)
        except FileNotFoundError:
            return set()
        return {int(m.group(1)) for m in map(_TILE.fullmatch, names) if m}

    def load(self, tile: int) -> dict[str, np.ndarray]:
        """The arrays recorded for ``tile``."""
        path = self._tile_path(int(tile))
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        except FileNotFoundError:
            raise ResumeError(f"{path}: tile {tile} is not in the journal") from None
        except (OSError, ValueError, EOFError) as exc:
            raise ResumeError(f"{path}: damaged journal entry ({exc}); delete the file and "
                              "resume to scan that tile again") from None

    def load_all(self, tiles: Iterable[int] | None = None) -> Iterator[tuple[int, dict]]:
        """(tile, arrays) for ``tiles`` (default: all recorded), in tile order."""
        chosen = self.completed() if tiles is None else {int(t) for t in tiles}
        for tile in sorted(chosen):
            yield tile, self.load(tile)

    # ----------------------------------------------------------------- finish

    def finish(self) -> None:
        """Delete the journal; call once the final catalog is written."""
        with self._lock:
            self._release()
            shutil.rmtree(self._path, ignore_errors=True)
            self._started = False

    def close(self) -> None:
        """Release the lock but keep the journal (a scan stopped before its end)."""
        with self._lock:
            self._release()
            self._started = False

    def __del__(self):
        # A journal dropped without finish()/close() (an interrupted scan) must not
        # keep its lock, or a resume in the same process would be refused.
        if getattr(self, "_lock_fd", None) is not None:
            self._release()
