"""FITS file structure: where each HDU's header and data lie, and which HDU is the image.

pyengine reads pixel data in place (memory map) or through cfitsio, so it needs
the exact byte layout of a file without loading any data.  ``scan_hdus`` walks
the 2880-byte blocks of a file, parses each header with astropy and computes
64-bit data offsets and sizes; it reports a missing, non-FITS or truncated
file as a :class:`~pyengine.errors.FitsFormatError` naming the file.
``select_image`` picks the HDU that holds a 2-D image (a ``path[ext]`` spec
names one by number or EXTNAME), and ``image_header`` gives the header of a
tile-compressed image as the plain image header cfitsio would present.

Thread safety: functions here only read files and build new objects; they may
run concurrently.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from pyengine.errors import FitsFormatError, InputFileError

__all__ = ["HDUInfo", "image_header", "parse_spec", "scan_hdus", "select_image"]

BLOCK = 2880
CARD = 80
_SPEC = re.compile(r"^(?P<path>.+)\[(?P<ext>[^\[\]]+)\]$")
_BITPIX = (8, 16, 32, 64, -32, -64)

# Keys that describe a compressed image's binary table rather than the image.
_TABLE_KEYS = re.compile(
    r"^(XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT|TFIELDS|T(TYPE|FORM|UNIT|DISP|NULL|SCAL|ZERO|DIM)\d+"
    r"|ZIMAGE|ZSIMPLE|ZTENSION|ZEXTEND|ZBITPIX|ZNAXIS\d*|ZTILE\d+|ZCMPTYPE|ZNAME\d+|ZVAL\d+"
    r"|ZMASKCMP|ZQUANTIZ|ZDITHER0|ZPCOUNT|ZGCOUNT|ZHECKSUM|ZDATASUM|ZBLOCKED|CHECKSUM|DATASUM)$"
)


@dataclass(frozen=True)
class HDUInfo:
    """Layout and type of one HDU.  Offsets and sizes are bytes from the file start."""

    index: int
    header: fits.Header
    header_offset: int
    data_offset: int
    data_size: int
    kind: str  # "image", "compressed", "table", "empty" or "other"
    extname: str | None

    def describe(self) -> str:
        name = f" {self.extname}" if self.extname else ""
        return f"{self.index}{name} ({self.kind})"


def parse_spec(spec) -> tuple[Path, str | None]:
    """Split ``path[ext]`` into the path and the extension (number or EXTNAME).

    A path that exists as written wins, so file names containing brackets work.
    """
    text = os.fspath(spec)
    match = _SPEC.match(text)
    if match and not os.path.exists(text):
        return Path(match["path"]), match["ext"].strip()
    return Path(text), None


def _read_header(fh, path: Path, offset: int, index: int) -> tuple[str, int]:
    """Read header cards from ``offset`` up to END; returns the text and its padded length."""
    chunks = []
    pos = offset
    while True:
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise FitsFormatError(
                f"{path}: truncated file: the header of HDU {index} has no END card "
                f"(file ends at byte {pos + len(block)}); the file is incomplete or not FITS"
            )
        chunks.append(block)
        pos += BLOCK
        for k in range(0, BLOCK, CARD):
            card = block[k : k + CARD]
            if card[:8] == b"END     " and not card[8:].strip():
                text = b"".join(chunks).decode("ascii", errors="replace")
                return text, pos - offset


def _kind(header: fits.Header, index: int) -> str:
    xtension = str(header.get("XTENSION", "")).strip().upper() if index else "PRIMARY"
    naxis = int(header.get("NAXIS", 0))
    if xtension == "BINTABLE" and header.get("ZIMAGE") is True:
        return "compressed"
    if xtension in ("BINTABLE", "TABLE", "A3DTABLE"):
        return "table"
    if header.get("GROUPS") is True:
        return "other"  # random groups
    if xtension in ("PRIMARY", "IMAGE", "IUEIMAGE"):
        dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
        return "image" if naxis > 0 and all(d > 0 for d in dims) else "empty"
    return "other"


def _data_size(header: fits.Header) -> int:
    """Bytes of data (before padding) per the FITS standard, 64-bit safe."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for i in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{i}", 0))
    bits = abs(int(header.get("BITPIX", 8)))
    gcount = int(header.get("GCOUNT", 1))
    pcount = int(header.get("PCOUNT", 0))
    return bits // 8 * gcount * (pcount + count)


