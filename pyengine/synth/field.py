"""Render a synthetic PAndAS-like field block by block and write it to disk.

:class:`FieldRenderer` turns any block of whole image rows into pixels of both
bands; :func:`make_field` walks the image from top to bottom in blocks of
``config.tile_size`` rows, writes each band with the streaming writer (or
fitsio for RICE), and writes the truth catalog as the cells are drawn.  Peak
memory is set by the block (2 bands x tile_size x width float64, plus the
objects of the cell rows within reach of it), never by the field's height.

The same config gives the same bytes whatever the tile size: pixels are pure
functions of global coordinates (see :mod:`pyengine.synth.render`), objects
come from cells seeded independently (:mod:`pyengine.synth.catalog`), and each
extended object's PSF-convolved stamp depends only on the object.

A field of a synthetic survey (:mod:`pyengine.synth.survey`) is rendered from
objects given to it instead (``objects=``: drawn once on the survey's sky and
moved onto this field's grid), which may lie up to one cell (R_MAX px) beyond
the image so that their light reaches it; they are grouped into cell rows by
position, including the row of cells above and below the image, and rendered
as drawn ones are.

Thread safety: a FieldRenderer keeps caches (cells, stamps) and must be used
from one thread.  Its Numba kernels release the GIL and run on Numba's thread
pool; NumPy FFTs and catalog draws hold the GIL.  Separate renderers (and
make_field calls with different outputs) may run in parallel threads when
Numba's threading layer is OpenMP or TBB.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.coords import centre_pixel
from pyengine.errors import ConfigError
from pyengine.kernels.pool import POOL
from pyengine.synth import render
from pyengine.synth.catalog import CELL, Objects, draw_cell
from pyengine.synth.config import SynthConfig
from pyengine.synth.profiles import PSF, R_MAX, object_stamps
from pyengine.synth.sky import (
    disk_coefficients,
    disk_geometry,
    field_wcs,
    gap_pattern,
    sky_counts,
)
from pyengine.synth.writers import FieldWriters, TruthWriter

__all__ = ["FieldRenderer", "SynthResult", "make_field", "prepare_output_dir"]

#: A pixel skips an object's light below this fraction of the sky noise.
EPSILON = 0.01


@dataclass(frozen=True)
class SynthResult:
    """What :func:`make_field` wrote."""

    #: Band name -> (file, HDU index) of its image.
    images: dict[str, tuple[Path, int]]
    #: The truth catalog (FITS binary table in HDU 1).
    truth: Path
    #: Objects in the truth catalog per class.
    counts: dict[str, int]
    seconds: float
    config: SynthConfig


@dataclass
class _CellRow:
    """One row of cells: its objects plus what rendering needs, per band."""

    objects: Objects
    p_rad: np.ndarray       # (2, n) point-source footprint radii, px
    e_lo: np.ndarray        # (2, n) first image row each stamp reaches
    e_hi: np.ndarray        # (2, n) last image row
    e_kernel: np.ndarray    # (2, n) PSF kernel radius
    trails: np.ndarray      # (m, 5) band, x_lo, x_hi, y_lo, y_hi
    y_min: float            # first and last image rows any object reaches
    y_max: float


class FieldRenderer:
    """Pixels of both bands for any block of rows; call :meth:`render` with
    increasing rows for efficiency (cells are drawn once and dropped behind)."""

    def __init__(self, config: SynthConfig, on_cells=None, objects: Objects | None = None):
        self.config = c = config
        #: Called with (cell row index, Objects) the first time a cell row is drawn.
        self.on_cells = on_cells
        if objects is not None and on_cells is not None:
            raise ValueError("on_cells reports drawn cells; given objects are not drawn")
        self.psfs = [PSF(b.seeing / c.pixel_scale, b.moffat_beta) for b in c.bands]
        self.sky = np.array([sky_counts(c, b.name) for b in c.bands])
        self.disk_amp = np.array([b.flux(b.disk_mu0) * c.pixel_area_arcsec2 for b in c.bands])
        gain = np.array([b.gain for b in c.bands])
        self.inv_gain = 1.0 / gain
        self.read_var = np.array([(b.read_noise / b.gain) ** 2 for b in c.bands])
        #: Sky noise per pixel (counts), and the light below which pixels skip an object.
        self.sigma = np.sqrt(self.sky * self.inv_gain + self.read_var)
        self.threshold = EPSILON * self.sigma
        self.saturate = np.array([b.saturate for b in c.bands])
        self.sky_sub = self.sky if c.sky_subtracted else np.zeros(2)
        self.keys = np.array([render.noise_key(c.seed, k) for k in range(2)], dtype=np.uint64)
        self.coef = disk_coefficients(c)
        self.geom = disk_geometry(c)
        self.gaps = gap_pattern(c)
        self.n_cell_rows = -(-c.height // CELL)
        self.n_cell_cols = -(-c.width // CELL)
        #: Given objects grouped by cell row (None: cells are drawn from the seed).
        self._given = None if objects is None else self._group(objects)
        #: Cell rows that may hold objects: one more each side for given objects.
        self._cy_min, self._cy_max = ((0, self.n_cell_rows - 1) if objects is None
                                      else (-1, self.n_cell_rows))
        self._rows: dict[int, _CellRow] = {}
        self._drawn = self._cy_min
        self._stamps: dict[tuple[int, int], list[np.ndarray]] = {}

    # -- cells ---------------------------------------------------------------
    def _group(self, objs: Objects) -> dict[int, Objects]:
        """Given objects by cell row (point sources and extended objects by their own
        row, order kept); their truth rows are not needed to render."""
        rows = {}
        cy_p = np.floor((objs.p_y + 0.5) / CELL).astype(np.int64)
        cy_e = np.floor((objs.e_y + 0.5) / CELL).astype(np.int64)
        both = np.concatenate([cy_p, cy_e])
        if len(both) and (both.min() < -1 or both.max() > self.n_cell_rows):
            raise ValueError(f"given objects must lie within {CELL} rows of the image")
        for cy in np.unique(both):
            rows[int(cy)] = objs.take(p=np.flatnonzero(cy_p == cy),
                                      e=np.flatnonzero(cy_e == cy))
        return rows

    def _prepare(self, cy: int, objs: Objects) -> _CellRow:
        """Footprints, stamp extents and bleed trails of one cell row's objects.

        Every object's light is kept within R_MAX rows of the cell row (point
        sources outside it, i.e. cluster members, get their footprint and trail
        shortened accordingly), so a block needs only the cell rows within
        R_MAX of it.
        """
        row_lo = cy * CELL - 0.5
        row_hi = (cy + 1) * CELL - 0.5
        if self._given is None:   # drawn objects lie on the image
            row_hi = min(row_hi, self.config.height - 0.5)
        room = R_MAX - np.maximum(np.maximum(row_lo - objs.p_y, objs.p_y - row_hi), 0.0)
        p_rad = np.vstack([np.minimum(psf.radius_for(objs.p_flux[b], self.threshold[b]), room)
                           for b, psf in enumerate(self.psfs)])
        n_e = len(objs.e_x)
        kern = np.array([[psf.kernel_radius(f, self.threshold[b]) for f in objs.e_flux[b]]
                         for b, psf in enumerate(self.psfs)], dtype=np.int64).reshape(2, n_e)
        ey = centre_pixel(objs.e_y)
        e_lo = ey - objs.e_half - kern
        e_hi = ey + objs.e_half + kern
        trails = self._trails(objs, room)
        reach = [objs.p_y - p_rad.max(axis=0), objs.p_y + p_rad.max(axis=0),
                 e_lo.min(axis=0), e_hi.max(axis=0), trails[:, 3], trails[:, 4]]
        lo = min((float(a.min()) for a in reach[0::2] if len(a)), default=math.inf)
        hi = max((float(a.max()) for a in reach[1::2] if len(a)), default=-math.inf)
        # The truth rows have been reported; only rendering data stay in memory.
        empty = np.zeros(0)
        objs = dataclasses.replace(objs, **{f.name: empty for f in dataclasses.fields(objs)
                                            if f.name.startswith("t_")})
        return _CellRow(objs, p_rad, e_lo, e_hi, kern, trails, lo, hi)

    def _trails(self, objs: Objects, room: np.ndarray) -> np.ndarray:
        """Bleed trails of saturated point sources, up and down their column.

        The charge above the saturation level (PSF-integrated, on dark sky)
        fills pixels at the saturation level along the column, split evenly
        up and down; trails are 3 columns wide beyond 200 px of charge, and at
        most ``room`` rows long each way.
        """
        out = []
        for b, psf in enumerate(self.psfs):
            full = self.saturate[b] - self.sky[b]
            grid = psf.pixel_grid(16)
            hot = np.flatnonzero(objs.p_flux[b] * grid[16, 16] > full)
            for j in hot:
                excess = float(np.maximum(objs.p_flux[b, j] * grid - full, 0.0).sum())
                npix = excess / full
                width = 1 if npix < 200 else 3
                half = min(math.ceil(npix / width / 2.0), math.floor(room[j]))
                xc, yc = int(centre_pixel(objs.p_x[j])), int(centre_pixel(objs.p_y[j]))
                out.append((b, xc - width // 2, xc + width // 2, yc - half, yc + half))
        return np.array(out, dtype=np.int64).reshape(-1, 5)

    def _cell_row(self, cy: int) -> _CellRow:
        row = self._rows.get(cy)
        if row is None:
            if self._given is not None:
                objs = self._given.get(cy) or Objects.empty()
            else:
                objs = Objects.concat([draw_cell(self.config, cx, cy)
                                       for cx in range(self.n_cell_cols)])
            if cy >= self._drawn:
                if cy != self._drawn:
                    raise RuntimeError("cell rows must be drawn in order")
                self._drawn += 1
                if self.on_cells is not None:
                    self.on_cells(cy, objs)
            row = self._rows[cy] = self._prepare(cy, objs)
        return row

    def _rows_for(self, y0: int, y1: int) -> list[tuple[int, _CellRow]]:
        """Cell rows whose objects may reach image rows y0 .. y1 - 1, in order."""
        last = min((y1 + R_MAX) // CELL, self._cy_max)
        first = max((y0 - R_MAX) // CELL, self._cy_min)
        for cy in range(self._drawn, last + 1):   # draw (and report) in order
            self._cell_row(cy)
        for cy in [k for k in self._rows if k < first]:
            del self._rows[cy]
        rows = [(cy, self._cell_row(cy)) for cy in range(first, last + 1)]
        return [(cy, r) for cy, r in rows if r.y_max >= y0 and r.y_min <= y1 - 1]

    def finish_drawing(self) -> None:
        """Draw (and report) any cell rows not drawn yet."""
        for cy in range(self._drawn, self._cy_max + 1):
            self._cell_row(cy)
            del self._rows[cy]

    # -- pixels --------------------------------------------------------------
    def _stamps_of(self, key, row: _CellRow, k: int) -> list[np.ndarray]:
        """PSF-convolved stamps (g, i) of extended object k, cached while needed."""
        stamps = self._stamps.get(key)
        if stamps is None:
            o = row.objects
            cx, cy = int(centre_pixel(o.e_x[k])), int(centre_pixel(o.e_y[k]))
            radii = [int(r) for r in row.e_kernel[:, k]]
            stamps = object_stamps(o.e_kind[k], o.e_scale[k], o.e_shape[k], o.e_q[k],
                                   o.e_pa[k], o.e_x[k] - cx, o.e_y[k] - cy, o.e_half[k],
                                   o.e_flux[:, k], self.psfs, radii)
            self._stamps[key] = stamps
        return stamps

    def _add_extended(self, out, y0, y1, rows):
        """Add the stamps reaching rows y0 .. y1 - 1, object by object in global order."""
        nx = self.config.width
        for cy, row in rows:
            o = row.objects
            reach = (row.e_hi.max(axis=0) >= y0) & (row.e_lo.min(axis=0) < y1)
            for k in np.flatnonzero(reach):
                key = (cy, int(k))
                stamps = self._stamps_of(key, row, k)
                for b, stamp in enumerate(stamps):
                    lo, hi = int(row.e_lo[b, k]), int(row.e_hi[b, k])
                    x0 = int(centre_pixel(o.e_x[k])) - stamp.shape[1] // 2
                    ra, rb = max(lo, y0), min(hi, y1 - 1) + 1
                    xa, xb = max(x0, 0), min(x0 + stamp.shape[1], nx)
                    if ra < rb and xa < xb:
                        out[b, ra - y0:rb - y0, xa:xb] += stamp[ra - lo:rb - lo, xa - x0:xb - x0]
                if row.e_hi[:, k].max() < y1:   # no later block needs it
                    del self._stamps[key]

    def render(self, y0: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Pixels of image rows y0 .. y1 - 1, shape (2, y1 - y0, width), float64,
        bands (g, i).  ``out`` (C-contiguous float64 of that shape) is filled and
        returned if given: reusing one buffer saves allocating it per block."""
        c = self.config
        if not 0 <= y0 < y1 <= c.height:
            raise ValueError(f"rows {y0}..{y1} outside the image's {c.height} rows")
        shape = (2, y1 - y0, c.width)
        if out is None:
            out = np.empty(shape)
        elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous float64 of shape {shape}")
        pairs = self._rows_for(y0, y1)
        rows = [r for _, r in pairs]
        # Numba's workqueue layer runs one parallel region at a time in a process: hold
        # the scan path's pool lock around each parallel kernel (kernels.pool).
        with POOL:
            render.fill_background(out, y0, self.coef, self.geom, self.sky, self.disk_amp)
        self._add_extended(out, y0, y1, pairs)
        for b, psf in enumerate(self.psfs):
            parts = []
            for r in rows:
                o, rad = r.objects, r.p_rad[b]
                near = np.flatnonzero((o.p_y + rad >= y0) & (o.p_y - rad <= y1 - 1))
                parts.append((o.p_x[near], o.p_y[near], o.p_flux[b, near], rad[near]))
            xs, ys, fl, rd = (np.concatenate([np.zeros(0)] + [p[j] for p in parts])
                              for j in range(4))
            offsets, idx = render.row_index(y0, y1 - y0, ys, rd)
            with POOL:
                render.add_points(out[b], y0, offsets, idx, xs, ys, fl, rd, psf.table,
                                  psf.alpha, psf.beta)
        trails = np.vstack([np.zeros((0, 5), np.int64)] + [r.trails for r in rows])
        with POOL:
            render.finish_rows(out, y0, self.keys, self.inv_gain, self.read_var,
                               self.saturate, self.sky_sub, trails, self.gaps, c.chip_gaps)
        return out


