"""Detected positions: objects found by SEP on each tile.

Detection (:class:`DetectSource`) on each tile window (core plus halo):

1. Every band's blank pixels (NaN, inf) are masked.  SEP's background mesh is
   aligned to a global grid of ``background_box`` pixels (the window is padded
   with masked pixels to box boundaries), so a mesh cell holds the same pixels
   in every window that contains it and the background is bitwise the same
   more than a few boxes from the window's edge; a window with no mesh cell
   half full (a sliver of image) uses one median level and MAD noise instead.
2. The detection image is one band minus its background, with that band's
   background rms as the noise; or ("sum") the bands minus their backgrounds
   summed with weights 1 / (each band's typical noise, measured once in
   ``bind`` from nine fixed sample windows, so every tile weights alike), with
   the noise summed in quadrature.  SEP thresholds it at ``threshold`` times
   the noise, its 3x3 filter applied as a plain convolution (SExtractor's
   semantics: the threshold is in units of the unfiltered per-pixel noise).
3. Position: near a window's edge the background differs slightly between
   the windows holding a pixel, and so would SEP's barycentres; an object on a
   core border could then be claimed by both tiles or by neither.  So each
   object's position is the peak of the *raw* detection band (or the weighted
   sum of the raw bands) smoothed with SEP's 3x3 kernel: climbed to from SEP's
   convolved peak pixel, placed to sub-pixel precision by a parabola through
   its neighbours.  It depends only on the raw pixels within 3 px of the peak,
   so it is bitwise the same in every window holding them: ownership (centre
   pixel in the core) is decided identically by neighbouring tiles, and an
   object's position does not depend on the tile size.  SEP objects that climb
   to one peak are one position (with the brightest one's measurements).
   SEP's measurements (flux, peak, a, b, theta, npix, flags; detection-image
   units) are the extra columns.
4. Magnitudes (``mag``, ``mag_err``): SEP's circular-aperture sum
   (``sep.sum_circle``, radius ``aperture`` px, 5 x 5 sub-pixel sampling) of
   the magnitude band minus its background (the background of step 1), at the
   position of step 3, with that band's background rms as the per-pixel error;
   ``mag = zero_point - 2.5 log10(flux)`` and ``mag_err = 1.0857 fluxerr /
   flux``, NaN where the flux is not positive or every aperture pixel is blank.
   Blank pixels in the aperture (NaN, off the image) are masked and SEP scales
   the sum up by the masked area (the mean of the pixels it has), so objects at
   the image's edge get an extrapolated flux.  The magnitude band is
   ``mag_band``, else the detection band, else (for "sum") the mosaic's last
   band; the zero point is ``zero_point``, else the first of
   :data:`ZERO_POINT_KEYS` in that band's header.  With no zero point the
   columns are left out, unless magnitudes were asked for (``mag_limit`` or
   ``mag_band``): then ``bind`` refuses.  ``mag_limit`` keeps only the
   detections with a finite ``mag`` <= the limit (the float32 value in the
   catalog).  The aperture is clamped to the tile halo (the radius actually
   used is in ``describe`` and ``fingerprint``): an owned position lies at
   least a halo from its window's edge, so the aperture always lies inside the
   window and no object's flux depends on where the tile borders fall (a
   larger aperture would be cut by the window edge for objects near a core
   border but not for others).  The halo is half a cutout whatever the tile
   size, so the radius used does not depend on the tile size either.

What still depends on the tiling: whether an object at the edge of
detectability is detected or deblended at all, where the background differs
(within a few background boxes of a window's edge).  On a crowded synthetic
PAndAS-like field (35,000 detections) about 1 % of the detections were found
with 2048 px cores or with 1024 px cores but not both; none was duplicated or
lost on a border, and every common one had bitwise the same position.  An object is
seen whole by both neighbouring tiles when it fits within the halo; larger
ones are truncated at the window edge (SEP flag 2, ``OBJ_TRUNC``).  Magnitudes
share the background's dependence: an object within a few background boxes of
its window's edge can have a slightly different ``mag`` with another tile size
(the position stays bitwise the same), so one within that difference of
``mag_limit`` can be kept with one tile size and cut with another.

Thread safety: a bound source is read-only (see :mod:`pyengine.sources`).  SEP
keeps its buffer limits in process-wide state: they are only ever raised, under a
lock.  SEP 1.4 holds the GIL in its C code (background and extraction), so detection
on several threads of one process runs mostly one at a time; use processes (shards,
Dask workers) to spread detection over cores.
"""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np