def scan_hdus(path: Path) -> list[HDUInfo]:
    """Every HDU of ``path`` with its header and byte layout; reads headers only."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a FITS file")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, several exits
    except OSError as exc:
        raise InputFileError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(CARD)
        if head[:2] == b"\x1f\x8b":
            raise FitsFormatError(
                f"{path}: gzip-compressed file; it cannot be read in place: gunzip it, "
                "or tile-compress it (fpack) so tiles can be read on their own"
            )
        if size == 0:
            raise FitsFormatError(f"{path}: empty file, not FITS")
        if not (head.startswith(b"SIMPLE  =") and head[10:30].strip() == b"T"):
            raise FitsFormatError(
                f"{path}: not a FITS file (it must begin with the card 'SIMPLE  =  T')"
            )
        hdus: list[HDUInfo] = []
        offset = 0
        while offset < size:
            fh.seek(offset)
            text, hlen = _read_header(fh, path, offset, len(hdus))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VerifyWarning)
                try:
                    header = fits.Header.fromstring(text)
                except (ValueError, KeyError) as exc:
                    raise FitsFormatError(
                        f"{path}: HDU {len(hdus)} has an unreadable header ({exc})"
                    ) from None
            bitpix = header.get("BITPIX")
            if bitpix not in _BITPIX:
                raise FitsFormatError(
                    f"{path}: HDU {len(hdus)} has BITPIX = {bitpix!r}; "
                    f"FITS allows {', '.join(map(str, _BITPIX))}"
                )
            data_offset = offset + hlen
            data_size = _data_size(header)
            if data_offset + data_size > size:
                raise FitsFormatError(
                    f"{path}: truncated file: HDU {len(hdus)} needs {data_size} data bytes "
                    f"from byte {data_offset}, but the file has {size} bytes"
                )
            extname = header.get("EXTNAME")
            hdus.append(HDUInfo(
                index=len(hdus), header=header, header_offset=offset,
                data_offset=data_offset, data_size=data_size,
                kind=_kind(header, len(hdus)),
                extname=str(extname).strip() if extname is not None else None,
            ))
            offset = data_offset + -(-data_size // BLOCK) * BLOCK
            if hdus[-1].index == 0 and not header.get("EXTEND", True) and offset < size:
                break  # EXTEND = F: whatever follows is not FITS extensions
    return hdus


def image_header(info: HDUInfo) -> fits.Header:
    """The header as an image header: tile-compressed HDUs are translated."""
    if info.kind != "compressed":
        return info.header
    src = info.header
    out = fits.Header()
    out["XTENSION"] = "IMAGE"
    out["BITPIX"] = int(src["ZBITPIX"])
    naxis = int(src["ZNAXIS"])
    out["NAXIS"] = naxis
    for i in range(1, naxis + 1):
        out[f"NAXIS{i}"] = int(src[f"ZNAXIS{i}"])
    for card in src.cards:
        if card.keyword and not _TABLE_KEYS.match(card.keyword):
            out.append(card, end=True)
    return out


def _image_dims(path: Path, info: HDUInfo) -> tuple[int, int]:
    """(ny, nx) of an image HDU; refuses non-2-D images (size-1 extra axes are fine)."""
    header = image_header(info)
    naxis = int(header.get("NAXIS", 0))
    dims = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
    where = f"{path}[{info.index}]"
    if naxis < 2:
        raise FitsFormatError(f"{where}: {naxis}-D image (NAXIS = {naxis}); a 2-D image is needed")
    extra = dims[2:]
    if any(d != 1 for d in extra):
        shape = " x ".join(str(d) for d in reversed(dims))
        raise FitsFormatError(
            f"{where}: {naxis}-D image of shape {shape}; a 2-D image is needed "
            "(axes beyond the second must have length 1)"
        )
    return dims[1], dims[0]


def select_image(path: Path, hdus: list[HDUInfo], ext: str | None) -> tuple[HDUInfo, tuple[int, int]]:
    """The image HDU named by ``ext`` (number or EXTNAME), else the first with an image.

    Returns the HDU and its (ny, nx).
    """
    listing = ", ".join(h.describe() for h in hdus)
    if ext is None:
        for info in hdus:
            if info.kind in ("image", "compressed"):
                return info, _image_dims(path, info)
        raise FitsFormatError(f"{path}: no image HDU in the file (HDUs: {listing})")
    if ext.lstrip("+-").isdigit():
        number = int(ext)
        if not 0 <= number < len(hdus):
            raise FitsFormatError(
                f"{path}[{ext}]: no HDU {number}; the file has HDUs 0..{len(hdus) - 1} ({listing})"
            )
        info = hdus[number]
    else:
        matches = [h for h in hdus if h.extname and h.extname.upper() == ext.upper()]
        if not matches:
            names = ", ".join(h.extname for h in hdus if h.extname) or "none"
            raise FitsFormatError(
                f"{path}[{ext}]: no HDU with EXTNAME {ext!r}; EXTNAMEs in the file: {names}"
            )
        info = matches[0]
    if info.kind == "table":
        raise FitsFormatError(
            f"{path}[{ext}]: HDU {info.index} is a table, not an image; give an image HDU "
            f"(HDUs: {listing})"
        )
    if info.kind == "empty":
        raise FitsFormatError(
            f"{path}[{ext}]: HDU {info.index} is empty (no image data); give an image HDU "
            f"(HDUs: {listing})"
        )
    if info.kind == "other":
        raise FitsFormatError(
            f"{path}[{ext}]: HDU {info.index} is not an image HDU; give an image HDU "
            f"(HDUs: {listing})"
        )
    return info, _image_dims(path, info)
