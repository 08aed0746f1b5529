"""The objects of a synthetic field, drawn cell by cell from the seed.

The field is cut into square cells of :data:`CELL` pixels.  Each cell draws its
own objects from a random generator seeded by (seed, cell row, cell column)
through NumPy's ``SeedSequence`` spawn keys, so a cell's objects do not depend
on which other cells were drawn, in what order, or on the tile size: the
renderer can draw cells lazily as tiles reach them and forget them after, and
memory stays bounded by the tile, not the field.  Only objects whose centre
lies on the image are drawn (the edge of the image receives no light from
objects beyond it).

Populations (numbers in :mod:`pyengine.synth.config`):

* star clusters: density follows M31's disk light (plus a halo floor); young
  (blue, King concentration 0.5-1.2, dN/dm ~ 10^(0.4 m) as for a power-law
  mass function) or old (red, c = 1.0-1.8, Gaussian luminosity function peaking
  at i ~ 15.9 from M31's GC turnover V ~ 16.8); half-light radius log-uniform
  in 1-5 pc; axis ratio 0.8-1; their brightest members are resolved stars drawn
  from the same luminosity functions as field stars, placed on the King profile,
  and subtracted from the smooth light so the total matches the magnitude
  (members are kept in drawn order while they carry at most half the light).
  Member stars are rendered but are not rows of the truth catalog.
* background galaxies: counts rising 0.35 dex/mag in i, Sersic n 0.7-1.5
  (disks, q 0.2-1) or 2-4 (spheroids, q 0.5-1), r_e ~ 0.6" at i = 22 growing
  0.1 dex per mag brighter, with 0.15 dex scatter.
* Milky Way foreground stars: counts 0.26 dex/mag brighter than i = 20 and
  0.15 dex/mag fainter (Bahcall-Soneira-like at b ~ -21 deg); halo turn-off
  (g-i 0.5-1.0) and disk dwarfs (1.0-2.8).  The brightest saturate.
* M31 stars following the disk light (plus a halo floor): red giants from the
  tip (i = 20.5) down with counts rising 0.3 dex/mag, colour redder towards
  the tip (g-i ~ 1.1 faint to ~2 near the tip, with a metallicity spread);
  5 % AGB stars up to 1 mag above the tip; a young fraction of blue main
  sequence stars (80 %, g-i -0.4-0.2) and red supergiants from i = 19.5.

Thread safety: functions are pure (each call makes its own generator); they
hold the GIL (NumPy).  Cells may be drawn concurrently from several threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from pyengine.synth.config import SynthConfig
from pyengine.synth.profiles import R_MAX, king_core_radius, king_sample_radii
from pyengine.synth.sky import disk_shape

__all__ = ["CELL", "CLASSES", "SUBCLASSES", "Objects", "cluster_members", "draw_cell",
           "king_on_stamp", "placed_objects"]

#: Cell size, pixels.
CELL = 256
#: Class codes of the truth catalog, and finer kinds (subclass codes).
CLASSES = ("cluster", "star", "galaxy")
SUBCLASSES = ("young", "old", "foreground", "m31_giant", "m31_young", "disk", "spheroid")
_SUB = {name: k for k, name in enumerate(SUBCLASSES)}

_RGB_SLOPE = 0.3          # dex/mag of the RGB luminosity function
_AGB_FRACTION = 0.05      # AGB stars per RGB star in the tip magnitude
_YOUNG_BRIGHT = 19.5      # brightest young M31 stars (i)
_GC_PEAK, _GC_SIGMA = 15.9, 1.2
_FG_BREAK, _FG_BRIGHT_SLOPE, _FG_FAINT_SLOPE = 20.0, 0.26, 0.15
_GAL_SLOPE, _GAL_REF, _GAL_BRIGHT = 0.35, 23.0, 16.0
_MEMBER_MAX_FRACTION = 0.5  # members carry at most this share of a cluster's light
#: Largest intrinsic stamp half-size (the PSF kernel adds up to 32 px).
_HALF_MAX = R_MAX - 33


@dataclass
class Objects:
    """Arrays describing a set of objects, in their fixed global order.

    ``t_*``: truth rows (clusters, galaxies, stars); ``p_*``: point sources
    (stars and cluster members); ``e_*``: extended objects (clusters, galaxies)
    with kind 0 King (scale rc px, shape rt/rc) or 1 Sersic (r_e px, n).
    Fluxes are counts, shape (2, n) for bands (g, i).
    """

    t_x: np.ndarray
    t_y: np.ndarray
    t_class: np.ndarray
    t_sub: np.ndarray
    t_g: np.ndarray
    t_i: np.ndarray
    t_rh: np.ndarray
    p_x: np.ndarray
    p_y: np.ndarray
    p_flux: np.ndarray
    e_x: np.ndarray
    e_y: np.ndarray
    e_kind: np.ndarray
    e_scale: np.ndarray
    e_shape: np.ndarray
    e_q: np.ndarray
    e_pa: np.ndarray
    e_half: np.ndarray
    e_flux: np.ndarray

    @classmethod
    def concat(cls, parts: list[Objects]) -> Objects:
        """Objects of ``parts`` one after the other (order preserved)."""
        out = {}
        for f in fields(cls):
            arrays = [getattr(p, f.name) for p in parts]
            out[f.name] = np.concatenate(arrays, axis=-1)
        return cls(**out)

    @classmethod
    def empty(cls) -> Objects:
        """No objects."""
        return cls(**_empty())

    def take(self, t=None, p=None, e=None) -> Objects:
        """The truth rows ``t``, point sources ``p`` and extended objects ``e`` (index
        arrays or boolean masks, None for none of that kind), in the order given."""
        picks = {"t": t, "p": p, "e": e}
        out = {}
        for f in fields(self):
            a = getattr(self, f.name)
            sel = picks[f.name[0]]
            out[f.name] = a[..., :0] if sel is None else a[..., sel]
        return Objects(**out)

    @property
    def n_truth(self) -> int:
        return len(self.t_x)


def _power_law(rng, n, m1, m2, slope):
    """n magnitudes in [m1, m2] with dN/dm proportional to 10^(slope m)."""
    u = rng.random(n)
    return m1 + np.log10(1.0 + u * (10.0 ** (slope * (m2 - m1)) - 1.0)) / slope


def _lf_factor(bright, faint, slope=_RGB_SLOPE):
    """Stars in [bright, faint] per star in the first magnitude (power law)."""
    if faint <= bright:
        return 0.0
    return (10.0 ** (slope * (faint - bright)) - 1.0) / (10.0**slope - 1.0)


def _old_stars(rng, n, tip, limit):
    """(i, g-i) of n old M31 stars: RGB below the tip, a few AGB above it."""
    rgb = _lf_factor(tip, limit)
    agb = rng.random(n) < _AGB_FRACTION / (_AGB_FRACTION + rgb)
    i = np.where(agb, tip - rng.random(n), _power_law(rng, n, tip, max(limit, tip), _RGB_SLOPE))
    i = np.minimum(i, limit)
    # Redder towards the tip, with a metallicity spread (0.6-1.4 times the slope).
    gi = 1.1 + 0.28 * np.maximum(24.0 - i, 0.0) * (0.6 + 0.8 * rng.random(n))
    return i, gi + 0.05 * rng.standard_normal(n)


def _young_stars(rng, n, limit):
    """(i, g-i) of n young M31 stars: blue main sequence and red supergiants."""
    i = _power_law(rng, n, _YOUNG_BRIGHT, max(limit, _YOUNG_BRIGHT), _RGB_SLOPE)
    red = rng.random(n) < 0.2
    gi = np.where(red, 1.4 + 0.8 * rng.random(n), -0.4 + 0.6 * rng.random(n))
    return i, gi


def _empty(n_t=0, n_p=0, n_e=0) -> dict:
    f, i8 = np.float64, np.int8
    return {
        "t_x": np.zeros(n_t, f), "t_y": np.zeros(n_t, f), "t_class": np.zeros(n_t, i8),
        "t_sub": np.zeros(n_t, i8), "t_g": np.zeros(n_t, f), "t_i": np.zeros(n_t, f),
        "t_rh": np.full(n_t, np.nan), "p_x": np.zeros(n_p, f), "p_y": np.zeros(n_p, f),
        "p_flux": np.zeros((2, n_p), f), "e_x": np.zeros(n_e, f), "e_y": np.zeros(n_e, f),
        "e_kind": np.zeros(n_e, i8), "e_scale": np.zeros(n_e, f),
        "e_shape": np.zeros(n_e, f), "e_q": np.ones(n_e, f), "e_pa": np.zeros(n_e, f),
        "e_half": np.zeros(n_e, np.int64), "e_flux": np.zeros((2, n_e), f)}


class _Cell:
    """Geometry and density bounds of one cell."""

    def __init__(self, config: SynthConfig, cx: int, cy: int):
        self.config = config
        self.x0 = cx * CELL - 0.5
        self.y0 = cy * CELL - 0.5
        self.w = min(CELL, config.width - cx * CELL)
        self.h = min(CELL, config.height - cy * CELL)
        self.area_arcsec2 = self.w * self.h * config.pixel_area_arcsec2
        self.area_deg2 = self.area_arcsec2 / 3600.0**2
        # Disk light relative to an i-band surface brightness of 21 mag/arcsec^2.
        self.rel_max = 10.0 ** (0.4 * (21.0 - config.band("i").disk_mu0))
        gx = self.x0 + self.w * np.linspace(0.0, 1.0, 5)
        gy = self.y0 + self.h * np.linspace(0.0, 1.0, 5)
        grid = disk_shape(config, *np.meshgrid(gx, gy)) * self.rel_max
        # Where the disk light varies by < 20 % across the cell (everywhere but
        # near M31's centre with default geometry), 1.25 x the largest of 5 x 5
        # samples bounds it; elsewhere the central value, which always does.
        smooth = grid.max() < 1.2 * grid.min()
        self.rel_bound = min(self.rel_max, 1.25 * float(grid.max())) if smooth else self.rel_max

    def positions(self, rng, n):
        return self.x0 + self.w * rng.random(n), self.y0 + self.h * rng.random(n)

    def thinned(self, rng, mean_bound, density, bound):
        """Positions of a Poisson process with intensity density(x, y) <= bound,
        drawn as ``mean_bound`` candidates thinned by density / bound."""
        n = rng.poisson(mean_bound)
        x, y = self.positions(rng, n)
        keep = rng.random(n) * bound < density(x, y)
        return x[keep], y[keep]

    def rel(self, x, y):
        return disk_shape(self.config, x, y) * self.rel_max


def king_on_stamp(rh_px, conc):
    """(rc, rt) px of King profiles of half-light radii ``rh_px`` and concentrations
    ``conc`` (changed in place where lowered): c is lowered, r_h kept, where the tidal
    radius would not fit on the largest stamp."""
    rc, rt = king_core_radius(rh_px, conc)
    for _ in range(3):
        big = rt > _HALF_MAX - 1
        if not big.any():
            break
        conc[big] = np.log10((_HALF_MAX - 1) / rc[big]) - 0.05
        rc[big], rt[big] = king_core_radius(rh_px[big], conc[big])
    return rc, np.minimum(rt, _HALF_MAX - 1)


def _sersic_half(re_px, sersic_n):
    """Stamp half-sizes of Sersic profiles: out to (3 + 2.5 n) r_e, >= 94 % of the
    light (the stamp is renormalised), within the largest stamp, at least 2."""
    half = np.minimum(np.ceil(re_px * (3.0 + 2.5 * sersic_n)), _HALF_MAX).astype(np.int64)
    return np.maximum(half, 2)


def _clusters(cfg: SynthConfig, cell: _Cell, rng):
    """Truth, extended and member arrays of the cell's clusters."""
    band_g, band_i = cfg.bands
    disk_bound = cfg.cluster_density * cell.rel_bound
    bound = disk_bound + cfg.halo_cluster_density
    x, y = cell.thinned(rng, bound * cell.area_deg2,
                        lambda x, y: cfg.cluster_density * cell.rel(x, y)
                        + cfg.halo_cluster_density, bound)
    n = len(x)
    if n == 0:
        return _empty(), (np.zeros(0), np.zeros(0), np.zeros((2, 0)))
    disk_part = cfg.cluster_density * cell.rel(x, y)
    p_young = cfg.young_cluster_fraction * disk_part / (disk_part + cfg.halo_cluster_density)
    young = rng.random(n) < p_young
    m1, m2 = cfg.cluster_mag_range
    i_mag = _power_law(rng, n, m1, m2, 0.4)
    old_idx = np.flatnonzero(~young)
    while len(old_idx):  # truncated Gaussian by rejection
        draw = rng.normal(_GC_PEAK, _GC_SIGMA, len(old_idx))
        ok = (draw >= m1) & (draw <= m2)
        i_mag[old_idx[ok]] = draw[ok]
        old_idx = old_idx[~ok]
    gi = np.where(young, rng.uniform(0.0, 0.5, n), rng.uniform(0.8, 1.3, n))
    r1, r2 = cfg.cluster_rh_range
    rh_pc = np.exp(rng.uniform(math.log(r1), math.log(r2), n))
    conc = np.where(young, rng.uniform(0.5, 1.2, n), rng.uniform(1.0, 1.8, n))
    q = rng.uniform(0.8, 1.0, n)
    pa = rng.uniform(0.0, math.pi, n)
    rh_px = rh_pc / 1000.0 / cfg.kpc_per_px
    rc, rt = king_on_stamp(rh_px, conc)
    flux = np.vstack([band_g.flux(i_mag + gi), band_i.flux(i_mag)])
    owner, dx, dy, mf, flux = cluster_members(rng, cfg, cfg.bands, young, flux, rc, rt, q, pa)
    members = (x[owner] + dx, y[owner] + dy, mf)
    out = _empty(n, 0, n)
    out.update(t_x=x, t_y=y, t_class=np.zeros(n, np.int8),
               t_sub=np.where(young, _SUB["young"], _SUB["old"]).astype(np.int8),
               t_g=i_mag + gi, t_i=i_mag, t_rh=rh_pc,
               e_x=x, e_y=y, e_kind=np.zeros(n, np.int8), e_scale=rc, e_shape=rt / rc,
               e_q=q, e_pa=pa, e_half=np.ceil(rt + 1.0).astype(np.int64), e_flux=flux)
    return out, members


