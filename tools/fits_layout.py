"""Print the HDU layout of FITS files as pyengine sees it.

For each HDU: index, EXTNAME, kind (image, compressed, table, empty), shape,
BITPIX and scaling, and the byte offsets of header and data.  The last column
says which HDU ``Mosaic.open`` picks when no ``[ext]`` is given.  Useful when
a mosaic is refused or reads unexpected values.

Usage: python tools/fits_layout.py FILE [FILE ...]
"""

from __future__ import annotations

import sys

from pyengine.errors import PyEngineError
from pyengine.io.fitsfile import image_header, parse_spec, scan_hdus, select_image


def describe(spec: str) -> None:
    path, ext = parse_spec(spec)
    hdus = scan_hdus(path)
    try:
        chosen = select_image(path, hdus, ext)[0].index
    except PyEngineError as exc:
        chosen, note = None, f"  (no image to read: {exc})"
    else:
        note = ""
    print(f"{spec}: {len(hdus)} HDU(s){note}")
    for info in hdus:
        header = image_header(info)
        naxis = int(header.get("NAXIS", 0))
        shape = " x ".join(str(header.get(f"NAXIS{i}", 0)) for i in range(naxis, 0, -1)) or "-"
        scaling = ", ".join(f"{k}={header[k]}" for k in ("BSCALE", "BZERO", "BLANK") if k in header)
        mark = "  <- read" if info.index == chosen else ""
        print(f"  [{info.index}] {info.extname or '':<10} {info.kind:<10} {shape:<14} "
              f"BITPIX={header.get('BITPIX')} {scaling:<36} header@{info.header_offset} "
              f"data@{info.data_offset} ({info.data_size} B){mark}")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    status = 0
    for spec in argv:
        try:
            describe(spec)
        except PyEngineError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
