"""Finding the fields of a survey among image files (``pyengine survey init``).

Each file (or ``path[ext]``) is read for its image HDU's header only: its band (the
FILTER/BAND key by :mod:`pyengine.bands`' rule, so MegaCam's ``g.MP9401`` is band
``g``; else the file name), its size and its celestial WCS. Images of one pointing are
those on one pixel grid: the same size, and WCS agreeing within 0.05 px over the image
(as ``Mosaic.open`` requires of a field's bands). Each pointing becomes a field with one
image per band.

- **Field ids:** the file names' common part without the band and the suffix
  (``G002.003.844+33.133.G.fits`` and ``...I.fits`` give ``G002.003.844+33.133``).
  Where that is empty or not unique, the folder's name is used, else ``F001``,
  ``F002``, ... in file order.
- **Bands:** ``bands`` (``--bands g,i``) selects and orders them; by default every band
  found, in name order.
- **Weight maps:** a file whose name marks it as one (``.weight.``, ``_weight``, ``.wht``,
  ``_wht``, ``.wt.``), on the grid of a field and with its band, is that band's weight map
  (``weight_<band>`` in the manifest).
- **Catalogs:** a field's own source catalog (``catalog`` in the manifest) is a file in
  the folder of one of its images named after the pointing, ``<stem>.cat``,
  ``<stem>.ldac``, ``<stem>.cat.fits``, ``<stem>.ldac.fits`` or ``<stem>.fits`` (the stem
  being the field id or its images' common name: ``G002.003.844+33.133.cat``), that is a
  catalog by content: a FITS file with a table and no image (FITS_LDAC, SExtractor's
  ``FITS_1.0``) or a SExtractor ASCII catalog. Taken only when exactly one file fits;
  two (``.cat`` and ``.ldac`` side by side) take neither, and ``notes`` says so.
- **Skipped:** FITS files without an image (truth tables, catalogs) found through a folder
  or a glob. Named one by one, they are refused.
- **Refused, in one line:** a pointing that lacks a band, or has two images of one band,
  naming its files.

Thread safety: reads files only; returns new objects.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyengine.errors import ConfigError, PyEngineError
from pyengine.survey.manifest import Field, Survey, SurveyError

__all__ = ["ImageInfo", "discover", "expand_paths", "field_catalog"]

_FITS = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fz")
_CATALOGS = (".cat", ".ldac", ".cat.fits", ".ldac.fits", ".fits")
_WEIGHT = re.compile(r"([._-](weight|wht)([._-]|$)|\.wt\.)", re.IGNORECASE)


@dataclass(frozen=True)
class ImageInfo:
    spec: str
    band: str
    shape: tuple[int, int]
    wcs: object


def expand_paths(patterns: Sequence[str]) -> list[tuple[str, bool]]:
    """(file, named one by one) for the files that paths, globs and folders (a folder: its
    FITS files) name, sorted, each once; a pattern that names nothing is one ConfigError."""
    out: dict[str, bool] = {}
    for pattern in patterns:
        text = os.fspath(pattern)
        if re.search(r"\[[^\[\]]+\]$", text) and os.path.exists(text.rsplit("[", 1)[0]):
            found, named = [text], True  # path[ext]
        elif os.path.isdir(text):
            found, named = sorted(str(p) for p in Path(text).iterdir()
                                  if p.is_file() and p.name.lower().endswith(_FITS)), False
        elif os.path.isfile(text):
            found, named = [text], True
        else:
            found, named = sorted(glob.glob(os.path.expanduser(text))), False
        if not found:
            raise ConfigError(f"{text}: no such file, folder or matching FITS files")
        for p in found:
            key = os.path.abspath(p) if "[" not in p else p
            out[key] = out.get(key, False) or named
    return list(out.items())


def _image(spec: str) -> ImageInfo:
    from astropy.io import fits

    from pyengine.bands import file_band_name, header_band_name
    from pyengine.io.fitsfile import image_header, parse_spec, scan_hdus, select_image
    from pyengine.io.mosaic import celestial_wcs

    path, ext = parse_spec(spec)
    hdus = scan_hdus(path)
    info, shape = select_image(path, hdus, ext)
    header = image_header(info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        wcs = celestial_wcs(spec, header, shape)
    band = header_band_name(header) or file_band_name(path)
    return ImageInfo(spec, band, tuple(shape), wcs)


def _same_grid(a: ImageInfo, b: ImageInfo, tolerance: float = 0.05) -> bool:
    from pyengine.io.mosaic import wcs_offset

    return a.shape == b.shape and wcs_offset(a.wcs, b.wcs, a.shape) <= tolerance


def _stem(spec: str) -> str:
    name = Path(spec.split("[", 1)[0]).name
    for suffix in sorted(_FITS, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _field_id(specs: Sequence[str]) -> str:
    """The file names' common leading characters (without suffixes), trimmed."""
    stems = [_stem(spec) for spec in specs]
    first, last = min(stems), max(stems)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n].rstrip("._-+ ") if len(stems) > 1 else stems[0]


