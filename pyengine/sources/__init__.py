"""Position sources: where the positions to classify come from.

Three kinds, one interface (:class:`Source`), so the scan engine treats them alike:

* :class:`CatalogSource` — rows of an input catalog (RA/Dec through the mosaic's
  WCS, or x/y pixels; see :mod:`pyengine.io.catalog`), optionally cut on
  magnitude.  Rows are grouped by owning tile once, in :meth:`Source.bind`.
* :class:`DetectSource` — objects found by SEP on each tile's pixels (core plus
  halo), with their measurements as extra output columns.
* :class:`GridSource` — a dense regular grid of positions, for score maps.

Contract (DESIGN §2, §4):

* Positions are 0-based pixel coordinates on the mosaic's grid (astropy
  convention).  A tile owns the positions whose centre pixel
  (:func:`pyengine.coords.centre_pixel`) lies in its core, so over all tiles of
  a plan every on-image position is returned exactly once.  ``positions`` is a
  pure function of (source options, inputs, tile) and returns its positions in
  a deterministic order: input order for catalogs, (y, x) for detections,
  row-major for grids.
* ``bind(mosaic, plan)`` is called once before scanning; it reads and checks
  everything a user can get wrong (catalog columns, band names), so mistakes
  surface before any pixel is read.  ``count``, ``positions``, ``off_image``,
  ``fingerprint`` and ``passthrough`` need a bound source.
* Catalog positions whose centre pixel is off the image, or that are not
  finite, are returned by ``off_image`` (to be counted and reported, never
  dropped silently); those whose input values are unusable (NaN, null, out
  of range) are also counted by ``n_bad_positions``.  Detections and grid
  points are on the image by construction.
* ``fingerprint`` is a JSON-serialisable dict of everything the source adds to
  the positions (options, catalog bytes, SEP version, resolved columns); the
  caller adds the mosaic and the tile plan.  A resume whose fingerprint
  differs must be refused.
* User mistakes raise :class:`~pyengine.errors.CatalogError` or
  :class:`~pyengine.errors.ConfigError` with a one-line message naming the
  file, the bad value and what is accepted.  A tile too crowded for SEP even
  with enlarged buffers raises :class:`DetectionError` naming the tile.

Modules: :mod:`~pyengine.sources.base` (the interface and :class:`TilePositions`),
:mod:`~pyengine.sources.catalog`, :mod:`~pyengine.sources.detect` (SEP detection; its
module docstring describes the recipe), :mod:`~pyengine.sources.grid` and
:mod:`~pyengine.sources.factory` (:func:`make_source`, from command-line options).

Thread safety: a bound source is read-only; ``count``, ``positions``,
``off_image``, ``fingerprint``, ``passthrough`` and ``describe`` may be called
from any number of threads at once.  ``bind`` must not race with them.  SEP
keeps its buffer limits in process-wide state: they are only ever raised,
under a lock.  SEP 1.4 holds the GIL in its C code (background and
extraction), so detection on several threads of one process runs mostly one
at a time; use processes (shards, Dask workers) to spread detection over
cores.  Sources pickle (for shards and Dask workers).
"""

from pyengine.sources.base import SOURCE_KINDS, Source, TilePositions
from pyengine.sources.catalog import MAG_NAMES, CatalogSource
from pyengine.sources.detect import (
    DETECT_COLUMNS,
    MAG_COLUMNS,
    ZERO_POINT_KEYS,
    DetectionError,
    DetectSource,
)
from pyengine.sources.factory import make_source
from pyengine.sources.grid import GridSource

__all__ = [
    "DETECT_COLUMNS",
    "MAG_COLUMNS",
    "MAG_NAMES",
    "SOURCE_KINDS",
    "ZERO_POINT_KEYS",
    "CatalogSource",
    "DetectSource",
    "DetectionError",
    "GridSource",
    "Source",
    "TilePositions",
    "make_source",
]