def cluster_members(rng, cfg: SynthConfig, bands, young, flux, rc, rt, q, pa):
    """Resolved member stars of clusters, and the light left to their smooth profiles.

    ``bands`` are the (g, i) bands (objects with ``flux(mag)``), ``young`` marks young
    clusters, ``flux`` (2, n) their total counts, ``rc``/``rt`` their King core and tidal
    radii (px), ``q``/``pa`` their axis ratio and position angle.  As many members per
    unit i light as ``cfg``'s disk has giants (``rgb_density``), drawn from the field
    stars' luminosity functions (young or old) down to ``star_limit``, placed on the
    King profile; each cluster keeps its members, in drawn order, while together they
    carry at most half of its light in both bands.  Returns ``(owner, dx, dy,
    member_flux, smooth_flux)``: each kept member's cluster index and pixel offset from
    its centre, its (2, m) counts, and each cluster's (2, n) counts minus its members'.
    The draws from ``rng`` come in a fixed order (the field's cells depend on it).
    """
    band_g, band_i = bands
    n = len(young)
    flux = np.array(flux, dtype=np.float64)
    # Resolved members: as many per unit i light as the field has giants.
    per_flux = cfg.rgb_density / band_i.flux(21.0)
    lf = np.where(young, _lf_factor(_YOUNG_BRIGHT, cfg.star_limit),
                  _lf_factor(cfg.rgb_tip, cfg.star_limit) + _AGB_FRACTION)
    nm = rng.poisson(per_flux * flux[1] * lf)
    owner = np.repeat(np.arange(n), nm)
    m = len(owner)
    yi, ygi = _young_stars(rng, m, cfg.star_limit)
    oi, ogi = _old_stars(rng, m, cfg.rgb_tip, cfg.star_limit)
    mi = np.where(young[owner], yi, oi)
    mgi = np.where(young[owner], ygi, ogi)
    r = king_sample_radii(rng.random(m), rc[owner], rt[owner] / rc[owner])
    theta = rng.uniform(0.0, 2.0 * math.pi, m)
    a, b = r * np.cos(theta), r * np.sin(theta) * q[owner]
    ux, uy = -np.sin(pa[owner]), np.cos(pa[owner])
    mf = np.vstack([band_g.flux(mi + mgi), band_i.flux(mi)])
    # Keep each cluster's members, in drawn order, while together they carry at
    # most half of its light in both bands; the smooth profile has the rest.
    start = np.cumsum(nm) - nm                      # first member of each cluster
    cum = np.cumsum(mf, axis=1)
    before = np.hstack([np.zeros((2, 1)), cum])[:, start]
    cum -= np.repeat(before, nm, axis=1)            # running sums within each cluster
    keep = np.all(cum <= _MEMBER_MAX_FRACTION * flux[:, owner], axis=0)
    flux -= np.vstack([np.bincount(owner[keep], mf[b, keep], minlength=n) for b in (0, 1)])
    return (owner[keep], (a * ux + b * uy)[keep], (a * uy - b * ux)[keep], mf[:, keep], flux)


