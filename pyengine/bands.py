"""Band names: the one rule that names a mosaic's bands and compares band names.

Naming.  Each band image of a mosaic is named, first rule that applies:

1. by the names the user gives (``Mosaic.open(bands=...)``, ``--bands g,i``),
   taken as written;
2. by its header: the first non-empty value of :data:`HEADER_KEYS`, as written
   (``FILTER = 'g.MP9401'`` names the band ``g.MP9401``);
3. by its file: the file name without its FITS suffix (``g_f32.fits`` ->
   ``g_f32``).  When several images of one mosaic come from one file
   (``f.fits[1]``, ``f.fits[2]``), each is named by its EXTNAME where that is
   unique among them, else by the file and HDU number (``f[1]``, ``f[2]``), so
   two extensions of one file are two bands, not a duplicate.

Comparing.  Two names mean one band when their keys (:func:`band_key`) are
equal: stripped, case-folded, and with a CFHT MegaCam filter's serial number
dropped (``g.MP9401`` -> ``g``; ``i.MP9702`` and ``i.MP9703``, MegaCam's two
i filters, -> ``i``).  Every comparison of band names goes through
:func:`band_index`: matching a mosaic to a model's bands (so a g, i model
scans MegaCam images with ``FILTER = 'i.MP9702'`` / ``'g.MP9401'`` in either
order), and detection's ``band`` / ``mag_band`` options.  An exact name wins
over a key match, and a mosaic's keys must be unique (two bands that compare
equal are refused when the mosaic opens), so a lookup never has two answers.

Checking.  Names given by the user win, but one that contradicts its image's
header (``--bands g`` for a file with ``FILTER = 'i'``; keys compared as above,
so ``g`` for ``g.MP9401`` agrees) is reported by :func:`band_contradictions`
(``Mosaic.open`` warns: FILTER values vary between surveys, so it is no refusal).

Display.  Names are shown as written (the header's, the user's, the model's);
the key is only ever compared, never shown, so catalogs, fingerprints and
messages keep the spelling their reader knows.

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyengine.errors import ConfigError

__all__ = ["BANDS_HELP", "HEADER_KEYS", "BandImage", "band_contradictions", "band_index",
           "band_key", "check_band_names", "default_band_names", "file_band_name",
           "header_band_card", "header_band_name", "match_order", "parse_band_list"]

#: Header keys naming an image's band, in the order they are tried.
HEADER_KEYS = ("FILTER", "BAND")
#: ``--bands`` help text, one for every command that takes the option.
BANDS_HELP = "Comma-separated band names for the images [FILTER keys or file names]."
# File name suffixes dropped to name a band from its file (longest first).
_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fts", ".fz")
# CFHT MegaCam filter names: band letter(s), ".MP", the filter's serial number
# (u.MP9302, g.MP9401, r.MP9602, i.MP9702, i.MP9703, z.MP9801, gri.MP9605).
_MEGACAM = re.compile(r"([a-z]+)\.mp\d+")


@dataclass(frozen=True)
class BandImage:
    """What naming a band image needs: its file, HDU number, EXTNAME and header."""

    path: Path
    hdu: int
    extname: str | None
    header: Mapping


def band_key(name: str) -> str:
    """The form in which band names are compared (see the module docstring)."""
    key = str(name).strip().casefold()
    megacam = _MEGACAM.fullmatch(key)
    return megacam.group(1) if megacam else key


def header_band_card(header: Mapping) -> tuple[str, str] | None:
    """``(key, value)`` of the first non-empty :data:`HEADER_KEYS` card, or None."""
    for key in HEADER_KEYS:
        value = header.get(key)
        if value is not None and str(value).strip():
            return key, str(value).strip()
    return None


def header_band_name(header: Mapping) -> str | None:
    """The band named by the header (first non-empty :data:`HEADER_KEYS` value), or None."""
    card = header_band_card(header)
    return card[1] if card else None


def band_contradictions(names: Sequence[str], images: Sequence[BandImage],
                        specs: Sequence[str]) -> list[tuple[tuple, str]]:
    """Given band names that their images' headers contradict: ``(key, message)`` for
    each, ``key`` naming the file, HDU and name (for saying it once), ``message`` one
    line naming the image ``specs[k]``, its header card and the name given."""
    found = []
    for name, image, spec in zip(names, images, specs, strict=True):
        card = header_band_card(image.header)
        if card is not None and band_key(card[1]) != band_key(name):
            found.append(((str(Path(image.path).resolve()), image.hdu, name),
                          f"{spec}: {card[0]} = {card[1]!r} but given as band {name!r}; "
                          f"scanning it as {name!r} (check the order of --bands)"))
    return found


def file_band_name(path) -> str:
    """The band named by a file: its name without a FITS suffix."""
    path = Path(path)
    name = path.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def default_band_names(images: Sequence[BandImage]) -> list[str]:
    """Names of a mosaic's band images when the user gives none (rules 2 and 3)."""
    names = [header_band_name(im.header) for im in images]
    unnamed = [k for k, name in enumerate(names) if name is None]
    by_file: dict[Path, list[int]] = {}
    for k in unnamed:
        by_file.setdefault(images[k].path.resolve(), []).append(k)
    for members in by_file.values():
        if len(members) == 1:
            names[members[0]] = file_band_name(images[members[0]].path)
            continue
        extnames = [(images[k].extname or "").strip() for k in members]
        for k, extname in zip(members, extnames, strict=True):
            if extname and extnames.count(extname) == 1:
                names[k] = extname
            else:  # the same HDU given twice stays a duplicate, refused by the caller
                names[k] = f"{file_band_name(images[k].path)}[{images[k].hdu}]"
    return names


def check_band_names(names: Sequence[str], origin: str) -> None:
    """Refuse empty band names and names that compare equal (``origin`` says where from)."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"band name {name!r} ({origin}) is empty; band names are "
                              "non-empty text, e.g. g")
    keys = [band_key(n) for n in names]
    if len(set(keys)) != len(keys):
        same = sorted({n for n, k in zip(names, keys, strict=True) if keys.count(k) > 1})
        how = ("" if len(set(names)) != len(names)
               else " when compared case-insensitively, MegaCam .MP numbers ignored")
        raise ConfigError(f"band names {list(names)} ({origin}) are not unique{how}: "
                          f"{', '.join(same)}; name the bands explicitly (bands=[...] or "
                          "--bands)")


def band_index(name: str, bands: Sequence[str]) -> int | None:
    """Index of band ``name`` in ``bands``: the exact name, else the one with its key; None."""
    bands = list(bands)
    if name in bands:
        return bands.index(name)
    key = band_key(name)
    found = [i for i, b in enumerate(bands) if band_key(b) == key]
    return found[0] if len(found) == 1 else None


def match_order(have: Sequence[str], want: Sequence[str]) -> list[int] | None:
    """``order`` with ``have[order[j]]`` the band ``want[j]``; None when the sets differ."""
    if len(have) != len(want):
        return None
    order = [band_index(w, have) for w in want]
    if None in order or len(set(order)) != len(order):
        return None
    return order


def parse_band_list(text: str | None, option: str = "--bands") -> list[str] | None:
    """``--bands`` text ("g,i") as a list of names; None when not given.

    Blanks around names and empty items (a trailing comma) are dropped; a list
    with no name at all is refused.
    """
    if text is None:
        return None
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ConfigError(f"{option} {text!r} names no band; give comma-separated band names "
                          "in image order, e.g. g,i")
    return names
