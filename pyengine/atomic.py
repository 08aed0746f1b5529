"""Atomic file replacement: the one implementation every pyengine writer uses.

A file is written under a hidden temporary name in its destination's folder
(``.NAME.PID.RANDOM.part``: hidden so that listings and globs do not pick it
up, in the same folder so that the rename never crosses a file system), then
:func:`publish` fsyncs it, renames it over the destination (``os.replace``,
atomic on POSIX and Windows) and fsyncs the folder so that the rename itself
survives a power cut.  A reader sees the old file or the whole new one, never
a part; a killed process leaves only the hidden temporary file.

* :func:`atomic_path` is the usual form: a context manager yielding the
  temporary path for any writer (torch.save, fitsio, savefig, ...); it
  publishes on success and removes the temporary file on any exception.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` for data in memory.
* :func:`temporary_beside` + :func:`publish` for writers that hold the file
  open across calls (the streaming FITS writer) or publish several files in a
  set order (a CSV's sidecar before the CSV).
* :func:`publish_folder` renames a completed temporary folder into place
  (refusing, unlike a file, to replace an existing one).

This is a leaf module: it imports nothing of pyengine, and raises the
``OSError`` of the failing call; callers turn it into their own one-line
typed error, since only they know what the file is for.

Thread safety: no shared state; calls on different destinations may run
concurrently (temporary names carry the process id and 32 random bits).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file",
           "publish", "publish_folder", "temporary_beside"]

#: fsync errors that mean "this file system cannot sync a folder", not a failed write.
_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES,
                          getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)})


def temporary_beside(path, suffix: str = ".part") -> Path:
    """A hidden, unused-by-anyone-else name in ``path``'s folder: ``.NAME.PID.RANDOM.part``.

    ``suffix`` lets a caller keep its own documented pattern (the journal's
    ``.tmp`` names, which its own cleanup recognises).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def fsync_file(path) -> None:
    """Flush a closed file's data to disk (opened read-write: Windows needs it)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder) -> None:
    """fsync a folder, so that renames and creations in it are durable.

    Quietly does nothing where folders cannot be opened (Windows) or the file
    system does not sync folders (EINVAL and kin); other errors are raised.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _NO_DIR_SYNC or os.name != "posix":
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def publish(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Make finished temporary files final: fsync every one, rename them in the
    given order, then fsync each destination folder once.

    All data is on disk before the first rename, so a crash between two renames
    leaves complete files only (which pairs were renamed is the caller's order:
    the CSV writer renames its sidecar first).
    """
    pairs = [(Path(tmp), Path(final)) for tmp, final in pairs]
    for tmp, _ in pairs:
        fsync_file(tmp)
    for tmp, final in pairs:
        os.replace(tmp, final)
    for folder in dict.fromkeys(final.parent for _, final in pairs):
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; publish it onto ``path`` when the
    block ends normally, and remove it when the block (or publishing) raises.

    The destination is untouched until the block succeeds.  The block must
    close what it wrote to the temporary path before it ends.
    """
    path = Path(path)
    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        publish([(tmp, path)])
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes, suffix: str = ".part") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path, suffix) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding=encoding, newline="") as fh:
        fh.write(text)
    return Path(path)


def publish_folder(tmp, final) -> None:
    """Rename a completed temporary folder ``tmp`` to ``final``, durably.

    The folder is fsynced first (its entries are durable), then renamed, then
    its parent is fsynced.  ``os.rename``, not ``os.replace``: an existing
    ``final`` is never replaced (``FileExistsError``/``OSError``), so two
    processes racing to create it cannot both win.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)
