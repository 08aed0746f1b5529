"""Tests of the scan's outputs: catalog formats, DS9 regions, score map (pyengine.output)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS

from pyengine.errors import ConfigError, OutputError
from pyengine.flags import BLANK, EDGE, FLAG_BITS, OFF_IMAGE, describe_flags
from pyengine.output import catalog as catalog_module
from pyengine.output.catalog import CATALOG_FORMATS, check_output, write_catalog
from pyengine.output.regions import write_regions
from pyengine.output.scoremap import scoremap_wcs, write_scoremap

N = 7
META = {
    "MODEL": "demo.safetensors",
    "MODELSHA": "ab12" * 16,
    "THRESH": 0.669,
    "BANDS": "g,i",
    "BANDF1": "/data/pandas/g.fits",
    "BANDF2": "/data/pandas/i.fits",
    "RUNNER": "onnxruntime",
    "PRECISN": "fp32",
    "PYENGVER": "0.1.0",
    "DATE": "2025-06-01T12:34:56",
    # Longer than one card (CONTINUE) and not ASCII (escaped in FITS only).
    "SOURCE": "/survey/m31/" + "very_long_folder_name/" * 5 + "données.fits",
    "NPOS": N,
    "NCAND": 2,
}


def scan_table() -> Table:
    """All standard columns, plus pass-through columns of every awkward kind."""
    rng = np.random.default_rng(5)
    t = Table()
    t["id"] = np.arange(N, dtype=np.int64)
    t["ra"] = 10.6847 + rng.normal(0, 0.1, N)
    t["dec"] = 41.269 + rng.normal(0, 0.1, N)
    t["x"] = rng.uniform(0, 4000, N)
    t["y"] = rng.uniform(0, 4000, N)
    t["score"] = np.array([0.1, np.nan, 0.5, 0.9, 0.25, 0.7, 0.0], dtype=np.float32)
    t["is_candidate"] = np.array([0, 0, 0, 1, 0, 1, 0], dtype=bool)
    t["flags"] = np.array([0, OFF_IMAGE, BLANK | EDGE, EDGE, 0, 0, 0], dtype=np.int32)
    t["tile"] = np.array([0, -1, 1, 1, 2, 2, 3], dtype=np.int64)
    t["p_int"] = MaskedColumn(np.arange(N, dtype=np.int32) * 10, mask=[0, 1, 0, 0, 0, 0, 0])
    t["p_float"] = MaskedColumn([1.5, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0],
                                mask=[0, 0, 1, 0, 0, 0, 0])
    t["p_bool"] = MaskedColumn(np.array([1, 0, 1, 1, 0, 1, 0], bool),
                               mask=[0, 0, 0, 1, 0, 0, 0])
    t["p_str"] = MaskedColumn(["a", "bb", "c d", "é", "e\"f", "x,y", "q"],
                              mask=[0, 0, 0, 0, 0, 0, 1])
    t["p_bytes"] = np.array([b"u", b"vv", b"", b"w", b"xyz", b"z", b"k"])
    t["p_u16"] = np.array([0, 1, 2, 3, 40000, 65535, 7], dtype=np.uint16)
    t["p_i8"] = np.array([-128, -1, 0, 1, 2, 3, 127], dtype=np.int8)
    t["p_mag"] = np.linspace(18, 22, N).astype(np.float32)
    t["p_mag"].unit = "mag"
    t["p_mag"].description = "g magnitude from the input catalog"
    t["vec"] = np.arange(N * 3, dtype=np.float64).reshape(N, 3)
    t.meta.update(META)
    return t


def _no_litter(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _fitsverify(path):
    exe = shutil.which("fitsverify")
    if exe is None:
        pytest.skip("fitsverify is not installed (CI installs it)")
    run = subprocess.run([exe, "-q", str(path)], capture_output=True, text=True, check=False)
    # -q prints "verification OK" only with no warnings and no errors.
    assert run.stdout.startswith("verification OK"), run.stdout + run.stderr
    assert run.returncode == 0


def _read_fits(path):
    """Table.read, tolerating astropy's notice that null logicals become False."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*NULL.*")
        return Table.read(path, hdu="CATALOG", mask_invalid=False)


