"""A survey: a list of fields, each one image per band on its own pixel grid and WCS.

The **manifest** is a table (ECSV, or CSV written by hand), one row per field:

============  ===========================================================================
column        meaning
============  ===========================================================================
``field``     the field's id: unique, non-empty (``G002.003.844+33.133``, ``F01``)
``path_<b>``  the image of band ``<b>``: a path or ``path[ext]`` (number or EXTNAME),
              relative to the manifest's folder unless absolute; one column per band,
              in the survey's band order
``weight_<b>``  optional weight (inverse-variance) map of band ``<b>``, same rules
``catalog``   optional: the field's own source catalog (MegaPipe-style SExtractor
              output: FITS_LDAC or FITS table, whatever its suffix, SExtractor ASCII,
              ECSV, CSV, Parquet), same path rules; ``pyengine scan MANIFEST`` without
              ``--catalog`` or ``--grid`` scores each field's own rows, by their RA/Dec
``nx``, ``ny``  the field's size in pixels            } written by ``pyengine survey
``pixscale``    its pixel scale, arcsec per pixel     } init`` and by :meth:`Survey.write`
``ra1..ra4``, ``dec1..dec4``  its footprint's corners, deg (ICRS)   } after
                                                                    } :meth:`Survey.described`
============  ===========================================================================

A one-field survey (``pyengine scan g.fits i.fits``) is :meth:`Survey.single`: the same
type on the same code path.  The ECSV's metadata holds ``format`` (``pyengine.survey/1``)
and ``bands``; a CSV names its bands by its ``path_`` columns alone.

:meth:`Survey.described` opens every field as a :class:`~pyengine.io.mosaic.Mosaic`
(headers only: that checks that the field's bands share one grid and have a celestial
WCS) and fills in its size, scale and footprint.  Every problem of a manifest is one
line naming the manifest, the field and the file: a band with no image, a duplicated
field, a file missing (a catalog too), bands of one field on different grids, no
celestial WCS.  A catalog's content is checked where it is scanned
(:class:`pyengine.survey.sources.FieldCatalogs`).

Thread safety: the types are immutable; functions read files and return new objects.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError, InputFileError, PyEngineError

__all__ = ["FORMAT", "Field", "Survey", "SurveyError", "as_survey", "is_manifest",
           "read_manifest"]

FORMAT = "pyengine.survey/1"
_SUFFIXES = (".ecsv", ".csv")
_GEOMETRY = ("nx", "ny", "pixscale", *(f"{a}{k}" for k in range(1, 5) for a in ("ra", "dec")))


class SurveyError(InputFileError):
    """A manifest, or a field of it, that cannot be used (one line naming both)."""


@dataclass(frozen=True)
class Field:
    """One pointing: an image per band (absolute ``path`` or ``path[ext]`` specs), in the
    survey's band order, with optional weight maps, an optional catalog of its own
    sources (a spec as the images') and, once described, its geometry."""

    id: str
    images: tuple[str, ...]
    weights: tuple[str | None, ...] = ()
    shape: tuple[int, int] | None = None       # (ny, nx)
    pixel_scale: float | None = None           # arcsec / px
    corners: tuple[tuple[float, float], ...] | None = None  # 4 x (ra, dec), deg
    catalog: str | None = None

    @property
    def described(self) -> bool:
        return self.shape is not None and self.corners is not None

    def open(self, bands: Sequence[str]):
        """The field's :class:`~pyengine.io.mosaic.Mosaic`, bands named ``bands``."""
        from pyengine.io.mosaic import Mosaic

        return Mosaic.open(list(self.images), bands=list(bands))


@dataclass(frozen=True)
class Survey:
    """Fields sharing one band list; ``manifest`` is where it was read from (or None)."""

    fields: tuple[Field, ...]
    bands: tuple[str, ...]
    manifest: Path | None = None

    def __post_init__(self):
        where = self.manifest or "survey"
        if not self.fields:
            raise SurveyError(f"{where}: no fields; a survey needs at least one")
        if not self.bands:
            raise SurveyError(f"{where}: no bands; give one path_<band> column per band")
        seen: dict[str, int] = {}
        for k, field in enumerate(self.fields):
            if not field.id:
                raise SurveyError(f"{where}: row {k + 1} has an empty field id")
            if field.id in seen:
                raise SurveyError(f"{where}: field {field.id!r} appears twice (rows "
                                  f"{seen[field.id] + 1} and {k + 1}); field ids must be unique")
            seen[field.id] = k
            if len(field.images) != len(self.bands):
                raise SurveyError(f"{where}: field {field.id!r} has {len(field.images)} images "
                                  f"for {len(self.bands)} bands")

    # -- making one --------------------------------------------------------------------
    @classmethod
    def single(cls, images: Sequence, bands: Sequence[str] | None = None,
               field_id: str = "1") -> Survey:
        """A one-field survey of ``images`` (bands named as ``Mosaic.open`` names them)."""
        specs = tuple(os.fspath(p) for p in images)
        if bands is None:
            from pyengine.io.mosaic import Mosaic

            with Mosaic.open(list(specs)) as mosaic:
                bands = mosaic.bands
        return cls((Field(field_id, specs),), tuple(bands))

    @classmethod
    def read(cls, path) -> Survey:
        """The survey a manifest describes (:func:`read_manifest`)."""
        return read_manifest(path)

    # -- describing and checking ----------------------------------------------------------
    def field(self, field_id: str) -> Field:
        for f in self.fields:
            if f.id == field_id:
                return f
        raise ConfigError(f"{self.manifest or 'survey'}: no field {field_id!r}; its fields: "
                          + ", ".join(f.id for f in self.fields[:8])
                          + (" ..." if len(self.fields) > 8 else ""))

    def described(self) -> Survey:
        """This survey with every field's size, scale and footprint read from its files
        (each field opened as a Mosaic: one line naming the field for any problem)."""
        return replace(self, fields=tuple(describe_field(f, self.bands, self.manifest)
                                          for f in self.fields))

    @property
    def has_catalogs(self) -> bool:
        """Whether any field has its own catalog (the manifest's ``catalog`` column)."""
        return any(f.catalog for f in self.fields)

    @property
    def total_pixels(self) -> int:
        """Pixels per band over all fields (described fields only)."""
        return sum(f.shape[0] * f.shape[1] for f in self.fields if f.shape)

    # -- writing ----------------------------------------------------------------------
    def table(self, relative_to: Path | None = None):
        """The manifest as an astropy Table (paths relative to ``relative_to`` where they
        lie below it)."""
        from astropy.table import Table

        def rel(spec):
            if spec is None or relative_to is None:
                return spec or ""
            path, ext = _split(spec)
            if Path(path).resolve().is_relative_to(relative_to):
                path = os.path.relpath(Path(path).resolve(), relative_to)
            return path if ext is None else f"{path}[{ext}]"

        rows = {"field": [f.id for f in self.fields]}
        for k, band in enumerate(self.bands):
            rows[f"path_{band}"] = [rel(f.images[k]) for f in self.fields]
        for k, band in enumerate(self.bands):
            column = [rel(f.weights[k]) if k < len(f.weights) else "" for f in self.fields]
            if any(column):
                rows[f"weight_{band}"] = column
        if any(f.catalog for f in self.fields):
            rows["catalog"] = [rel(f.catalog) for f in self.fields]
        if all(f.described for f in self.fields):
            rows["nx"] = [f.shape[1] for f in self.fields]
            rows["ny"] = [f.shape[0] for f in self.fields]
            rows["pixscale"] = [f.pixel_scale for f in self.fields]
            for c in range(4):
                rows[f"ra{c + 1}"] = [f.corners[c][0] for f in self.fields]
                rows[f"dec{c + 1}"] = [f.corners[c][1] for f in self.fields]
        table = Table(rows)
        table.meta.update(format=FORMAT, bands=list(self.bands))
        return table

    def write(self, path) -> Path:
        """Write the manifest (``.ecsv`` or ``.csv``) atomically; paths relative to its
        folder where they lie below it."""
        from pyengine.atomic import atomic_path

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _SUFFIXES:
            raise ConfigError(f"{path}: a survey manifest is written as .ecsv or .csv; "
                              f"got {path.suffix or 'no suffix'!r}")
        table = self.table(relative_to=path.resolve().parent)
        with atomic_path(path) as tmp:
            table.write(tmp, format="ascii.ecsv" if suffix == ".ecsv" else "ascii.csv",
                        overwrite=True)
        return path


# -- reading -------------------------------------------------------------------------------
def as_survey(value) -> Survey | None:
    """``value`` as a Survey: itself, or the survey a manifest path describes; None for
    anything else (a mosaic, band image paths)."""
    if isinstance(value, Survey):
        return value
    if isinstance(value, str | os.PathLike) and is_manifest(value):
        return read_manifest(value)
    return None


def is_manifest(path) -> bool:
    """Whether ``path`` names a survey manifest (.ecsv or .csv), not a FITS image."""
    return Path(os.fspath(path)).suffix.lower() in _SUFFIXES


def _split(spec: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"(.+)\[([^\[\]]+)\]", spec)
    return (m.group(1), m.group(2)) if m else (spec, None)


def _resolve(spec: str, base: Path) -> str:
    path, ext = _split(spec.strip())
    path = os.path.expanduser(path)
    full = path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))
    return full if ext is None else f"{full}[{ext}]"