def prepare_output_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, created if missing; ConfigError unless a writable folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {str(out)!r} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {str(out)!r}: {exc.strerror}") from exc
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output directory {str(out)!r} is not writable")
    return out


def make_field(out_dir: str | os.PathLike, config: SynthConfig | None = None, *,
               progress=None, objects: Objects | None = None, truth_ids=None,
               truth_comments=()) -> SynthResult:
    """Write a synthetic g, i field and its truth catalog into ``out_dir``.

    Files: ``g.fits``/``i.fits`` (float32, int16), ``g.fits.fz``/``i.fits.fz``
    (rice) or ``field.fits`` (mef), and ``truth.fits``; existing files of these
    names are replaced (atomically).  ``out_dir`` is created if missing.
    ``progress(rows_done, rows_total)`` is called after each block.

    ``objects`` (in this field's 0-based pixels, on the image or up to R_MAX px
    beyond it) replaces the objects drawn from the seed: its point sources and
    extended objects are rendered, in the order given, and its truth rows are the
    rows of truth.fits, with ids ``truth_ids`` (default 1, 2, ...);
    ``truth_comments`` are added to that catalog's header.  The seed then sets
    only the noise.  :func:`pyengine.synth.survey.make_survey` renders its fields so.
    """
    config = SynthConfig() if config is None else config
    if not isinstance(config, SynthConfig):
        raise ConfigError(f"config must be a SynthConfig; got {type(config).__name__}")
    out = prepare_output_dir(out_dir)
    t0 = time.perf_counter()
    wcs = field_wcs(config)
    with TruthWriter(out / "truth.fits", config, wcs, comments=truth_comments) as truth, \
            FieldWriters(out, config) as images:
        if objects is None:
            renderer = FieldRenderer(config, on_cells=truth.add)
        else:
            truth.add(0, objects, ids=truth_ids)
            renderer = FieldRenderer(config, objects=objects)
        tile = min(config.tile_size, config.height)
        buffer = np.empty((2, tile, config.width))   # reused: no page faults per block
        for y0 in range(0, config.height, tile):
            y1 = min(y0 + tile, config.height)
            images.write(y0, renderer.render(y0, y1, buffer if y1 - y0 == tile else None))
            if progress is not None:
                progress(y1, config.height)
        renderer.finish_drawing()
        # Leaving the with block renames the images into place first, then the
        # truth catalog (deleted when the run began): a field whose truth.fits
        # exists is complete.
    return SynthResult(images=images.locations, truth=out / "truth.fits",
                       counts=truth.counts, seconds=time.perf_counter() - t0, config=config)
