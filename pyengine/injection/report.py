"""The injection-recovery report: completeness curves, limits, JSON, table and figures.

Completeness is the share of injected clusters *detected* (a detection of their own within
the match radius) and *recovered* (one of those is also a candidate), in bins of
magnitude (0.5 mag, at most 24 bins), of half-light radius (5 bins equal in log r_h) and
of both (bins of twice the magnitude width), with 95 % Wilson intervals
(:func:`pyengine.metrics.binned_fraction`).  The 50 % and 90 % completeness magnitudes
are where the binned curve first falls below the level, walking faintwards, linearly
interpolated between bin centres (:func:`pyengine.metrics.fraction_limit`), overall and
per r_h bin (then in the grid's bins); ``None`` with a note when the curve never falls
below the level (the limit is fainter than the range) or starts below it (brighter).

The JSON (``inject.json``, format ``pyengine-inject/1``) has these keys, stable:
``format``, ``version``, ``settings`` (what was asked, model and detection), ``fields``
(per field: images, shape, pixel scale, zero points, gains, noise, PSFs, counts),
``totals``, ``completeness`` (``mag`` and ``rh``: per kind ``detected``/``recovered``
the binned fraction's ``edges, centres, count, hits, fraction, lower, upper, level,
left_out``; ``grid``: ``mag_edges, rh_edges`` and per kind ``count``/``hits`` as
[mag][rh] lists), ``limits`` (per kind ``m50, m90``, their ``notes``, and ``per_rh``: a
list of ``{rh_arcsec: [lo, hi], m50, m90}``), and ``injections`` (one list per column of
``injections.ecsv``: field, round, x, y, ra, dec, mag, rh_arcsec, rh_px, concentration,
young, one ``colour_<band>`` per band, detected, recovered, distance_px, det_mag, score,
n_det, pre_existing).  Figures: ``completeness_mag.png``, ``completeness_rh.png``,
``completeness_grid.png`` (matplotlib's object API, no pyplot; written atomically).

Thread safety: pure functions of their arguments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pyengine.metrics import binned_fraction, fraction_limit

__all__ = ["FORMAT", "LEVELS", "build_report", "completeness_magnitude", "summary_line",
           "write_outputs"]

FORMAT = "pyengine-inject/1"
LEVELS = (0.5, 0.9)
KINDS = ("detected", "recovered")
_MAG_STEP, _MAX_MAG_BINS, _RH_BINS = 0.5, 24, 5


def _float(v):
    return None if v is None or not math.isfinite(float(v)) else float(v)


def mag_edges(lo: float, hi: float) -> np.ndarray:
    n = max(1, min(_MAX_MAG_BINS, math.ceil(round((hi - lo) / _MAG_STEP, 9))))
    return np.linspace(lo, hi, n + 1)


def rh_edges(lo: float, hi: float) -> np.ndarray:
    return np.exp(np.linspace(math.log(lo), math.log(hi), _RH_BINS + 1))


def _columns(results, bands) -> dict:
    """Per-injection columns over all fields (the ``injections`` table)."""
    from pyengine.io.skyframe import pixel_to_icrs

    cols: dict[str, list] = {}
    for f, inj, m in results:
        ra, dec = pixel_to_icrs(f.mosaic.wcs, inj.x, inj.y)
        part = {"field": np.full(len(inj), f.id), "round": inj.round, "x": inj.x, "y": inj.y,
                "ra": ra, "dec": dec, "mag": inj.mag, "rh_arcsec": inj.rh_arcsec,
                "rh_px": inj.rh_px, "concentration": inj.concentration, "young": inj.young}
        for b, name in enumerate(bands):
            part[f"colour_{name}"] = inj.colours[:, b]
        part.update(detected=m.detected, recovered=m.recovered, distance_px=m.distance,
                    det_mag=m.det_mag, score=m.score, n_det=m.n_det,
                    pre_existing=m.pre_existing)
        for k, v in part.items():
            cols.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in cols.items()}


def _limits(mag, hits, edges) -> dict:
    b = binned_fraction(mag, hits, edges)
    out, notes = {}, {}
    filled = b.fraction[b.count > 0]
    for level in LEVELS:
        key = f"m{round(100 * level)}"
        value = fraction_limit(b.centres, b.fraction, level)
        out[key] = value
        if value is None:
            if filled.size == 0:
                notes[key] = "no clusters"
            elif filled[0] < level:
                notes[key] = f"below {100 * level:g} % already in the brightest bin"
            else:
                notes[key] = f"at or above {100 * level:g} % over the whole range (fainter)"
    out["notes"] = notes
    return out


def build_report(results, settings: dict, engine, fields, detect: dict, *,
                 seconds: float) -> dict:
    """The report dict (module docstring) of the fields' runs ``results``: (field,
    Injections, Matches) triples."""
    from pyengine import __version__

    bands = list(fields[0].mosaic.bands)
    cols = _columns(results, bands)
    mag, rh = cols["mag"], cols["rh_arcsec"]
    me, re = mag_edges(*settings["mag"]), rh_edges(*settings["rh"])
    ge = me[::2] if me.size % 2 == 1 else np.r_[me[::2], me[-1]]
    completeness = {"mag": {}, "rh": {}, "grid": {"mag_edges": ge.tolist(),
                                                  "rh_edges": re.tolist()}}
    limits = {}
    for kind in KINDS:
        hits = cols[kind]
        completeness["mag"][kind] = binned_fraction(mag, hits, me).to_dict()
        completeness["rh"][kind] = binned_fraction(rh, hits, re).to_dict()
        grid_n, grid_k = [], []
        for i in range(ge.size - 1):
            sel = (mag >= ge[i]) & ((mag < ge[i + 1]) | (i == ge.size - 2))
            b = binned_fraction(rh[sel], hits[sel], re)
            grid_n.append(b.count.tolist())
            grid_k.append(b.hits.tolist())
        completeness["grid"][kind] = {"count": grid_n, "hits": grid_k}
        lim = _limits(mag, hits, me)
        per_rh = []
        for j in range(re.size - 1):
            sel = (rh >= re[j]) & ((rh < re[j + 1]) | (j == re.size - 2))
            one = _limits(mag[sel], hits[sel], ge)
            per_rh.append({"rh_arcsec": [float(re[j]), float(re[j + 1])], "m50": one["m50"],
                           "m90": one["m90"], "notes": one["notes"]})
        lim["per_rh"] = per_rh
        limits[kind] = lim
    n = int(mag.size)
    field_rows = []
    for f in fields:
        mine = [r for r in results if r[0] is f]
        det = int(mine[0][2].detected.sum()) if mine else 0
        rec = int(mine[0][2].recovered.sum()) if mine else 0
        rounds = int(mine[0][1].round.max()) + 1 if mine else 0
        field_rows.append({
            "id": f.id, "images": list(f.images), "shape": list(f.shape),
            "pixel_scale": f.pixel_scale, "mag_band": bands[f.mag_index],
            "zero_points": {b: {"value": f.zero_points[k], "from": f.zero_from[k]}
                            for k, b in enumerate(bands)},
            "gains": {b: f.gains[k] for k, b in enumerate(bands)},
            "noise": {b: f.noise[k] for k, b in enumerate(bands)},
            "psf": {b: f.psfs[k].to_dict() for k, b in enumerate(bands)},
            "per_round": f.capacity if settings["per_round"] is None
            else min(f.capacity, settings["per_round"]),
            "rounds": rounds, "injected": f.n, "detected": det, "recovered": rec})
    det, rec = int(cols["detected"].sum()), int(cols["recovered"].sum())
    desc = engine.describe()
    return {
        "format": FORMAT, "version": __version__,
        "settings": {"n": settings["n"], "mag": list(settings["mag"]),
                     "rh_arcsec": list(settings["rh"]), "seed": settings["seed"],
                     "per_round": settings["per_round"], "mag_band": settings["mag_band"],
                     "colours": settings["colours"],
                     "concentration": None if settings["concentration"] is None
                     else list(settings["concentration"]),
                     "match_radius_arcsec": settings["match_radius"],
                     "members": settings["members"], "detection": detect,
                     "model": "demo" if engine.model is None else str(engine.model),
                     "model_sha256": engine.model_sha256, "threshold": desc["threshold"],
                     "runner": desc["runner"], "precision": desc["precision"]},
        "fields": field_rows,
        "totals": {"injected": n, "detected": det, "recovered": rec,
                   "detected_fraction": det / n if n else None,
                   "recovered_fraction": rec / n if n else None, "seconds": seconds},
        "completeness": completeness, "limits": limits,
        "injections": {k: [_json_value(v) for v in a] for k, a in cols.items()},
    }


def _json_value(v):
    if isinstance(v, np.bool_ | bool):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        return _float(v)
    return str(v)


def completeness_magnitude(report: dict, level: float = 0.5, kind: str = "recovered"):
    """The magnitude where ``kind`` (``recovered`` or ``detected``) completeness falls to
    ``level`` (0.5 or 0.9), or None (see ``report['limits'][kind]['notes']``)."""
    if kind not in KINDS:
        from pyengine.errors import ConfigError

        raise ConfigError(f"completeness kind {kind!r} is not known; accepted: "
                          f"{', '.join(KINDS)}")
    key = f"m{round(100 * level)}"
    if key not in report["limits"][kind]:
        from pyengine.errors import ConfigError

        raise ConfigError(f"completeness level {level!r} is not reported; accepted: "
                          f"{', '.join(str(v) for v in LEVELS)}")
    return report["limits"][kind][key]


def _limit_text(report, kind, level) -> str:
    key = f"m{round(100 * level)}"
    value = report["limits"][kind][key]
    band = report["settings"]["mag_band"]
    if value is not None:
        return f"{band} = {value:.2f}"
    lo, hi = report["settings"]["mag"]
    note = report["limits"][kind]["notes"].get(key, "")
    if "fainter" in note:
        return f"{band} > {hi:g}"
    if "brightest" in note:
        return f"{band} < {lo:g}"
    return "n/a"


def summary_line(report: dict) -> str:
    """One line: counts and the 50 % completeness magnitudes (the demo prints it)."""
    t = report["totals"]
    s = report["settings"]
    return (f"injection-recovery: {t['injected']} clusters ({s['mag_band']} {s['mag'][0]:g}-"
            f"{s['mag'][1]:g}, r_h {s['rh_arcsec'][0]:g}-{s['rh_arcsec'][1]:g}\"), detected "
            f"{t['detected']} ({100 * (t['detected_fraction'] or 0):.1f} %), recovered "
            f"{t['recovered']} ({100 * (t['recovered_fraction'] or 0):.1f} %); 50 % "
            f"completeness: detected {_limit_text(report, 'detected', 0.5)}, recovered "
            f"{_limit_text(report, 'recovered', 0.5)}")


# -- files -------------------------------------------------------------------------------
def write_outputs(report: dict, output_dir, *, overwrite: bool = False) -> dict:
    """Write inject.json, injections.ecsv and the figures into ``output_dir``; returns
    {kind: path}.  An existing inject.json is refused unless ``overwrite``."""
    from astropy.table import Table

    from pyengine.atomic import atomic_path, atomic_write_text

    out = _output_dir(output_dir)
    paths = {"json": out / "inject.json", "table": out / "injections.ecsv",
             "mag": out / "completeness_mag.png", "rh": out / "completeness_rh.png",
             "grid": out / "completeness_grid.png"}
    if paths["json"].exists() and not overwrite:
        from pyengine.errors import OutputError

        raise OutputError(f"{paths['json']} exists; choose another --output-dir or pass "
                          "--overwrite")
    table = Table({k: np.asarray([np.nan if v is None else v for v in vals])
                   for k, vals in report["injections"].items()})
    table.meta["format"] = FORMAT
    with atomic_path(paths["table"], suffix=".ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    from pyengine.injection.figures import grid_figure, mag_figure, rh_figure

    for key, draw in (("mag", mag_figure), ("rh", rh_figure), ("grid", grid_figure)):
        fig = draw(report)
        with atomic_path(paths[key], suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
    atomic_write_text(paths["json"], json.dumps(report, indent=1, sort_keys=True) + "\n")
    return paths


def _output_dir(output_dir) -> Path:
    import os

    from pyengine.errors import OutputError

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output-dir {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--output-dir {out}: cannot create it ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise OutputError(f"--output-dir {out}: not writable")
    return out
