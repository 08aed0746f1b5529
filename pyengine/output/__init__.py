"""Outputs of ``pyengine scan``: catalog, DS9 regions, score map, resume journal.

* :mod:`~pyengine.output.catalog`: ``write_catalog`` (FITS, ECSV, Parquet, CSV;
  atomic), ``check_output`` (refuse a bad path before scanning); the flag bits are
  :mod:`pyengine.flags`.
* :mod:`~pyengine.output.fits_table`: the FITS BINTABLE writer and metadata rules.
* :mod:`~pyengine.output.regions`: ``write_regions`` (DS9, ICRS circles).
* :mod:`~pyengine.output.scoremap`: ``scoremap_wcs`` and ``write_scoremap``
  for grid scans.
* :mod:`~pyengine.output.journal`: ``Journal``, finished tiles kept on disk so
  a killed scan resumes.

Names load their module on first use, so importing this package is cheap.
Thread safety: see each module.
"""

from __future__ import annotations

from pyengine._lazy import lazy_exports

_LAZY = {
    **dict.fromkeys(("CATALOG_FORMATS", "STANDARD_COLUMNS", "check_output", "check_writable",
                     "write_catalog"), "pyengine.output.catalog"),
    **dict.fromkeys(("BLANK", "EDGE", "FLAG_BITS", "OFF_IMAGE", "describe_flags"),
                    "pyengine.flags"),
    "check_meta": "pyengine.output.fits_table",
    "Journal": "pyengine.output.journal",
    "scoremap_wcs": "pyengine.output.scoremap",
    "write_scoremap": "pyengine.output.scoremap",
    "write_regions": "pyengine.output.regions",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
