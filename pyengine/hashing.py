"""File hashes: the one place pyengine computes a file's SHA-256 or a cheap identity.

* :func:`file_sha256`: the hex SHA-256 of every byte, read in 1 MiB blocks.
  Model files, training catalogs and ONNX graphs are named by it (catalog
  ``MODELSHA``, engine and export caches, training fingerprints).
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

__all__ = ["BLOCK", "file_identity", "file_sha256"]

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
