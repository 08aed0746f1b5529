"""Scan cost per source and peak memory as the mosaic grows, at a fixed source density.

Is the cost per source flat, and is the peak memory flat, as the field grows?
For each size in --sizes-gb (two-band float32 mosaics, that many GB in total
over both bands; square images of side sqrt(GB * 1e9 / 8) px), the script

1. writes the g and i images into --workdir (reused if already there);
2. draws uniformly random (seeded) pixel positions at the same density for
   every size (--density sources per 10^6 pixels; default 25, i.e. 50,000
   sources at 16 GB), at least --margin px from the edges, and writes them as
   a FITS table with x, y (0-based pixels) and ra, dec (from the image WCS);
3. runs the real command line in a fresh process,
   ``pyengine scan g.fits i.fits --catalog POS --x-col x --y-col y
   --runner onnxruntime -o OUT.fits -q --log-json``,
   through a small wrapper (``python -c``: ``pyengine.cli.main(argv)``, then
   the process's own VmHWM from /proc/self/status, printed to stderr at exit).
   VmHWM is the peak RSS of the scan's address space; ``ru_maxrss`` of a child
   is not used because on this machine it carries the parent's resident set
   across fork + exec;
4. deletes that size's images unless --keep (so the disk holds at most one
   size at a time).

Reported per size: pixels per band, sources, tiles, whole-process wall seconds,
seconds per 10^5 sources, pyengine's own wall time and rate (cutouts/s, from
the ``summary`` line of --log-json), the process overhead outside the scan loop
(start-up, model load, catalog write), the peak RSS (VmHWM) and the peaks of
its anonymous and file-backed parts (RssAnon; RssFile: shared libraries and
the memory-mapped images; both sampled every 0.1 s by a thread of the
wrapper).  Then the seconds per 10^5 sources and the peak RSS of each size
relative to the first (smallest) size, and the marginal cost between
consecutive sizes (difference of wall times over difference of sources, so
that fixed start-up costs cancel).  Flat scaling means ratios near 1.  With
--runs N each size is scanned N times: times from the run of median wall
time, memory the largest of the runs.  A small warm-up scan (not reported)
runs first, so that Numba's cache and the ONNX model file are warm for all
sizes.

Images (--images): ``noise`` (default) streams a flat sky plus fresh Gaussian
noise strip by strip, big-endian float32 with a TAN WCS (bounded memory; a
16 GB pair takes 1-2 minutes, mostly disk).  ``synth`` uses
``pyengine.synth.make_field`` (realistic PAndAS-like g, i fields; its truth
catalog is deleted at once).  ``noise`` is the default because the scan's cost
does not depend on the pixel values (fixed-size cutouts at given positions) and
synthesis of 1 + 4 + 16 GB would take about 8 minutes or more on this shared
2-core machine (1 GB measured at 42 s, a 12.8 GB field at 218-254 s).  The
images of the size being scanned were just written, so they are largely in the
page cache; the figures are closer to memory than to disk rates.

Usage: python benchmarks/bench_scale.py [--sizes-gb 1,4,16] [--density 25]
           [--images noise|synth] [--runner onnxruntime] [--precision P]
           [--threads N] [--batch-size B] [--runs 1] [--workdir DIR] [--keep]
           [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _timing import environment, print_environment, write_json

BANDS = ("g", "i")
PIXEL_SCALE = 0.187  # arcsec/px, CFHT MegaCam
CENTRE = (11.013, 41.584)  # RA, Dec (deg): pyengine.synth's default field centre

# Runs the CLI in this (fresh) process, then reports the process's own peak RSS (VmHWM),
# and the peaks of its anonymous and file-backed (memory-mapped images) parts, sampled
# every 0.1 s by a daemon thread.  ``main`` ends with SystemExit (click's standalone
# mode); ``finally`` still runs.
_WRAPPER = r"""
import sys, threading, time
from pyengine.cli import main
def status():
    with open("/proc/self/status") as fh:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh)
                if k in ("VmHWM", "RssAnon", "RssFile")}
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
    while True:
        now = status()
        for k in peak:
            peak[k] = max(peak[k], now[k])
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
try:
    main(sys.argv[1:], prog_name="pyengine")
