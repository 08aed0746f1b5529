"""pyengine inject: PSF from the field's stars, clusters from the synth's one model added on
the fly, the scan's detection and classification, matching, the report and its errors.

The fields are small synthetic PAndAS-like ones (768 px; the seeing is known); the model
is the shipped demo model on ONNX Runtime, loaded once.  Rounds hold 9 clusters of r_h up
to 4" on 768 px, so each call below is a few detection passes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("astropy")
pytest.importorskip("sep")

from astropy.io import fits
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.errors import ConfigError, OutputError
from pyengine.injection import clusters as C
from pyengine.injection import completeness_magnitude, inject, summary_line
from pyengine.injection.psf import PSFError, measure_psf
from pyengine.injection.recovery import Matches, match
from pyengine.io.mosaic import Mosaic


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """A 768 px synthetic field (seed 3): seeing 0.8" (g) and 0.7" (i), MAGZPT 30, GAIN."""
    from pyengine.synth import SynthConfig, make_field

    out = tmp_path_factory.mktemp("inject_field")
    make_field(out, SynthConfig(width=768, height=768, seed=3))
    return [str(out / "g.fits"), str(out / "i.fits")]


@pytest.fixture(scope="module")
def engine():
    from pyengine.scan.engine import Engine

    e = Engine(None, runner="onnxruntime")
    e.open()
    yield e
    e.close()


def _digest(paths):
    from pathlib import Path

    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def _column(report, name):
    return np.array([np.nan if v is None else v for v in report["injections"][name]])


# -- the PSF ---------------------------------------------------------------------------------
def test_psf_measured_within_ten_percent_of_the_synth_seeing(field):
    with Mosaic.open(field) as mosaic:
        for b in range(2):
            header = mosaic.headers[b]
            psf = measure_psf(mosaic, b, saturate=header["SATURATE"])
            true_px = header["SEEING"] / header["PIXSCALE"]
            assert psf.stars >= 5
            assert abs(psf.fwhm_px / true_px - 1.0) < 0.10, (mosaic.bands[b], psf)


def test_psf_beta_of_isolated_stars(tmp_path):
    """Where stars are isolated the Moffat index comes out too (true 3)."""
    from pyengine.synth import SynthConfig, make_field

    make_field(tmp_path, SynthConfig(width=384, height=384, seed=5, rgb_density=0.0,
                                     halo_rgb_density=0.0, cluster_density=0.0,
                                     halo_cluster_density=0.0, galaxy_density=0.0,
                                     foreground_density=60000.0))
    with Mosaic.open([tmp_path / "g.fits", tmp_path / "i.fits"]) as mosaic:
        psf = measure_psf(mosaic, 1, saturate=mosaic.headers[1]["SATURATE"])
        assert abs(psf.fwhm_px / (0.7 / 0.187) - 1.0) < 0.03
        assert abs(psf.beta - 3.0) < 0.3
        held = measure_psf(mosaic, 1, saturate=mosaic.headers[1]["SATURATE"], beta=4.5)
        assert held.beta == 4.5


def test_no_stars_for_a_psf_says_how_many_and_the_fix(tmp_path):
    from tests.makedata import make_wcs

    rng = np.random.default_rng(1)
    paths = []
    for name in ("g", "i"):
        header = make_wcs((300, 300)).to_header()
        header["FILTER"], header["MAGZPT"] = name, 30.0
        path = tmp_path / f"{name}.fits"
        fits.PrimaryHDU(rng.normal(100.0, 5.0, (300, 300)).astype(np.float32),
                        header).writeto(path)
        paths.append(path)
    with Mosaic.open(paths) as mosaic, pytest.raises(PSFError) as err:
        measure_psf(mosaic, 0)
    assert "g.fits: 0 point-like stars" in str(err.value)
    assert "5 needed" in str(err.value) and "--psf-fwhm" in str(err.value)


# -- one cluster model ------------------------------------------------------------------------
def test_cluster_stamp_is_the_synth_fields_cluster(tmp_path):
    """A smooth King cluster drawn by cluster_stamp is the one a synthetic field renders."""
    from pyengine.synth import SynthConfig
    from pyengine.synth.catalog import Objects, placed_objects
    from pyengine.synth.cluster import cluster_stamp
    from pyengine.synth.field import EPSILON, FieldRenderer
    from pyengine.synth.survey import PlacedObject

    bands = tuple(dataclasses.replace(b, gain=1e6, read_noise=0.0, saturate=1e12)
                  for b in SynthConfig().bands)
    config = SynthConfig(width=160, height=160, seed=1, bands=bands)
    spec = PlacedObject(kind="cluster", ra=0.0, dec=0.0, i_mag=18.0, g_i=1.0, r_h_pc=3.0,
                        concentration=1.1, q=0.9, pa_deg=30.0)
    objs = placed_objects(config, [80.3], [79.6], [spec])
    with_cluster = FieldRenderer(config, objects=objs).render(0, 160)
    empty = FieldRenderer(config, objects=Objects.empty()).render(0, 160)
    drawn = with_cluster - empty
    renderer = FieldRenderer(config, objects=objs)
    stamp = cluster_stamp(renderer.psfs, [EPSILON * s for s in renderer.sigma], x=80.3, y=79.6,
                          flux=objs.e_flux[:, 0], rh_px=3.0 / 1000.0 / config.kpc_per_px,
                          concentration=1.1, q=0.9, pa=np.radians(30.0))
    mine = np.zeros_like(drawn)
    stamp.add_to(mine, 0, 0)
    assert np.abs(mine - drawn).max() < 1e-3 * drawn.max()
    assert abs(mine[1].sum() / objs.e_flux[1, 0] - 1.0) < 0.01


def test_injected_mosaic_adds_the_stamps_and_leaves_the_rest(field):
    from pyengine.injection.psf import given_psf

    rng = np.random.default_rng(0)
    with Mosaic.open(field) as base:
        inj = C.draw_injections(rng, np.array([200.0, 500.0]), np.array([300.0, 450.0]),
                                np.zeros(2), mag=(18.0, 18.5), rh=(2.0, 3.0),
                                pixel_scale=0.187, bands=base.bands, mag_index=1, colours={})
        psfs = [given_psf(b, 0.7, 3.0, 0.187).psf() for b in base.bands]
        stamps = C.render_round(inj, psfs, [0.02, 0.02], [30.0, 30.0], [None, None],
                                mag_index=1, bands=base.bands, rng=rng)
        injected = C.InjectedMosaic(base, stamps)
        whole = injected.read(0, 768, 0, 768)
        plain = base.read(0, 768, 0, 768)
        added = (whole - plain).astype(np.float64)
        # All of each cluster's light (members and smooth profile), nothing elsewhere.
        expected = 10.0 ** (0.4 * (30.0 - inj.mag))
        assert abs(added[1].sum() / expected.sum() - 1.0) < 0.01
        assert np.array_equal(whole[:, 650:, :100], plain[:, 650:, :100])
        # Any window reads the same pixels as the whole image (tiles, cutouts, halos).
        part = injected.read(250, 420, 420, 600)
        assert np.array_equal(part, whole[:, 250:420, 420:600])
        injected.close()   # closes nothing of the base mosaic
        assert base.read(0, 4, 0, 4).shape == (2, 4, 4)
        import pickle

        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(injected)


# -- recovery --------------------------------------------------------------------------------
def test_match_sets_aside_detections_that_were_there_before():
    from astropy.table import Table

    sx, sy = np.array([100.0, 300.0]), np.array([100.0, 300.0])
    base = {"x": np.array([103.0, 300.5]), "y": np.array([100.0, 300.0]),
            "mag": np.array([22.0, 21.0])}
    catalog = Table({"x": [103.0, 300.5, 301.0], "y": [100.0, 300.0, 302.0],
                     "mag": [22.05, 21.1, 23.0], "score": [0.99, 0.2, 0.97],
                     "is_candidate": [True, False, True]})
    out = Matches(2)
    match(sx, sy, np.array([24.0, 20.0]), catalog, base, np.array([5.0, 5.0]), out,
          np.arange(2))
    # Cluster 0: the only detection is the baseline star, unchanged -> not detected.
    assert not out.detected[0] and out.pre_existing[0] == 1
    # Cluster 1: the star there before is unchanged (set aside); the new one is its own.
    assert out.detected[1] and out.recovered[1] and out.n_det[1] == 1
    assert out.distance[1] == pytest.approx(np.hypot(1.0, 2.0))


def test_bright_large_clusters_are_detected_faint_ones_lost_files_untouched(field, engine):
    before = _digest(field)
    bright = inject(field, n=27, mag=(16.0, 19.0), rh=(2.0, 4.0), seed=0, engine=engine)
    faint = inject(field, n=9, mag=(25.0, 26.0), rh=(2.0, 4.0), seed=0, engine=engine)
    assert _digest(field) == before   # the images on disk are never written
    assert bright["totals"]["injected"] == 27 and faint["totals"]["injected"] == 9
    assert bright["totals"]["detected_fraction"] >= 0.95
    assert faint["totals"]["detected_fraction"] <= 0.12
    for report in (bright, faint):
        det, rec = _column(report, "detected"), _column(report, "recovered")
        score = _column(report, "score")
        assert np.all(det >= rec)   # recovered implies detected
        # Recovered exactly where a detection of the cluster's own scores >= threshold.
        threshold = report["settings"]["threshold"]
        assert np.array_equal(rec.astype(bool), det.astype(bool) & (score >= threshold))
    # The shipped demo model (threshold 0.9955) recovers few of them: 0-2 of 36 on this
    # field for seeds 0-2, 26-32 of 36 at a threshold of 0.5 (docs/architecture.md); so
    # no recovery fraction is asserted, only that recovery follows the scores.
    assert bright["totals"]["recovered"] <= bright["totals"]["detected"]
    psf = bright["fields"][0]["psf"]
    assert psf["g"]["source"] == "measured" and abs(psf["i"]["fwhm_arcsec"] / 0.7 - 1) < 0.1


def test_reproducible_with_a_seed_and_report_keys(field, engine, tmp_path):
    kwargs = {"n": 9, "mag": (17.0, 22.0), "rh": (1.0, 3.0), "psf_fwhm": {"g": 0.8, "i": 0.7},
              "engine": engine}
    a = inject(field, seed=5, output_dir=tmp_path / "a", **kwargs)
    b = inject(field, seed=5, **kwargs)
    c = inject(field, seed=6, **kwargs)
    for key in ("x", "y", "mag", "rh_arcsec", "detected", "recovered", "score"):
        assert np.array_equal(_column(a, key), _column(b, key), equal_nan=True), key
    assert not np.array_equal(_column(a, "x"), _column(c, "x"))
    written = json.loads((tmp_path / "a" / "inject.json").read_text())
    assert set(written) == {"format", "version", "settings", "fields", "totals",
                            "completeness", "limits", "injections"}
    assert written["format"] == "pyengine-inject/1"
    assert set(written["completeness"]) == {"mag", "rh", "grid"}
    assert set(written["limits"]["recovered"]) == {"m50", "m90", "notes", "per_rh"}
    assert written["fields"][0]["psf"]["i"]["source"] == "given"
    for name in ("completeness_mag.png", "completeness_rh.png", "completeness_grid.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from astropy.table import Table

    table = Table.read(tmp_path / "a" / "injections.ecsv")
    assert len(table) == 9 and "colour_g" in table.colnames
    with pytest.raises(OutputError, match=r"inject\.json exists"):
        inject(field, seed=5, output_dir=tmp_path / "a", **kwargs)
    assert summary_line(a).startswith("injection-recovery: 9 clusters (i 17-22")


def test_limits_interpolate_and_say_when_out_of_range():
    from pyengine.injection.report import _limits, mag_edges

    edges = mag_edges(16.0, 20.0)           # 8 bins of 0.5 mag
    mag = np.repeat((edges[1:] + edges[:-1]) / 2, 10)
    frac = np.array([1.0, 1.0, 1.0, 0.9, 0.7, 0.4, 0.2, 0.0])
    hits = np.concatenate([np.arange(10) < 10 * f for f in frac])
    lim = _limits(mag, hits, edges)
    assert lim["m50"] == pytest.approx(18.25 + 0.5 * (0.7 - 0.5) / (0.7 - 0.4))
    assert lim["m90"] == pytest.approx(17.75 + 0.5 * 0.0 / 0.2)
    everything = _limits(mag, np.ones(mag.size, bool), edges)
    assert everything["m50"] is None and "fainter" in everything["notes"]["m50"]
    report = {"limits": {"recovered": lim, "detected": everything}}
    assert completeness_magnitude(report) == lim["m50"]
    with pytest.raises(ConfigError, match="accepted: detected, recovered"):
        completeness_magnitude(report, kind="found")


def test_survey_fields_share_the_clusters(survey_2x2, engine):
    report = inject(survey_2x2, n=8, mag=(17.0, 18.0), rh=(1.0, 2.0), seed=1, engine=engine,
                    psf_fwhm=0.75)
    assert [f["id"] for f in report["fields"]] == ["A", "B", "C", "D"]
    assert [f["injected"] for f in report["fields"]] == [2, 2, 2, 2]
    assert sorted(set(report["injections"]["field"])) == ["A", "B", "C", "D"]
    assert report["totals"]["injected"] == 8


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--mag", "23:16"], "--mag 23:16 is an empty range"),
    (["--rh", "0:0"], "--rh 0:0 is not a range of half-light radii"),
    (["--mag", "16-23"], "--mag '16-23' is not a range; give LO:HI"),
    (["--n", "0"], "--n 0 is not accepted; a number of clusters >= 1 is needed"),
    (["--rh", "1:30"], "larger than a cluster the synth can draw"),
    (["--colour", "g-r=0.5"], "colours are against the magnitude band"),
    (["--mag-band", "z"], "--mag-band 'z' is not a band"),
])
def test_bad_input_is_one_line(field, args, message):
    result = CliRunner().invoke(main, ["inject", *field, "--psf-fwhm", "0.7", "-o", "unused",
                                       *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_no_zero_point_is_one_line(field, tmp_path):
    paths = []
    for p in field:
        with fits.open(p) as hdul:
            header = hdul[0].header.copy()
            del header["MAGZPT"]
            out = tmp_path / p.split("/")[-1]
            fits.PrimaryHDU(hdul[0].data, header).writeto(out)
            paths.append(str(out))
    result = CliRunner().invoke(main, ["inject", *paths, "--psf-fwhm", "0.7", "-o",
                                       str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no photometric zero point" in result.output and "--zero-point" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_rh_too_large_for_the_field_says_what_fits(survey_2x2):
    result = CliRunner().invoke(main, ["inject", *survey_2x2.fields[0].images, "--psf-fwhm",
                                       "0.7", "--rh", "1:6", "-o", "unused"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "(200 x 200 px) is too small for one cluster of r_h up to 6\"" in line
    assert "r_h up to about" in line and "fits" in line


def test_field_too_small_for_one_cluster(tmp_path):
    from tests.makedata import make_wcs

    paths = []
    for name in ("g", "i"):
        header = make_wcs((90, 90)).to_header()
        header["FILTER"], header["MAGZPT"] = name, 30.0
        path = tmp_path / f"{name}.fits"
        fits.PrimaryHDU(np.zeros((90, 90), np.float32), header).writeto(path)
        paths.append(str(path))
    with pytest.raises(ConfigError, match="no cluster fits: use larger images"):
        inject(paths, n=5, psf_fwhm=0.7, rh=(1.0, 2.0))


def test_cli_runs_and_prints_the_summary(field, tmp_path):
    result = CliRunner().invoke(main, ["inject", *field, "--n", "9", "--mag", "16:20", "--rh",
                                       "1:3", "--psf-fwhm", "g=0.8,i=0.7", "--seed", "2",
                                       "-o", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "injection-recovery: 9 clusters (i 16-20" in result.output
    assert "zero points g 30 (MAGZPT), i 30 (MAGZPT)" in result.output
    assert (tmp_path / "inject.json").exists()
