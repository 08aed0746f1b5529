"""File hashes: the one place pyengine computes a file's SHA-256 or a cheap identity.

* :func:`file_sha256`: the hex SHA-256 of every byte, read in 1 MiB blocks.
  Model files, training catalogs and ONNX graphs are named by it (catalog
  ``MODELSHA``, engine and export caches, training fingerprints).
* :func:`stream_sha256`: the hex SHA-256 of the next bytes of an open file, read
  in the same blocks: the checksums stored inside model files (a safetensors
  file's tensor data, an ONNX file's graph) are computed and checked by it.
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

__all__ = ["BLOCK", "file_identity", "file_sha256", "stream_sha256"]

#: Read size, and the size of each end block that :func:`file_identity` hashes.
BLOCK = 1 << 20


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)


def stream_sha256(fh, length: int | None = None) -> str:
    """Hex SHA-256 of the next ``length`` bytes of the binary file ``fh`` (to its end when
    None), which is left after them; ``ValueError`` when the file ends first."""
    h = hashlib.sha256()
    left = length
    while left is None or left > 0:
        block = fh.read(BLOCK if left is None else min(BLOCK, left))
        if not block:
            if left is None:
                break
            raise ValueError(f"the file ends {left} bytes early")
        h.update(block)
        if left is not None:
            left -= len(block)
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