from pyengine import defaults
from pyengine.bands import band_index
from pyengine.errors import ConfigError, PyEngineError
from pyengine.sources.base import Source, TilePositions
from pyengine.stats import median_and_sigma, robust_sigma
from pyengine.validate import integer, need, number

__all__ = ["DETECT_COLUMNS", "MAG_COLUMNS", "ZERO_POINT_KEYS", "DetectSource", "DetectionError"]

# Extra output columns of detections: name -> dtype.
DETECT_COLUMNS = {
    "flux": np.dtype(np.float32),      # sum of object pixels, detection-image units
    "peak": np.dtype(np.float32),      # peak pixel, detection-image units
    "a": np.dtype(np.float32),         # semi-major axis (px, SExtractor scaling)
    "b": np.dtype(np.float32),         # semi-minor axis (px)
    "theta": np.dtype(np.float32),     # position angle (rad, from +x towards +y)
    "npix": np.dtype(np.int32),        # pixels of the object
    "det_flag": np.dtype(np.int16),    # SEP extraction flags
}

# Magnitude columns of detections, present when a zero point is known (see DetectSource).
MAG_COLUMNS = {
    "mag": np.dtype(np.float32),       # aperture magnitude in the magnitude band
    "mag_err": np.dtype(np.float32),   # its error from the background rms alone
}

# Header keys read (in this order) for a band's photometric zero point.
ZERO_POINT_KEYS = ("MAGZPT", "PHOTZP", "MAGZERO", "ZEROPT", "ZP", "MAGZP")
APERTURE_SUBPIX = 5       # SEP's sub-pixel sampling of aperture edges (its default)
_MAG_ERR_SCALE = 2.5 / math.log(10.0)   # 1.0857...: mag error per relative flux error

DEBLEND_CONT = 0.005      # SEP/SExtractor's default minimum contrast when deblending
DEBLEND_NTHRESH = 32
MIN_DETECT_HALO = 8       # px: objects straddling a core border must fit in the halo
# SEP allocates its whole pixel stack on every extract (~23 ms per million on a laptop
# core), so it starts at SEP's default (300,000 active pixels) and grows only when a
# crowded tile overflows it.
_PIXSTACK_START = 300_000
_SUBOBJECT_START = 4096         # SEP's default is 1,024
_SUBOBJECT_MAX = 65536
_SEP_LOCK = threading.Lock()    # guards SEP's process-wide limits (they only grow)
DETECT_METHOD = 1               # bump when the detection recipe changes (fingerprint)


class DetectionError(PyEngineError):
    """Source detection failed on a tile (beyond SEP's limits even after enlarging them)."""



def _ensure_sep_limits(pixstack: int, subobjects: int) -> None:
    """Raise SEP's process-wide limits to at least these values (never lower them)."""
    import sep

    with _SEP_LOCK:
        if sep.get_extract_pixstack() < pixstack:
            sep.set_extract_pixstack(int(pixstack))
        if hasattr(sep, "set_sub_object_limit") and sep.get_sub_object_limit() < subobjects:
            sep.set_sub_object_limit(int(subobjects))


_CLIMB_STEPS = 32     # a climb stops at a local maximum, or after this many steps
# The 3 x 3 neighbourhood in (dy, dx) order: argmax takes the first of equal values, so
# pixels are ranked by (value, -y, -x), a strict order that does not depend on the
# window.  A climb never cycles and ends on the same pixel of a flat top (saturated
# star, integer data) from wherever in it it starts.
_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0),
                        (1, 1)], dtype=np.int64)


