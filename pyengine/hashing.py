"""File hashes: the one place pyengine computes a file's SHA-256 or a cheap identity.

* :func:`file_sha256`: the hex SHA-256 of every byte, read in 1 MiB blocks.
  Model files, training catalogs and ONNX graphs are named by it (catalog
  ``MODELSHA``, engine and export caches, training fingerprints).
* :func:`arrays_sha256`: the hex SHA-256 of named arrays (names, dtypes, shapes
  and bytes): the checksum of a resume journal entry.
* :func:`file_identity`: resolved path, size, mtime (ns) and the SHA-256 of the
  first and last MiB only.  A resume fingerprint of a 22 GB band cannot afford
  a full hash (minutes); size + mtime catch a rewrite, and the two end blocks
  catch a same-size copy of another file (FITS headers differ at the start,
  the last rows at the end).

This is a leaf module: it imports nothing of pyengine.  Callers turn
``OSError`` into their own typed error.

Thread safety: pure functions of the file's bytes; safe from any thread
(``hashlib`` releases the GIL on large updates).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["BLOCK", "arrays_sha256", "file_identity", "file_sha256"]

#: Read size, and the size of each end block that :func:`file_identity` hashes.
BLOCK = 1 << 20


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def file_identity(path) -> dict:
    """``{"path", "size", "mtime_ns", "sha256_ends"}`` of a file: a cheap identity for
    resume fingerprints (see the module docstring).  ``sha256_ends`` hashes the first
    MiB, then the last MiB when the file is over 2 MiB (so a file of up to 1 MiB is hashed
    whole)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(BLOCK))
        if st.st_size > 2 * BLOCK:
            fh.seek(-BLOCK, os.SEEK_END)
            h.update(fh.read(BLOCK))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_ends": h.hexdigest()}


def arrays_sha256(arrays) -> str:
    """Hex SHA-256 of a mapping name -> NumPy array: every name (in sorted order), its
    dtype, its shape and its bytes (C order), so renaming, retyping or reshaping an
    array changes the hash as surely as changing a value."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()
