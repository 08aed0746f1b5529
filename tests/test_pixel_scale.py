"""The pixel-scale guard: images whose pixel scale differs from the model's by more than 5 %
are refused before any work, or scanned with one warning when allowed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import PixelScaleError, PixelScaleWarning
from pyengine.scan.pixscale import TOLERANCE, check_mosaic_scale, mismatch, model_pixel_scale

SHAPE = (96, 96)


def write_pair(folder, scale_arcsec: float, ra: float = 10.7, dec: float = 41.3):
    """g.fits and i.fits: noise and a few sources on a TAN WCS of CDELT = scale / 3600."""
    folder.mkdir(parents=True, exist_ok=True)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [SHAPE[1] / 2 + 0.5, SHAPE[0] / 2 + 0.5]
    w.wcs.cdelt = [-scale_arcsec / 3600, scale_arcsec / 3600]
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    paths = []
    for band in ("g", "i"):
        image = 100 + rng.normal(0, 5, SHAPE)
        for x, y in ((30, 30), (60, 50), (45, 70)):
            image += 500 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)
        header = w.to_header()
        header["FILTER"] = band
        path = folder / f"{band}.fits"
        fits.PrimaryHDU(image.astype(np.float32), header).writeto(path, overwrite=True)
        paths.append(str(path))
    return paths


def _scan(args):
    return CliRunner().invoke(main, ["scan", *map(str, args)])


def test_tolerance_is_five_percent(model):
    assert model_pixel_scale(model) == pytest.approx(0.187)
    assert model_pixel_scale(None) == pytest.approx(0.187)  # the shipped demo model
    assert TOLERANCE == 0.05
    assert mismatch(0.19, 0.187) is None and mismatch(0.187 * 1.049, 0.187) is None
    assert mismatch(0.187 * 1.051, 0.187) == pytest.approx(0.051)
    assert mismatch(0.187 * 0.949, 0.187) == pytest.approx(-0.051)
    assert mismatch(None, 0.187) is None  # no celestial WCS: not checked


def test_a_dss_like_image_is_refused_before_any_work(tmp_path, model):
    bands = write_pair(tmp_path / "dss", 1.7)
    out = tmp_path / "c.fits"
    res = _scan([*bands, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o", out])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    line = lines[0]
    assert line.startswith(f"Error: {bands[0]}, {bands[1]}: pixel scale 1.7\"/px differs "
                           "from the model's 0.187\"/px by +809 %")
    assert "resample the image to 0.187\"/px" in line and "train a model at 1.7\"/px" in line
    assert "--allow-pixel-scale-mismatch scans it anyway" in line
    assert not out.exists() and not (tmp_path / "c.fits.journal").exists()
    # before the runner is made: a runner name that cannot work is not reached
    res = _scan([*bands, "--grid", 24, "--model", model, "--runner", "bogus", "-o", out])
    assert res.exit_code == 1 and "pixel scale 1.7\"/px differs" in res.output


def test_allowed_with_one_warning(tmp_path, model):
    bands = write_pair(tmp_path / "dss", 1.7)
    out = tmp_path / "c.fits"
    res = _scan([*bands, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o", out,
                 "--allow-pixel-scale-mismatch"])
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if "pixel scale" in ln]
    assert len(warned) == 1 and warned[0].startswith("Warning: ")
    assert "scanned anyway (--allow-pixel-scale-mismatch)" in warned[0]
    assert out.exists()


def test_within_five_percent_is_silent(tmp_path, model):
    bands = write_pair(tmp_path / "close", 0.19)
    out = tmp_path / "c.fits"
    res = _scan([*bands, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o", out])
    assert res.exit_code == 0, res.output
    assert "pixel scale" not in res.output and "Warning" not in res.stderr
    assert out.exists()


def test_a_survey_field_at_the_wrong_scale_is_named(tmp_path, model):
    from pyengine.survey.manifest import Field, Survey

    good = write_pair(tmp_path / "A", 0.187)
    bad = write_pair(tmp_path / "B", 1.7, ra=10.9)
    manifest = Survey((Field("A", tuple(good)), Field("B", tuple(bad))), ("g", "i")) \
        .described().write(tmp_path / "survey.ecsv")
    out = tmp_path / "s.fits"
    res = _scan([manifest, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o", out])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1, res.output
    assert f"Error: {manifest}: field 'B' (" in res.output
    assert "pixel scale 1.7\"/px differs from the model's 0.187\"/px" in res.output
    assert "field 'A'" not in res.output and not out.exists()
    res = _scan([manifest, "--grid", 24, "--model", model, "--runner", "bogus", "-o", out])
    assert res.exit_code == 1 and "field 'B'" in res.output  # before the runner is made
    res = _scan([manifest, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o", out,
                 "--allow-pixel-scale-mismatch"])
    assert res.exit_code == 0, res.output
    assert sum("pixel scale" in ln for ln in res.stderr.splitlines()) == 1
    # only the field outside the circle: nothing to check
    res = _scan([manifest, "--grid", 24, "--model", model, "--runner", "torch", "-q", "-o",
                 tmp_path / "a.fits", "--within", "10.7,41.3,0.001"])
    assert res.exit_code == 0, res.output
    assert "pixel scale" not in res.output


def test_engine_scan_refuses_and_allows(tmp_path, engine_64):
    from pyengine.io.mosaic import Mosaic
    from pyengine.sources.grid import GridSource

    bands = write_pair(tmp_path / "dss", 1.7)
    with pytest.raises(PixelScaleError, match=r"pixel scale 1\.7\"/px differs"):
        engine_64.scan(bands, GridSource(24))
    with pytest.warns(PixelScaleWarning, match="scanned anyway"):
        table = engine_64.scan(bands, GridSource(24), allow_pixel_scale_mismatch=True)
    assert len(table) > 0
    with pytest.raises(PixelScaleError):
        next(engine_64.iter_scan(bands, GridSource(24)))
    with Mosaic.open(bands) as mosaic:
        with pytest.raises(PixelScaleError, match=r"0\.187"):
            check_mosaic_scale(engine_64, mosaic)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ok = write_pair(tmp_path / "ok", 0.19)
            assert len(engine_64.scan(ok, GridSource(24))) > 0
