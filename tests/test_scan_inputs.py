"""``pyengine scan`` and its inputs: an output is never an input, existing outputs need
--overwrite, bad inputs fail before the model loads, option limits, the summary's flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


@pytest.fixture
def files(tmp_path, field, model, catalog):
    """Copies of the shared field, catalog and model (a failing test may overwrite them)."""
    copy = {name: Path(shutil.copy(src, tmp_path / Path(src).name))
            for name, src in (("g", field["paths"][0]), ("i", field["paths"][1]),
                              ("catalog", catalog), ("model", model))}
    copy["bytes"] = {k: p.read_bytes() for k, p in copy.items()}
    return copy


def _run(args, cache):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return CliRunner().invoke(main, ["scan", *(str(a) for a in args)], env=env,
                              catch_exceptions=False)


def _error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def _base(files, *extra):
    return [files["g"], files["i"], "--model", files["model"], "--tile-size", 64, "-q", *extra]


def _unchanged(files):
    for key in ("g", "i", "catalog", "model"):
        assert files[key].read_bytes() == files["bytes"][key], key


@pytest.mark.parametrize("form", ["plain", "symlink", "dotdot"])
def test_out_naming_a_band_image_is_refused(files, cache, tmp_path, form):
    g = files["g"]
    if form == "symlink":
        out = tmp_path / "link.fits"
        out.symlink_to(g)
    elif form == "dotdot":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / g.name
    else:
        out = g
    line = _error_line(_run(_base(files, "--catalog", files["catalog"], "--out", out), cache))
    assert line == f"Error: --out {out} is the band image {g} (an input); choose another path"
    _unchanged(files)


def test_out_or_regions_naming_the_catalog_or_model_is_refused(files, cache, tmp_path):
    cat = files["catalog"]
    line = _error_line(_run(_base(files, "--catalog", cat, "--out", cat), cache))
    assert f"--out {cat} is the --catalog file {cat} (an input)" in line
    reg = tmp_path / "cat.reg"
    reg.symlink_to(cat)
    line = _error_line(_run(_base(files, "--catalog", cat, "--out", tmp_path / "o.fits",
                                  "--regions", reg), cache))
    assert f"--regions {reg} is the --catalog file {cat} (an input)" in line
    out = tmp_path / "model.fits"
    out.symlink_to(files["model"])
    line = _error_line(_run(_base(files, "--catalog", cat, "--out", out), cache))
    assert f"--out {out} is the --model file {files['model']} (an input)" in line
    # The journal folder OUT.journal/ is emptied by the scan: no input may live in it.
    journal = tmp_path / "j.fits.journal"
    journal.mkdir()
    inside = Path(shutil.copy(cat, journal / "cat.fits"))
    line = _error_line(_run(_base(files, "--catalog", inside, "--out", tmp_path / "j.fits"),
                            cache))
    assert f"--out's resume journal {journal} is the --catalog file {inside}" in line
    _unchanged(files)


def test_scoremap_naming_a_band_image_is_refused(files, cache):
    line = _error_line(_run(_base(files, "--grid", 25, "--out", files["g"].with_name("o.fits"),
                                  "--scoremap", files["i"]), cache))
    assert f"--scoremap {files['i']} is the band image {files['i']} (an input)" in line
    _unchanged(files)


def test_existing_outputs_need_overwrite(files, cache, tmp_path):
    out, reg = tmp_path / "o.ecsv", tmp_path / "o.reg"
    out.write_text("old catalog\n")
    reg.write_text("old regions\n")
    args = _base(files, "--catalog", files["catalog"], "--out", out, "--regions", reg)
    line = _error_line(_run(args, cache))
    assert line == (f"Error: {out}, {reg}: already exist; pass --overwrite (overwrite=True) "
                    "to replace them, or choose another --out")
    assert out.read_text() == "old catalog\n" and reg.read_text() == "old regions\n"
    res = _run([*args, "--overwrite"], cache)
    assert res.exit_code == 0, res.output
    assert len(Table.read(out)) == 63 and reg.read_text() != "old regions\n"
    # A CSV's metadata sidecar is an output too.
    csv = tmp_path / "c.csv"
    side = tmp_path / "c.csv.meta.json"
    side.write_text("{}")
    line = _error_line(_run(_base(files, "--catalog", files["catalog"], "--out", csv), cache))
    assert f"{side}: already exists" in line


def test_threads_are_capped_and_the_summary_counts_every_flag(files, cache, tmp_path):
    out = tmp_path / "o.fits"
    res = _run(_base(files, "--catalog", files["catalog"], "--out", out, "--threads", 1000),
               cache)
    assert res.exit_code == 0, res.output
    cpus = len(os.sched_getaffinity(0))
    assert (f"Warning: --threads 1000 exceeds the {cpus} CPUs available; using {cpus}"
            in res.stderr)
    flags = np.asarray(Table.read(out)["flags"])
    counts = [np.count_nonzero(flags), np.count_nonzero(flags & 1), np.count_nonzero(flags & 2),
              np.count_nonzero(flags & 4)]
    assert counts[3] > 0 and counts[0] > np.count_nonzero(flags & 3)  # EDGE-only rows exist
    assert f"{counts[0]} flagged (off-image {counts[1]}" in res.stdout
    assert f"blank {counts[2]}, edge {counts[3]}); " in res.stdout
    line = _error_line(_run(_base(files, "--catalog", files["catalog"], "--out", out,
                                  "--threads", 0, "--overwrite"), cache))
    assert line == "Error: --threads 0 is not accepted; a positive integer is needed"


def test_help_names_the_catalog_suffixes_and_a_bare_name_is_refused(files, cache, tmp_path):
    text = " ".join(CliRunner().invoke(main, ["scan", "--help"]).output.split())
    assert "format from the suffix: .fits, .ecsv, .parquet or .csv" in text
    assert "default format" not in text
    line = _error_line(_run(_base(files, "--catalog", files["catalog"], "--out",
                                  tmp_path / "cands"), cache))
    assert "(no extension)" in line and ".fits, .fit, .ecsv, .parquet, .csv" in line


def _fresh_scan(args, cwd, *, limit_as: int | None = None):
    """``pyengine scan ARGS`` in a new interpreter: (exit code, stderr, seconds in main, the
    heavy modules it imported)."""
    code = ("import sys, time\nfrom pyengine.cli import main\nt0 = time.perf_counter()\n"
            f"try:\n    main({['scan', *map(str, args)]!r})\nexcept SystemExit as e:\n"
            "    code = e.code\nprint(code, round(time.perf_counter() - t0, 3), sorted(\n"
            "    m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))\n")

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=cwd, check=False, preexec_fn=limit if limit_as else None,
                         env={**os.environ, "XDG_CACHE_HOME": str(Path(cwd) / "xdg")})
    exit_code, seconds, modules = res.stdout.strip().split(" ", 2)
    return int(exit_code), res.stderr, float(seconds), modules


def test_bad_inputs_fail_before_the_model_loads(files, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("ra,dec\n")
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("a,b\n1,2\n")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"not a model")
    out = tmp_path / "o.fits"
    bands = [files["g"], files["i"]]
    cases = [
        ([*bands, "--catalog", tmp_path / "missing.fits"], "missing.fits: no such catalog file"),
        ([*bands, "--catalog", empty], "the catalog is empty"),
        ([*bands, "--catalog", nocol], "no usable position columns"),
        ([*bands, "--catalog", files["catalog"], "--ra-col", "nope", "--dec-col", "DEC"],
         "no column 'nope' for RA"),
        ([*bands, "--catalog", files["catalog"], "--mag-limit", "20", "--mag-col", "nope"],
         "no column 'nope' for magnitudes"),
        ([files["g"], tmp_path / "nope.fits", "--catalog", files["catalog"]], "nope.fits"),
    ]
    for args, expect in cases:
        code, err, seconds, modules = _fresh_scan([*args, "--model", files["model"], "-o", out],
                                                  tmp_path)
        assert code == 1 and err.startswith("Error: ") and expect in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert modules == "[]" and seconds < 3.0, (expect, modules, seconds)
    code, err, seconds, modules = _fresh_scan(
        [*bands, "--catalog", files["catalog"], "--model", bad_onnx, "-o", out], tmp_path)
    assert code == 1 and f"{bad_onnx}: not an ONNX file" in err, err
    assert modules == "[]"
    assert not out.exists()


def test_a_batch_that_cannot_fit_is_refused_before_the_scan(files, tmp_path):
    """Under an 8 GiB address-space limit, batches of 65536 32-px cutouts (about 34 GiB of
    slots and activations) are refused with the largest batch that fits; no journal."""
    out = tmp_path / "o.fits"
    code, err, _, _ = _fresh_scan([files["g"], files["i"], "--catalog", files["catalog"],
                                   "--model", files["model"], "--runner", "onnxruntime",
                                   "--batch-size", 65536, "-o", out], tmp_path,
                                  limit_as=8 << 30)
    assert code == 1 and err.startswith("Error: --batch-size 65536 needs about 34.0 GiB"), err
    assert "the largest that fits is" in err and len(err.strip().splitlines()) == 1, err
    fits = int(err.rsplit(" ", 1)[1])
    assert 100 < fits < 16384
    assert not out.exists() and not out.with_name(out.name + ".journal").exists()


def test_allocation_failures_are_recognised():
    from pyengine.scan.engine import allocation_failure

    with pytest.raises(MemoryError) as caught:
        np.empty(1 << 62, np.uint8)
    assert allocation_failure(caught.value)
    assert not allocation_failure(ValueError("allocate"))
    assert not allocation_failure(RuntimeError("shape mismatch"))
    assert allocation_failure(RuntimeError("DefaultCPUAllocator: can't allocate memory"))


def test_run_scan_refuses_an_input_as_output(files, tmp_path):
    """Embedding: run_scan applies the same rule (refused before the journal starts)."""
    from pyengine.errors import OutputError
    from pyengine.scan.engine import Engine
    from pyengine.scan.run import run_scan
    from pyengine.sources.catalog import CatalogSource

    engine = Engine(files["model"], runner="onnxruntime", core=64, cache_dir=tmp_path / "c")
    with pytest.raises(OutputError, match="is the --catalog file"):
        run_scan(engine, [str(files["g"]), str(files["i"])], CatalogSource(files["catalog"]),
                 files["catalog"])
    assert not list(tmp_path.glob("*.journal"))
    _unchanged(files)
