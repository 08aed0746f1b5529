"""Output of a synthetic field: band images in four encodings, and the truth catalog.

Encodings (``SynthConfig.encoding``):

* ``float32``: ``g.fits`` and ``i.fits``, BITPIX -32 primary images.
* ``int16``: the same names, BITPIX 16 with BSCALE/BZERO spanning [sky - 10
  sigma, SATURATE] (the image's whole possible range: values are clipped at
  saturation), so the quantisation step BSCALE is ~1/10 of the sky noise at
  the default levels; NaN is stored as BLANK = -32768.
* ``rice``: ``g.fits.fz`` and ``i.fits.fz``, RICE_1 tile-compressed float
  images (fpack's layout: empty primary, compressed image in HDU 1), tiles of
  one row, quantised with cfitsio's SUBTRACTIVE_DITHER_1 at q = 4 (step =
  row noise / 4) and a dither seed fixed by the field's seed, so the bytes are
  deterministic.  Row tiles also let cfitsio take the image block by block.
* ``mef``: ``field.fits`` with an empty primary HDU and IMAGE extensions
  ``G`` and ``I`` (float32).

A survey's fields may also get a SExtractor-shaped catalog of their truth
(:func:`write_sextractor_catalog`: FITS_LDAC, ``X_IMAGE``/``Y_IMAGE`` 1-based), the
per-field catalogs of MegaPipe.

All files are written to hidden temporary names and renamed into place on
success (:mod:`pyengine.io.fitswrite`).  The truth catalog is written with
fitsio, appending one cell row at a time, also atomically.

Thread safety: writers are not thread-safe; one thread drives each.  fitsio
calls hold the GIL for their duration (cfitsio is not re-entrant per file).
"""

from __future__ import annotations

from pathlib import Path

import fitsio
import numpy as np
from astropy.io.fits import Header
from astropy.wcs import WCS

from pyengine.atomic import publish, temporary_beside
from pyengine.io.fitswrite import AtomicOutput, FitsWriter, ImageSpec
from pyengine.synth.catalog import CLASSES, SUBCLASSES, Objects
from pyengine.synth.config import SynthConfig
from pyengine.synth.sky import band_header, primary_header, sky_counts

__all__ = ["FieldWriters", "SurveyTruthWriter", "TruthWriter", "int16_scaling",
           "write_sextractor_catalog"]

#: RICE quantisation level (cfitsio/fpack default): step = noise / 4.
RICE_QLEVEL = 4.0

TRUTH_DTYPE = np.dtype([
    ("id", ">i8"), ("ra", ">f8"), ("dec", ">f8"), ("x", ">f8"), ("y", ">f8"),
    ("class", "S7"), ("g_mag", ">f4"), ("i_mag", ">f4"), ("r_h_pc", ">f4"), ("subclass", "S10"),
])
TRUTH_UNITS = ["", "deg", "deg", "pix", "pix", "", "mag", "mag", "pc", ""]
#: A survey's truth (one row per object of the whole area): the field truth's columns
#: less x, y, plus whether the object was placed and which fields' images hold it.
_SURVEY_COLUMNS = [("id", ">i8", ""), ("ra", ">f8", "deg"), ("dec", ">f8", "deg"),
                   ("class", "S7", ""), ("g_mag", ">f4", "mag"), ("i_mag", ">f4", "mag"),
                   ("r_h_pc", ">f4", "pc"), ("subclass", "S10", ""), ("placed", "?", ""),
                   ("n_fields", ">i2", "")]


def int16_scaling(config: SynthConfig, band: str) -> tuple[float, float]:
    """(BSCALE, BZERO) mapping stored -32767 .. 32767 onto [sky - 10 sigma, SATURATE]."""
    b = config.band(band)
    sky = sky_counts(config, band)
    sub = sky if config.sky_subtracted else 0.0
    sigma = float(np.sqrt(sky / b.gain + (b.read_noise / b.gain) ** 2))
    lo = sky - sub - 10.0 * sigma
    hi = b.saturate - sub
    bscale = (hi - lo) / 65534.0
    return bscale, lo + 32767.0 * bscale


def _fitsio_records(header: Header) -> list[dict]:
    return [{"name": c.keyword, "value": c.value, "comment": c.comment} for c in header.cards]


class _RiceFile:
    """One RICE-compressed band written through fitsio to a temporary name."""

    def __init__(self, path: Path, header: Header, shape: tuple[int, int], dither_seed: int):
        self.path = path
        self.tmp = temporary_beside(path)
        self.fits = fitsio.FITS(str(self.tmp), "rw")
        self.fits.create_image_hdu(dims=shape, dtype="f4", compress="RICE",
                                   tile_dims=(1, shape[1]), qlevel=RICE_QLEVEL,
                                   qmethod="SUBTRACTIVE_DITHER_1", dither_seed=dither_seed)
        self.fits[-1].write_keys(_fitsio_records(header))

    def write(self, y0: int, block: np.ndarray) -> None:
        self.fits[-1].write(np.ascontiguousarray(block, dtype=np.float32), start=[y0, 0])

    def close(self) -> None:
        self.fits.close()
        publish([(self.tmp, self.path)])

    def abort(self) -> None:
        self.fits.close()
        self.tmp.unlink(missing_ok=True)


