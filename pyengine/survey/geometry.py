"""Where the fields of a survey lie on the sky, which field owns a sky position, and which
fields touch an area (``--within`` a circle, ``--region`` a DS9 sky region).

**Ownership** (one owner per sky position, as Rubin's inner patches and Legacy Surveys'
BRICK_PRIMARY): a position belongs to the field in which it lies **farthest from the
edge**. The edge distance is the smallest of the distances, in arcsec, from the position
to the field's four pixel edges (``x + 0.5``, ``nx - 0.5 - x``, ``y + 0.5``,
``ny - 0.5 - y``, each times the field's pixel scale; negative outside). The position
goes to the field with the largest distance; a tie (to the last bit) goes to the field
listed first in the manifest; distances are compared to a micro-arcsecond, so that the
last bits of a WCS evaluated elsewhere (another process, another astropy) never change an
owner. A position outside every field has no owner (-1). The rule
depends only on the fields' WCS and sizes, never on thread count, shard or run order. So
an object seen in two, three or four overlapping fields is scored once, in the field
where its cutout lies deepest inside the image. :meth:`SurveyGeometry.ranked` gives the
other covering fields in the same order, for a position that its owner cannot score.

**Areas:** ``within(ra, dec, radius)`` is a cone (angular separation at most ``radius``
degrees). ``DS9`` sky regions are read with the ``regions`` package. A field touches a
cone when its footprint polygon comes within ``radius`` of the centre. This is exact for
TAN fields: their pixel edges are great circles, which are straight lines in the
gnomonic projection at the cone's centre. A field touches a region when the region,
converted to the field's pixels, overlaps the image. Fields that touch neither are never
read.

Thread safety: a SurveyGeometry is read-only after construction; its methods may run
concurrently.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pyengine.errors import ConfigError
from pyengine.survey.manifest import Survey, described_with_wcs

__all__ = ["Cone", "FieldFrame", "SurveyGeometry", "gnomonic", "parse_within", "read_sky_region"]


@dataclass(frozen=True)
class Cone:
    """A circle on the sky: centre (deg, ICRS) and radius (deg)."""

    ra: float
    dec: float
    radius: float

    def contains(self, ra, dec) -> np.ndarray:
        return self.separation(ra, dec) <= self.radius

    def separation(self, ra, dec) -> np.ndarray:
        """Degrees from the centre to each position."""
        return _separation(self.ra, self.dec, np.asarray(ra, float), np.asarray(dec, float))


def parse_within(text: str, option: str = "--within") -> Cone:
    """``RA,DEC,RADIUS`` in degrees (``10.6847,41.2690,2.19``) -> Cone; one line otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        ra, dec, radius = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not accepted; accepted: RA,DEC,RADIUS in "
                          "degrees, e.g. 10.6847,41.2690,2.19") from None
    if not (math.isfinite(ra) and -90.0 <= dec <= 90.0 and 0.0 < radius <= 90.0):
        raise ConfigError(f"{option} {text!r} is not accepted; accepted: RA in degrees, DEC "
                          "in [-90, 90], RADIUS in (0, 90] degrees")
    return Cone(ra % 360.0, dec, radius)


def read_sky_region(path):
    """The sky region(s) of a DS9 region file, read with ``regions``; one line for a file
    that is missing, unreadable or holds only pixel regions."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--region {path}: no such file")
    try:
        from regions import Regions, SkyRegion
    except ImportError:
        raise ConfigError("--region needs the regions package (pip install regions)") from None
    try:
        regions = Regions.read(str(path), format="ds9")
    except Exception as exc:  # regions raises its own parser errors
        text = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--region {path}: not a readable DS9 region file ({text})") from None
    sky = [r for r in regions if isinstance(r, SkyRegion)]
    if not sky:
        raise ConfigError(f"--region {path}: no sky regions (fk5/icrs coordinates) in it; "
                          "pixel regions have no meaning across fields")
    return sky


def _separation(ra0, dec0, ra, dec):
    """Angular separation, deg (haversine: accurate at small angles)."""
    r0, d0, r1, d1 = (np.radians(v) for v in (ra0, dec0, ra, dec))
    h = np.sin((d1 - d0) / 2) ** 2 + np.cos(d0) * np.cos(d1) * np.sin((r1 - r0) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def gnomonic(ra0, dec0, ra, dec):
    """Gnomonic (tangent-plane) coordinates of (ra, dec) about (ra0, dec0); NaN behind."""
    r0, d0, r1, d1 = (np.radians(np.asarray(v, float)) for v in (ra0, dec0, ra, dec))
    cosc = np.sin(d0) * np.sin(d1) + np.cos(d0) * np.cos(d1) * np.cos(r1 - r0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = np.cos(d1) * np.sin(r1 - r0) / cosc
        eta = (np.cos(d0) * np.sin(d1) - np.sin(d0) * np.cos(d1) * np.cos(r1 - r0)) / cosc
    behind = cosc <= 0
    return np.where(behind, np.nan, xi), np.where(behind, np.nan, eta)


def _segment_distance(px, py, ax, ay, bx, by):
    """Distance from point p to segment ab in the plane."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-300), 0.0, 1.0)
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


