"""Score map of a grid scan: a FITS image whose WCS puts each score on the sky.

Grid mode scores the mosaic at the 0-based pixels ``x = offset + stride*i``,
``y = offset + stride*j`` (``offset`` usually ``stride // 2``); the score map
holds that score at map pixel ``(i, j)``, i.e. ``scores[j, i]``.

:func:`scoremap_wcs` gives the map a WCS under which map pixel ``(i, j)`` has
exactly the sky position of mosaic pixel ``(offset + stride*i, offset +
stride*j)``.  The pixel-to-sky chain of FITS WCS starts with offsets from
CRPIX, ``u = p - CRPIX`` (1-based p), and every later step sees only ``u``.
With ``p = 1 + offset + stride*(p' - 1)`` for map pixel p' (1-based),
``u = stride * (p' - CRPIX')`` where ``CRPIX' = (CRPIX - 1 - offset)/stride + 1``,
so the map's WCS is the mosaic's with

* CRPIX replaced by CRPIX' (both axes);
* the linear matrix scaled by ``stride``: ``CDi_j * stride`` for a CD header,
  ``CDELTi * stride`` for a PC+CDELT (or CROTA) header;
* SIP distortion (``u + f(u, v)``, polynomials in u, v): the coefficients
  rescaled exactly, ``A'_pq = A_pq * stride**(p+q-1)`` (likewise B, AP, BP),
  because ``S⁻¹ f(S u')`` is again a polynomial of the same order.  The map
  keeps SIP, and the relation above holds to rounding error.
* Distortions after the linear step (TPV/ZPN ``PVi_m`` cards) and the sky
  projection are unchanged.

Lookup-table distortions (``CPDISj``/``D2IMDISj``, Paper IV) are sampled on the
mosaic's own pixel grid and cannot be carried over: they are refused
(:class:`OutputError`) so the engine can refuse them before scanning.

:func:`write_scoremap` writes the map atomically through
:func:`pyengine.io.fitswrite.write_image` (float32 primary image, NaN where
no score) with the adjusted WCS, ``STRIDE``, ``GRIDOFF``, ``BUNIT =
'probability'`` and the caller's metadata keywords (the catalog's rules,
:func:`pyengine.output.fits_table.check_meta`).  The file passes ``fitsverify``.

Thread safety: functions copy the WCS they are given and share no state; they
may run concurrently.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from pyengine.errors import ConfigError, OutputError
from pyengine.output.fits_table import check_meta, header_card, meta_cards

__all__ = ["scoremap_wcs", "write_scoremap"]


def _check_grid(stride, offset) -> tuple[int, int]:
    if (isinstance(stride, bool) or not isinstance(stride, numbers.Integral)
            or int(stride) < 1):
        raise ConfigError(f"score map grid stride {stride!r}: a positive integer is needed")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or int(offset) < 0:
        raise ConfigError(f"score map grid offset {offset!r}: an integer >= 0 is needed")
    return int(stride), int(offset)


def _scaled_sip(sip, stride: int, crpix):
    """The SIP polynomials of the map: coefficient (p, q) times stride**(p + q - 1)."""
    from astropy.wcs import Sip

    def scale(m):
        if m is None or np.size(m) == 0:
            return None
        m = np.array(m, dtype=np.float64)
        p, q = np.indices(m.shape)  # m[p, q] multiplies u**p v**q
        return m * float(stride) ** (p + q - 1)

    a, b, ap, bp = (scale(m) for m in (sip.a, sip.b, sip.ap, sip.bp))
    return Sip(a, b, ap, bp, np.asarray(crpix, dtype=np.float64))


def scoremap_wcs(wcs, stride: int, offset: int):
    """The WCS of a score map sampled every ``stride`` pixels from ``offset``.

    Map pixel (i, j) (0-based) has the sky position of mosaic pixel
    (offset + stride*i, offset + stride*j).  ``wcs`` is a 2-D celestial
    :class:`astropy.wcs.WCS` (CD or PC+CDELT, with or without SIP); it is not
    modified.
    """
    stride, offset = _check_grid(stride, offset)
    if wcs.naxis != 2:
        raise OutputError(f"score map: the mosaic WCS has {wcs.naxis} axes; 2 are needed")
    if any(d is not None for d in (wcs.cpdis1, wcs.cpdis2, wcs.det2im1, wcs.det2im2)):
        raise OutputError("score map: the mosaic WCS has lookup-table distortion "
                          "(CPDISj/D2IMDISj), which a score map's grid cannot carry; "
                          "scan without a score map or give a WCS without it")
    out = wcs.deepcopy()
    w = out.wcs
    crpix = (np.array(w.crpix, dtype=np.float64) - 1.0 - offset) / stride + 1.0
    if w.has_cd():
        w.cd = np.array(w.cd, dtype=np.float64) * stride
    else:
        w.cdelt = np.array(w.cdelt, dtype=np.float64) * stride
    w.crpix = crpix
    if out.sip is not None:
        out.sip = _scaled_sip(out.sip, stride, crpix)
    out.pixel_shape = None
    w.set()
    return out


def write_scoremap(path, scores, wcs, stride: int, offset: int, *, meta: dict) -> Path:
    """Write a grid scan's scores as a float32 FITS image with the map's WCS, atomically.

    ``scores`` is 2-D (rows j, columns i), NaN where not scored.  ``meta``
    holds extra header keywords (FITS keywords -> str/int/float/bool).
    Returns the path.
    """
    from astropy.io.fits import Header

    from pyengine.io.fitswrite import write_image

    path = Path(path)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be a non-empty 2-D array; got shape {scores.shape}")
    stride, offset = _check_grid(stride, offset)
    extra = check_meta(meta)
    for key in ("STRIDE", "GRIDOFF", "BUNIT"):
        if key in extra:
            raise ValueError(f"score map metadata may not set {key}; write_scoremap does")
    map_wcs = scoremap_wcs(wcs, stride, offset)
    header = Header()
    for card in map_wcs.to_header(relax=True).cards:
        header.append(card)
    header.append(header_card("BUNIT", "probability", "cluster probability (score)"))
    header.append(header_card("STRIDE", stride, "grid step in mosaic pixels"))
    header.append(header_card("GRIDOFF", offset, "0-based mosaic pixel of map pixel 0"))
    for key, value, comment in meta_cards(extra):
        header.append(header_card(key, value, comment))
    if "CONTINUE" in header.tostring():
        header.append(header_card("LONGSTRN", "OGIP 1.0", "long strings use CONTINUE"))
    try:
        return write_image(path, scores.astype(np.float32, copy=False), header)
    except OSError as exc:
        raise OutputError(f"{path}: writing the score map failed "
                          f"({exc.strerror or exc})") from None