def _peak_positions(raw: np.ndarray, start_x, start_y):
    """Sub-pixel peaks of ``raw`` smoothed by SEP's 3 x 3 filter, climbed to from the starts.

    From each start pixel, up to ``_CLIMB_STEPS`` steps to the highest of the 3 x 3
    neighbours (ties to the upper left) reach the local maximum of the smoothed
    image; a parabola through it and its neighbours along each axis places the peak
    within half a pixel (between two equal pixels: half-way).  Every
    value used is a fixed arithmetic of the raw pixels within 3 px of the peak, so
    two windows holding those pixels give bitwise the same position: ownership of
    an object on a core border is decided identically by both tiles.  Returns the
    peak pixels ax, ay (int64, window coordinates) and offsets dx, dy (float64, at
    most half a pixel).
    """
    h, w = raw.shape
    row = raw[:, :-2] + 2 * raw[:, 1:-1] + raw[:, 2:]
    smooth = np.full((h, w), -np.inf, dtype=np.float32)
    smooth[1:-1, 1:-1] = row[:-2] + 2 * row[1:-1] + row[2:]
    ax = np.clip(np.asarray(start_x, dtype=np.int64), 2, w - 3)
    ay = np.clip(np.asarray(start_y, dtype=np.int64), 2, h - 3)
    for _ in range(_CLIMB_STEPS):
        values = smooth[ay[:, None] + _NEIGHBOURS[:, 0], ax[:, None] + _NEIGHBOURS[:, 1]]
        step = _NEIGHBOURS[np.argmax(values, axis=1)]
        if not step.any():
            break
        ay = np.clip(ay + step[:, 0], 2, h - 3)
        ax = np.clip(ax + step[:, 1], 2, w - 3)

    def vertex(minus, centre, plus):
        minus, centre, plus = (v.astype(np.float64) for v in (minus, centre, plus))
        curve = minus - 2 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            off = np.where(curve < 0, 0.5 * (minus - plus) / curve, 0.0)
        return np.clip(off, -0.5, 0.5)

    f0 = smooth[ay, ax]
    dx = vertex(smooth[ay, ax - 1], f0, smooth[ay, ax + 1])
    dy = vertex(smooth[ay - 1, ax], f0, smooth[ay + 1, ax])
    return ax, ay, dx, dy


_NOISE_SAMPLES = 3      # sample windows per axis for each band's typical noise
_NOISE_WINDOW = 256