@dataclass(frozen=True)
class FieldFrame:
    """One field's pixel grid on the sky: WCS (celestial), (ny, nx), arcsec per pixel."""

    index: int
    id: str
    wcs: object
    shape: tuple[int, int]
    scale: float
    corners: tuple[tuple[float, float], ...]

    def pixels(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel coordinates of sky positions (NaN where the WCS has none)."""
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            x, y = self.wcs.world_to_pixel_values(np.asarray(ra, float), np.asarray(dec, float))
        return np.asarray(x, float), np.asarray(y, float)

    def edge_distance(self, ra, dec) -> np.ndarray:
        """Arcsec from each position to the nearest pixel edge (negative outside; -inf
        where the position has no pixel in this field)."""
        x, y = self.pixels(ra, dec)
        ny, nx = self.shape
        d = np.minimum(np.minimum(x + 0.5, nx - 0.5 - x), np.minimum(y + 0.5, ny - 0.5 - y))
        return np.where(np.isfinite(d), d * self.scale, -np.inf)

    def touches_cone(self, cone: Cone) -> bool:
        xs, ys = gnomonic(cone.ra, cone.dec, *np.array(self.corners).T)
        if not np.all(np.isfinite(xs)):  # a corner on the far hemisphere: test the centre
            ny, nx = self.shape
            ra, dec = self.wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
            return bool(cone.contains(ra, dec))
        inside = _point_in_polygon(0.0, 0.0, xs, ys)
        if inside:
            return True
        nearest = min(_segment_distance(0.0, 0.0, xs[k], ys[k], xs[(k + 1) % 4],
                                        ys[(k + 1) % 4]) for k in range(4))
        return math.degrees(math.atan(nearest)) <= cone.radius

    def touches_region(self, region) -> bool:
        ny, nx = self.shape
        try:
            box = region.to_pixel(self.wcs).bounding_box
        except Exception:  # a region the field's projection cannot take: test by points
            return bool(np.any(self.region_mask(region, *self._sample())))
        return box.ixmin < nx and box.ixmax > 0 and box.iymin < ny and box.iymax > 0

    def region_mask(self, region, ra, dec) -> np.ndarray:
        from astropy.coordinates import SkyCoord

        coords = SkyCoord(np.atleast_1d(ra), np.atleast_1d(dec), unit="deg", frame="icrs")
        return np.asarray(region.contains(coords, self.wcs), bool)

    def _sample(self, n: int = 9):
        ny, nx = self.shape
        gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
        return self.wcs.pixel_to_world_values(gx.ravel(), gy.ravel())


def _point_in_polygon(px, py, xs, ys) -> bool:
    inside = False
    n = len(xs)
    for k in range(n):
        x0, y0, x1, y1 = xs[k], ys[k], xs[(k + 1) % n], ys[(k + 1) % n]
        if (y0 > py) != (y1 > py) and px < x0 + (py - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


class SurveyGeometry:
    """The fields of a survey on the sky (their WCS read from the files' headers)."""

    def __init__(self, survey: Survey):
        from dataclasses import replace

        fields, frames = [], []
        for k, field in enumerate(survey.fields):  # each field's headers read once
            field, wcs = described_with_wcs(field, survey.bands, survey.manifest)
            fields.append(field)
            frames.append(FieldFrame(k, field.id, wcs, tuple(field.shape), field.pixel_scale,
                                     field.corners))
        self.survey = replace(survey, fields=tuple(fields))
        self.frames: tuple[FieldFrame, ...] = tuple(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def edge_distances(self, ra, dec) -> np.ndarray:
        """(nfield, n) arcsec from each position to each field's nearest edge."""
        ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
        return np.stack([f.edge_distance(ra, dec) for f in self.frames])

    def owner(self, ra, dec) -> np.ndarray:
        """The owning field's index per position (-1: in no field); see the module rule."""
        # Distances to a micro-arcsec: a WCS evaluated in another process or by another
        # astropy differs in its last bits, and must not turn a tie into another owner.
        d = np.round(self.edge_distances(ra, dec), 6)
        best = np.argmax(d, axis=0)  # the first of equal maxima: the manifest's order
        return np.where(d[best, np.arange(d.shape[1])] > 0, best, -1).astype(np.int64)

    def ranked(self, ra, dec) -> list[list[int]]:
        """Per position, the covering fields, best owner first (the rule's order)."""
        d = np.round(self.edge_distances(ra, dec), 6)
        out = []
        for j in range(d.shape[1]):
            cover = [k for k in np.argsort(-d[:, j], kind="stable") if d[k, j] > 0]
            out.append([int(k) for k in cover])
        return out

    def fields_touching(self, cone: Cone | None = None,
                        regions: Sequence | None = None) -> list[int]:
        """Indices of the fields that touch ``cone`` or any of ``regions`` (all fields
        when neither is given); a ConfigError when none does."""
        if cone is None and not regions:
            return list(range(len(self.frames)))
        hits = [f.index for f in self.frames
                if (cone is not None and f.touches_cone(cone))
                or any(f.touches_region(r) for r in regions or ())]
        if not hits:
            what = (f"--within {cone.ra:g},{cone.dec:g},{cone.radius:g}" if cone is not None
                    else "--region")
            raise ConfigError(f"{what} touches none of the survey's {len(self.frames)} "
                              f"fields ({self.survey.manifest or 'survey'}); nothing to scan")
        return hits

    def inside(self, ra, dec, cone: Cone | None = None, regions: Sequence | None = None,
               frame: FieldFrame | None = None) -> np.ndarray:
        """Whether each position lies in the area (True everywhere without one)."""
        ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
        keep = np.ones(ra.shape, bool) if cone is None and not regions else \
            np.zeros(ra.shape, bool)
        if cone is not None:
            keep |= cone.contains(ra, dec)
        for region in regions or ():
            keep |= (frame or self.frames[0]).region_mask(region, ra, dec)
        return keep
