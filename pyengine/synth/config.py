"""Every parameter of a synthetic PAndAS-like field, with checked defaults.

:class:`SynthConfig` is a frozen dataclass: build one, change fields with
:func:`dataclasses.replace`, and it validates itself on construction, raising
:class:`pyengine.errors.ConfigError` that names the option, the bad value and
what is accepted.  :class:`BandSpec` holds what differs between the g and i
images (seeing, sky, zero point, detector).

Defaults and the facts behind them (the model itself is described in
:mod:`pyengine.synth.catalog`, :mod:`pyengine.synth.profiles` and
:mod:`pyengine.synth.render`):

* CFHT MegaCam pixel scale 0.187 arcsec/px; PAndAS seeing 0.6-1.0 arcsec.
* M31: centre RA 10.6847, Dec +41.2690, distance ~785 kpc, disk inclination
  ~77 deg, major-axis position angle ~38 deg, exponential scale length ~5.3 kpc.
  The default field sits 0.4 deg (5.5 kpc) out along the north-east major axis,
  inside the disk, where clusters are found.
* Zero point 30 (the MegaPipe convention: mag = 30 - 2.5 log10(counts)); the
  "gain" is the effective gain of a 3-exposure PAndAS stack in these units,
  chosen so that a point source at g = 26.0 / i = 24.8 has S/N ~ 10 (the
  survey's quoted median depths) against a dark sky of g = 22.0 / i = 20.5
  mag/arcsec^2.  Saturation levels put the saturation limit near g, i ~ 17.5,
  as in 450 s MegaCam exposures.
* M31 red-giant-branch tip at i = 20.5, counts rising ~0.3 dex/mag fainter;
  ~1-2e-4 stars within 1 mag of the tip per solar luminosity (fuel-consumption
  theorem), which gives ~0.2-0.3 per arcsec^2 where the disk has i = 21
  mag/arcsec^2 (default 0.2).  Stars are rendered down to i = 23.5 (the
  survey's 10-sigma depth is ~24.8, but fainter giants are confused into the
  smooth disk light and would dominate the run time).
* Clusters: half-light radii 1-5 pc, 16-22 mag (i); young ones blue (g-i 0-0.5),
  old ones red (g-i 0.8-1.3).

Thread safety: instances are immutable and may be shared freely between
threads; nothing here holds state or releases the GIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyengine.errors import ConfigError
from pyengine.validate import is_int, is_number

__all__ = [
    "DEFAULT_BANDS",
    "ENCODINGS",
    "M31_DEC",
    "M31_RA",
    "BandSpec",
    "SynthConfig",
]

M31_RA = 10.6847
M31_DEC = 41.2690

#: Output encodings: one float32 file per band, scaled int16 per band,
#: RICE tile-compressed per band (.fits.fz), or one multi-extension file.
ENCODINGS = ("float32", "int16", "rice", "mef")


def _check_range(name: str, value, lo: float, hi: float, what: str = "") -> None:
    """Raise ConfigError unless lo <= value <= hi (and value is a finite number)."""
    # pyengine.validate decides what a number is; the synthetic field's
    # messages keep their own "NAME must be ...; got VALUE" form (the CLI prints them).
    if not (is_number(value) and lo <= value <= hi):
        unit = f" {what}" if what else ""
        raise ConfigError(f"{name} must be a number from {lo:g} to {hi:g}{unit}; got {value!r}")


def _check_int(name: str, value, lo: int, hi: int, what: str = "") -> None:
    """Raise ConfigError unless value is an integer with lo <= value <= hi."""
    if not (is_int(value) and lo <= value <= hi):
        unit = f" {what}" if what else ""
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}{unit}; got {value!r}")


def _check_interval(name: str, value, lo: float, hi: float, what: str) -> None:
    """Raise ConfigError unless value is a pair (a, b) with lo <= a < b <= hi."""
    ok = isinstance(value, tuple) and len(value) == 2
    if ok:
        try:
            _check_range(name, value[0], lo, hi)
            _check_range(name, value[1], lo, hi)
        except ConfigError:
            ok = False
        else:
            ok = value[0] < value[1]
    if not ok:
        raise ConfigError(
            f"{name} must be a pair (low, high) with {lo:g} <= low < high <= {hi:g} {what}; "
            f"got {value!r}")


@dataclass(frozen=True)
class BandSpec:
    """One band's image: PSF, sky, M31 disk brightness, photometry and detector."""

    name: str
    #: Moffat PSF full width at half maximum, arcsec.
    seeing: float
    #: Dark-sky surface brightness, mag/arcsec^2.
    sky: float
    #: Central surface brightness (as seen, inclined) of the disk's smooth light,
    #: mag/arcsec^2.  Resolved stars are drawn on top of it (in the disk they add
    #: roughly half as much again in i with the defaults); the density of stars
    #: and clusters follows it.
    disk_mu0: float
    #: Effective gain, electrons per count.
    gain: float
    #: Saturation level, counts (sky included).
    saturate: float
    #: Moffat index beta (3 is typical of ground-based seeing).
    moffat_beta: float = 3.0
    #: Photometric zero point: mag = zeropoint - 2.5 log10(counts).
    zeropoint: float = 30.0
    #: Read noise of the stack, electrons.
    read_noise: float = 5.0

    def __post_init__(self):
        p = f"band {self.name!r}"
        if self.name not in ("g", "i"):
            raise ConfigError(f"band name must be 'g' or 'i'; got {self.name!r}")
        _check_range(f"{p} seeing (--seeing-{self.name})", self.seeing, 0.2, 5.0, "arcsec FWHM")
        _check_range(f"{p} sky", self.sky, 15.0, 30.0, "mag/arcsec^2")
        _check_range(f"{p} disk_mu0", self.disk_mu0, 10.0, 40.0, "mag/arcsec^2")
        _check_range(f"{p} gain", self.gain, 0.01, 1e6, "e-/count")
        _check_range(f"{p} saturate", self.saturate, 1.0, 1e12, "counts")
        _check_range(f"{p} moffat_beta", self.moffat_beta, 1.5, 20.0)
        _check_range(f"{p} zeropoint", self.zeropoint, 10.0, 50.0, "mag")
        _check_range(f"{p} read_noise", self.read_noise, 0.0, 1e4, "e-")

    def flux(self, mag):
        """Counts of a source of magnitude ``mag`` (scalar or array) in this band."""
        return 10.0 ** (0.4 * (self.zeropoint - mag))