finally:
    s = status()
    sys.stderr.write(f"\nBENCH_MEMORY {s['VmHWM']} {peak['RssAnon']} {peak['RssFile']}\n")
"""


# -- images -----------------------------------------------------------------------------
def side_for(gb: float) -> int:
    """Edge of a square two-band float32 mosaic of ``gb`` GB in total."""
    return int(math.sqrt(gb * 1e9 / (len(BANDS) * 4)))


def _header(side: int, band: str):
    from astropy.io import fits
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(CENTRE)
    wcs.wcs.crpix = [(side + 1) / 2, (side + 1) / 2]
    wcs.wcs.cd = np.diag([-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600])
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = side
    header["NAXIS2"] = side
    header["FILTER"] = band
    header.update(wcs.to_header())
    return header


def write_noise_band(path: Path, side: int, band: str, seed: int, rows: int = 256) -> None:
    """Sky + Gaussian noise, written strip by strip (``rows`` x side at a time)."""
    sky, sigma = {"g": (55.0, 6.0), "i": (220.0, 12.0)}[band]
    rng = np.random.default_rng([seed, BANDS.index(band)])
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as fh:
        fh.write(_header(side, band).tostring().encode("ascii"))
        for y0 in range(0, side, rows):
            n = min(rows, side - y0)
            block = rng.standard_normal((n, side), dtype=np.float32)
            block *= sigma
            block += sky
            fh.write(block.astype(">f4").tobytes())
        fh.write(b"\0" * (-fh.tell() % 2880))
    part.rename(path)


def make_images(folder: Path, side: int, kind: str, seed: int) -> tuple[list[Path], float | None]:
    """The g, i images of one size; (paths, seconds to write them or None if reused)."""
    paths = [folder / f"{b}.fits" for b in BANDS]
    if all(p.exists() for p in paths):
        return paths, None
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "synth":
        from pyengine.synth import SynthConfig, make_field

        make_field(folder, SynthConfig(width=side, height=side, seed=seed))
        (folder / "truth.fits").unlink(missing_ok=True)
    else:
        for p, band in zip(paths, BANDS, strict=True):
            if not p.exists():
                write_noise_band(p, side, band, seed)
    return paths, time.perf_counter() - t0


def write_positions(path: Path, image: Path, side: int, n: int, margin: int, seed: int) -> None:
    """n uniform random positions >= margin px from the edges: x, y (0-based) and ra, dec."""
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    if side - 1 - 2 * margin <= 0:
        raise SystemExit(f"an image of {side} px has no room inside a {margin} px margin")
    rng = np.random.default_rng(seed)
    x = rng.uniform(margin, side - 1 - margin, n)
    y = rng.uniform(margin, side - 1 - margin, n)
    ra, dec = WCS(fits.getheader(image)).pixel_to_world_values(x, y)
    Table({"x": x, "y": y, "ra": ra, "dec": dec}).write(path, overwrite=True)


# -- one scan ---------------------------------------------------------------------------
def scan_args(images, catalog: Path, out: Path, args) -> list[str]:
    """Arguments of ``pyengine`` for one scan."""
    cmd = ["scan", *map(str, images), "--catalog", str(catalog), "--x-col", "x",
           "--y-col", "y", "--runner", args.runner, "-o", str(out), "-q", "--log-json"]
    for flag, value in (("--precision", args.precision), ("--threads", args.threads),
                        ("--batch-size", args.batch_size)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_command(images, catalog: Path, args) -> str:
    return "pyengine " + " ".join(scan_args(images, catalog, Path("OUT.fits"), args))


def run_scan(images, catalog: Path, out_dir: Path, args) -> dict:
    """One ``pyengine scan`` in a fresh process: wall time, log summary and VmHWM."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cmd = scan_args(images, catalog, out_dir / "out.fits", args)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True,
                         check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"pyengine scan exited {res.returncode}: pyengine {' '.join(cmd)}")
    summary = None
    for line in res.stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "summary":
                summary = event
    memory = [[int(v) for v in line.split()[1:]] for line in res.stderr.splitlines()
              if line.startswith("BENCH_MEMORY ")]
    if summary is None or not memory:
        raise SystemExit(f"no summary line or no memory figures from pyengine {' '.join(cmd)}:"
                         f"\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    shutil.rmtree(out_dir)
    hwm, anon, file_backed = memory[-1]
    return {"wall_s": wall, "summary": summary, "peak_rss_bytes": hwm,
            "peak_rss_anon_bytes": anon, "peak_rss_file_bytes": file_backed}


def warm_up(workdir: Path, args) -> None:
    """A tiny scan so that the first reported size pays no cold-cache costs."""
    folder = workdir / "warmup"
    images, _ = make_images(folder, 1024, "noise", args.seed)
    write_positions(folder / "pos.fits", images[0], 1024, 200, args.margin, args.seed)
    run_scan(images, folder / "pos.fits", folder / "scan", args)
    shutil.rmtree(folder)


def measure(gb: float, workdir: Path, args) -> dict:
    side = side_for(gb)
    folder = workdir / f"{args.images}_{side}_seed{args.seed}"
    n = round(args.density * side * side / 1e6)
    t0 = time.perf_counter()
    images, made_s = make_images(folder, side, args.images, args.seed)
    print(f"# {gb:g} GB: {side} x {side} px per band, "
          + ("images reused" if made_s is None else
             f"images written in {made_s:.1f} s ({args.images})"), flush=True)
    catalog = folder / f"pos_{n}_{args.seed}.fits"
    write_positions(catalog, images[0], side, n, args.margin, args.seed)
    # Flush the freshly written images before timing: otherwise the kernel writes back
    # gigabytes of dirty pages during the scan (a 16 GB run lost a quarter of its rate).
    t_sync = time.perf_counter()
    os.sync()
    print(f"#   os.sync() after writing: {time.perf_counter() - t_sync:.1f} s (not timed)",
          flush=True)
    setup_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.runs):
        run = run_scan(images, catalog, folder / "scan", args)
        s = run["summary"]
        if s["positions"] != n or s["scored"] != n:
            raise SystemExit(f"{gb:g} GB: {n} positions given, the scan saw {s['positions']} "
                             f"and scored {s['scored']}")
        runs.append({"wall_s": run["wall_s"], "scan_wall_s": s["wall_s"],
                     "scan_rate_cutouts_s": s["rate"],
                     **{k: v for k, v in run.items() if k.startswith("peak_")}})
    # Times: the run of median whole-process wall time; memory: the largest peak of any run.
    run = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    row = {
        "size_gb": gb,
        "side_px": side,
        "pixels_per_band": side * side,
        "mosaic_bytes": sum(p.stat().st_size for p in images),
        "sources": n,
        "tiles": s["tiles"],
        "images_seconds": made_s,
        "images_reused": made_s is None,
        "setup_s": setup_s,
        "wall_s": run["wall_s"],
        "s_per_1e5_sources": run["wall_s"] / n * 1e5,
        "scan_wall_s": run["scan_wall_s"],
        "scan_rate_cutouts_s": run["scan_rate_cutouts_s"],
        "overhead_s": run["wall_s"] - run["scan_wall_s"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "peak_rss_anon_bytes": max(r["peak_rss_anon_bytes"] for r in runs),
        "peak_rss_file_bytes": max(r["peak_rss_file_bytes"] for r in runs),
        "candidates": s["candidates"],
        "flagged": s["flagged"],
        "runs": runs,
        "command": run_command(images, catalog, args),
    }
    if not args.keep:
        shutil.rmtree(folder)
    return row


# -- report -----------------------------------------------------------------------------
def print_table(rows) -> None:
    ref = rows[0]
    mib = 2**20
    print(f"{'size':>7} {'px/band':>13} {'sources':>8} {'tiles':>5} {'wall s':>7} "
          f"{'s/1e5':>6} {'scan s':>7} {'rate/s':>6} {'ovh s':>5} {'RSS MiB':>7} "
          f"{'anon':>5} {'file':>5} {'x s/1e5':>7} {'x RSS':>5}")
    for r in rows:
        print(f"{r['size_gb']:>5g}GB {r['pixels_per_band']:>13,} {r['sources']:>8,} "
              f"{r['tiles']:>5} {r['wall_s']:>7.1f} {r['s_per_1e5_sources']:>6.1f} "
              f"{r['scan_wall_s']:>7.1f} {r['scan_rate_cutouts_s']:>6.1f} "
              f"{r['overhead_s']:>5.1f} {r['peak_rss_bytes'] / mib:>7.0f} "
              f"{r['peak_rss_anon_bytes'] / mib:>5.0f} {r['peak_rss_file_bytes'] / mib:>5.0f} "
              f"{r['ratio_s_per_1e5']:>7.2f} {r['ratio_peak_rss']:>5.2f}")
    print(f"# x: relative to the {ref['size_gb']:g} GB mosaic.  wall s: the whole scan process; "
          "s/1e5: wall s per 10^5 sources;\n# scan s, rate/s: pyengine's own summary "
          "(--log-json); ovh s: wall s - scan s (start-up, model load, catalog write);\n"
          "# RSS: peak of the scan process (VmHWM); anon, file: peaks of its anonymous and "
          "file-backed (shared libraries + mapped images) parts, sampled every 0.1 s")
    for a, b in itertools.pairwise(rows):
        print(f"# marginal cost {a['size_gb']:g} -> {b['size_gb']:g} GB (fixed costs cancel): "
              f"{b['marginal_s_per_1e5_sources']:.1f} s per 10^5 sources")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-gb", default="1,4,16",
                    help="comma-separated total sizes (both bands), GB [1,4,16]")
    ap.add_argument("--density", type=float, default=25.0,
                    help="sources per 10^6 pixels, the same for every size [25]")
    ap.add_argument("--margin", type=int, default=64, help="px kept free at the edges [64]")
    ap.add_argument("--images", choices=["noise", "synth"], default="noise",
                    help="sky + noise (fast) or pyengine.synth fields [noise]")
    ap.add_argument("--runner", default="onnxruntime")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--runs", type=int, default=1,
                    help="scans per size; times from the median run, memory the largest [1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up scan")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "pyengine-bench-scale",
                    help="where the images go; existing ones are reused")
    ap.add_argument("--keep", action="store_true",
                    help="keep the images (default: delete each size after its scan)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    sizes = sorted(float(s) for s in args.sizes_gb.split(",") if s.strip())
    if not sizes or min(sizes) <= 0 or args.density <= 0 or args.runs < 1:
        ap.error("--sizes-gb needs positive sizes, --density a positive number and --runs >= 1")

    env = environment()
    print_environment(env)
    print(f"# sizes {', '.join(f'{s:g}' for s in sizes)} GB (two bands, float32); "
          f"{args.density:g} sources per 10^6 px; images: {args.images}; runner {args.runner}"
          + (f" {args.precision}" if args.precision else ""), flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.no_warmup:
        warm_up(args.workdir, args)
    rows = []
    for gb in sizes:
        rows.append(measure(gb, args.workdir, args))
        r = rows[-1]
        print(f"#   {r['sources']:,} sources: {r['wall_s']:.1f} s, "
              f"{r['scan_rate_cutouts_s']:.1f} cutouts/s, peak RSS "
              f"{r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    for a, b in zip([None, *rows], rows, strict=False):
        b["marginal_s_per_1e5_sources"] = (None if a is None or b["sources"] == a["sources"] else
                                           (b["wall_s"] - a["wall_s"])
                                           / (b["sources"] - a["sources"]) * 1e5)
    for r in rows:
        r["ratio_s_per_1e5"] = r["s_per_1e5_sources"] / rows[0]["s_per_1e5_sources"]
        r["ratio_peak_rss"] = r["peak_rss_bytes"] / rows[0]["peak_rss_bytes"]
    print_table(rows)
    if args.json:
        write_json(args.json, {
            "machine": env,
            "settings": {"sizes_gb": sizes, "density_per_mpix": args.density,
                         "margin_px": args.margin, "images": args.images,
                         "runner": args.runner, "precision": args.precision,
                         "threads": args.threads, "batch_size": args.batch_size,
                         "runs": args.runs, "seed": args.seed,
                         "warmup": not args.no_warmup},
            "reference_size_gb": sizes[0],
            "sizes": rows,
        })


if __name__ == "__main__":
    main()
