"""What ``pyengine survey show`` reports: the area the fields cover, their overlaps, and
a PNG of the footprints on the sky (with a ``--within`` circle and a scan's candidates).

Areas are measured on a grid in the gnomonic plane at the survey's centre, 400 x 400
points over the footprints' bounding box, each point weighted by the solid angle it
stands for. That is exact to well under 1 % for surveys up to tens of degrees across.

Thread safety: pure functions of their arguments (the PNG is written atomically).
"""

from __future__ import annotations

import math

import numpy as np

from pyengine.survey.geometry import Cone, SurveyGeometry, gnomonic

__all__ = ["coverage", "draw_footprints", "survey_centre"]

_GRID = 400


def survey_centre(geo: SurveyGeometry) -> tuple[float, float]:
    corners = np.array([c for f in geo.frames for c in f.corners])
    vec = np.stack([np.cos(np.radians(corners[:, 1])) * np.cos(np.radians(corners[:, 0])),
                    np.cos(np.radians(corners[:, 1])) * np.sin(np.radians(corners[:, 0])),
                    np.sin(np.radians(corners[:, 1]))]).mean(axis=1)
    return (math.degrees(math.atan2(vec[1], vec[0])) % 360.0,
            math.degrees(math.atan2(vec[2], math.hypot(vec[0], vec[1]))))


def _inverse_gnomonic(ra0, dec0, xi, eta):
    r0, d0 = math.radians(ra0), math.radians(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * math.sin(d0) + np.where(rho > 0, eta * np.sin(c) *
                                                          math.cos(d0) / rho, 0.0))
        ra = r0 + np.arctan2(xi * np.sin(c), rho * math.cos(d0) * np.cos(c) -
                             eta * math.sin(d0) * np.sin(c))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def coverage(geo: SurveyGeometry) -> dict:
    """Union area, summed footprint area (deg^2), the share of the union covered twice or
    more, and the pairs of fields that overlap."""
    ra0, dec0 = survey_centre(geo)
    corners = np.array([c for f in geo.frames for c in f.corners])
    xi, eta = gnomonic(ra0, dec0, corners[:, 0], corners[:, 1])
    gx = np.linspace(np.nanmin(xi), np.nanmax(xi), _GRID)
    gy = np.linspace(np.nanmin(eta), np.nanmax(eta), _GRID)
    cell = (gx[1] - gx[0]) * (gy[1] - gy[0])
    mx, my = np.meshgrid(gx, gy)
    ra, dec = _inverse_gnomonic(ra0, dec0, mx.ravel(), my.ravel())
    # solid angle of a gnomonic cell: d(xi) d(eta) / (1 + xi^2 + eta^2)^(3/2)
    weight = cell / (1.0 + mx.ravel() ** 2 + my.ravel() ** 2) ** 1.5
    inside = geo.edge_distances(ra, dec) > 0
    count = inside.sum(axis=0)
    sq = math.degrees(1.0) ** 2
    pairs = []
    for a in range(len(geo)):
        for b in range(a + 1, len(geo)):
            if np.any(inside[a] & inside[b]):
                pairs.append((geo.frames[a].id, geo.frames[b].id))
    union = float(np.sum(weight[count > 0]) * sq)
    return {"area_deg2": union, "sum_deg2": float(np.sum(weight * count) * sq),
            "overlap_fraction": float(np.sum(weight[count > 1]) * sq / union) if union else 0.0,
            "overlapping_pairs": pairs}


def draw_footprints(geo: SurveyGeometry, path, cone: Cone | None = None,
                    candidates=None) -> None:
    """The fields' footprints (RA growing to the left, as on the sky), their ids, the
    ``cone`` and a scan catalog's candidates (``is_candidate`` rows), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyengine.atomic import atomic_path

    ra0, dec0 = survey_centre(geo)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    for frame in geo.frames:
        c = np.array(frame.corners + frame.corners[:1])
        xi, eta = gnomonic(ra0, dec0, c[:, 0], c[:, 1])
        ax.plot(np.degrees(xi), np.degrees(eta), lw=1.0, color="C0")
        ax.text(np.degrees(np.mean(xi[:4])), np.degrees(np.mean(eta[:4])), frame.id,
                ha="center", va="center", fontsize=7, color="C0")
    if cone is not None:
        t = np.linspace(0, 2 * np.pi, 361)
        dec = cone.dec + cone.radius * np.sin(t)
        ra = cone.ra + cone.radius * np.cos(t) / np.cos(np.radians(np.clip(dec, -89.9, 89.9)))
        xi, eta = gnomonic(ra0, dec0, ra, dec)
        ax.plot(np.degrees(xi), np.degrees(eta), color="C3", lw=1.2,
                label=f"within {cone.radius:g} deg")
    if candidates is not None:
        from astropy.table import Table

        cat = Table.read(candidates)
        keep = np.asarray(cat["is_candidate"], bool) if "is_candidate" in cat.colnames else \
            np.ones(len(cat), bool)
        xi, eta = gnomonic(ra0, dec0, np.asarray(cat["ra"])[keep], np.asarray(cat["dec"])[keep])
        ax.scatter(np.degrees(xi), np.degrees(eta), s=6, color="C1",
                   label=f"{int(keep.sum())} candidates")
    ax.invert_xaxis()
    ax.set_aspect("equal")
    ax.set_xlabel(f"offset east of RA {ra0:.4f} deg (deg, gnomonic)")
    ax.set_ylabel(f"offset north of Dec {dec0:.4f} deg (deg)")
    ax.set_title(f"{len(geo)} field(s), bands {', '.join(geo.survey.bands)}")
    if cone is not None or candidates is not None:
        ax.legend(loc="upper right", fontsize=8)
    with atomic_path(path, suffix=".part.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