def _galaxies(cfg: SynthConfig, cell: _Cell, rng):
    band_g, band_i = cfg.bands
    lo = 10.0 ** (_GAL_SLOPE * (_GAL_BRIGHT - _GAL_REF))
    hi = 10.0 ** (_GAL_SLOPE * (cfg.galaxy_limit - _GAL_REF))
    n = rng.poisson(cfg.galaxy_density * max(hi - lo, 0.0) * cell.area_deg2)
    x, y = cell.positions(rng, n)
    i_mag = _power_law(rng, n, _GAL_BRIGHT, max(cfg.galaxy_limit, _GAL_BRIGHT), _GAL_SLOPE)
    disk = rng.random(n) < 0.6
    sersic_n = np.where(disk, rng.uniform(0.7, 1.5, n), rng.uniform(2.0, 4.0, n))
    q = np.where(disk, rng.uniform(0.2, 1.0, n), rng.uniform(0.5, 1.0, n))
    pa = rng.uniform(0.0, math.pi, n)
    gi = np.where(disk, rng.uniform(0.3, 1.0, n), rng.uniform(0.9, 1.6, n))
    re_arcsec = 0.6 * 10.0 ** (-0.1 * (i_mag - 22.0) + 0.15 * rng.standard_normal(n))
    re_px = np.maximum(re_arcsec / cfg.pixel_scale, 0.3)
    out = _empty(n, 0, n)
    out.update(t_x=x, t_y=y, t_class=np.full(n, 2, np.int8),
               t_sub=np.where(disk, _SUB["disk"], _SUB["spheroid"]).astype(np.int8),
               t_g=i_mag + gi, t_i=i_mag,
               e_x=x, e_y=y, e_kind=np.ones(n, np.int8), e_scale=re_px, e_shape=sersic_n,
               e_q=q, e_pa=pa, e_half=_sersic_half(re_px, sersic_n), e_flux=np.vstack(
                   [band_g.flux(i_mag + gi), band_i.flux(i_mag)]))
    return out


