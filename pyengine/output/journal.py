"""Resume journal: finished tiles of a scan, kept on disk until its catalog is written.

A scan that writes ``OUT`` keeps its journal in the folder ``OUT.journal/``:

* ``fingerprint.json``: what the results depend on (inputs, model hash,
  options), JSON with sorted keys.  A resume must present an equal fingerprint.
* ``tile-000123.npz``: the result of tile 123, NumPy arrays only (``.npz``
  layout; object arrays are refused, files are read with ``allow_pickle=False``),
  plus the member ``__entry__.npy``: the entry's identity as UTF-8 JSON bytes,
  ``{"format", "tile", "plan_id", "scan", "sha256"}`` (the tile number, the
  fingerprint's ``plan_id``, a hash of the whole fingerprint, and the SHA-256 of
  the arrays, :func:`pyengine.hashing.arrays_sha256`).
* ``settings.json``: options that do not change per-tile results (the candidate
  threshold), not compared on resume; the previous run's are
  :attr:`Journal.previous_settings`.
* ``lock``: held with ``flock`` while a scan uses the journal, so two processes
  never write one journal; it holds the PID of the scan that holds it.
* ``rejected/``: entries a resume found damaged or foreign, set aside (see below).

Protocol.  ``Journal(OUT).start(fingerprint, resume=False)`` creates the
folder, with its fingerprint, atomically (a temporary folder renamed into
place), and refuses if a journal already exists: unfinished work is never
thrown away silently.  ``start(..., resume=True)`` requires the journal, an
equal fingerprint (else :class:`ResumeError` naming every value that differs,
``--mag-limit: 20 → 19``), verifies every entry before any new work and returns
the tiles already done.  ``record(tile, arrays)`` stores one
tile; ``load_all(tiles)`` gives the stored results back in tile order;
``finish()`` deletes the folder once the final catalog is safely written;
``discard_if_empty()`` deletes a journal its own ``start`` created when no tile
was recorded (a scan that failed before its first tile).

Durability.  ``record`` writes a hidden temporary file, fsyncs it, renames it
to ``tile-NNNNNN.npz`` and fsyncs the folder; when it returns, the tile
survives a crash or SIGKILL, and a kill at any moment leaves either the whole
tile file or none (plus, perhaps, a hidden ``.tile-*.tmp`` that is ignored and
removed by the next ``start``; a half-made ``.OUT.journal.PID.*.tmp`` folder of
a process killed inside ``start`` is removed by the next new scan).

Verification.  A resume reads every entry whole: an unreadable file (truncated,
bit-flipped), one without identity (an older pyengine), one whose identity names
another tile, another scan or another plan, one whose arrays fail their
checksum, and a tile not among the scan's ``tiles`` are moved to ``rejected/``
(kept until the scan finishes) and listed in :attr:`Journal.rejected`; the
scan does such a tile again.  Entries are never trusted unverified: ``load``
checks the identity again, and a damaged entry there is a one-line
:class:`ResumeError` naming the file to delete, never a zip or zlib traceback.

Thread safety: one Journal may be used from any thread (the scan's collector
thread records while the main thread started it); ``record``, ``finish`` and
``start`` are serialised by a lock, so there is one writer at a time.
``completed``, ``load`` and ``load_all`` only read finished files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.atomic import atomic_write_bytes, publish, publish_folder, temporary_beside
from pyengine.errors import OutputError, ResumeError
from pyengine.hashing import arrays_sha256

try:  # POSIX advisory locks; elsewhere the journal is not protected against a second process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["Journal", "Rejected"]

FINGERPRINT = "fingerprint.json"
SETTINGS = "settings.json"
LOCK = "lock"
REJECTED = "rejected"
#: The member of a tile file that holds its identity (not a name a scan's arrays use).
ENTRY = "__entry__"
ENTRY_FORMAT = 1
_TILE = re.compile(r"tile-(\d+)\.npz")
_HASH = re.compile(r"[0-9a-fA-F]{32,}")


def _normal(fingerprint: Mapping) -> dict:
    """The fingerprint as JSON gives it back (tuples -> lists, keys -> str)."""
    try:
        return json.loads(json.dumps(dict(fingerprint), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"journal fingerprint must be JSON data without NaN ({exc})") from None


def _show(value) -> str:
    """A fingerprint value for messages: whole, but a hash shortened to 8 digits."""
    if value is _MISSING:
        return "(none)"
    if isinstance(value, str) and _HASH.fullmatch(value):
        kind = {64: "sha256 ", 40: "sha1 ", 32: "md5 "}.get(len(value), "")
        return f"{kind}{value[:8]}…"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))   # 20, as the user typed it, not 20.0
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


_MISSING = object()


def _leaves(value, prefix: str = "") -> dict:
    """Flatten nested dicts and lists to {"source.mag_limit": ..., "band_files[1].size": ...};
    lists of plain values stay whole (``bands: ["g", "i"] → ["i", "g"]``)."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {f"{prefix}.length": len(value)}
        for i, item in enumerate(value):
            out.update(_leaves(item, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def _differences(old: dict, new: dict, labels: Mapping[str, str] | None = None) -> str:
    """Every differing value as ``NAME: OLD → NEW``, NAME the option a key comes from
    (``labels``: a key path, or its start, -> option, e.g. "source.mag_limit" ->
    "--mag-limit"; a label for a prefix is given with the rest of the path in brackets)."""
    labels = labels or {}
    a, b = _leaves(old), _leaves(new)
    parts = []
    for key in sorted(set(a) | set(b)):
        was, now = a.get(key, _MISSING), b.get(key, _MISSING)
        if was == now:
            continue
        name = key
        if key in labels:
            name = labels[key]
        else:
            for prefix in sorted(labels, key=len, reverse=True):
                if key.startswith((prefix + ".", prefix + "[")):
                    name = f"{labels[prefix]} [{key}]"
                    break
        parts.append(f"{name}: {_show(was)} → {_show(now)}")
    return "; ".join(parts)


def _digest(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Rejected:
    """A journal entry a resume set aside: ``path`` (where it was), the ``tile`` its name
    gives, why, and where it lies now (None: removed)."""

    path: Path
    tile: int | None
    reason: str
    moved_to: Path | None
    rescanned: bool

    def message(self) -> str:
        """One line for the user."""
        where = f"moved to {self.moved_to}" if self.moved_to is not None else "removed"
        then = (f"tile {self.tile} will be scanned again" if self.rescanned
                else "it is not a tile this scan has to do")
        return f"{self.path}: {self.reason}; {where}; {then}"


class Journal:
    """The resume journal of the scan that writes ``out_path`` (folder ``OUT.journal``)."""

    def __init__(self, out_path):
        out = Path(out_path)
        self._out = out
        self._path = out.with_name(out.name + ".journal")
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._started = False
        self._created = False
        self._plan_id = None
        self._scan_id = ""
        #: Entries the last ``start(resume=True)`` set aside (:class:`Rejected`).
        self.rejected: list[Rejected] = []
        #: ``settings`` given to the start of the run this one resumes ({} if none).
        self.previous_settings: dict = {}

    @property
    def path(self) -> Path:
        """The journal folder."""
        return self._path

    @property
    def created(self) -> bool:
        """True when this object's ``start`` made the journal (a new scan, not a resume)."""
        return self._created

    def __repr__(self) -> str:
        return f"Journal({str(self._out)!r})"

    # ------------------------------------------------------------------ start

    def start(self, fingerprint: Mapping, *, resume: bool, tiles: Iterable[int] | None = None,
              labels: Mapping[str, str] | None = None,
              settings: Mapping | None = None) -> set[int]:
        """Open the journal for a new scan (``resume=False``) or a resumed one.

        Returns the tiles already recorded and verified (empty for a new scan).
        ``tiles``: the tile numbers the scan has to do (all of its plan with
        positions); an entry for any other tile is set aside.  None: not checked.
        ``labels`` names fingerprint keys by the options they come from in a
        refusal (see :func:`_differences`).  ``settings``: JSON options that do not
        change per-tile results, stored but not compared (see
        :attr:`previous_settings`).  The fingerprint's ``plan_id`` (if any) is
        written into every entry.

        Raises :class:`ResumeError` when resuming without a journal or with a
        different fingerprint, when starting over would discard a journal, and
        when another process holds the journal (naming its PID).
        """
        fp = _normal(fingerprint)
        new_settings = _normal(settings or {})
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self._path}: journal already started")
            self._plan_id = fp.get("plan_id")
            self._scan_id = _digest(fp)
            self.rejected = []
            if resume:
                self._open_existing(fp, labels)
                self._write_settings(new_settings)
                self._verify(None if tiles is None else {int(t) for t in tiles})
            else:
                self._create(fp, new_settings)
            self._started = True
        return self.completed()

    def _open_existing(self, fp: dict, labels) -> None:
        file = self._path / FINGERPRINT
        if not file.is_file():
            done = f" ({self._out} exists: the scan may have finished)" if self._out.exists() else ""
            raise ResumeError(f"nothing to resume at {self._path}{done}; run without --resume")
        self._acquire()  # first: a running scan's journal is never judged, nor its deletion advised
        try:
            try:
                stored = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ResumeError(f"{file}: unreadable journal fingerprint ({exc}); delete "
                                  f"{self._path} and run without --resume") from None
            if stored != fp:
                raise ResumeError(f"{self._path}: resume refused, the scan differs from the "
                                  f"journalled one: {_differences(stored, fp, labels)}; rerun "
                                  f"with the journalled values, or delete {self._path} and "
                                  "run without --resume to start over")
            try:
                self.previous_settings = json.loads(
                    (self._path / SETTINGS).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.previous_settings = {}
            self._clean_temporaries()
        except BaseException:
            self._release()
            raise

    def _write_settings(self, settings: dict) -> None:
        try:
            atomic_write_bytes(self._path / SETTINGS,
                               json.dumps(settings, sort_keys=True).encode("utf-8") + b"\n",
                               suffix=".tmp")
        except OSError as exc:
            self._release()
            raise OutputError(f"{self._path / SETTINGS}: cannot write the journal "
                              f"({exc.strerror or exc})") from None

    def _create(self, fp: dict, settings: dict) -> None:
        if self._path.exists():
            holder = self._holder()
            if holder is not None:
                raise ResumeError(self._busy(holder))
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
            self._write_file(tmp / SETTINGS,
                             json.dumps(settings, sort_keys=True).encode("utf-8") + b"\n")
            (tmp / LOCK).touch()
            publish_folder(tmp, self._path)  # fails if the journal appeared meanwhile
        except FileExistsError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ResumeError(f"{self._path}: another scan created this journal just now; "
                              f"wait for it to finish, or choose another --out") from None
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"{self._path}: cannot create the resume journal "
                              f"({exc.strerror or exc})") from None
        self._acquire()
        self._created = True

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
            raise ResumeError(self._busy(self._holder_pid())) from None
        # The holder's PID, for the message a second scan gets (advisory: never trusted).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _holder_pid(self) -> str:
        try:
            text = (self._path / LOCK).read_text(encoding="ascii").strip()
        except (OSError, ValueError):
            return ""
        return text if text.isdigit() else ""

    def _holder(self) -> str | None:
        """The PID (or "") of the process holding the journal's lock; None if none does."""
        if fcntl is None:
            return None
        try:
            fd = os.open(self._path / LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._holder_pid()
        finally:
            os.close(fd)  # drops a lock we got
        return None

    def _busy(self, pid: str) -> str:
        who = f"another scan (PID {pid})" if pid else "another scan"
        return (f"{self._out}: {who} is running on this output and holds its journal "
                f"{self._path}; wait for it to finish, or choose another --out")

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
        """Store the result of ``tile`` durably (replacing an earlier record of it), with
        its identity: tile number, plan, scan and the arrays' SHA-256."""
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0:
            raise ValueError(f"tile must be an integer >= 0; got {tile!r}")
        tile = int(tile)
        arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        for name, a in arrays.items():
            if a.dtype.hasobject:
                raise ValueError(f"tile {tile}: array {name!r} holds Python objects; "
                                 "the journal stores plain NumPy arrays only")
        if ENTRY in arrays:
            raise ValueError(f"tile {tile}: {ENTRY!r} is the journal's own member name")
        with self._lock:
            if not self._started:
                raise RuntimeError(f"{self._path}: record() before start()")
            identity = {"format": ENTRY_FORMAT, "tile": tile, "plan_id": self._plan_id,
                        "scan": self._scan_id, "sha256": arrays_sha256(arrays)}
            members = {**arrays, ENTRY: np.frombuffer(
                json.dumps(identity, sort_keys=True).encode("utf-8"), np.uint8)}
            final = self._tile_path(tile)
            # ".tmp", not ".part": the hidden names _clean_temporaries removes.
            tmp = temporary_beside(final, suffix=".tmp")
            try:
                # What np.savez does, minus its reserved keyword names.
                with open(tmp, "xb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
                    for name, a in members.items():
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

    def _check(self, path: Path, tile: int) -> tuple[dict | None, str]:
        """(arrays, "") for a sound entry of ``tile``, or (None, what is wrong with it)."""
        try:
            arrays = {}
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    if not name.endswith(".npy"):
                        return None, f"damaged journal entry (stray member {name!r})"
                    with zf.open(name) as member:
                        arrays[name[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
            raw = arrays.pop(ENTRY, None)
            identity = None if raw is None else json.loads(raw.tobytes().decode("utf-8"))
        # A damaged file can fail in any layer that parses it: zipfile (BadZipFile,
        # struct.error), zlib, NumPy's header literal (ValueError, SyntaxError), JSON.
        except Exception as exc:  # each means the same: damaged, scan the tile again
            return None, f"damaged journal entry ({type(exc).__name__}: {exc})"
        if not isinstance(identity, dict):
            return None, "journal entry without identity (written by an older pyengine)"
        if identity.get("tile") != tile:
            return None, (f"holds tile {identity.get('tile')}, not the tile {tile} its name "
                          "says")
        if identity.get("scan") != self._scan_id or identity.get("plan_id") != self._plan_id:
            what = "tile plan" if identity.get("plan_id") != self._plan_id else "scan"
            return None, f"journal entry of another {what} (its identity differs)"
        if identity.get("sha256") != arrays_sha256(arrays):
            return None, "damaged journal entry (its arrays fail their SHA-256 checksum)"
        return arrays, ""

    def _verify(self, tiles: set[int] | None) -> None:
        """Set aside every entry that is not a sound record of a tile the scan has to do."""
        for name in sorted(os.listdir(self._path)):
            match = _TILE.fullmatch(name)
            if not match:
                continue
            path = self._path / name
            tile = int(match.group(1))
            if name != self._tile_path(tile).name:
                reason = f"not a journal tile name (tile {tile} is {self._tile_path(tile).name})"
                arrays = None
            else:
                arrays, reason = self._check(path, tile)
            if arrays is not None and tiles is not None and tile not in tiles:
                reason = f"tile {tile} is not one of the {len(tiles)} tiles this scan has to do"
                arrays = None
            if arrays is None:
                self.rejected.append(self._set_aside(path, tile, reason,
                                                     tiles is None or tile in tiles))

    def _set_aside(self, path: Path, tile: int, reason: str, rescanned: bool) -> Rejected:
        folder = self._path / REJECTED
        dest = folder / path.name
        try:
            folder.mkdir(exist_ok=True)
            n = 1
            while dest.exists():
                dest = folder / f"{path.name}.{n}"
                n += 1
            publish([(path, dest)])  # the package's one rename (pyengine.atomic)
        except OSError as exc:
            self._release()
            raise ResumeError(f"{path}: {reason}, and it cannot be moved aside "
                              f"({exc.strerror or exc}); delete this file and rerun with "
                              "--resume") from None
        return Rejected(path, tile, reason, dest, rescanned)

    def load(self, tile: int) -> dict[str, np.ndarray]:
        """The arrays recorded for ``tile``, checked against their identity again."""
        path = self._tile_path(int(tile))
        if not path.is_file():
            raise ResumeError(f"{path}: tile {tile} is not in the journal")
        arrays, reason = self._check(path, int(tile))
        if arrays is None:
            raise ResumeError(f"{path}: {reason}; delete this file and rerun with --resume "
                              "to scan that tile again")
        return arrays

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

    def discard_if_empty(self) -> bool:
        """Delete the journal if this object created it and it holds no tile (a scan that
        failed before its first tile must not block the next run); True if deleted.  A
        journal that was resumed, or holds any tile, is kept."""
        with self._lock:
            if not self._created or self.completed():
                return False
            self._release()
            shutil.rmtree(self._path, ignore_errors=True)
            self._started = self._created = False
            return True

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