def _cell(value) -> str:
    if value is None or np.ma.is_masked(value):
        return ""
    return str(value).strip()


def read_manifest(path) -> Survey:
    """Read a manifest (see the module docstring); one line for anything wrong with it."""
    from astropy.table import Table

    path = Path(path)
    if not path.exists():
        raise SurveyError(f"{path}: no such survey manifest")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise SurveyError(f"{path}: a survey manifest is an .ecsv or .csv table; got "
                          f"{path.suffix or 'no suffix'!r}")
    try:
        table = Table.read(path, format="ascii.ecsv" if suffix == ".ecsv" else "ascii.csv")
    except Exception as exc:  # astropy raises many kinds for a malformed table
        text = " ".join(str(exc).split())[:200]
        raise SurveyError(f"{path}: not a readable {suffix[1:].upper()} table ({text}); a "
                          "survey manifest has columns field, path_<band>, ...") from None
    names = list(table.colnames)
    if "field" not in names:
        raise SurveyError(f"{path}: no 'field' column (columns: {', '.join(names[:10])}); a "
                          "survey manifest has columns field, path_<band>, ...")
    bands = [n[len("path_"):] for n in names if n.startswith("path_") and len(n) > 5]
    if not bands:
        raise SurveyError(f"{path}: no path_<band> columns (columns: {', '.join(names[:10])});"
                          " give one per band, e.g. path_g, path_i")
    meta_bands = table.meta.get("bands")
    if meta_bands is not None and [str(b) for b in meta_bands] != bands:
        raise SurveyError(f"{path}: its metadata names bands {list(meta_bands)} but its "
                          f"columns are for {bands}")
    unknown = [n for n in names if n not in ("field", "catalog")
               and not n.startswith(("path_", "weight_")) and n not in _GEOMETRY]
    if unknown:
        raise SurveyError(f"{path}: unknown column(s) {', '.join(unknown)}; accepted: field, "
                          "path_<band>, weight_<band>, catalog, nx, ny, pixscale, ra1..ra4, "
                          "dec1..dec4")
    for n in names:
        if n.startswith("weight_") and n[len("weight_"):] not in bands:
            raise SurveyError(f"{path}: column {n} names a band with no path_ column "
                              f"(bands: {', '.join(bands)})")
    base = path.resolve().parent
    geometry = all(n in names for n in _GEOMETRY)
    fields = []
    for k, row in enumerate(table):
        fid = _cell(row["field"])
        label = f"field {fid!r}" if fid else f"row {k + 1}"
        images = []
        for band in bands:
            spec = _cell(row[f"path_{band}"])
            if not spec:
                raise SurveyError(f"{path}: {label}: no image for band {band} (column "
                                  f"path_{band} is empty); every field needs one image per "
                                  "band")
            images.append(_resolve(spec, base))
        weights = []
        for band in bands:
            spec = _cell(row[f"weight_{band}"]) if f"weight_{band}" in names else ""
            weights.append(_resolve(spec, base) if spec else None)
        catalog = _cell(row["catalog"]) if "catalog" in names else ""
        shape = scale = corners = None
        if geometry:
            try:
                shape = (int(row["ny"]), int(row["nx"]))
                scale = float(row["pixscale"])
                corners = tuple((float(row[f"ra{c}"]), float(row[f"dec{c}"]))
                                for c in range(1, 5))
            except (TypeError, ValueError):
                shape = scale = corners = None  # described again when needed
            if corners and not all(math.isfinite(v) for c in corners for v in c):
                shape = scale = corners = None
        fields.append(Field(fid, tuple(images), tuple(weights) if any(weights) else (),
                            shape, scale, corners, _resolve(catalog, base) if catalog else None))
    return Survey(tuple(fields), tuple(bands), path)


