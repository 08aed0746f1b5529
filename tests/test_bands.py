"""The one band-name rule (pyengine.bands): naming, comparing, matching, --bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from pyengine.bands import (
    BandImage,
    band_index,
    band_key,
    check_band_names,
    default_band_names,
    match_order,
    parse_band_list,
)
from pyengine.errors import ConfigError, MosaicMismatchError
from pyengine.io.mosaic import Mosaic
from pyengine.models.checkpoint import DEMO_MODEL, read_spec
from pyengine.scan.engine import Engine, match_bands
from pyengine.sources import GridSource

MEGACAM = {"u.MP9302": "u", "g.MP9401": "g", "r.MP9602": "r", "i.MP9702": "i",
           "i.MP9703": "i", "z.MP9801": "z", "gri.MP9605": "gri"}


@pytest.mark.parametrize(("name", "key"), [*MEGACAM.items(), ("g", "g"), ("G", "g"),
                                           (" i ", "i"), ("I.mp9702", "i"), ("g_f32", "g_f32"),
                                           ("Ha", "ha"), ("g.MP", "g.mp"), ("f[1]", "f[1]")])
def test_band_key(name, key):
    assert band_key(name) == key


def _image(path, hdu=0, extname=None, **header):
    return BandImage(Path(path), hdu, extname, fits.Header(header))


def test_default_names_header_then_file(tmp_path):
    names = default_band_names([
        _image(tmp_path / "a.fits", FILTER="g.MP9401"),     # FILTER as written
        _image(tmp_path / "b.fits", BAND=" i "),             # BAND, stripped
        _image(tmp_path / "g_f32.fits", FILTER="  "),        # blank FILTER: the file
        _image(tmp_path / "r.fits.fz", 1),
    ])
    assert names == ["g.MP9401", "i", "g_f32", "r"]


def test_default_names_of_extensions_of_one_file(tmp_path):
    f = tmp_path / "f.fits"
    # EXTNAMEs where present and unique among the file's images, else the HDU number.
    assert default_band_names([_image(f, 1, "G"), _image(f, 2, "I")]) == ["G", "I"]
    assert default_band_names([_image(f, 1), _image(f, 2)]) == ["f[1]", "f[2]"]
    assert default_band_names([_image(f, 1, "SCI"), _image(f, 2, "SCI")]) == ["f[1]", "f[2]"]
    # A FILTER key still wins; one image of a file is named by the file.
    assert default_band_names([_image(f, 1, FILTER="g"), _image(f, 2)]) == ["g", "f"]
    # The same HDU twice stays a duplicate (refused by check_band_names).
    assert default_band_names([_image(f, 1), _image(f, 1)]) == ["f[1]", "f[1]"]


def test_check_band_names():
    check_band_names(["g", "i", "g_f32"], "given")
    with pytest.raises(ConfigError, match=r"\['g', 'g'\] \(given\) are not unique: g;"):
        check_band_names(["g", "g"], "given")
    with pytest.raises(ConfigError, match="not unique when compared case-insensitively, "
                                          r"MegaCam \.MP numbers ignored: G, g"):
        check_band_names(["g", "G"], "given")
    with pytest.raises(ConfigError, match="not unique when compared"):
        check_band_names(["i.MP9702", "i.MP9703"], "from FILTER/BAND keys or file names")
    with pytest.raises(ConfigError, match=r"band name '' .* is empty"):
        check_band_names(["g", ""], "given")


def test_band_index_exact_first_then_key():
    bands = ["g.MP9401", "i.MP9702"]
    assert band_index("g.MP9401", bands) == 0
    assert band_index("i", bands) == 1
    assert band_index("I", bands) == 1
    assert band_index("r", bands) is None
    assert band_index("G", ["g", "G"]) == 1  # an exact name wins
    assert band_index("g", ["G", "G"]) is None  # never two answers


def test_match_order():
    assert match_order(("g", "i"), ("g", "i")) == [0, 1]
    assert match_order(("i.MP9702", "g.MP9401"), ("g", "i")) == [1, 0]
    assert match_order(("G", "I"), ("g", "i")) == [0, 1]
    assert match_order(("g", "r"), ("g", "i")) is None
    assert match_order(("g",), ("g", "i")) is None
    assert match_order(("g", "i", "r"), ("g", "i")) is None


def test_parse_band_list():
    assert parse_band_list(None) is None
    assert parse_band_list("g,i") == ["g", "i"]
    assert parse_band_list(" g , i ,") == ["g", "i"]
    with pytest.raises(ConfigError, match="--bands ' , ' names no band; give comma-separated"):
        parse_band_list(" , ")


def test_one_parser_and_help_for_every_bands_option():
    from pyengine.bands import BANDS_HELP
    from pyengine.export.cli import export
    from pyengine.scan.cli import scan

    for command in (scan, export):
        option = next(p for p in command.params if "--bands" in p.opts)
        assert option.help == BANDS_HELP
    assert "FILTER keys or file names" in BANDS_HELP


# -- on real files --------------------------------------------------------------------

def _megacam_field(field, directory: Path, filters: dict[str, str]) -> list[Path]:
    """The scan field's g and i images with MegaCam FILTER values, in ``filters``' order."""
    out = []
    for band, value in filters.items():
        src = next(p for p in field["paths"] if p.stem == band)
        with fits.open(src) as hdul:
            header = hdul[0].header.copy()
            data = hdul[0].data.copy()
        header["FILTER"] = value
        path = directory / f"{band}_megacam.fits"
        fits.PrimaryHDU(data, header).writeto(path)
        out.append(path)
    return out


def test_megacam_pair_matches_the_demo_models_bands(field, tmp_path):
    demo, _ = read_spec(DEMO_MODEL)
    assert tuple(demo.bands) == ("g", "i")
    paths = _megacam_field(field, tmp_path, {"i": "i.MP9702", "g": "g.MP9401"})
    with Mosaic.open(paths) as mosaic:
        assert mosaic.bands == ("i.MP9702", "g.MP9401")  # shown as the headers write them
        ordered = match_bands(mosaic, demo.bands)
        try:
            assert ordered is not mosaic
            assert ordered.bands == ("g.MP9401", "i.MP9702")
            assert ordered.paths == (str(paths[1]), str(paths[0]))
        finally:
            ordered.close()
        with pytest.raises(MosaicMismatchError, match="model needs bands g, r but the mosaic "
                                                      r"has i\.MP9702, g\.MP9401"):
            match_bands(mosaic, ("g", "r"))
    with Mosaic.open(paths[::-1]) as mosaic:
        assert match_bands(mosaic, demo.bands) is mosaic  # in order: no reopen


def test_megacam_pair_scans_like_plain_names(model, field, tmp_path):
    paths = _megacam_field(field, tmp_path, {"i": "i.MP9702", "g": "g.MP9401"})
    with Engine(model, runner="onnxruntime", batch_size=16, threads=1, core=64,
                cache_dir=tmp_path / "onnx") as engine:
        plain = engine.scan(field["paths"], GridSource(40))
        megacam = engine.scan(paths, GridSource(40))
    assert len(plain) == len(megacam) > 0
    np.testing.assert_array_equal(plain["score"], megacam["score"])
    np.testing.assert_array_equal(plain["ra"], megacam["ra"])


def test_fine_tuning_refuses_the_same_bands_in_another_order(tmp_path):
    """Initial weights of a model of bands (i, g) on images (g, i) would swap conv1's
    channels silently; by the one rule, MegaCam names are the same bands."""
    import torch

    from pyengine.errors import ModelFileError
    from pyengine.models.checkpoint import save_model
    from pyengine.models.classifier import ClusterClassifier
    from pyengine.models.spec import ModelSpec
    from pyengine.training.run import apply_init

    torch.manual_seed(0)
    swapped = save_model(ClusterClassifier(ModelSpec(bands=("i", "g"), cutout_size=32)),
                         tmp_path / "ig.safetensors")
    same = save_model(ClusterClassifier(ModelSpec(bands=("g", "i"), cutout_size=32)),
                      tmp_path / "gi.safetensors")
    model = ClusterClassifier(ModelSpec(bands=("g.MP9401", "i.MP9702"), cutout_size=32))
    with pytest.raises(ModelFileError, match=r"a model of bands \['i', 'g'\]; these images "
                                             r"are \['g\.MP9401', 'i\.MP9702'\]: give the images"):
        apply_init(model, str(swapped), "pyengine", lambda message: None)
    assert apply_init(model, str(same), "pyengine", lambda message: None) == []