# ------------------------------------------------------------------------- flags

def test_package_exports():
    import pyengine.output as package

    if getattr(package, "__file__", None) is None:
        pytest.skip("stale editable install: pyengine.output is seen as a namespace package; "
                    "reinstall (pip install -e .) to pick up pyengine/output/__init__.py")
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.write_catalog is write_catalog
    assert package.Journal.__module__ == "pyengine.output.journal"


def test_flag_bits_and_description():
    assert (OFF_IMAGE, BLANK, EDGE) == (1, 2, 4)
    assert {name: bit for name, (bit, _) in FLAG_BITS.items()} == {
        "OFF_IMAGE": 1, "BLANK": 2, "EDGE": 4, "FRAGMENT": 8}
    text = describe_flags()
    assert "\n" not in text and text.isascii()
    for name, (bit, _) in FLAG_BITS.items():
        assert f"{bit} {name}" in text


# --------------------------------------------------------------------------- FITS

def test_fits_round_trip_values_units_meta(tmp_path):
    t = scan_table()
    path = write_catalog(t, tmp_path / "scan.fits")
    assert path == tmp_path / "scan.fits"
    _fitsverify(path)
    r = _read_fits(path)
    assert r.colnames == t.colnames
    for name in ("id", "ra", "dec", "x", "y", "tile", "flags", "is_candidate", "p_u16",
                 "p_mag", "vec"):
        np.testing.assert_array_equal(np.asarray(r[name]), np.asarray(t[name]), err_msg=name)
    types = {name: r[name].dtype.newbyteorder("=") for name in r.colnames}  # FITS: big-endian
    assert types["id"] == np.int64 and types["tile"] == np.int64
    assert types["flags"] == np.int32 and types["is_candidate"] == np.bool_
    assert types["score"] == np.float32 and types["ra"] == np.float64
    assert types["p_u16"] == np.uint16
    np.testing.assert_array_equal(r["score"], t["score"])  # NaN where NaN
    np.testing.assert_array_equal(r["p_i8"], t["p_i8"].astype(np.int16))  # int8 widened
    # Masks: TNULL for integers, NaN for floats, empty text.
    assert list(r["p_int"].mask) == [False, True] + [False] * 5
    assert list(r["p_int"].filled(-1)) == [0, -1, 20, 30, 40, 50, 60]
    p_float = np.asarray(r["p_float"])
    assert np.isnan(p_float[1]) and np.isnan(p_float[2]) and p_float[0] == 1.5
    # Masked text is empty.
    assert list(r["p_str"]) == ["a", "bb", "c d", "\\xe9", 'e"f', "x,y", ""]
    assert list(r["p_bytes"]) == ["u", "vv", "", "w", "xyz", "z", "k"]
    # Units and descriptions.
    assert str(r["ra"].unit) == "deg" and str(r["dec"].unit) == "deg"
    assert str(r["x"].unit) == "pix" and str(r["y"].unit) == "pix"
    assert str(r["p_mag"].unit) == "mag"
    with fits.open(path, logical_as_bytes=True) as hdul:
        h = hdul["CATALOG"].header
        tcomm = {h[f"TTYPE{i}"]: h.get(f"TCOMM{i}") for i in range(1, h["TFIELDS"] + 1)}
        assert h["TFORM7"] == "L" and h["TTYPE7"] == "is_candidate"
        # The masked boolean is the FITS null logical.
        # (NumPy shows the null byte b"\0" as b"".)
        assert list(hdul["CATALOG"].data["p_bool"]) == [b"T", b"F", b"T", b"", b"F", b"T",
                                                        b"F"]
    for name, (_, description) in catalog_module.STANDARD_COLUMNS.items():
        assert tcomm[name] == description
    assert tcomm["p_mag"] == "g magnitude from the input catalog"
    # Metadata as header keywords; long values through CONTINUE, announced by LONGSTRN.
    for key, value in META.items():
        expected = value.replace("é", "\\xe9") if isinstance(value, str) else value
        assert h[key] == expected, key
    assert h["FLAGS"] == describe_flags()
    assert h["LONGSTRN"] == "OGIP 1.0"
    assert h.comments["THRESH"] == "decision threshold on score"