#: PAndAS-like g and i bands (see the module docstring for where the numbers come from).
DEFAULT_BANDS = (
    BandSpec("g", seeing=0.80, sky=22.0, disk_mu0=20.9, gain=150.0, saturate=4000.0),
    BandSpec("i", seeing=0.70, sky=20.5, disk_mu0=19.8, gain=50.0, saturate=5000.0),
)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic field; equal configs give equal bytes.

    Densities scale with M31's disk light where noted: "at i = 21" means where the
    disk's i-band surface brightness is 21 mag/arcsec^2, and the density follows
    the local disk light linearly.  Magnitude limits are in i.
    """

    #: Image width and height, pixels.
    width: int = 2048
    height: int = 2048
    #: Seed of every random choice (catalog and noise).
    seed: int = 0
    #: Field centre (the WCS reference point), degrees ICRS.
    ra: float = 11.013
    dec: float = 41.584
    #: Rotation of the pixel grid on the sky, degrees, as FITS CROTA2: in the image,
    #: north points this far from +y towards -x (east).  0 is north up, east left.
    rotation_deg: float = 0.0
    #: Arcsec per pixel (CFHT MegaCam).
    pixel_scale: float = 0.187
    bands: tuple[BandSpec, BandSpec] = DEFAULT_BANDS
    #: One of ENCODINGS.
    encoding: str = "float32"
    #: Rows rendered and written at a time; sets peak memory, never the bytes.
    tile_size: int = 256
    #: NaN columns and rows in a MegaCam-like CCD pattern.
    chip_gaps: bool = False
    #: MegaCam CCD size (x, y) and the gap between CCDs, pixels.
    chip_size: tuple[int, int] = (2048, 4612)
    chip_gap: int = 70
    #: Subtract the constant sky level (the noise stays), as in MegaPipe stacks.
    sky_subtracted: bool = False
    # --- M31 ---
    m31_ra: float = M31_RA
    m31_dec: float = M31_DEC
    distance_kpc: float = 785.0
    inclination_deg: float = 77.0
    position_angle_deg: float = 38.0
    scale_length_kpc: float = 5.3
    # --- populations ---
    #: Milky Way foreground stars per deg^2 brighter than i = 20.
    foreground_density: float = 2000.0
    #: Background galaxies per deg^2 brighter than i = 23.
    galaxy_density: float = 25000.0
    #: M31 giants per arcsec^2 within 1 mag below the RGB tip, at i = 21 disk light.
    rgb_density: float = 0.2
    #: The same per arcmin^2 in the stellar halo (added everywhere).
    halo_rgb_density: float = 1.0
    #: Fraction of resolved M31 stars that are young (blue main sequence, supergiants).
    young_star_fraction: float = 0.1
    #: i magnitude of the M31 RGB tip.
    rgb_tip: float = 20.5
    #: Star clusters per deg^2 at i = 21 disk light (16-22 mag), and a halo floor.
    cluster_density: float = 3000.0
    halo_cluster_density: float = 5.0
    #: Fraction of disk clusters that are young (blue); halo clusters are old.
    young_cluster_fraction: float = 0.7
    #: Cluster total i magnitudes and half-light radii (pc).
    cluster_mag_range: tuple[float, float] = (16.0, 22.0)
    cluster_rh_range: tuple[float, float] = (1.0, 5.0)
    #: Brightest foreground star, faintest rendered star, faintest galaxy (i).
    bright_limit: float = 13.0
    star_limit: float = 23.5
    galaxy_limit: float = 23.5

    def __post_init__(self):
        _check_int("width (--size/--width)", self.width, 64, 1_000_000, "pixels")
        _check_int("height (--size/--height)", self.height, 64, 1_000_000, "pixels")
        _check_int("seed (--seed)", self.seed, 0, 2**63 - 1)
        _check_range("ra (--ra)", self.ra, 0.0, 360.0, "deg")
        _check_range("dec (--dec)", self.dec, -89.0, 89.0, "deg")
        _check_range("rotation_deg", self.rotation_deg, -180.0, 180.0, "deg")
        _check_range("pixel_scale", self.pixel_scale, 0.01, 10.0, "arcsec/px")
        if (not isinstance(self.bands, tuple) or len(self.bands) != 2
                or not all(isinstance(b, BandSpec) for b in self.bands)
                or tuple(b.name for b in self.bands) != ("g", "i")):
            raise ConfigError(f"bands must be two BandSpec named 'g' and 'i', in that order; "
                              f"got {self.bands!r}")
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding (--encoding) must be one of {', '.join(ENCODINGS)}; "
                              f"got {self.encoding!r}")
        _check_int("tile_size (--tile-size)", self.tile_size, 1, 1_000_000, "rows")
        if not isinstance(self.chip_gaps, bool):
            raise ConfigError(f"chip_gaps must be True or False; got {self.chip_gaps!r}")
        if not isinstance(self.sky_subtracted, bool):
            raise ConfigError(f"sky_subtracted must be True or False; got {self.sky_subtracted!r}")
        if not (isinstance(self.chip_size, tuple) and len(self.chip_size) == 2):
            raise ConfigError(f"chip_size must be a pair (x, y) of pixels; got {self.chip_size!r}")
        _check_int("chip_size x", self.chip_size[0], 16, 100_000, "pixels")
        _check_int("chip_size y", self.chip_size[1], 16, 100_000, "pixels")
        _check_int("chip_gap", self.chip_gap, 1, 10_000, "pixels")
        _check_range("m31_ra", self.m31_ra, 0.0, 360.0, "deg")
        _check_range("m31_dec", self.m31_dec, -89.0, 89.0, "deg")
        _check_range("distance_kpc", self.distance_kpc, 1.0, 1e5, "kpc")
        _check_range("inclination_deg", self.inclination_deg, 0.0, 85.0, "deg")
        _check_range("position_angle_deg", self.position_angle_deg, -360.0, 360.0, "deg")
        _check_range("scale_length_kpc", self.scale_length_kpc, 0.1, 100.0, "kpc")
        _check_range("foreground_density", self.foreground_density, 0.0, 1e6, "per deg^2")
        _check_range("galaxy_density", self.galaxy_density, 0.0, 1e7, "per deg^2")
        _check_range("rgb_density", self.rgb_density, 0.0, 10.0, "per arcsec^2")
        _check_range("halo_rgb_density", self.halo_rgb_density, 0.0, 1e4, "per arcmin^2")
        _check_range("young_star_fraction", self.young_star_fraction, 0.0, 0.9)
        _check_range("rgb_tip", self.rgb_tip, 10.0, 30.0, "mag")
        _check_range("cluster_density (--cluster-density)", self.cluster_density, 0.0, 1e7,
                     "per deg^2")
        _check_range("halo_cluster_density", self.halo_cluster_density, 0.0, 1e6, "per deg^2")
        _check_range("young_cluster_fraction", self.young_cluster_fraction, 0.0, 1.0)
        _check_interval("cluster_mag_range", self.cluster_mag_range, 10.0, 30.0, "mag")
        _check_interval("cluster_rh_range", self.cluster_rh_range, 0.1, 50.0, "pc")
        _check_range("bright_limit", self.bright_limit, 5.0, 30.0, "mag")
        _check_range("star_limit (--star-limit)", self.star_limit, 5.0, 30.0, "mag")
        _check_range("galaxy_limit", self.galaxy_limit, 5.0, 30.0, "mag")
        if not self.bright_limit < self.star_limit:
            raise ConfigError(f"bright_limit ({self.bright_limit}) must be brighter (smaller) "
                              f"than star_limit ({self.star_limit})")

    def band(self, name: str) -> BandSpec:
        """The BandSpec called ``name`` ('g' or 'i')."""
        for b in self.bands:
            if b.name == name:
                return b
        raise ConfigError(f"band must be 'g' or 'i'; got {name!r}")

    @property
    def pixel_area_arcsec2(self) -> float:
        """Solid angle of one pixel, arcsec^2."""
        return self.pixel_scale**2

    @property
    def kpc_per_px(self) -> float:
        """Physical size of one pixel at M31's distance (small-angle), kpc."""
        return self.distance_kpc * math.radians(self.pixel_scale / 3600.0)