class FieldWriters(AtomicOutput):
    """The band images of one field, in the config's encoding."""

    def __init__(self, out_dir: Path, config: SynthConfig):
        self.config = c = config
        shape = (c.height, c.width)
        names = [b.name for b in c.bands]
        self._files: list = []
        #: Band -> (file, HDU index).
        self.locations: dict[str, tuple[Path, int]] = {}
        #: (file object, HDU index) receiving each band.
        self._targets = []
        try:
            if c.encoding == "mef":
                path = out_dir / "field.fits"
                primary = primary_header(c)
                primary["NEXTEND"] = (2, "bands g and i")
                specs = [ImageSpec((), header=primary)] + [
                    ImageSpec(shape, "float32", band_header(c, n, extname=n.upper()))
                    for n in names]
                w = FitsWriter(path, specs)
                self._files.append(w)
                for k, n in enumerate(names):
                    self._targets.append((w, k + 1))
                    self.locations[n] = (path, k + 1)
            for n in names if c.encoding != "mef" else ():
                if c.encoding == "rice":
                    path = out_dir / f"{n}.fits.fz"
                    f = _RiceFile(path, band_header(c, n, extname=n.upper()), shape,
                                  dither_seed=1 + c.seed % 10000)
                    self._targets.append((f, 1))
                else:
                    path = out_dir / f"{n}.fits"
                    if c.encoding == "int16":
                        bscale, bzero = int16_scaling(c, n)
                        spec = ImageSpec(shape, "int16", band_header(c, n), bscale=bscale,
                                         bzero=bzero, blank=-32768)
                    else:
                        spec = ImageSpec(shape, "float32", band_header(c, n))
                    f = FitsWriter(path, [spec])
                    self._targets.append((f, 0))
                self._files.append(f)
                self.locations[n] = (path, 1 if c.encoding == "rice" else 0)
        except BaseException:
            self.abort()
            raise

    def write(self, y0: int, block: np.ndarray) -> None:
        """Write rows y0 .. of both bands; ``block`` has shape (2, rows, width)."""
        for b, (f, hdu) in enumerate(self._targets):
            if isinstance(f, _RiceFile):
                f.write(y0, block[b])
            else:
                f.write_rows(hdu, y0, block[b])

    def close(self) -> None:
        while self._files:
            self._files.pop(0).close()

    def abort(self) -> None:
        while self._files:
            self._files.pop().abort()


