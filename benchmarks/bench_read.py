"""Mosaic.read throughput and memory.

1. Uncompressed big-endian float32: ``Mosaic.read`` of every tile (core +
   halo) as a ratio to a plain NumPy copy of the same raw bytes from a
   memory map, in the same run, alternating A/B (goal >= 0.8).
2. Scaled int16 (BSCALE/BZERO/BLANK) against a NumPy copy of its bytes, and
   RICE tile-compressed int16 in MPix/s.
3. Peak resident memory of a fresh process that reads every tile of a
   two-band float32 mosaic of >= 4 GB (goal < 600 MB).

Usage: python benchmarks/bench_read.py [--workdir DIR] [--big-gb 4.3] [--json FILE]
The files are written once into --workdir and reused on later runs.  Data
are read from the page cache (warm): the figures are memory, not disk, rates.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, repeat, write_json

from pyengine import Mosaic, TilePlan


def _wcs_header(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.6847, 41.2690]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cd = np.diag([-0.187 / 3600, 0.187 / 3600])
    return w.to_header()


def write_image(path: Path, shape, dtype: str, *, scaled=False, seed=0, strip=512):
    """Stream a big-endian image to disk strip by strip (never the whole image in memory)."""
    if path.exists():
        return path
    dt = np.dtype(dtype).newbyteorder(">")
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = {"f4": -32, "i2": 16}[np.dtype(dtype).str[1:]]
    header["NAXIS"] = 2
    header["NAXIS1"] = shape[1]
    header["NAXIS2"] = shape[0]
    header.update(_wcs_header(shape))
    if scaled:
        header["BSCALE"] = 0.05
        header["BZERO"] = 1000.0
        header["BLANK"] = -32768
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as fh:
        fh.write(header.tostring().encode("ascii"))
        base = rng.standard_normal((strip, shape[1])) * 100
        for y0 in range(0, shape[0], strip):
            rows = min(strip, shape[0] - y0)
            block = np.roll(base[:rows], y0 // strip, axis=1)
            fh.write(block.astype(dt).tobytes())
        fh.write(b"\0" * (-fh.tell() % 2880))
    tmp.rename(path)
    return path


def write_rice(path: Path, shape, seed=0):
    import fitsio

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal(shape) * 100).astype(np.int16)
    hdr = [{"name": k, "value": v} for k, v in _wcs_header(shape).items()]
    with fitsio.FITS(str(path) + ".part", "rw", clobber=True) as f:
        f.write(data, compress="RICE", header=hdr)
    Path(str(path) + ".part").rename(path)
    return path


def tile_windows(shape, core=2048, cutout=64):
    return [t.window for t in TilePlan.for_cutout(shape, cutout=cutout, core=core)]


def data_offset(path: Path) -> int:
    with fits.open(path) as hdul:
        return hdul.fileinfo(0)["datLoc"]


def numpy_copy_pass(path: Path, offset: int, shape, dtype, windows, buf):
    """The baseline: memory-map the raw bytes and copy each window (no swap, no scaling)."""
    raw = np.memmap(path, dtype=np.dtype(dtype).newbyteorder(">"), mode="r", offset=offset,
                    shape=shape)
    ny, nx = shape
    for y0, y1, x0, x1 in windows:
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
        np.copyto(buf[: cy1 - cy0, : cx1 - cx0], raw[cy0:cy1, cx0:cx1])
    del raw


def mosaic_pass(mosaic: Mosaic, windows, buf):
    for y0, y1, x0, x1 in windows:
        mosaic.read(y0, y1, x0, x1, out=buf[: mosaic.nband, : y1 - y0, : x1 - x0])


def throughput(path: Path, shape, dtype, *, runs=5) -> dict:
    windows = tile_windows(shape)
    core_px = shape[0] * shape[1]
    read_px = sum((min(w[1], shape[0]) - max(w[0], 0)) * (min(w[3], shape[1]) - max(w[2], 0))
                  for w in windows)
    buf = np.empty((1, 2048 + 64, 2048 + 64), np.float32)
    rawbuf = np.empty((2048 + 64, 2048 + 64), np.dtype(dtype).newbyteorder(">"))
    a, b = [], []
    offset = data_offset(path)  # outside the timed passes, like Mosaic.open
    with Mosaic.open([path], bands=["b"]) as mosaic:
        mosaic_pass(mosaic, windows[:2], buf)  # compile and warm up
        numpy_copy_pass(path, offset, shape, dtype, windows, rawbuf)  # bring the file into the page cache
        for _ in range(runs):  # alternate A/B so drift affects both alike
            a.append(repeat(lambda: mosaic_pass(mosaic, windows, buf), 1)["median"])
            b.append(repeat(lambda: numpy_copy_pass(path, offset, shape, dtype, windows, rawbuf), 1)["median"])
    ratios = sorted(bb / aa for aa, bb in zip(a, b, strict=True))
    itemsize = np.dtype(dtype).itemsize
    return {
        "pixels_per_pass": read_px, "image_pixels": core_px, "tiles": len(windows),
        "mosaic_read_s_median": float(np.median(a)), "numpy_copy_s_median": float(np.median(b)),
        "mosaic_read_mpix_s": read_px / np.median(a) / 1e6,
        "numpy_copy_mpix_s": read_px / np.median(b) / 1e6,
        "mosaic_read_gb_s_of_raw": read_px * itemsize / np.median(a) / 1e9,
        "ratio_read_over_copy_median": ratios[len(ratios) // 2],
        "ratio_min": ratios[0], "ratio_max": ratios[-1], "runs": runs,
    }


def compressed_throughput(path: Path, shape, runs=3) -> dict:
    windows = tile_windows(shape)
    buf = np.empty((1, 2048 + 64, 2048 + 64), np.float32)
    read_px = sum((min(w[1], shape[0]) - max(w[0], 0)) * (min(w[3], shape[1]) - max(w[2], 0))
                  for w in windows)
    with Mosaic.open([path], bands=["b"]) as mosaic:
        mosaic_pass(mosaic, windows[:1], buf)
        t = repeat(lambda: mosaic_pass(mosaic, windows, buf), runs)
    return {"mpix_s_median": read_px / t["median"] / 1e6, "seconds": t}


_PEAK_CHILD = r"""
import sys, time
import numpy as np
from pyengine import Mosaic, TilePlan
paths = sys.argv[1:]
with Mosaic.open(paths, bands=[f"b{i}" for i in range(len(paths))]) as m:
    plan = TilePlan.for_cutout(m.shape, cutout=64, core=2048)
    buf = np.empty((m.nband, 2048 + 64, 2048 + 64), np.float32)
    t0 = time.perf_counter()
    total = 0.0
    for tile in plan:
        y0, y1, x0, x1 = tile.window
        out = m.read(y0, y1, x0, x1, out=buf[:, : y1 - y0, : x1 - x0])
        total += float(out[:, 100, 100].sum())
    dt = time.perf_counter() - t0