def _foreground(cfg: SynthConfig, cell: _Cell, rng):
    """(x, y, i, g-i) of Milky Way stars (broken power-law counts)."""
    m1, m2, mb = cfg.bright_limit, cfg.star_limit, _FG_BREAK
    a, b = _FG_BRIGHT_SLOPE, _FG_FAINT_SLOPE
    n20 = cfg.foreground_density
    # N(<m) = n20 10^(a (m - 20)) below the break; dN/dm continuous across it.
    n_bright = n20 * (10.0 ** (a * (min(m2, mb) - mb)) - 10.0 ** (a * (m1 - mb))) if m1 < mb else 0.0
    faint_lo = max(m1, mb)
    n_faint = (n20 * a / b * (10.0 ** (b * (m2 - mb)) - 10.0 ** (b * (faint_lo - mb)))
               if m2 > mb else 0.0)
    nb = rng.poisson(max(n_bright, 0.0) * cell.area_deg2)
    nf = rng.poisson(max(n_faint, 0.0) * cell.area_deg2)
    i_mag = np.concatenate([_power_law(rng, nb, m1, min(m2, mb), a),
                            _power_law(rng, nf, faint_lo, m2, b)])
    n = nb + nf
    x, y = cell.positions(rng, n)
    turnoff = rng.random(n) < 0.45
    gi = np.where(turnoff, rng.uniform(0.5, 1.0, n), rng.uniform(1.0, 2.8, n))
    return x, y, i_mag, gi


