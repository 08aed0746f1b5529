"""Where one tile's read time goes: page faults, decode, and releasing the pages.

For a few tiles of an uncompressed float32 image (made by bench_read.py), times:
a NumPy copy of the raw window on a fresh memory map (faulting) and again
(mapped); pyengine's decode kernel faulting and mapped; and the
``madvise(MADV_DONTNEED)`` that gives the rows back.

Usage: python benchmarks/profile_read_tile.py FILE.fits [--tiles 7 14 21]
"""

from __future__ import annotations

import argparse
import mmap
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment

from pyengine import Mosaic, TilePlan


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def profile_tile(path, band, shape, window, buf, raw_buf) -> tuple[float, ...]:
    """Milliseconds: NumPy copy faulting, mapped; decode faulting, mapped; release."""
    y0, y1, x0, x1 = window
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, shape[0]), min(x1, shape[1])
    h, w = y1 - y0, x1 - x0
    band._madvise_rows(0, shape[0])  # start with nothing mapped
    raw = np.memmap(path, dtype=">f4", mode="r", offset=band._start + band._skip, shape=shape)
    dst = raw_buf[:h, :w]
    np_fault = _time(np.copyto, dst, raw[y0:y1, x0:x1])
    np_mapped = _time(np.copyto, dst, raw[y0:y1, x0:x1])
    del raw
    decode = band.scaling.decode
    args = (band._raw, y0, x0, buf, 0, 0, h, w)
    dec_fault = _time(lambda: decode(*args, swap=True, parallel=True))
    dec_mapped = _time(lambda: decode(*args, swap=True, parallel=True))
    release = _time(band._madvise_rows, y0, y1)
    return np_fault, np_mapped, dec_fault, dec_mapped, release


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--tiles", type=int, nargs="+", default=[7, 14, 21])
    args = ap.parse_args()
    print_environment(environment())
    with Mosaic.open([args.path], bands=["b"]) as m:
        band = m._readers[0]  # the memory-mapped band: this script profiles its internals
        if band.compressed:
            sys.exit(f"{args.path}: tile-compressed; give an uncompressed image")
        plan = TilePlan.for_cutout(m.shape, cutout=64, core=2048)
        buf = np.empty((2112, 2112), np.float32)
        raw_buf = np.empty((2112, 2112), ">f4")
        print("tile  numpy-fault  numpy-mapped  decode-fault  decode-mapped  release   (ms)")
        for index in args.tiles:
            t = profile_tile(args.path, band, m.shape, plan[index].window, buf, raw_buf)
            print(f"{index:4d}  {t[0]:11.1f}  {t[1]:12.1f}  {t[2]:12.1f}  {t[3]:13.1f}  "
                  f"{t[4]:7.1f}")


if __name__ == "__main__":
    if not hasattr(mmap, "MADV_DONTNEED"):
        sys.exit("needs madvise (Linux)")
    main()