def _is_catalog(path: Path) -> bool:
    """Whether ``path`` is a catalog by content: FITS with a table and no image HDU, or
    SExtractor ASCII."""
    from pyengine.io.catalog import catalog_format
    from pyengine.io.fitsfile import scan_hdus

    try:
        fmt = catalog_format(path)
        if fmt == "ascii.sextractor":
            return True
        kinds = {h.kind for h in scan_hdus(path)} if fmt == "fits" else set()
    except (PyEngineError, OSError):
        return False
    return "table" in kinds and not kinds & {"image", "compressed"}


def field_catalog(images: Sequence[str], field_id: str) -> tuple[str | None, str | None]:
    """(the field's own catalog, or None; a note when several files could be it), found
    beside ``images`` as the module docstring says."""
    stems = {s for s in (field_id, _field_id(images)) if s}
    taken = {os.path.abspath(i.split("[", 1)[0]) for i in images}
    found = []
    for folder in sorted({os.path.dirname(p) for p in taken}):
        for stem in sorted(stems):
            for suffix in _CATALOGS:
                path = os.path.join(folder, stem + suffix)
                if path not in taken and path not in found and os.path.isfile(path) \
                        and _is_catalog(Path(path)):
                    found.append(path)
    if len(found) > 1:
        return None, (f"field {field_id}: {len(found)} catalogs beside its images ("
                      f"{', '.join(Path(p).name for p in found)}); none taken: fill its "
                      "catalog column by hand")
    return (found[0] if found else None), None


def discover(patterns: Sequence[str], bands: Sequence[str] | None = None,
             notes: list | None = None) -> Survey:
    """The survey of the images ``patterns`` name (see the module docstring); ``notes``
    (a list) gets a line for each field whose catalog was not clear."""
    from pyengine.bands import band_key
    from pyengine.errors import FitsFormatError

    images, weights = [], []
    for spec, named in expand_paths(patterns):
        try:
            info = _image(spec)
        except FitsFormatError as exc:
            if not named and "no image HDU" in str(exc):
                continue  # a table found through a folder or glob
            raise SurveyError(str(exc)) from None
        except PyEngineError as exc:
            raise SurveyError(str(exc)) from None
        (weights if _WEIGHT.search(Path(spec.split("[", 1)[0]).name) else images).append(info)
    if not images:
        raise SurveyError(f"{', '.join(map(str, patterns))}: no images found (only weight maps "
                          "or tables)")
    groups: list[list[ImageInfo]] = []
    for im in images:
        for group in groups:
            if _same_grid(group[0], im):
                group.append(im)
                break
        else:
            groups.append([im])
    wanted = [str(b) for b in bands] if bands else sorted(
        {band_key(im.band) for im in images})
    keys = [band_key(b) for b in wanted]
    fields = []
    for group in groups:
        names = ", ".join(Path(im.spec).name for im in group)
        chosen = []
        for band, key in zip(wanted, keys, strict=True):
            hits = [im for im in group if band_key(im.band) == key]
            if not hits:
                have = ", ".join(sorted({im.band for im in group}))
                raise SurveyError(f"the pointing of {names} has no image of band {band} "
                                  f"(its bands: {have}); every field needs one per band")
            if len(hits) > 1:
                raise SurveyError(f"the pointing of {names} has {len(hits)} images of band "
                                  f"{band}: {', '.join(Path(h.spec).name for h in hits)}")
            chosen.append(hits[0])
        fields.append(chosen)
    weight_specs = []
    for chosen in fields:
        row = []
        for im, key in zip(chosen, keys, strict=True):
            hits = [w for w in weights if band_key(w.band) == key and _same_grid(im, w)]
            row.append(hits[0].spec if hits else None)
        weight_specs.append(tuple(row) if any(row) else ())
    ids = [_field_id([im.spec for im in f]) for f in fields]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        ids = [Path(f[0].spec.split("[", 1)[0]).parent.name for f in fields]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        ids = [f"F{k + 1:03d}" for k in range(len(fields))]
    out = []
    for fid, f, w in zip(ids, fields, weight_specs, strict=True):
        catalog, note = field_catalog([im.spec for im in f], fid)
        if note is not None and notes is not None:
            notes.append(note)
        out.append(Field(fid, tuple(im.spec for im in f), w, catalog=catalog))
    return Survey(tuple(out), tuple(wanted)).described()