# VmHWM: peak RSS of this address space.  (ru_maxrss would include the
# parent's resident set inherited across fork + exec.)
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
print(hwm, dt, len(plan))
"""


def peak_memory(paths) -> dict:
    """Two fresh processes: the first may JIT-compile the kernels (LLVM's own memory);
    the second loads them from Numba's cache, as every later run does."""
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _PEAK_CHILD, *map(str, paths)],
                             capture_output=True, text=True, check=True)
        rss, seconds, ntiles = res.stdout.split()
        runs.append((int(rss), float(seconds), int(ntiles)))
    size = sum(Path(p).stat().st_size for p in paths)
    (rss0, _, _), (rss, seconds, ntiles) = runs
    return {"mosaic_bytes": size, "peak_rss_bytes": rss, "peak_rss_first_run_bytes": rss0,
            "seconds": seconds, "tiles": ntiles, "gb_s": size / seconds / 1e9}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pyengine-bench")
    ap.add_argument("--big-gb", type=float, default=4.3,
                    help="size of the two-band float32 mosaic for the memory test")
    ap.add_argument("--side", type=int, default=12288, help="edge of the throughput images")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = environment()
    print_environment(env)
    results = {"machine": env}

    shape = (args.side, args.side)
    f32 = write_image(args.workdir / f"f32_{args.side}.fits", shape, "f4")
    r = results["float32"] = throughput(f32, shape, "f4", runs=args.runs)
    print(f"float32  : Mosaic.read {r['mosaic_read_mpix_s']:8.0f} MPix/s "
          f"({r['mosaic_read_gb_s_of_raw']:.2f} GB/s); NumPy copy {r['numpy_copy_mpix_s']:8.0f} "
          f"MPix/s; ratio {r['ratio_read_over_copy_median']:.2f} "
          f"(min {r['ratio_min']:.2f}, max {r['ratio_max']:.2f}, {r['runs']} A/B pairs)")

    i16 = write_image(args.workdir / f"i16_{args.side}.fits", shape, "i2", scaled=True)
    r = results["int16_scaled"] = throughput(i16, shape, "i2", runs=args.runs)
    print(f"int16 sc.: Mosaic.read {r['mosaic_read_mpix_s']:8.0f} MPix/s; NumPy copy of the "
          f"int16 bytes {r['numpy_copy_mpix_s']:8.0f} MPix/s; ratio "
          f"{r['ratio_read_over_copy_median']:.2f}")

    rshape = (args.side // 2, args.side // 2)
    rice = write_rice(args.workdir / f"rice_{rshape[0]}.fits.fz", rshape)
    r = results["rice_int16"] = compressed_throughput(rice, rshape)
    print(f"RICE i16 : Mosaic.read {r['mpix_s_median']:8.1f} MPix/s (cfitsio decompression)")

    side = int(np.sqrt(args.big_gb * 1e9 / 8))
    big = [write_image(args.workdir / f"big{b}_{side}.fits", (side, side), "f4", seed=b)
           for b in range(2)]
    r = results["peak_memory"] = peak_memory(big)
    print(f"memory   : every tile of a {r['mosaic_bytes'] / 1e9:.2f} GB two-band mosaic "
          f"({r['tiles']} tiles) read in {r['seconds']:.1f} s; peak RSS "
          f"{r['peak_rss_bytes'] / 2**20:.0f} MiB (first run, with JIT compile: "
          f"{r['peak_rss_first_run_bytes'] / 2**20:.0f} MiB)")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
