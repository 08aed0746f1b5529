"""Synthetic surveys: overlapping fields of one sky (``pyengine synth OUT --survey 3x2``).

PAndAS is made of overlapping ~1 deg MegaCam pointings, each with its own TAN WCS.
A synthetic survey has that shape: COLS x ROWS fields of ``field_size`` px on a
grid whose neighbours overlap by ``overlap`` of a field, each field's tangent point
moved from its grid position by up to ``dither`` px, its pixel grid rotated by up to
``rotation_deg``, its seeing (per band, up to ``seeing_spread`` either way) and depth
(up to ``depth_spread`` mag either way, through the effective gain, hence the noise)
its own, all drawn from generators seeded by (seed, column, row).

**One sky.** Objects are drawn once, on one tangent plane centred on the survey's
centre (``base.ra``, ``base.dec``) at the fields' pixel scale, north up: the plane is
a virtual field (:attr:`SurveyLayout.sky_config`) cut into the cells of
:mod:`pyengine.synth.catalog`, each cell drawn by ``draw_cell`` from (seed, cell) as
a single field's are, so M31's disk and every population follow the same sky
everywhere.  An object is kept if its centre lies on some field's image (a point
source or stamp centred beyond the survey's outer edge is not drawn, as beyond a
single field's edge).  Each field renders every kept object within R_MAX (256) px of
its image, moved through the sky (plane pixel -> RA, Dec -> the field's pixel, exact
to ~1e-9 px) with position angles turned by the local angle between the two grids,
so that a galaxy in an overlap has one position and orientation on the sky in every
field that holds it; cluster members move with their cluster.  Light, noise, PSF,
saturation, bleed trails (along the field's own columns) and chip gaps are the
field's own (:func:`pyengine.synth.field.make_field` with ``objects=``).

**Placed objects.** ``extra_objects`` (:class:`PlacedObject`: a star, a smooth King
cluster or a Sersic galaxy at an exact RA, Dec) are added after the drawn ones, so
tests can put clusters on the boundary between fields and in 3- and 4-way overlaps:
:meth:`SurveyLayout.midpoint` (equidistant from the given fields' tangent points: for
two neighbours a point on the boundary between them, for the four fields round a grid
corner the point where they meet) and :meth:`SurveyLayout.find_point` (the position
deepest inside exactly the given fields) give such positions.

**Output**, under OUT: one folder per field, named ``F<col><row>`` (column 0 east,
row 0 south, each zero-padded to the digits of the larger of COLS - 1 and ROWS - 1:
``F00`` .. ``F21`` for 3 x 2, ``F0000`` .. for 11 columns), holding the images (as a
single field's, in its encoding) and that field's ``truth.fits`` (a single field's
columns; ``id`` is the object's id in the survey truth; x, y on that field's grid);
``truth.fits``, every object once (:class:`~pyengine.synth.writers.SurveyTruthWriter`:
``placed``, ``n_fields``, ``fields``); and ``survey.ecsv``, the manifest
(:mod:`pyengine.survey.manifest`) written last, so its presence marks a complete
survey (a stale one is deleted first).  With ``field_catalogs`` each field's folder
also holds ``<field>.cat``, its truth as a MegaPipe-style SExtractor catalog
(FITS_LDAC: X_IMAGE, Y_IMAGE 1-based, ALPHA_J2000, DELTA_J2000, MAG_AUTO, TRUTH_ID;
:func:`~pyengine.synth.writers.write_sextractor_catalog`), named in the manifest's
``catalog`` column: an object in an overlap is in each catalog of a field holding it.

The one tangent plane limits a survey's size: it must fit in 1,000,000 px (52 deg at
0.187"/px), and far from its centre the plane stretches (3 % at 10 deg), so objects
there are drawn a little sparser and larger than given; for a few degrees (PAndAS's
fields around M31) that is below 0.1 %.  Memory: one field's objects at a time (a
field renders from objects in memory, not cell row by cell row).

Thread safety: a layout is immutable after construction; :func:`make_survey` renders
fields one after the other on the calling thread (see :mod:`pyengine.synth.field`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError
from pyengine.synth.catalog import CELL, CLASSES, Objects, draw_cell, placed_objects
from pyengine.synth.config import SynthConfig, _check_int, _check_range
from pyengine.synth.field import SynthResult, make_field, prepare_output_dir
from pyengine.synth.profiles import R_MAX
from pyengine.synth.sky import field_wcs
from pyengine.synth.writers import SurveyTruthWriter, write_sextractor_catalog

__all__ = ["PlacedObject", "SurveyConfig", "SurveyField", "SurveyLayout", "SurveyResult",
           "make_survey", "parse_grid"]

#: Leading spawn-key word of the per-field draws (dither, rotation, seeing, depth, noise
#: seed): (seed, cell row, cell column) keys the cells, (seed, _FIELD_KEY, col, row) a field.
_FIELD_KEY = 0x53555256
#: Objects this close to a field's image (px) send light into it: R_MAX, one cell.
MARGIN = R_MAX
_MAX_GRID = 100
_KINDS = ("cluster", "star", "galaxy")


def parse_grid(text: str) -> tuple[int, int]:
    """(columns, rows) of ``--survey COLSxROWS`` (``3x2``); one-line ConfigError else."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"survey (--survey) must be COLSxROWS, e.g. 3x2; got {text!r}")
    cols, rows = int(m.group(1)), int(m.group(2))
    _check_grid(cols, rows, text)
    return cols, rows