def test_fits_adapts_what_fits_cannot_say(tmp_path):
    t = Table()
    t["id"] = np.arange(3, dtype=np.int64)
    t["g-i mag"] = [0.1, 0.2, 0.3]
    t["ID"] = np.array([5, 6, 7], dtype=np.int16)     # same name as 'id' but for case
    t["ctl"] = ["tab\there", "new\nline", "ok"]
    t["u8"] = MaskedColumn(np.arange(256, dtype=np.uint8)[:3], mask=[0, 1, 0])
    t["u64"] = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    t["h"] = np.array([1, 2, 3], dtype=np.float16)
    t["grid"] = np.arange(12, dtype=np.int32).reshape(3, 2, 2)
    t["obj"] = np.array([{"a": 1}, None, 3], dtype=object)
    path = write_catalog(t, tmp_path / "odd.fit")
    _fitsverify(path)
    r = _read_fits(path)
    assert r.colnames == ["id", "g_i_mag", "ID_2", "ctl", "u8", "u64", "h", "grid", "obj"]
    assert list(r["ctl"]) == ["tab\\there", "new\\nline", "ok"]
    assert list(r["u8"].mask) == [False, True, False] and r["u8"][2] == 2
    np.testing.assert_array_equal(r["u64"], t["u64"])
    assert r["h"].dtype.newbyteorder("=") == np.float32
    np.testing.assert_array_equal(r["grid"], t["grid"])
    assert list(r["obj"]) == ["{'a': 1}", "None", "3"]


@pytest.mark.parametrize("ext", sorted(CATALOG_FORMATS))
def test_empty_catalog(tmp_path, ext):
    t = scan_table()[:0]
    if ext == ".ecsv":  # astropy cannot read back an empty array column from ECSV
        del t["vec"]
    path = write_catalog(t, tmp_path / f"empty{ext}")
    assert path.exists()
    if ext in (".fits", ".fit"):
        _fitsverify(path)
        assert len(_read_fits(path)) == 0
    elif ext == ".parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(path).num_rows == 0
    else:
        assert len(Table.read(path, format="ascii.ecsv" if ext == ".ecsv" else "ascii.csv")) == 0


# ----------------------------------------------------------------- other formats

def test_ecsv_round_trip_exact(tmp_path):
    t = scan_table()
    path = write_catalog(t, tmp_path / "scan.ecsv")
    r = Table.read(path)
    assert r.colnames == t.colnames
    for name in t.colnames:
        if name == "p_bytes":  # bytes come back as text; astropy reads "" as masked
            assert list(r[name].filled("")) == list(t[name])  # (astropy shows bytes as str)
            continue
        assert r[name].dtype == t[name].dtype, name
        assert list(np.ma.getmaskarray(r[name]).ravel()) == \
            list(np.ma.getmaskarray(t[name]).ravel()), name
        np.testing.assert_array_equal(np.ma.getdata(r[name])[~np.ma.getmaskarray(t[name])],
                                      np.ma.getdata(t[name])[~np.ma.getmaskarray(t[name])],
                                      err_msg=name)
    assert str(r["ra"].unit) == "deg" and str(r["x"].unit) == "pix"
    assert r["score"].description == catalog_module.STANDARD_COLUMNS["score"][1]
    assert r.meta == {**META, "FLAGS": describe_flags()}


