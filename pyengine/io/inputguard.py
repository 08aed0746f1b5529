"""Input files that change under a read: the checks and the SIGBUS handler.

:class:`FileGuard` holds a descriptor of an input file with its size and mtime at
open; :meth:`FileGuard.check` (one ``fstat``, about a microsecond) raises a one-line
:class:`pyengine.errors.InputChangedError` once the file is shorter than it was or
was written since.  :mod:`pyengine.io.mosaic` checks every band before and after
every read, so a scan stops with that message rather than fault on a mapped page
past a shrunk file's end or use a window of mixed old and new pixels.

Only a truncation racing with a read, between the check and the touch of the page,
can still fault.  :func:`register_map` records each map's address range and file in
the compiled core's table (csrc/sigbus.hpp, always, cheaply); once
:func:`install_sigbus_handler` has run (``pyengine scan`` runs it, importing pyengine
never does), such a fault prints one line naming the file and exits
:data:`EXIT_INPUT_SHRANK` instead of dying of SIGBUS without a word.  Python's
``faulthandler`` would print a multi-line stack and still die of the signal.

The mtime comparison needs the writer's clock to move: a write in the same coarse
kernel tick as the file's previous write keeps the mtime (Linux: a few ms), so only
writes after the file settled are seen.  ``ctime`` is not compared: a ``chmod`` or a
new hard link changes it without changing a byte.

Thread safety: a FileGuard's ``check`` may run on any number of threads at once;
``close`` must not race with it.  The table is lock-free (csrc/sigbus.cpp).
"""

from __future__ import annotations

import os
from pathlib import Path

from pyengine import _core
from pyengine.errors import InputChangedError, InputFileError

__all__ = ["EXIT_INPUT_SHRANK", "FileGuard", "install_sigbus_handler", "register_map",
           "unregister_map"]

#: Exit status of a process killed by the SIGBUS handler (EX_TEMPFAIL: restore, retry).
EXIT_INPUT_SHRANK = 75


def install_sigbus_handler(exit_code: int = EXIT_INPUT_SHRANK) -> None:
    """Make a fault on a mapped input that shrank print one line and exit ``exit_code``.

    A truncation that races with a read (after the check of every read, see
    :class:`FileGuard`) faults on the mapped page: by default the process dies of
    SIGBUS without a word.  Once this is called, such a fault prints
    ``pyengine: input file PATH shrank while being read (SIGBUS); completed tiles are
    journalled; restore the file and resume with --resume`` and exits ``exit_code``;
    any other SIGBUS goes to the handler that was there before (csrc/sigbus.hpp).
    ``pyengine scan`` calls it; importing pyengine never does, so an embedding
    application keeps its own handler unless it calls this.
    """
    _core.sigbus_install(int(exit_code))


class FileGuard:
    """An open descriptor of an input and its size and mtime when it was opened.

    :meth:`check` (a ``fstat``, about a microsecond) refuses to go on once the file
    is shorter than it was or was written since (in place: the mtime changed), with an
    :class:`InputChangedError` naming the file and both sizes.  A file replaced by a
    rename does not trip it: the descriptor (and a map) keep the old file's bytes.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise InputFileError(f"{path}: cannot open it ({exc.strerror})") from None
        st = os.fstat(self.fd)
        self.size, self.mtime_ns, self.inode = st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise InputChangedError if the file shrank or was written since it was opened."""
        st = os.fstat(self.fd)
        if st.st_size < self.size:
            raise InputChangedError(
                f"{self.path}: the file shrank from {self.size} to {st.st_size} bytes while "
                "it was being read; restore it as it was")
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            raise InputChangedError(
                f"{self.path}: the file was modified while it was being read (size "
                f"{self.size} -> {st.st_size} bytes, mtime {_when(self.mtime_ns)} -> "
                f"{_when(st.st_mtime_ns)}); restore it as it was")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _when(ns: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="microseconds")


def register_map(address: int, length: int, path) -> int:
    """Record a read-only map of ``path`` at ``[address, address + length)`` for the
    handler's message; the slot to give :func:`unregister_map` (-1: table full, the
    map is then not covered)."""
    return _core.sigbus_register(int(address), int(length), os.fspath(path))


def unregister_map(slot: int) -> None:
    """Forget a map of :func:`register_map` (before it is unmapped)."""
    _core.sigbus_unregister(int(slot))