def _m31_stars(cfg: SynthConfig, cell: _Cell, rng):
    """(x, y, i, g-i, young?) of resolved M31 stars following the disk light."""
    halo = cfg.halo_rgb_density / 3600.0
    per_tip = _lf_factor(cfg.rgb_tip, cfg.star_limit) + _AGB_FRACTION
    total = per_tip / (1.0 - cfg.young_star_fraction)   # all M31 stars per tip-magnitude star
    bound = cfg.rgb_density * cell.rel_bound + halo
    x, y = cell.thinned(rng, bound * total * cell.area_arcsec2,
                        lambda x, y: cfg.rgb_density * cell.rel(x, y) + halo, bound)
    n = len(x)
    young = rng.random(n) < cfg.young_star_fraction
    oi, ogi = _old_stars(rng, n, cfg.rgb_tip, cfg.star_limit)
    yi, ygi = _young_stars(rng, n, cfg.star_limit)
    return x, y, np.where(young, yi, oi), np.where(young, ygi, ogi), young


def draw_cell(config: SynthConfig, cx: int, cy: int) -> Objects:
    """All objects centred in cell (cx, cy), as a pure function of (seed, cx, cy)."""
    seq = np.random.SeedSequence(entropy=config.seed, spawn_key=(cy, cx))
    rng = np.random.Generator(np.random.PCG64(seq))
    cell = _Cell(config, cx, cy)
    band_g, band_i = config.bands
    clusters, (mx, my, mflux) = _clusters(config, cell, rng)
    galaxies = _galaxies(config, cell, rng)
    fx, fy, fi, fgi = _foreground(config, cell, rng)
    sx, sy, si, sgi, syoung = _m31_stars(config, cell, rng)
    nf, ns = len(fx), len(sx)
    stars = _empty(nf + ns, nf + ns + len(mx), 0)
    t_i = np.concatenate([fi, si])
    t_g = t_i + np.concatenate([fgi, sgi])
    sub = np.concatenate([np.full(nf, _SUB["foreground"]),
                          np.where(syoung, _SUB["m31_young"], _SUB["m31_giant"])])
    stars.update(t_x=np.concatenate([fx, sx]), t_y=np.concatenate([fy, sy]),
                 t_class=np.ones(nf + ns, np.int8), t_sub=sub.astype(np.int8),
                 t_g=t_g, t_i=t_i,
                 p_x=np.concatenate([fx, sx, mx]), p_y=np.concatenate([fy, sy, my]),
                 p_flux=np.hstack([np.vstack([band_g.flux(t_g), band_i.flux(t_i)]), mflux]))
    return Objects.concat([Objects(**clusters), Objects(**galaxies), Objects(**stars)])