def test_parquet_round_trip_with_pyarrow(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    t = scan_table()
    path = write_catalog(t, tmp_path / "scan.parquet")
    a = pq.read_table(path)
    assert a.column_names == t.colnames
    types = {f.name: str(f.type) for f in a.schema}
    assert types["id"] == "int64" and types["ra"] == "double" and types["score"] == "float"
    assert types["is_candidate"] == "bool" and types["flags"] == "int32"
    assert types["p_str"] == "string" and types["p_bytes"] == "string"
    d = a.to_pydict()
    assert d["id"] == list(range(N))
    np.testing.assert_array_equal(np.array(d["ra"]), t["ra"])
    np.testing.assert_array_equal(np.array(d["score"], dtype=np.float32), t["score"])
    assert d["p_int"] == [0, None, 20, 30, 40, 50, 60]
    assert d["p_float"][0] == 1.5 and np.isnan(d["p_float"][1]) and d["p_float"][2] is None
    assert d["p_bool"] == [True, False, True, None, False, True, False]
    assert d["p_str"] == ["a", "bb", "c d", "é", "e\"f", "x,y", None]
    assert d["p_bytes"] == ["u", "vv", "", "w", "xyz", "z", "k"]
    assert d["vec"] == t["vec"].tolist()
    field = a.schema.field("ra").metadata
    assert field[b"unit"] == b"deg"
    assert field[b"description"] == b"right ascension (ICRS)"
    assert a.schema.field("p_mag").metadata[b"unit"] == b"mag"
    meta = a.schema.metadata
    assert json.loads(meta[b"pyengine.meta"]) == {**META, "FLAGS": describe_flags()}
    assert meta[b"MODEL"] == b"demo.safetensors" and meta[b"THRESH"] == b"0.669"
    # pyengine's own catalog reader takes it back as well.
    from pyengine.io.catalog import read_catalog

    assert list(read_catalog(path)["id"]) == list(range(N))


def test_csv_plain_rows_and_sidecar(tmp_path):
    t = scan_table()
    path = write_catalog(t, tmp_path / "scan.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith("#") for line in lines)
    assert len(lines) == N + 1
    assert lines[0].split(",")[:9] == ["id", "ra", "dec", "x", "y", "score", "is_candidate",
                                       "flags", "tile"]
    assert lines[1].split(",")[5] == "0.1"  # float32 written as its shortest text
    r = Table.read(path, format="ascii.csv")
    assert "vec_2" in r.colnames and "vec" not in r.colnames
    np.testing.assert_array_equal(r["ra"], t["ra"])
    np.testing.assert_array_equal(r["score"].astype(np.float32), t["score"])
    assert list(r["p_int"].mask) == [False, True] + [False] * 5
    assert list(r["p_str"].filled("?"))[:4] == ["a", "bb", "c d", "é"]
    assert r["p_str"].mask[-1]
    np.testing.assert_array_equal(r["vec_1"], t["vec"][:, 1])
    side = json.loads((tmp_path / "scan.csv.meta.json").read_text(encoding="utf-8"))
    assert side["meta"] == {**META, "FLAGS": describe_flags()}
    assert side["columns"]["ra"]["unit"] == "deg"
    assert side["columns"]["vec_0"]["dtype"] == "float64"
    assert side["columns"]["score"]["description"].startswith("cluster probability")
    assert _no_litter(tmp_path) == []


def test_caller_table_is_not_modified(tmp_path):
    t = scan_table()
    before = (t["ra"].unit, t["ra"].description, dict(t.meta))
    for ext in CATALOG_FORMATS:
        write_catalog(t, tmp_path / f"c{ext}")
    assert (t["ra"].unit, t["ra"].description, dict(t.meta)) == before


def _stilts_count(path, ifmt):
    exe = shutil.which("stilts")
    if exe is None:
        pytest.skip("stilts is not installed (CI installs it)")
    run = subprocess.run([exe, "tpipe", f"in={path}", f"ifmt={ifmt}", "omode=count"],
                         capture_output=True, text=True, check=False, timeout=120)
    if "No table handler available" in run.stdout + run.stderr:
        pytest.skip(f"this stilts build has no {ifmt} reader (Debian's lacks ecsv and parquet)")
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize(("ext", "ifmt", "ncols"), [
    (".fits", "fits", 18), (".ecsv", "ecsv", 18), (".parquet", "parquet", 18),
    (".csv", "csv", 20)])
def test_stilts_reads_each_format(tmp_path, ext, ifmt, ncols):
    path = write_catalog(scan_table(), tmp_path / f"scan{ext}")
    out = _stilts_count(path, ifmt)
    assert f"columns: {ncols}" in out and f"rows: {N}" in out, out


# --------------------------------------------------------------- atomic, checks

@pytest.mark.parametrize("ext", [".fits", ".ecsv", ".csv", ".parquet"])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, ext):
    t = scan_table()
    target = tmp_path / f"scan{ext}"

    def broken(*args, **kwargs):
        for a in args:   # write a little to the temporary output, then fail
            if isinstance(a, io.IOBase):
                a.write(b"SIMPLE" if isinstance(a, io.BufferedIOBase) else "partial")
        raise RuntimeError("disk on fire")

    name = {".fits": "_write_fits", ".ecsv": "_write_ecsv", ".csv": "_sidecar_text",
            ".parquet": "_write_parquet"}[ext]
    monkeypatch.setattr(catalog_module, name, broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_catalog(t, target)
    assert list(tmp_path.iterdir()) == []
    # An existing catalog survives a failed overwrite untouched.
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_catalog(t, target)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_overwrite_false_refuses_existing(tmp_path):
    path = tmp_path / "scan.fits"
    path.write_text("old")
    with pytest.raises(OutputError, match=r"scan\.fits: exists"):
        write_catalog(scan_table(), path, overwrite=False)
    write_catalog(scan_table(), path)
    assert path.stat().st_size > 2880


def test_check_output_refusals(tmp_path, monkeypatch):
    assert check_output(tmp_path / "ok.fits") == tmp_path / "ok.fits"
    assert check_output(tmp_path / "OK.FITS").suffix == ".FITS"
    with pytest.raises(OutputError, match=r"out\.txt: unknown catalog format '\.txt'; "
                                          r"accepted extensions: \.fits, \.fit, \.ecsv"):
        check_output(tmp_path / "out.txt")
    with pytest.raises(OutputError, match="no extension"):
        check_output(tmp_path / "out")
    with pytest.raises(OutputError, match=r"folder .*missing does not exist"):
        check_output(tmp_path / "missing" / "out.fits")
    (tmp_path / "d.fits").mkdir()
    with pytest.raises(OutputError, match=r"d\.fits: is a directory"):
        check_output(tmp_path / "d.fits")
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output(tmp_path / "f" / "out.fits")
    # Not writable: os.access says so, or creating a file fails (root ignores modes).
    monkeypatch.setattr(catalog_module.os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match="is not writable"):
        check_output(tmp_path / "ro.fits")
    monkeypatch.undo()

    def no_create(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(catalog_module, "open", no_create, raising=False)
    with pytest.raises(OutputError, match=r"cannot create files in .* \(Permission denied\)"):
        check_output(tmp_path / "ro.fits")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a non-root POSIX user: root writes to read-only folders")
def test_check_output_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output(ro / "out.fits")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(("meta", "match"), [
    ({"BANDFILE1": "g.fits"}, "not usable as a FITS keyword"),
    ({"NAXIS1": 3}, "not usable as a FITS keyword"),
    ({"TTYPE1": "a"}, "not usable as a FITS keyword"),
    ({"THRESH": float("nan")}, "finite numbers only"),
    ({"BANDS": ["g", "i"]}, "must be str, int, float or bool"),
    ({"DATE": "2025-06-01 12:00:00+00:00"}, "FITS dates are"),
    ({"model": "a", "MODEL": "b"}, "appears twice"),
])
def test_metadata_rules(tmp_path, meta, match):
    t = Table({"id": np.arange(2)})
    t.meta.update(meta)
    with pytest.raises(ValueError, match=match):
        write_catalog(t, tmp_path / "m.fits")
    assert list(tmp_path.iterdir()) == []


def test_lower_case_metadata_keys_are_upper_cased(tmp_path):
    t = Table({"id": np.arange(2)})
    t.meta["thresh"] = 0.5
    path = write_catalog(t, tmp_path / "m.fits")
    assert fits.getheader(path, "CATALOG")["THRESH"] == 0.5
    assert "FLAGS" not in fits.getheader(path, "CATALOG")  # no flags column


# ------------------------------------------------------------------------ regions

def test_regions_round_trip_and_text(tmp_path):
    import astropy.units as u
    from regions import CircleSkyRegion, Regions

    ra = np.array([10.6847, 0.0001, 359.9999])
    dec = np.array([41.269, -89.5, 12.0])
    score = np.array([0.98712, 0.5, 0.669])
    path = write_regions(tmp_path / "cand.reg", ra, dec, score)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# Region file format: DS9")
    assert "icrs" in lines
    assert "color=green" in text
    assert lines[-3].startswith("circle(10.68470000,41.26900000,")
    assert lines[-3].endswith("# text={0.987}")
    regs = Regions.read(path, format="ds9")
    assert len(regs) == 3
    for reg, r, d, s in zip(regs, ra, dec, score, strict=True):
        assert isinstance(reg, CircleSkyRegion)
        assert reg.center.frame.name == "icrs"
        assert abs(reg.center.ra.deg - r) < 1e-7 and abs(reg.center.dec.deg - d) < 1e-7
        assert abs(reg.radius.to_value(u.arcsec) - 2.0) < 1e-3
        assert float(reg.meta["text"]) == float(f"{s:.3f}")
    assert _no_litter(tmp_path) == []


def test_regions_empty_options_and_refusals(tmp_path):
    from regions import Regions

    path = write_regions(tmp_path / "none.reg", [], [], [], color="red")
    assert path.read_text().splitlines() == ["# Region file format: DS9 astropy/regions",
                                             "global color=red", "icrs"]
    assert len(Regions.read(path, format="ds9")) == 0
    path = write_regions(tmp_path / "one.reg", [1.0], [2.0], [0.5], radius_arcsec=5.0,
                         color="cyan", label_format="p={:.2f}")
    (reg,) = Regions.read(path, format="ds9")
    assert reg.meta["text"] == "p=0.50" and abs(reg.radius.to_value("arcsec") - 5.0) < 1e-3
    assert reg.visual["edgecolor"] == "cyan"
    with pytest.raises(ConfigError, match="radius -1"):
        write_regions(tmp_path / "x.reg", [1.0], [2.0], [0.5], radius_arcsec=-1)
    with pytest.raises(ConfigError, match=r"label format '\{:d\}'"):
        write_regions(tmp_path / "x.reg", [1.0], [2.0], [0.5], label_format="{:d}")
    with pytest.raises(ConfigError, match="colour 'dark green'"):
        write_regions(tmp_path / "x.reg", [1.0], [2.0], [0.5], color="dark green")
    with pytest.raises(ValueError, match="differ in length"):
        write_regions(tmp_path / "x.reg", [1.0, 2.0], [2.0], [0.5])
    with pytest.raises(OutputError, match="writing the region file failed"):
        write_regions(tmp_path / "missing" / "x.reg", [1.0], [2.0], [0.5])
    assert not (tmp_path / "x.reg").exists()


# ----------------------------------------------------------------------- score map

def _mosaic_wcs(kind: str) -> WCS:
    """A PAndAS-like TAN WCS (0.187"/px near M31) in several header forms."""
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 6000, 5000
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = 10.6847, 41.269
    h["CRPIX1"], h["CRPIX2"] = 3000.5, 2411.25
    s, th = 0.187 / 3600, np.radians(33.0)
    if kind == "cd":
        h["CD1_1"], h["CD1_2"] = -s * np.cos(th), s * np.sin(th)
        h["CD2_1"], h["CD2_2"] = s * np.sin(th), s * np.cos(th)
    elif kind in ("pc", "sip"):
        h["CDELT1"], h["CDELT2"] = -s, s * 1.02
        h["PC1_1"], h["PC1_2"] = np.cos(th), -np.sin(th)
        h["PC2_1"], h["PC2_2"] = np.sin(th), np.cos(th)
    elif kind == "crota":
        h["CDELT1"], h["CDELT2"] = -s, s
        h["CROTA2"] = 33.0
    if kind == "sip":
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
        h["A_ORDER"] = h["B_ORDER"] = 3
        h["A_2_0"], h["A_1_1"], h["A_0_2"], h["A_3_0"] = 2e-6, -1e-6, 3e-7, 1e-10
        h["B_0_2"], h["B_1_1"], h["B_2_1"] = 1e-6, 5e-7, -2e-10
        h["AP_ORDER"] = h["BP_ORDER"] = 3
        h["AP_2_0"], h["AP_1_0"], h["BP_0_2"] = -2e-6, 1e-7, -1e-6
    return WCS(h)


@pytest.mark.parametrize("kind", ["cd", "pc", "crota", "sip"])
@pytest.mark.parametrize(("stride", "offset"), [(16, 8), (7, 0), (1, 0), (5, 3), (32, 31)])
def test_scoremap_wcs_matches_mosaic(kind, stride, offset):
    w = _mosaic_wcs(kind)
    m = scoremap_wcs(w, stride, offset)
    rng = np.random.default_rng(stride * 100 + offset)
    i = np.concatenate([[0, 1, 0], rng.uniform(-3, 6000 / stride, 500)])
    j = np.concatenate([[0, 0, 1], rng.uniform(-3, 5000 / stride, 500)])
    i[3:10] = np.round(i[3:10])  # whole map pixels too
    ra_m, dec_m = m.pixel_to_world_values(i, j)
    ra_w, dec_w = w.pixel_to_world_values(offset + stride * i, offset + stride * j)
    assert np.max(np.abs(ra_m - ra_w)) < 1e-9 and np.max(np.abs(dec_m - dec_w)) < 1e-9
    # Inverse: map pixel back, error in mosaic pixels.
    ii, jj = m.all_world2pix(ra_w, dec_w, 0, tolerance=1e-10, maxiter=50)
    assert np.max(np.abs(ii - i)) * stride < 1e-6 and np.max(np.abs(jj - j)) * stride < 1e-6
    assert (m.sip is None) == (kind != "sip")
    assert w.wcs.crpix[0] == 3000.5  # the mosaic WCS is untouched


def test_scoremap_file_round_trip(tmp_path):
    w = _mosaic_wcs("sip")
    rng = np.random.default_rng(3)
    scores = rng.random((31, 45)).astype(np.float32)   # not square
    scores[0, :5] = np.nan
    path = write_scoremap(tmp_path / "map.fits", scores, w, 16, 8,
                          meta={"MODELSHA": "ab12" * 16, "THRESH": 0.669,
                                "SOURCE": "/x/" * 40 + "g.fits"})
    _fitsverify(path)
    with fits.open(path) as hdul:
        h = hdul[0].header
        data = hdul[0].data
        mw = WCS(h)
    np.testing.assert_array_equal(data, scores)
    assert (h["STRIDE"], h["GRIDOFF"], h["BUNIT"]) == (16, 8, "probability")
    assert h["MODELSHA"] == "ab12" * 16 and h["THRESH"] == 0.669
    jj, ii = np.mgrid[0:31, 0:45]
    ra_m, dec_m = mw.pixel_to_world_values(ii.ravel(), jj.ravel())
    ra_w, dec_w = w.pixel_to_world_values(8 + 16 * ii.ravel(), 8 + 16 * jj.ravel())
    assert np.max(np.abs(ra_m - ra_w)) < 1e-9 and np.max(np.abs(dec_m - dec_w)) < 1e-9
    assert _no_litter(tmp_path) == []


def test_scoremap_refusals(tmp_path):
    from astropy.wcs import DistortionLookupTable

    w = _mosaic_wcs("cd")
    with pytest.raises(ConfigError, match="stride 0: a positive integer"):
        scoremap_wcs(w, 0, 0)
    with pytest.raises(ConfigError, match="offset -1"):
        scoremap_wcs(w, 4, -1)
    with pytest.raises(ConfigError, match=r"stride 2\.5"):
        scoremap_wcs(w, 2.5, 0)
    lut = w.deepcopy()
    lut.cpdis1 = DistortionLookupTable(np.zeros((4, 4), np.float32), (1.0, 1.0), (1.0, 1.0),
                                       (100.0, 100.0))
    with pytest.raises(OutputError, match="lookup-table distortion"):
        scoremap_wcs(lut, 4, 2)
    with pytest.raises(ValueError, match="may not set STRIDE"):
        write_scoremap(tmp_path / "m.fits", np.zeros((2, 2), np.float32), w, 4, 2,
                       meta={"STRIDE": 3})
    with pytest.raises(ValueError, match="2-D"):
        write_scoremap(tmp_path / "m.fits", np.zeros(4, np.float32), w, 4, 2, meta={})
    assert list(tmp_path.iterdir()) == []