def _check_grid(cols, rows, text=None) -> None:
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_GRID
             for v in (cols, rows))
    if not ok:
        got = text if text is not None else f"{cols}x{rows}"
        raise ConfigError(f"survey (--survey) must have 1 to {_MAX_GRID} columns and 1 to "
                          f"{_MAX_GRID} rows (COLSxROWS, e.g. 3x2); got {got!r}")


@dataclass(frozen=True)
class SurveyConfig:
    """Everything that determines a synthetic survey; equal configs give equal bytes.

    ``base`` gives what every field shares (seed, populations, bands, encoding, chip
    gaps, ...) and the survey's centre (``base.ra``, ``base.dec``); its width, height,
    rotation and seed-per-field are replaced field by field.
    """

    columns: int = 3
    rows: int = 2
    #: Width and height of every field, px.
    field_size: int = 1024
    #: Overlap of neighbouring fields, fraction of the field size (before dither).
    overlap: float = 0.1
    #: Largest |rotation| of a field's pixel grid, deg (each drawn uniformly within).
    rotation_deg: float = 0.5
    #: Largest offset (x and y, px) of a field's tangent point from its grid position.
    dither: float = 20.0
    #: Largest fractional change of a band's seeing in a field (uniform, per band).
    seeing_spread: float = 0.1
    #: Largest change of a field's depth, mag (uniform; gain x 10^(0.8 dm), so the
    #: sky-limited noise is 10^(-0.4 dm) times the base's).
    depth_spread: float = 0.2
    base: SynthConfig = dataclasses.field(default_factory=SynthConfig)

    def __post_init__(self):
        _check_grid(self.columns, self.rows)
        _check_int("field_size (--field-size)", self.field_size, 64, 100_000, "pixels")
        _check_range("overlap (--overlap)", self.overlap, 0.0, 0.9, "of the field size")
        _check_range("rotation (--rotation)", self.rotation_deg, 0.0, 45.0,
                     "deg (the largest |rotation| of a field)")
        _check_range("dither (--dither)", self.dither, 0.0, self.field_size / 4.0,
                     "px (at most a quarter of the field size)")
        _check_range("seeing_spread", self.seeing_spread, 0.0, 0.5, "(fraction)")
        _check_range("depth_spread", self.depth_spread, 0.0, 1.0, "mag")
        if not isinstance(self.base, SynthConfig):
            raise ConfigError(f"base must be a SynthConfig; got {type(self.base).__name__}")

    @property
    def step(self) -> float:
        """Distance between neighbouring grid positions, px."""
        return self.field_size * (1.0 - self.overlap)


