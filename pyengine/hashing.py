"""File hashes: the one place pyengine computes a file's SHA-256 or a cheap identity.

* :func:`file_sha256`: the hex SHA-256 of every byte, read in 1 MiB blocks.
  Model files, training catalogs and ONNX graphs are named by it (catalog
  ``MODELSHA``, engine and export caches, training fingerprints).
* :func:`arrays_sha256`: the hex SHA-256 of named arrays (names, dtypes, shapes
  and bytes): the checksum of a resume journal entry.
* :func:`stream_sha256`, :func:`ranges_sha256`: the hex SHA-256 of the next bytes
  of an open file, or of given byte ranges of it, read in the same blocks: the
  checksums stored inside model files (a safetensors file's tensor data, an ONNX
  file's graph) are computed and checked by them.
* :func:`file_identity`: size and a SHA-256 of sampled content: the first and
  last MiB plus :data:`SAMPLES` blocks of :data:`SAMPLE` bytes at offsets spread
  evenly between them (a file of up to :data:`WHOLE` bytes is hashed whole).
  A resume fingerprint of a 22 GB band cannot afford a full hash (minutes);
  this reads 6 MiB at fixed offsets (milliseconds).  It names content only,
  never a path or a time: a plain ``cp`` of the same bytes (new mtime, new
  place) has the same identity, so a scan interrupted while an input was being
  restored resumes on the copy.  A rewrite with other data changes the size or
  some sampled byte: FITS headers differ at the start, the last rows at the end,
  and reprocessed pixels everywhere in between.  The price of being cheap: a
  same-size change confined to bytes no sample covers goes unseen.

This is a leaf module: it imports nothing of pyengine.  Callers turn
``OSError`` into their own typed error.

Thread safety: pure functions of the file's bytes; safe from any thread
(``hashlib`` releases the GIL on large updates).
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["BLOCK", "SAMPLE", "SAMPLES", "WHOLE", "arrays_sha256", "file_identity",
           "file_sha256", "ranges_sha256", "sample_offsets", "stream_sha256"]

#: Read size, and the size of each end block that :func:`file_identity` hashes.
BLOCK = 1 << 20
#: Interior blocks :func:`file_identity` hashes, and the size of each.
SAMPLES, SAMPLE = 64, 64 << 10
#: Files up to this size are hashed whole by :func:`file_identity`.
WHOLE = 2 * BLOCK + SAMPLES * SAMPLE


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


def sample_offsets(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of every byte range :func:`file_identity` hashes, in file
    order: the whole file up to :data:`WHOLE` bytes, else the first :data:`BLOCK`,
    :data:`SAMPLES` blocks of :data:`SAMPLE` bytes starting at evenly spaced offsets
    between the ends (the first right after the first block, the last ending right
    before the last block), then the last :data:`BLOCK`.  Depends on ``size`` only."""
    if size <= WHOLE:
        return [(0, size)]
    span = size - 2 * BLOCK - SAMPLE  # first to last interior start
    inner = [(BLOCK + k * span // (SAMPLES - 1), SAMPLE) for k in range(SAMPLES)]
    return [(0, BLOCK), *inner, (size - BLOCK, BLOCK)]


def ranges_sha256(fh, ranges) -> str:
    """Hex SHA-256 of the byte ranges ``(offset, length)`` of the open binary file ``fh``,
    concatenated in the order given; read in blocks with ``pread`` (the file position is
    left alone); ``ValueError`` when the file ends inside a range."""
    h = hashlib.sha256()
    fd = fh.fileno()
    for offset, length in ranges:
        while length > 0:
            block = os.pread(fd, min(BLOCK, length), offset)
            if not block:
                raise ValueError(f"the file ends {length} bytes early")
            h.update(block)
            offset += len(block)
            length -= len(block)
    return h.hexdigest()


def file_identity(path) -> dict:
    """``{"size", "sha256_sampled"}`` of a file: a cheap content identity for resume
    fingerprints (see the module docstring).  ``sha256_sampled`` is the SHA-256 of the
    ranges of :func:`sample_offsets`, concatenated; no path, no mtime."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return {"size": size, "sha256_sampled": ranges_sha256(fh, sample_offsets(size))}


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