def _band_noise(mosaic) -> list[float]:
    """Each band's typical pixel noise, from a fixed 3 x 3 set of sample windows.

    Robust (median absolute deviation of neighbour differences, so sources and
    smooth gradients hardly count) and a function of the mosaic alone: every tile
    weights the bands the same.  0.0 for a band with no usable pixels there.
    """
    ny, nx = mosaic.shape
    diffs = [[] for _ in range(mosaic.nband)]
    for j in range(_NOISE_SAMPLES):
        for i in range(_NOISE_SAMPLES):
            cy = ny * (2 * j + 1) // (2 * _NOISE_SAMPLES)
            cx = nx * (2 * i + 1) // (2 * _NOISE_SAMPLES)
            y0 = max(0, min(cy - _NOISE_WINDOW // 2, ny - _NOISE_WINDOW))
            x0 = max(0, min(cx - _NOISE_WINDOW // 2, nx - _NOISE_WINDOW))
            window = mosaic.read(y0, min(y0 + _NOISE_WINDOW, ny), x0,
                                 min(x0 + _NOISE_WINDOW, nx))
            d = np.diff(window.astype(np.float64), axis=2)
            for b in range(mosaic.nband):
                diffs[b].append(d[b][np.isfinite(d[b])])
    noise = []
    for parts in diffs:
        d = np.concatenate(parts)
        if d.size < 16:
            noise.append(0.0)
            continue
        spread = robust_sigma(d)
        if not spread > 0:  # quantised data flatter than its steps: fall back to std
            spread = np.std(d)
        noise.append(float(spread / math.sqrt(2.0)))
    return noise


class DetectSource(Source):
    """Objects found by SEP on every tile (core plus halo), placed at their peaks.

    ``threshold`` is in units of the background rms (sigma); ``band`` is a
    band name of the mosaic or "sum" (all bands, weighted by their inverse
    noise); ``background_box`` is SEP's background mesh size in pixels;
    ``deblend`` switches SEP's deblending (contrast 0.005) on or off.

    Magnitudes: ``mag_band`` (default: the detection band, or the mosaic's last
    band for "sum") is measured in a circular aperture of radius ``aperture``
    px with ``zero_point`` (default: the band's header, :data:`ZERO_POINT_KEYS`)
    into the columns ``mag`` and ``mag_err``; ``mag_limit`` keeps only the
    detections with a finite ``mag`` <= it.  See the module docstring for the
    recipe and what it guarantees.
    """

    kind = "detect"
    needs_pixels = True

    def __init__(self, *, threshold: float = defaults.DEFAULT_DETECT_THRESHOLD,
                 min_area: int = defaults.DEFAULT_MIN_AREA,
                 band: str = defaults.DEFAULT_DETECT_BAND, deblend: bool = True,
                 background_box: int = 64, mag_limit: float | None = None,
                 mag_band: str | None = None,
                 zero_point: float | None = None, aperture: float = defaults.DEFAULT_APERTURE):
        owner = "detection"
        self.threshold = number(threshold, f"{owner}: threshold", 0, lo_open=True,
                                accepted="a number of sigma > 0 is needed, e.g. 3")
        self.min_area = integer(min_area, f"{owner}: minimum area", 1, 1 << 20, whole_floats=True)
        self.background_box = integer(background_box, f"{owner}: background box", 8, 1 << 16,
                                      whole_floats=True)
        need(isinstance(band, str) and bool(band), f"{owner}: band", band,
             "a band name of the mosaic or 'sum' is needed")
        self.band = band
        if not isinstance(deblend, bool | np.bool_):
            raise ConfigError(f"{owner}: deblend {deblend!r} is not accepted; true or false")
        self.deblend = bool(deblend)
        self.mag_limit = number(mag_limit, f"{owner}: magnitude limit", allow_none=True,
                                accepted="the faintest magnitude to keep, e.g. 21 is needed")
        self.zero_point = number(zero_point, f"{owner}: zero point", allow_none=True, accepted=(
            "the band's photometric zero point in mag, e.g. 30 is needed"))
        need(mag_band is None or (isinstance(mag_band, str) and bool(mag_band)),
             f"{owner}: magnitude band", mag_band, "a band name of the mosaic is needed")
        self.mag_band = mag_band
        # Converted first, so the message shows the value as a float (0.0) like the old one.
        accepted = "a radius in pixels > 0 is needed, e.g. 8"
        if aperture is not None:
            aperture = number(aperture, f"{owner}: aperture", accepted=accepted)
        need(aperture is not None and aperture > 0, f"{owner}: aperture", aperture, accepted)
        self.aperture = aperture
        self._plan = None

    @property
    def column_dtypes(self) -> dict[str, np.dtype]:
        """The detection columns, plus ``mag``/``mag_err`` when a zero point is known.

        Decided by ``bind`` (the zero point may come from a header); before it,
        magnitudes are assumed when a zero point or a magnitude cut is given.
        """
        if self.bound:
            mags = self._zero_point is not None
        else:
            mags = self.zero_point is not None or self.mag_limit is not None
        return {**DETECT_COLUMNS, **MAG_COLUMNS} if mags else dict(DETECT_COLUMNS)

    def bind(self, mosaic, plan) -> None:
        import sep

        self._check_shapes(mosaic, plan)
        bands = list(mosaic.bands)
        # Band names compare by pyengine.bands' rule (case, MegaCam .MP numbers ignored).
        detect_index = None if self.band == "sum" else band_index(self.band, bands)
        if self.band != "sum" and detect_index is None:
            raise ConfigError(f"detection: band {self.band!r} is not a band of the mosaic; "
                              f"accepted: sum, {', '.join(bands)}")
        if plan.halo < MIN_DETECT_HALO:
            raise ConfigError(
                f"detection: the tile halo is {plan.halo} px; detection needs at least "
                f"{MIN_DETECT_HALO} px to see objects across tile borders (use a cutout of at "
                f"least {2 * MIN_DETECT_HALO} px)")
        mag_index = self._resolve_mag_band(bands, detect_index)
        zero_point, zp_from = self._resolve_zero_point(mosaic, mag_index)
        _ensure_sep_limits(_PIXSTACK_START, _SUBOBJECT_START)
        if detect_index is None:
            noise = _band_noise(mosaic)
            weights = [1.0 / n if n > 0 else 1.0 for n in noise]
            self._weights = np.array([w if math.isfinite(w) else 1.0 for w in weights],
                                     np.float32)
        else:
            self._weights = None
        self._band_index = detect_index
        self._band_name = "sum" if detect_index is None else bands[detect_index]
        self._mag_index, self._mag_band_name = mag_index, bands[mag_index]
        self._zero_point, self._zero_point_from = zero_point, zp_from
        # Clamped to the halo: an owned position lies at least a halo from its
        # window's edge, so the aperture never leaves the window (module docstring).
        self._aperture_used = min(self.aperture, float(plan.halo))
        self._nband = mosaic.nband
        self._sep_version = str(getattr(sep, "__version__", "unknown"))
        self._plan = plan

    def _resolve_mag_band(self, bands, detect_index) -> int:
        """Index of the magnitude band: mag_band, else the detection band, else the last."""
        if self.mag_band is None:
            return len(bands) - 1 if detect_index is None else detect_index
        index = band_index(self.mag_band, bands)
        if index is None:
            raise ConfigError(f"detection: magnitude band {self.mag_band!r} is not a band of "
                              f"the mosaic; accepted: {', '.join(bands)}")
        return index

    def _resolve_zero_point(self, mosaic, mag_index):
        """(zero point, where it came from) for the magnitude band; (None, None) if none.

        Refuses a missing zero point when magnitudes were asked for (a magnitude
        cut or a named magnitude band), and a header zero point that is not a
        finite number.
        """
        if self.zero_point is not None:
            return self.zero_point, "given"
        path, header = mosaic.paths[mag_index], mosaic.headers[mag_index]
        for key in ZERO_POINT_KEYS:
            if key not in header:
                continue
            value = header[key]
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not math.isfinite(value)):
                raise ConfigError(f"{path}: header zero point {key} = {value!r} is not a finite "
                                  "number; fix the header or pass --zero-point")
            return float(value), key
        if self.mag_limit is not None or self.mag_band is not None:
            why = ("a magnitude limit" if self.mag_limit is not None
                   else f"magnitudes in band {self.mag_band!r}")
            raise ConfigError(f"{path}: {why} needs a photometric zero point and the header "
                              f"has none of {', '.join(ZERO_POINT_KEYS)}; pass --zero-point")
        return None, None

    # The detection image of one window, padded to the global background grid.
    def _detection_image(self, pixels, y0, x0):
        """(image, err, mask, oy, ox, mag): image[j, i] is mosaic pixel (ox + i, oy + j).

        ``mag`` is the magnitude band's (data, rms, mask) on the same padded grid,
        None when no zero point is known or the band is blank in the window.
        """
        import sep

        box = self.background_box
        _, h, w = pixels.shape
        py, px = y0 % box, x0 % box
        ph, pw = -(-(py + h) // box) * box, -(-(px + w) // box) * box
        oy, ox = y0 - py, x0 - px
        bands = range(self._nband) if self._band_index is None else [self._band_index]

        def background_subtracted(b):
            """Band b padded, minus its background; its rms; its mask (True = no data)."""
            plane = pixels[b]
            mask = np.ones((ph, pw), dtype=bool)
            inner = mask[py:py + h, px:px + w]
            np.isfinite(plane, out=inner)
            np.logical_not(inner, out=inner)
            if inner.all():
                return None
            data = np.zeros((ph, pw), dtype=np.float32)
            np.copyto(data[py:py + h, px:px + w], plane, where=~inner)
            valid = box * box - np.count_nonzero(mask.reshape(ph // box, box, pw // box, box),
                                                 axis=(1, 3))
            if np.any(2 * valid >= box * box):
                # SEP interpolates meshes under half full from their good neighbours.
                bkg = sep.Background(data, mask=mask, bw=box, bh=box, fw=3, fh=3)
                bkg.subfrom(data)
                rms = bkg.rms()
            else:
                # No mesh is half full (a sliver of image at an edge or between blank
                # areas): one robust level and noise for the whole window.
                values = data[~mask]
                level, noise = median_and_sigma(values)
                data -= np.float32(level)
                rms = np.full((ph, pw), noise, dtype=np.float32)
            mask |= ~(rms > 0)  # also catches NaN
            data[mask] = 0.0
            rms[mask] = 1.0
            return data, rms, mask

        mag_b = self._mag_index if self._zero_point is not None else None
        if self._band_index is not None:
            got = background_subtracted(self._band_index)
            if got is None:
                return None
            mag = None
            if mag_b is not None:
                mag = got if mag_b == self._band_index else background_subtracted(mag_b)
            return (*got, oy, ox, mag)
        total = var = mag = None
        for b in bands:
            got = background_subtracted(b)
            if got is None:
                continue
            data, rms, mask = got
            if b == mag_b:   # before weighting (in place below); mask is not changed
                mag = data.copy(), rms.copy(), mask
            weight = self._weights[b]
            data *= weight
            rms *= weight
            rms[mask] = 0.0
            np.square(rms, out=rms)
            if total is None:
                total, var = data, rms
            else:
                total += data
                var += rms
        if total is None:
            return None
        mask = ~(var > 0)
        np.sqrt(var, out=var)
        var[mask] = 1.0
        return total, var, mask, oy, ox, mag

    def _magnitudes(self, planes, x, y):
        """(mag, mag_err) float32 at padded-grid positions (x, y); NaN where unmeasurable."""
        import sep

        mag = np.full(len(x), np.nan, np.float32)
        mag_err = np.full(len(x), np.nan, np.float32)
        if planes is None or len(x) == 0:
            return mag, mag_err
        data, rms, mask = planes
        flux, fluxerr, _ = sep.sum_circle(data, x, y, self._aperture_used, err=rms, mask=mask,
                                          subpix=APERTURE_SUBPIX)
        with np.errstate(invalid="ignore"):
            good = np.isfinite(flux) & (flux > 0)
        f = flux[good]
        mag[good] = self._zero_point - 2.5 * np.log10(f)
        mag_err[good] = _MAG_ERR_SCALE * fluxerr[good] / f
        return mag, mag_err

    def _extract(self, image, err, mask, tile):
        import sep

        npix = image.size
        while True:
            try:
                return sep.extract(image, self.threshold, err=err, mask=mask,
                                   minarea=self.min_area, filter_type="conv",
                                   deblend_nthresh=DEBLEND_NTHRESH,
                                   deblend_cont=DEBLEND_CONT if self.deblend else 1.0)
            except Exception as exc:
                message = str(exc)
                stack = sep.get_extract_pixstack()
                subs = (sep.get_sub_object_limit() if hasattr(sep, "get_sub_object_limit")
                        else _SUBOBJECT_MAX)
                if "pixel buffer full" in message and stack < npix:
                    _ensure_sep_limits(min(4 * stack, npix), 0)
                    continue
                if "deblending overflow" in message and subs < _SUBOBJECT_MAX:
                    _ensure_sep_limits(0, min(4 * subs, _SUBOBJECT_MAX))
                    continue
                if "pixel buffer full" in message or "deblending overflow" in message:
                    y0, y1, x0, x1 = tile.window
                    raise DetectionError(
                        f"detection: tile {tile.index} (rows {y0}..{y1 - 1}, columns "
                        f"{x0}..{x1 - 1}) is beyond SEP's limits ({message.split(':')[0]}, "
                        f"with {stack:,} pixels and {subs:,} sub-objects); raise the threshold "
                        f"(now {self.threshold:g} sigma), switch deblending off, or check the "
                        "image's background") from None
                raise

    def positions(self, tile, pixels) -> TilePositions:
        self._check_tile(tile)
        y0, y1, x0, x1 = tile.window
        want = (self._nband, y1 - y0, x1 - x0)
        if pixels is None or pixels.shape != want:
            got = None if pixels is None else pixels.shape
            raise ValueError(f"DetectSource.positions: tile {tile.index} needs its window's "
                             f"pixels {want}, got {got}")
        made = self._detection_image(pixels, y0, x0)
        if made is None:
            return TilePositions.empty(self.column_dtypes)
        image, err, mask, oy, ox, mag_planes = made
        objs = self._extract(image, err, mask, tile)
        if len(objs) == 0:
            return TilePositions.empty(self.column_dtypes)
        # SEP's convolved peak pixel, in window coordinates, starts the climb.
        ax, ay, dx, dy = _peak_positions(self._raw_image(pixels), objs["xcpeak"] + (ox - x0),
                                         objs["ycpeak"] + (oy - y0))
        ax += x0  # whole pixels first: then one rounding, the same in every window
        ay += y0
        x, y = ax + dx, ay + dy
        key = (ay - y0) * (x1 - x0) + (ax - x0)   # one integer per peak pixel
        # Objects climbing to one peak are one position: keep the brightest (SEP flux).
        first = np.lexsort((-objs["flux"], key))
        first = first[np.r_[True, key[first][1:] != key[first][:-1]]]
        idx = first[tile.owns(x[first], y[first])]
        idx = idx[np.lexsort((x[idx], y[idx]))]
        objs = objs[idx]
        columns = {name: np.asarray(objs["flag" if name == "det_flag" else name], dtype=dtype)
                   for name, dtype in DETECT_COLUMNS.items()}
        x, y = x[idx], y[idx]
        if self._zero_point is not None:
            mag, mag_err = self._magnitudes(mag_planes, x - ox, y - oy)
            columns["mag"], columns["mag_err"] = mag, mag_err
            if self.mag_limit is not None:
                with np.errstate(invalid="ignore"):
                    keep = np.isfinite(mag) & (mag <= self.mag_limit)
                if not keep.all():
                    x, y = x[keep], y[keep]
                    columns = {name: values[keep] for name, values in columns.items()}
        return TilePositions(x, y, np.full(len(x), -1, np.int64), columns)

    def _raw_image(self, pixels) -> np.ndarray:
        """The window's detection band (or the weighted sum of the bands), blank pixels as 0.

        No background, no noise map: it depends on the pixels alone, so every window
        holding a pixel sees the same value there.
        """
        if self._band_index is not None:
            return np.where(np.isfinite(pixels[self._band_index]), pixels[self._band_index],
                            np.float32(0))
        raw = np.zeros(pixels.shape[1:], dtype=np.float32)
        for b in range(self._nband):
            weighted = pixels[b] * self._weights[b]
            raw += np.where(np.isfinite(weighted), weighted, np.float32(0))
        return raw

    def fingerprint(self) -> dict:
        self._check_bound()
        return {"kind": self.kind, "method": DETECT_METHOD, "sep": self._sep_version,
                "threshold": self.threshold, "min_area": self.min_area, "band": self._band_name,
                "deblend": self.deblend, "deblend_cont": DEBLEND_CONT,
                "deblend_nthresh": DEBLEND_NTHRESH, "background_box": self.background_box,
                "filter": "conv 3x3",
                "band_weights": None if self._weights is None else
                [float(w) for w in self._weights],
                "mag_limit": self.mag_limit, "mag_band": self._mag_band_name,
                "zero_point": self._zero_point, "zero_point_from": self._zero_point_from,
                "aperture": self.aperture, "aperture_used": self._aperture_used,
                "aperture_subpix": APERTURE_SUBPIX}

    def describe(self) -> str:
        band = self._band_name if self.bound else self.band
        image = "the noise-weighted sum of the bands" if band == "sum" else f"band {band}"
        text = (f"detect (SEP) on {image}: threshold {self.threshold:g} sigma, minimum area "
                f"{self.min_area} px, background box {self.background_box} px, deblending "
                f"{'on' if self.deblend else 'off'}")
        if self.bound:
            mag_band, zp, radius = self._mag_band_name, self._zero_point, self._aperture_used
        else:
            mag_band, zp, radius = self.mag_band, self.zero_point, self.aperture
        where = f"band {mag_band}" if mag_band is not None else "the magnitude band"
        if self.bound and zp is None:
            return text + f"; no magnitudes (no zero point in the {where} header)"
        aperture = f"aperture radius {radius:g} px"
        if radius != self.aperture:
            aperture += f" (asked {self.aperture:g}, clamped to the tile halo)"
        if zp is None:
            zero = "zero point from its header (none: no magnitudes)"
        else:
            source = self._zero_point_from if self.bound else "given"
            zero = f"zero point {zp:g}" + ("" if source == "given" else f" ({source})")
        text += f"; magnitudes in {where}, {aperture}, {zero}"
        if self.mag_limit is not None:
            text += f"; keeps mag <= {self.mag_limit:g}"
        return text