# -- describing a field ----------------------------------------------------------------------
def footprint_corners(wcs, shape) -> tuple[tuple[float, float], ...]:
    """(ra, dec) of the image's outer pixel corners, in order (0, 0), (nx, 0), (nx, ny),
    (0, ny) of the pixel edges (0-based centres: edges at -0.5 and n - 0.5)."""
    ny, nx = shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs.pixel_to_world_values(x, y)
    return tuple((float(r) % 360.0, float(d)) for r, d in zip(ra, dec, strict=True))


def pixel_scale_arcsec(wcs) -> float:
    """The geometric mean pixel scale at the reference pixel, arcsec per pixel."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    scales = proj_plane_pixel_scales(wcs.celestial)  # deg per pixel along each axis
    return float(math.sqrt(abs(scales[0] * scales[1])) * 3600.0)


def describe_field(field: Field, bands: Sequence[str], manifest=None) -> Field:
    """``field`` with its shape, scale and footprint, from its images (opened as one
    Mosaic, which checks them); any problem is one SurveyError naming the field."""
    return described_with_wcs(field, bands, manifest)[0]


def described_with_wcs(field: Field, bands: Sequence[str], manifest=None):
    """(``field`` described as :func:`describe_field` does, its celestial WCS), from one
    opening of its images."""
    where = f"{manifest or 'survey'}: field {field.id!r}"
    for spec in (*field.images, *(w for w in field.weights if w)):
        file = _split(spec)[0]
        if not os.path.exists(file):
            raise SurveyError(f"{where}: {file}: no such file")
    if field.catalog and not os.path.exists(_split(field.catalog)[0]):
        raise SurveyError(f"{where}: {_split(field.catalog)[0]}: no such catalog file (column "
                          "catalog)")
    try:
        with field.open(bands) as mosaic:
            shape, wcs = mosaic.shape, mosaic.wcs
            corners = footprint_corners(wcs, shape)
            scale = pixel_scale_arcsec(wcs)
    except SurveyError:
        raise
    except PyEngineError as exc:
        raise SurveyError(f"{where}: {exc}") from None
    return replace(field, shape=tuple(shape), pixel_scale=scale, corners=corners), wcs.celestial