class _PublishedOnClose:
    """A FITS file written at ``self.tmp`` and published onto ``self.path`` when the
    ``with`` block ends normally (removed otherwise)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.fits.close()
        try:
            if exc_type is None:
                publish([(self.tmp, self.path)])
        finally:
            self.tmp.unlink(missing_ok=True)


class TruthWriter(_PublishedOnClose):
    """truth.fits: one row per object, appended as cell rows are drawn."""

    def __init__(self, path: Path, config: SynthConfig, wcs: WCS, comments=()):
        self.path = path
        self.wcs = wcs
        self.counts = dict.fromkeys(CLASSES, 0)
        self._next_id = 1
        path.unlink(missing_ok=True)   # a stale catalog must not vouch for new images
        self.tmp = temporary_beside(path)
        self.fits = fitsio.FITS(str(self.tmp), "rw")
        header = primary_header(config)
        header["COMMENT"] = "x, y: 0-based pixels (astropy); r_h_pc is NaN for non-clusters."
        header["COMMENT"] = "Cluster member stars are drawn but are not rows here."
        for line in comments:
            header["COMMENT"] = line
        self.fits.create_table_hdu(dtype=TRUTH_DTYPE, units=TRUTH_UNITS, extname="TRUTH")
        self.fits[-1].write_keys(_fitsio_records(header))

    def add(self, cell_row: int, objs: Objects, ids=None) -> None:
        """Append the truth rows of one cell row: ids continue in order, or are
        ``ids`` (one per row; a survey's fields use the survey truth's ids)."""
        n = objs.n_truth
        if ids is not None and len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} truth rows")
        if n == 0:
            return
        rows = np.zeros(n, TRUTH_DTYPE)
        if ids is None:
            rows["id"] = np.arange(self._next_id, self._next_id + n)
            self._next_id += n
        else:
            rows["id"] = ids
        ra, dec = self.wcs.wcs_pix2world(objs.t_x, objs.t_y, 0)
        rows["ra"], rows["dec"] = ra, dec
        rows["x"], rows["y"] = objs.t_x, objs.t_y
        rows["class"] = np.array([c.encode() for c in CLASSES])[objs.t_class]
        rows["subclass"] = np.array([c.encode() for c in SUBCLASSES])[objs.t_sub]
        rows["g_mag"], rows["i_mag"], rows["r_h_pc"] = objs.t_g, objs.t_i, objs.t_rh
        for k, name in enumerate(CLASSES):
            self.counts[name] += int(np.count_nonzero(objs.t_class == k))
        self.fits[-1].append(rows)


class SurveyTruthWriter(_PublishedOnClose):
    """A survey's truth.fits: every object of the area once, appended cell by cell.

    Columns: id, ra, dec, class, g_mag, i_mag, r_h_pc, subclass (as a field's truth),
    ``placed`` (put there by the caller, not drawn), ``n_fields`` (how many fields'
    images hold its centre) and ``fields`` (their ids, comma-separated, in manifest
    order); ``fields_width`` bounds that column's characters.
    """

    def __init__(self, path: Path, config: SynthConfig, fields_width: int, comments=()):
        self.path = path
        self.counts = dict.fromkeys(CLASSES, 0)
        self.placed = 0
        self.dtype = np.dtype([(n, t) for n, t, _ in _SURVEY_COLUMNS]
                              + [("fields", f"S{max(int(fields_width), 1)}")])
        path.unlink(missing_ok=True)   # a stale catalog must not vouch for new fields
        self.tmp = temporary_beside(path)
        self.fits = fitsio.FITS(str(self.tmp), "rw")
        header = primary_header(config)
        header["COMMENT"] = "One row per object of the survey; each field's truth.fits has"
        header["COMMENT"] = "the rows of the objects centred on its images, with these ids."
        header["COMMENT"] = "r_h_pc is NaN for non-clusters; cluster members are not rows."
        for line in comments:
            header["COMMENT"] = line
        self.fits.create_table_hdu(dtype=self.dtype, units=[u for *_, u in _SURVEY_COLUMNS]
                                   + [""], extname="TRUTH")
        self.fits[-1].write_keys(_fitsio_records(header))

    def add(self, objs: Objects, ids, ra, dec, fields: list[str], placed: bool) -> None:
        """Append the truth rows of ``objs`` with their ids, sky positions and the
        comma-separated ids of the fields holding each."""
        n = objs.n_truth
        if n == 0:
            return
        rows = np.zeros(n, self.dtype)
        width = self.dtype["fields"].itemsize
        encoded = [f.encode() for f in fields]
        if max(len(f) for f in encoded) > width:
            raise RuntimeError(f"a field list is longer than the {width} characters allowed")
        rows["id"], rows["ra"], rows["dec"] = ids, ra, dec
        rows["class"] = np.array([c.encode() for c in CLASSES])[objs.t_class]
        rows["subclass"] = np.array([c.encode() for c in SUBCLASSES])[objs.t_sub]
        rows["g_mag"], rows["i_mag"], rows["r_h_pc"] = objs.t_g, objs.t_i, objs.t_rh
        rows["placed"] = placed
        rows["n_fields"] = [f.count(",") + 1 if f else 0 for f in fields]
        rows["fields"] = encoded
        for k, name in enumerate(CLASSES):
            self.counts[name] += int(np.count_nonzero(objs.t_class == k))
        self.placed += n if placed else 0
        self.fits[-1].append(rows)


def write_sextractor_catalog(path: Path, truth: Path, header: Header) -> Path:
    """A field's truth as SExtractor writes a catalog with ``-CATALOG_TYPE FITS_LDAC``:
    an empty primary HDU, ``LDAC_IMHEAD`` (``header``, the image's, as 80-character cards)
    and ``LDAC_OBJECTS`` with NUMBER, X_IMAGE, Y_IMAGE (FITS 1-based: truth x + 1),
    ALPHA_J2000, DELTA_J2000, MAG_AUTO (i), CLASS_STAR (1 for stars, else 0), FLAGS (0)
    and TRUTH_ID (the truth's id; not a SExtractor column).  Positions are the truth's,
    exact: no measurement noise.  Written atomically; returns ``path``."""
    from astropy.io import fits

    from pyengine.atomic import atomic_path

    rows = fitsio.read(str(truth), ext=1)
    n = len(rows)
    cards = [card.image for card in header.cards] + ["END".ljust(80)]
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column("Field Header Card", f"{80 * len(cards)}A", dim=f"(80, {len(cards)})",
                     array=np.array([cards], dtype="S80"))], name="LDAC_IMHEAD")
    star = np.char.strip(rows["class"].astype("S7")) == b"star"
    columns = [("NUMBER", "J", np.arange(1, n + 1), None, "I10"),
               ("X_IMAGE", "D", rows["x"] + 1.0, "pixel", "F11.4"),
               ("Y_IMAGE", "D", rows["y"] + 1.0, "pixel", "F11.4"),
               ("ALPHA_J2000", "D", rows["ra"], "deg", "F11.7"),
               ("DELTA_J2000", "D", rows["dec"], "deg", "F11.7"),
               ("MAG_AUTO", "E", rows["i_mag"], "mag", "F8.4"),
               ("CLASS_STAR", "E", star.astype(np.float32), None, "F6.3"),
               ("FLAGS", "I", np.zeros(n, np.int16), None, "I3"),
               ("TRUTH_ID", "K", rows["id"], None, "I10")]
    objects = fits.BinTableHDU.from_columns(
        [fits.Column(name, fmt, unit=unit, disp=disp, array=array)
         for name, fmt, array, unit, disp in columns], name="LDAC_OBJECTS")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(tmp)
    return path