def placed_objects(config: SynthConfig, x, y, specs) -> Objects:
    """Objects put at pixels (x, y) of ``config``'s grid, one per spec, in order.

    Each spec has ``kind`` ('cluster', 'star' or 'galaxy'), ``i_mag``, ``g_i`` and,
    as its kind needs, ``r_h_pc`` and ``concentration`` (a smooth King profile: no
    resolved members), ``r_e_arcsec`` and ``sersic_n``, ``q`` and ``pa_deg`` (east of
    north on this grid); see :class:`pyengine.synth.survey.PlacedObject`.  Subclasses:
    clusters young below g - i = 0.8, old above; stars foreground; galaxies disk
    below n = 2, spheroid above.
    """
    band_g, band_i = config.bands
    parts = []
    for xk, yk, spec in zip(np.atleast_1d(x), np.atleast_1d(y), specs, strict=True):
        i_mag = np.array([float(spec.i_mag)])
        g_mag = i_mag + float(spec.g_i)
        flux = np.vstack([band_g.flux(g_mag), band_i.flux(i_mag)])
        one = np.array([float(xk)]), np.array([float(yk)])
        q, pa = float(spec.q), math.radians(float(spec.pa_deg))
        if spec.kind == "star":
            o = _empty(1, 1, 0)
            o.update(t_class=np.ones(1, np.int8), p_x=one[0], p_y=one[1], p_flux=flux,
                     t_sub=np.full(1, _SUB["foreground"], np.int8))
        elif spec.kind == "cluster":
            o = _empty(1, 0, 1)
            rh_px = np.array([float(spec.r_h_pc) / 1000.0 / config.kpc_per_px])
            rc, rt = king_on_stamp(rh_px, np.array([float(spec.concentration)]))
            o.update(t_class=np.zeros(1, np.int8), t_rh=np.array([float(spec.r_h_pc)]),
                     t_sub=np.full(1, _SUB["young" if spec.g_i < 0.8 else "old"], np.int8),
                     e_kind=np.zeros(1, np.int8), e_scale=rc, e_shape=rt / rc,
                     e_half=np.ceil(rt + 1.0).astype(np.int64))
        elif spec.kind == "galaxy":
            o = _empty(1, 0, 1)
            re_px = np.array([max(float(spec.r_e_arcsec) / config.pixel_scale, 0.3)])
            n = np.array([float(spec.sersic_n)])
            o.update(t_class=np.full(1, 2, np.int8),
                     t_sub=np.full(1, _SUB["disk" if n[0] < 2.0 else "spheroid"], np.int8),
                     e_kind=np.ones(1, np.int8), e_scale=re_px, e_shape=n,
                     e_half=_sersic_half(re_px, n))
        else:
            raise ValueError(f"unknown kind {spec.kind!r}")
        if spec.kind != "star":
            o.update(e_x=one[0], e_y=one[1], e_q=np.array([q]), e_pa=np.array([pa]),
                     e_flux=flux)
        o.update(t_x=one[0], t_y=one[1], t_g=g_mag, t_i=i_mag)
        parts.append(Objects(**o))
    return Objects.concat(parts) if parts else Objects.empty()