@dataclass(frozen=True)
class PlacedObject:
    """An object put at an exact sky position (a test's cluster on a field boundary).

    ``kind``: 'cluster' (smooth King profile of half-light radius ``r_h_pc`` and
    concentration c = log10(rt/rc), no resolved members), 'star' or 'galaxy' (Sersic
    ``r_e_arcsec``, ``sersic_n``); ``q`` and ``pa_deg`` (east of north) shape clusters
    and galaxies.  Magnitudes ``i_mag`` and g = i + ``g_i``.
    """

    ra: float
    dec: float
    kind: str = "cluster"
    i_mag: float = 18.5
    g_i: float = 1.0
    r_h_pc: float = 3.0
    concentration: float = 1.2
    r_e_arcsec: float = 1.0
    sersic_n: float = 1.0
    q: float = 1.0
    pa_deg: float = 0.0

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ConfigError(f"placed object kind must be one of {', '.join(_KINDS)}; "
                              f"got {self.kind!r}")
        _check_range("placed object ra", self.ra, 0.0, 360.0, "deg")
        _check_range("placed object dec", self.dec, -89.0, 89.0, "deg")
        _check_range("placed object i_mag", self.i_mag, 5.0, 30.0, "mag")
        _check_range("placed object g_i", self.g_i, -3.0, 5.0, "mag")
        _check_range("placed object r_h_pc", self.r_h_pc, 0.1, 50.0, "pc")
        _check_range("placed object concentration", self.concentration, 0.3, 2.5)
        _check_range("placed object r_e_arcsec", self.r_e_arcsec, 0.01, 20.0, "arcsec")
        _check_range("placed object sersic_n", self.sersic_n, 0.3, 8.0)
        _check_range("placed object q", self.q, 0.1, 1.0)
        _check_range("placed object pa_deg", self.pa_deg, -360.0, 360.0, "deg")


