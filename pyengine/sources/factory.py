"""Building a position source from command-line style options."""

from __future__ import annotations

from pyengine.errors import ConfigError
from pyengine.sources.base import SOURCE_KINDS, Source
from pyengine.sources.catalog import CatalogSource
from pyengine.sources.detect import DetectSource
from pyengine.sources.grid import GridSource

__all__ = ["make_source"]


_OPTIONS = {
    "catalog": ("ra_col", "dec_col", "x_col", "y_col", "mag_col", "mag_limit"),
    "detect": ("threshold", "min_area", "band", "deblend", "background_box", "mag_limit",
               "mag_band", "zero_point", "aperture"),
    "grid": ("offset",),
}


def make_source(kind: str | None = None, *, catalog=None, stride=None, **options) -> Source:
    """Build a source from command-line style options; options that are None are ignored.

    ``kind`` defaults to "catalog" when ``catalog`` (a path) is given, "grid"
    when ``stride`` is given, else "detect".  Options of another kind that are
    set (not None) are refused, so a misplaced flag never goes unnoticed.
    """
    if kind is None:
        kind = "catalog" if catalog is not None else "grid" if stride is not None else "detect"
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"source kind {kind!r} is not known; accepted: {', '.join(SOURCE_KINDS)}")
    given = {k: v for k, v in options.items() if v is not None}
    if catalog is not None and kind != "catalog":
        given["catalog"] = catalog
    if stride is not None and kind != "grid":
        given["stride"] = stride
    unknown = sorted(set(given) - set(_OPTIONS[kind]))
    if unknown:
        raise ConfigError(f"{kind} source: option(s) {', '.join(unknown)} do not apply; "
                          f"accepted: {', '.join(_OPTIONS[kind]) or 'none'}")
    if kind == "catalog":
        if catalog is None:
            raise ConfigError("catalog source: no catalog file given; give its path")
        return CatalogSource(catalog, **given)
    if kind == "grid":
        if stride is None:
            raise ConfigError("grid source: no stride given; give the grid spacing in pixels")
        return GridSource(stride, **given)
    return DetectSource(**given)
