"""On paper: the M31 30 kpc survey's work from a PAndAS-like layout and measured per-unit
figures. Nothing here is timed; the inputs say which numbers were measured.

The layout: MegaCam/MegaPipe-like fields of --field-px² px at --scale "/px (20,000² at
0.187": 1.04° square) on a grid of centres (1 - --overlap) field widths apart, in a tangent
plane about M31; the fields that touch the 30 kpc circle (--radius 2.19° about 10.6847,
41.2690) are scanned. Units are (field, tile) with --tile² px tiles. A catalog scan reads
only the tiles that hold owned sources inside the circle; the count below is the tiles
whose core meets the circle (sampled on a 9 x 9 grid per tile and at the circle's edge).

Work: --sources sources (the catalog of the region) at the measured per-cutout rates of
one process (``--rate NAME=CUTOUTS_PER_S``: from ``bench_survey.py``'s local run, or
``pyengine bench``), and, for GPUs, the model-only rate of one GPU
(``--gpu-rate CUTOUTS_PER_S``, from ``benchmarks/bench_gpu.py`` on a GPU) times 1, 4 and 16
GPUs, each GPU taking its share of the units (the units outnumber the GPUs by far, so the
shares are even to within one unit).

Usage: python benchmarks/project_m31.py --sources 3e6 --rate cpu-fp32=430 --rate cpu-int8=1400
       [--gpu-rate 60000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np


def layout(field_px: int, scale: float, overlap: float, radius: float):
    """Field centres (xi, eta in deg, tangent plane about M31) touching the circle."""
    width = field_px * scale / 3600.0
    step = width * (1.0 - overlap)
    n = math.ceil((radius + width) / step) + 1
    centres = []
    for j in range(-n, n + 1):
        for i in range(-n, n + 1):
            x, y = i * step, j * step
            # the nearest point of the square field to the circle's centre
            dx, dy = max(abs(x) - width / 2, 0.0), max(abs(y) - width / 2, 0.0)
            if math.hypot(dx, dy) < radius:
                centres.append((x, y))
    return width, centres


def tiles_in_circle(centres, width, field_px, tile, radius):
    """Tiles (of all fields) whose core meets the circle, and the tiles of all fields."""
    per = math.ceil(field_px / tile)
    size = width * tile / field_px
    inside = 0
    s = (np.arange(9) / 8.0)
    for x0, y0 in centres:
        for j in range(per):
            for i in range(per):
                xs = x0 - width / 2 + (i + s) * size
                ys = y0 - width / 2 + (j + s) * size
                xx, yy = np.meshgrid(xs, ys)
                if np.any(np.hypot(xx, yy) < radius + size * 0.2):
                    inside += 1
    return inside, per * per * len(centres)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--field-px", type=int, default=20000)
    ap.add_argument("--scale", type=float, default=0.187)
    ap.add_argument("--overlap", type=float, default=0.1)
    ap.add_argument("--radius", type=float, default=2.19)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--sources", type=float, required=True,
                    help="sources to classify in the region (the catalog's rows)")
    ap.add_argument("--rate", action="append", default=[], metavar="NAME=CUTOUTS_PER_S",
                    help="a measured rate of one process (repeat)")
    ap.add_argument("--gpu-rate", type=float, default=None,
                    help="model-only cutouts/s of one GPU, as bench_gpu.py measures")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    width, centres = layout(args.field_px, args.scale, args.overlap, args.radius)
    tiles, all_tiles = tiles_in_circle(centres, width, args.field_px, args.tile, args.radius)
    area = math.pi * args.radius ** 2
    print(f"layout: {len(centres)} fields of {args.field_px:,}² px ({width:.2f}° square, "
          f"{args.overlap:.0%} overlap) touch the {args.radius}° circle ({area:.1f} deg²); "
          f"{all_tiles:,} tiles of {args.tile}² px in those fields, {tiles:,} meeting the "
          f"circle; {args.field_px ** 2 * len(centres) / 1e9:.1f}e9 px per band in the "
          "fields")
    per_tile = args.sources / tiles
    print(f"work: {args.sources:,.0f} sources, {per_tile:,.0f} per unit on average")
    out = {"fields": len(centres), "tiles": all_tiles, "units_in_circle": tiles,
           "sources": args.sources, "projections": {}}
    for item in args.rate:
        name, _, value = item.partition("=")
        rate = float(value)
        hours = args.sources / rate / 3600.0
        out["projections"][name] = {"cutouts_per_s": rate, "hours": hours,
                                    "seconds_per_unit": per_tile / rate}
        print(f"  {name}: {rate:,.0f} cutouts/s (measured) -> {per_tile / rate:.1f} s per "
              f"unit, {hours:.1f} h for the region (projected)")
    if args.gpu_rate:
        for gpus in (1, 4, 16):
            units_each = math.ceil(tiles / gpus)
            seconds = units_each * per_tile / args.gpu_rate
            out["projections"][f"gpu x{gpus}"] = {"cutouts_per_s": args.gpu_rate * gpus,
                                                  "minutes": seconds / 60.0}
            print(f"  {gpus:>2} GPU(s) at {args.gpu_rate:,.0f} cutouts/s each: "
                  f"{seconds / 60:.1f} min (projected)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