@dataclass(frozen=True, eq=False)
class SurveyField:
    """One field of a layout: its id, grid place, config (tangent point, rotation,
    seeing, gain, noise seed) and WCS, and its bounds on the survey's plane."""

    id: str
    column: int
    row: int
    config: SynthConfig
    wcs: object
    #: (x_lo, x_hi, y_lo, y_hi) on the survey's plane of the image, and of the image
    #: grown by MARGIN px.
    bounds: tuple[float, float, float, float]
    reach: tuple[float, float, float, float]

    def pixels(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixels of sky positions (deg) on this field's grid."""
        x, y = self.wcs.wcs_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        return np.asarray(x, float), np.asarray(y, float)

    def depth_inside(self, x, y) -> np.ndarray:
        """Distance (px) of pixel positions inside the image's edges (negative outside)."""
        c = self.config
        return np.minimum(np.minimum(x + 0.5, c.width - 0.5 - x),
                          np.minimum(y + 0.5, c.height - 0.5 - y))

    def holds(self, x, y) -> np.ndarray:
        """Whether pixel positions lie on the image (as a single field's objects do)."""
        c = self.config
        return (x >= -0.5) & (x < c.width - 0.5) & (y >= -0.5) & (y < c.height - 0.5)


class SurveyLayout:
    """The fields of a SurveyConfig and the plane its sky is drawn on (pure, cheap:
    no pixels).  Build one to choose where to place objects before making the survey."""

    def __init__(self, config: SurveyConfig):
        if not isinstance(config, SurveyConfig):
            raise ConfigError(f"config must be a SurveyConfig; got {type(config).__name__}")
        self.config = cfg = config
        base = cfg.base
        size = cfg.field_size
        digits = len(str(max(cfg.columns, cfg.rows) - 1))
        # A provisional plane (any size: sky <-> offsets from its centre do not depend on
        # it) places the tangent points; the real one is then made big enough.
        probe = field_wcs(dataclasses.replace(base, width=64, height=64, rotation_deg=0.0))
        specs = []
        for row in range(cfg.rows):
            for col in range(cfg.columns):
                seq = np.random.SeedSequence(entropy=base.seed, spawn_key=(_FIELD_KEY, col, row))
                rng = np.random.Generator(np.random.PCG64(seq))
                dx, dy = rng.uniform(-cfg.dither, cfg.dither, 2)
                rotation = float(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
                seeing = 1.0 + rng.uniform(-cfg.seeing_spread, cfg.seeing_spread, 2)
                depth = float(rng.uniform(-cfg.depth_spread, cfg.depth_spread))
                noise_seed = int(rng.integers(0, 2**62))
                u = (col - (cfg.columns - 1) / 2.0) * cfg.step + dx
                v = (row - (cfg.rows - 1) / 2.0) * cfg.step + dy
                ra, dec = probe.wcs_pix2world([u + 31.5], [v + 31.5], 0)
                bands = tuple(dataclasses.replace(
                    b, seeing=round(float(b.seeing * f), 4),
                    gain=round(float(b.gain * 10.0 ** (0.8 * depth)), 4))
                    for b, f in zip(base.bands, seeing, strict=True))
                fc = dataclasses.replace(base, width=size, height=size, seed=noise_seed,
                                         ra=float(ra[0]) % 360.0, dec=float(dec[0]),
                                         rotation_deg=rotation + 0.0, bands=bands)
                specs.append((f"F{col:0{digits}d}{row:0{digits}d}", col, row, fc))
        # The plane: every field's image grown by MARGIN lies inside it (edges of a TAN
        # image are great circles, straight on the plane too: corners bound them).
        extent = [0.0, 0.0]
        for *_, fc in specs:
            wcs = field_wcs(fc)
            gx, gy = self._corners(wcs, fc, MARGIN, probe)
            extent = [max(extent[0], float(np.abs(gx - 31.5).max())),
                      max(extent[1], float(np.abs(gy - 31.5).max()))]
        width, height = (2 * math.ceil(e) + 4 for e in extent)
        if max(width, height) > 1_000_000:
            raise ConfigError(f"the survey spans {width} x {height} px, more than one tangent "
                              "plane of 1,000,000 px allows; use fewer or smaller fields")
        #: The virtual field whose cells hold the survey's objects.
        self.sky_config = dataclasses.replace(base, width=width, height=height,
                                              rotation_deg=0.0)
        self.sky_wcs = field_wcs(self.sky_config)
        self.cell_cols = -(-width // CELL)
        self.cell_rows = -(-height // CELL)
        fields = []
        for fid, col, row, fc in specs:
            wcs = field_wcs(fc)
            boxes = []
            for grow in (0.0, MARGIN):
                gx, gy = self._corners(wcs, fc, grow, self.sky_wcs)
                boxes.append((float(gx.min()), float(gx.max()), float(gy.min()),
                              float(gy.max())))
            fields.append(SurveyField(fid, col, row, fc, wcs, *boxes))
        self.fields: tuple[SurveyField, ...] = tuple(fields)

    @staticmethod
    def _corners(wcs, fc, grow, plane):
        """Plane pixels of the corners of a field's image grown by ``grow`` px."""
        lo_x, hi_x = -0.5 - grow, fc.width - 0.5 + grow
        lo_y, hi_y = -0.5 - grow, fc.height - 0.5 + grow
        ra, dec = wcs.wcs_pix2world([lo_x, hi_x, hi_x, lo_x], [lo_y, lo_y, hi_y, hi_y], 0)
        return plane.wcs_world2pix(ra, dec, 0)

    # -- looking things up ---------------------------------------------------------
    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.fields)

    def field(self, field_id: str) -> SurveyField:
        for f in self.fields:
            if f.id == field_id:
                return f
        raise ConfigError(f"no field {field_id!r} in the survey; its fields: "
                          + ", ".join(self.ids))

    def sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec (deg) of 0-based pixels of the survey's plane."""
        ra, dec = self.sky_wcs.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return np.asarray(ra, float), np.asarray(dec, float)

    def covering(self, ra: float, dec: float) -> list[str]:
        """Ids of the fields whose images hold the sky position (deg)."""
        return [f.id for f in self.fields if bool(f.holds(*f.pixels([ra], [dec]))[0])]

    def midpoint(self, *field_ids: str) -> tuple[float, float]:
        """RA, Dec of the mean direction of the fields' tangent points: for two fields,
        equidistant from both (on the boundary between neighbours); for the four
        round a grid corner, the middle of the patch all four hold."""
        if not field_ids:
            raise ConfigError("midpoint needs at least one field id")
        v = np.zeros(3)
        for fid in field_ids:
            c = self.field(fid).config
            a, d = math.radians(c.ra), math.radians(c.dec)
            v += [math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)]
        ra = math.degrees(math.atan2(v[1], v[0])) % 360.0
        return ra, math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))

    def find_point(self, field_ids, *, inside: float = 4.0, outside: float = 4.0,
                   step: float = 1.0) -> tuple[float, float]:
        """RA, Dec of a position (on a ``step`` px grid) at least ``inside`` px within
        the images of exactly the fields ``field_ids`` and ``outside`` px beyond every
        other field's: the one farthest past both limits.  ConfigError if none is."""
        want = [self.field(fid) for fid in field_ids]
        if not want:
            raise ConfigError("find_point needs at least one field id")
        x_lo = max(f.bounds[0] for f in want)
        x_hi = min(f.bounds[1] for f in want)
        y_lo = max(f.bounds[2] for f in want)
        y_hi = min(f.bounds[3] for f in want)
        if x_lo < x_hi and y_lo < y_hi:
            gx, gy = np.meshgrid(np.arange(x_lo, x_hi, step), np.arange(y_lo, y_hi, step))
            ra, dec = self.sky(gx.ravel(), gy.ravel())
            score = np.full(ra.shape, np.inf)
            for f in self.fields:
                d = f.depth_inside(*f.pixels(ra, dec))
                score = np.minimum(score, d - inside if f in want else -d - outside)
            best = int(np.argmax(score))
            if score[best] >= 0.0:
                return float(ra[best]), float(dec[best])
        raise ConfigError(f"no position lies {inside:g} px inside exactly the fields "
                          f"{', '.join(field_ids)} and {outside:g} px outside the others")

    # -- moving objects --------------------------------------------------------------
    def candidates(self, box) -> list[SurveyField]:
        """Fields whose image may hold a position in ``box`` (plane x/y lo/hi)."""
        return [f for f in self.fields if f.bounds[0] <= box[1] + 1 and f.bounds[1] >= box[0] - 1
                and f.bounds[2] <= box[3] + 1 and f.bounds[3] >= box[2] - 1]

    def membership(self, x, y, candidates) -> list[tuple[int, np.ndarray]]:
        """(index in ``fields``, mask) of each candidate field holding the plane pixels."""
        ra, dec = self.sky(x, y)
        out = []
        for f in candidates:
            out.append((self.fields.index(f), f.holds(*f.pixels(ra, dec))))
        return out

    def to_field(self, f: SurveyField, objs: Objects) -> Objects:
        """``objs`` (plane pixels) on field ``f``'s grid, through the sky; position angles
        turned by the angle between the grids at each object."""

        def move(x, y):
            return f.pixels(*self.sky(x, y))

        tx, ty = move(objs.t_x, objs.t_y)
        px, py = move(objs.p_x, objs.p_y)
        ex, ey = move(objs.e_x, objs.e_y)
        # The major axis's direction on the plane (north +y, east -x), one px long.
        ax, ay = move(objs.e_x - np.sin(objs.e_pa), objs.e_y + np.cos(objs.e_pa))
        pa = np.arctan2(-(ax - ex), ay - ey) % math.pi
        return dataclasses.replace(objs, t_x=tx, t_y=ty, p_x=px, p_y=py, e_x=ex, e_y=ey,
                                   e_pa=pa)

    def cells_near(self, f: SurveyField) -> list[tuple[int, int]]:
        """(cy, cx) of the plane's cells within MARGIN of field ``f``, in global order."""
        x_lo, x_hi, y_lo, y_hi = f.reach
        cx = range(max(int((x_lo + 0.5) // CELL), 0),
                   min(int((x_hi + 0.5) // CELL), self.cell_cols - 1) + 1)
        cy = range(max(int((y_lo + 0.5) // CELL), 0),
                   min(int((y_hi + 0.5) // CELL), self.cell_rows - 1) + 1)
        return [(j, i) for j in cy for i in cx]

    def cell_box(self, cy: int, cx: int) -> tuple[float, float, float, float]:
        """(x_lo, x_hi, y_lo, y_hi) of cell (cy, cx) of the survey's plane."""
        return (cx * CELL - 0.5, (cx + 1) * CELL - 0.5, cy * CELL - 0.5, (cy + 1) * CELL - 0.5)

    def fields_width(self) -> int:
        """Characters of the longest possible comma-separated list of the fields that
        hold one position (bounded by how many field bounds can share a point)."""
        per = []
        for axis, n in ((0, self.config.columns), (2, self.config.rows)):
            span = max(f.bounds[axis + 1] - f.bounds[axis] for f in self.fields)
            per.append(min(n, int(span // self.config.step) + 2))
        return per[0] * per[1] * (len(self.fields[0].id) + 1)


@dataclass(frozen=True)
class SurveyResult:
    """What :func:`make_survey` wrote."""

    #: Field id -> that field's SynthResult.
    fields: dict[str, SynthResult]
    truth: Path
    manifest: Path
    #: Objects of the survey truth per class, and how many of them were placed.
    counts: dict[str, int]
    placed: int
    seconds: float
    layout: SurveyLayout


class _Sky:
    """The survey's objects, cell by cell: drawn again whenever asked (a pure function
    of (seed, cell)), kept where some field holds them, with their survey ids."""

    def __init__(self, layout: SurveyLayout, placed: Objects):
        self.layout = layout
        self.placed = placed
        #: Cell (or "placed") -> id of its first kept truth row, filled by ids().
        self.first_id: dict = {}

    def cells(self):
        lay = self.layout
        return [(cy, cx) for cy in range(lay.cell_rows) for cx in range(lay.cell_cols)]

    def draw(self, key):
        """(objects, candidate fields, plane box) of a cell or of the placed objects."""
        lay = self.layout
        if key == "placed":
            return self.placed, list(lay.fields)
        box = lay.cell_box(*key)
        candidates = lay.candidates(box)
        if not candidates:
            return None, []
        return draw_cell(lay.sky_config, key[1], key[0]), candidates

    def kept(self, objs: Objects, candidates, kinds=("t", "p", "e")):
        """Per kind (t, p, e), the membership list and whether any field holds each."""
        lay = self.layout
        out = {}
        positions = {"t": (objs.t_x, objs.t_y), "p": (objs.p_x, objs.p_y),
                     "e": (objs.e_x, objs.e_y)}
        for kind in kinds:
            x, y = positions[kind]
            members = lay.membership(x, y, candidates)
            anywhere = np.zeros(len(x), bool)
            for _, mask in members:
                anywhere |= mask
            out[kind] = (members, anywhere)
        return out

    def field_objects(self, f: SurveyField) -> tuple[Objects, np.ndarray]:
        """Every kept object within MARGIN of field ``f``, on its grid and in global
        order, and the survey ids of its truth rows (those on its image)."""
        lay = self.layout
        index = lay.fields.index(f)
        parts, ids = [], []
        for key in [*lay.cells_near(f), "placed"]:
            objs, candidates = self.draw(key)
            if objs is None or f not in candidates:
                continue
            kept = self.kept(objs, candidates)
            t_members, t_any = kept["t"]
            rank = np.cumsum(t_any) - 1 + self.first_id[key]
            on_f = next(mask for k, mask in t_members if k == index)
            moved = lay.to_field(f, objs)
            c = f.config

            def near(x, y, c=c):
                return ((x >= -0.5 - MARGIN) & (x < c.width - 0.5 + MARGIN)
                        & (y >= -0.5 - MARGIN) & (y < c.height - 0.5 + MARGIN))

            p = kept["p"][1] & near(moved.p_x, moved.p_y)
            e = kept["e"][1] & near(moved.e_x, moved.e_y)
            parts.append(moved.take(t=on_f, p=p, e=e))
            ids.append(rank[on_f])
        if not parts:
            return Objects.empty(), np.zeros(0, np.int64)
        return Objects.concat(parts), np.concatenate(ids).astype(np.int64)

    def write_truth(self, writer: SurveyTruthWriter) -> None:
        """Every kept object once, in global order (cells, then placed), numbering them."""
        lay = self.layout
        next_id = 1
        for key in [*self.cells(), "placed"]:
            self.first_id[key] = next_id
            objs, candidates = self.draw(key)
            if objs is None:
                continue
            t_members, t_any = self.kept(objs, candidates, kinds=("t",))["t"]
            n = int(t_any.sum())
            if n == 0:
                continue
            names = [[] for _ in range(len(t_any))]
            for k, mask in sorted(t_members, key=lambda m: m[0]):
                for j in np.flatnonzero(mask):
                    names[j].append(lay.fields[k].id)
            keep = np.flatnonzero(t_any)
            ra, dec = lay.sky(objs.t_x[keep], objs.t_y[keep])
            writer.add(objs.take(t=keep), np.arange(next_id, next_id + n), ra, dec,
                       [",".join(names[j]) for j in keep], placed=key == "placed")
            next_id += n


def _placed(layout: SurveyLayout, extra_objects) -> Objects:
    specs = list(extra_objects)
    for k, spec in enumerate(specs):
        if not isinstance(spec, PlacedObject):
            raise ConfigError(f"extra_objects[{k}] must be a PlacedObject; got "
                              f"{type(spec).__name__}")
        if not layout.covering(spec.ra, spec.dec):
            raise ConfigError(f"placed object {k} at RA {spec.ra:.6f}, Dec {spec.dec:.6f} "
                              "lies on no field of the survey")
    if not specs:
        return Objects.empty()
    x, y = layout.sky_wcs.wcs_world2pix([s.ra for s in specs], [s.dec for s in specs], 0)
    return placed_objects(layout.sky_config, x, y, specs)


def _spec(location: tuple[Path, int]) -> str:
    path, hdu = location
    path = Path(path).resolve()
    return str(path) if hdu == 0 else f"{path}[{hdu}]"


def make_survey(out_dir: str | os.PathLike, config: SurveyConfig | None = None, *,
                extra_objects=(), progress=None, field_catalogs: bool = False) -> SurveyResult:
    """Write a synthetic survey into ``out_dir`` (see the module docstring for the files).

    ``extra_objects``: :class:`PlacedObject` s added to the sky (each must lie on some
    field); they are rows of the survey truth with ``placed`` true.
    ``progress(rows_done, rows_total)`` counts image rows over all fields.
    ``field_catalogs``: also write each field's ``<field>.cat`` (SExtractor FITS_LDAC of
    its truth) and the manifest's ``catalog`` column.
    """
    from pyengine.survey.manifest import Field, Survey

    config = SurveyConfig() if config is None else config
    layout = SurveyLayout(config)
    placed = _placed(layout, extra_objects)
    out = prepare_output_dir(out_dir)
    t0 = time.perf_counter()
    manifest = out / "survey.ecsv"
    manifest.unlink(missing_ok=True)   # a stale manifest must not vouch for new fields
    sky = _Sky(layout, placed)
    total = len(layout.fields) * config.field_size
    with SurveyTruthWriter(out / "truth.fits", layout.sky_config, layout.fields_width(),
                           comments=[f"Survey of {config.columns} x {config.rows} fields "
                                     f"(manifest survey.ecsv)."]) as truth:
        sky.write_truth(truth)
    results = {}
    for k, f in enumerate(layout.fields):
        objs, ids = sky.field_objects(f)

        def rows_done(rows, _total, k=k):
            if progress is not None:
                progress(k * config.field_size + rows, total)

        results[f.id] = make_field(
            out / f.id, f.config, progress=rows_done, objects=objs, truth_ids=ids,
            truth_comments=[f"Field {f.id} of a survey: id is the row id in ../truth.fits."])
    catalogs = {}
    if field_catalogs:
        from astropy.io import fits

        for f in layout.fields:
            image, hdu = results[f.id].images[f.config.bands[0].name]
            catalogs[f.id] = str(write_sextractor_catalog(
                out / f.id / f"{f.id}.cat", results[f.id].truth, fits.getheader(image, hdu)))
    survey = Survey(tuple(Field(f.id, tuple(_spec(results[f.id].images[b.name])
                                            for b in f.config.bands),
                                catalog=catalogs.get(f.id))
                          for f in layout.fields), tuple(b.name for b in config.base.bands))
    survey.described().write(manifest)
    counts = {name: truth.counts[name] for name in CLASSES}
    return SurveyResult(fields=results, truth=out / "truth.fits", manifest=manifest,
                        counts=counts, placed=truth.placed,
                        seconds=time.perf_counter() - t0, layout=layout)
