"""Inputs that change under a scan, and input identity (pyengine.io.inputguard).

A band truncated or rewritten in place while ``pyengine scan`` reads it stops the
scan with one line naming the file, the tiles scanned before it kept in the
journal; a resume after restoring the bytes with a plain copy (new mtime) is
accepted and gives the catalog of an uninterrupted scan; other bytes of the same
size are refused.  The SIGBUS handler turns the remaining race (a truncation
between the check and the read) into one line.  One image given as two bands is
refused; ``--bands`` contradicting FILTER keys is warned about.

The scans that change a file mid-scan run in a new interpreter whose
``Mosaic.read`` is wrapped (``_HOOKED``): reads are serialised and the file is
changed just before the N-th, so the change falls between two tiles every time.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine import Mosaic
from pyengine.cli import main
from pyengine.errors import BandWarning, ConfigError, InputChangedError
from tests import scanfield
from tests.makedata import write_image

# 260 x 300 px in 64 px tile cores: 5 x 5 tiles, each with grid positions.
TILES = 25
AT = 4  # the file changes just before the 4th read: 3 tiles are done by then

_HOOKED = """
import os, sys, threading
from pyengine.io.mosaic import Mosaic
action, target, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock, count, read = threading.Lock(), [0], Mosaic.read
def hooked(self, *args, **kw):
    with lock:  # one read at a time: the file changes between two reads, never in one
        count[0] += 1
        if count[0] == at and action == "truncate":
            os.truncate(target, 2 * 2880)  # the header and a little data are left
        elif count[0] == at:  # same size, other bytes in the middle of the data
            with open(target, "r+b") as fh:
                middle = os.fstat(fh.fileno()).st_size // 2
                fh.seek(middle)
                data = fh.read(64)
                fh.seek(middle)
                fh.write(bytes(b ^ 0xFF for b in data))
        return read(self, *args, **kw)
Mosaic.read = hooked
from pyengine.cli import main
main(sys.argv[4:], prog_name="pyengine")
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg"))}


def _scan_args(paths, model, out, *extra):
    return ["scan", *[str(p) for p in paths], "--grid", "12", "--model", str(model), "--out",
            str(out), "--tile-size", "64", "--batch-size", "8", "--threads", "1", "--quiet",
            *extra]


def _scan(paths, model, out, env, *extra):
    return subprocess.run([sys.executable, "-m", "pyengine.cli",
                           *_scan_args(paths, model, out, *extra)],
                          env=env, capture_output=True, text=True, timeout=300)


def _scan_changing(action, target, paths, model, out, env):
    return subprocess.run([sys.executable, "-c", _HOOKED, action, str(target), str(AT),
                           *_scan_args(paths, model, out)],
                          env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(res) -> str:
    """The one ``Error: ...`` line a user error prints: no traceback, no signal death."""
    assert res.returncode not in (0, 75, 135, -signal.SIGBUS), (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"(?i)error: ", lines[0]), res.stderr
    assert "Traceback" not in res.stderr and "Bus error" not in res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def full_catalog(tmp_path_factory, model, env):
    """The catalog of an uninterrupted scan of a fresh copy of the field."""
    field = scanfield.make_field(tmp_path_factory.mktemp("pristine"))
    out = field["paths"][0].parent / "full.fits"
    res = _scan(field["paths"], model, out, env)
    assert res.returncode == 0, res.stderr
    return Table.read(out)


def _assert_same_catalog(a: Table, b: Table) -> None:
    assert len(a) == len(b) > 0
    for name in a.colnames:
        np.testing.assert_array_equal(a[name], b[name])  # scores bit-identical


def test_truncated_mid_scan_stops_with_one_line_and_a_copy_back_resumes(tmp_path, model, env,
                                                                        full_catalog):
    field = scanfield.make_field(tmp_path / "field")
    g = field["paths"][0]
    backup = tmp_path / "g-backup.fits"
    shutil.copy2(g, backup)
    out = tmp_path / "cut.fits"
    journal = out.with_name(out.name + ".journal")
    res = _scan_changing("truncate", g, field["paths"], model, out, env)
    line = _one_error_line(res)
    size = backup.stat().st_size
    assert f"{g}: the file shrank from {size} to {2 * 2880} bytes while it was being read" in line
    # Every tile read before the change was scored and journalled; none after it.
    assert f"the {AT - 1} of {TILES} completed tiles are kept in {journal}" in line
    assert "--resume" in line
    assert len(list(journal.glob("tile-*.npz"))) == AT - 1
    assert not out.exists()
    # Restored with a plain copy: same bytes, new mtime.  The resume is not refused.
    shutil.copyfile(backup, g)
    assert g.stat().st_mtime_ns != backup.stat().st_mtime_ns
    done = _scan(field["paths"], model, out, env, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"({AT - 1} resumed)" in done.stdout, done.stdout
    _assert_same_catalog(full_catalog, Table.read(out))
    assert not journal.exists()


def test_modified_in_place_mid_scan_is_refused_and_so_is_its_resume(tmp_path, model, env,
                                                                   full_catalog):
    field = scanfield.make_field(tmp_path / "field")
    i = field["paths"][1]
    backup = tmp_path / "i-backup.fits"
    shutil.copy2(i, backup)
    out = tmp_path / "mod.fits"
    journal = out.with_name(out.name + ".journal")
    line = _one_error_line(_scan_changing("modify", i, field["paths"], model, out, env))
    assert f"{i}: the file was modified while it was being read (size" in line
    assert f"the {AT - 1} of {TILES} completed tiles are kept in {journal}" in line
    assert i.stat().st_size == backup.stat().st_size  # same size, other bytes
    # The journal belongs to the old bytes: a resume on the changed file is refused.
    refused = _one_error_line(_scan(field["paths"], model, out, env, "--resume"))
    assert "band_files" in refused, refused
    shutil.copyfile(backup, i)
    done = _scan(field["paths"], model, out, env, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"({AT - 1} resumed)" in done.stdout, done.stdout
    _assert_same_catalog(full_catalog, Table.read(out))


def test_read_after_a_change_raises_input_changed_error(tmp_path):
    """Mosaic level: the check before every read, for both read paths (a file written
since it was opened)."""
    from tests.makedata import make_wcs, write_compressed

    # A truncated file (a SIGBUS here would end the test run) is read in a new interpreter
    # by test_sigbus_handler_prints_one_line[checked].
    write_image(tmp_path / "b.fits", "f32")
    with Mosaic.open([tmp_path / "b.fits"]) as m:
        os.utime(tmp_path / "b.fits", ns=(0, 10**18))  # written since (a new mtime)
        with pytest.raises(InputChangedError, match=r"b\.fits: the file was modified"):
            m.read(0, 10, 0, 10)
    write_compressed(tmp_path / "c.fits.fz", np.arange(37 * 53, dtype=np.int16).reshape(37, 53),
                     "RICE", header=dict(make_wcs((37, 53)).to_header()))
    with Mosaic.open([tmp_path / "c.fits.fz"]) as m:
        m.read(0, 5, 0, 5)
        with open(tmp_path / "c.fits.fz", "ab") as fh:
            fh.write(b"\0" * 2880)
        with pytest.raises(InputChangedError, match=r"c\.fits\.fz: the file was modified"):
            m.read(0, 5, 0, 5)


_SIGBUS_CHILD = """
import os, signal, sys
from pathlib import Path
from pyengine import Mosaic
from pyengine.io import inputguard
path, how = Path(sys.argv[1]), sys.argv[2]
m = Mosaic.open([path])
m.read(0, 2, 0, 2)
if how != "default":
    inputguard.install_sigbus_handler()
if how == "kill":  # a SIGBUS that is no fault on a map goes to the previous action
    os.kill(os.getpid(), signal.SIGBUS)
if how != "checked":
    inputguard.FileGuard.check = lambda self: None  # the race: truncated after the check
os.truncate(path, 2880)
try:
    m.read(30, 37, 0, 53)  # a window past the new end
except Exception as exc:
    print(type(exc).__name__, exc)
    sys.exit(3)
print("read past the end without a fault")
"""


@pytest.mark.parametrize("how", ["checked", "handler", "default", "kill"])
def test_sigbus_handler_prints_one_line(tmp_path, how):
    """checked: the check before the read refuses a shrunk file (no fault at all);
    handler: a truncation after the check faults, and the handler says so in one line;
    default, kill: without the handler, or for a SIGBUS that is no fault on a map, the
    signal's old action (death by SIGBUS) stays."""
    write_image(tmp_path / "a.fits", "f32")
    res = subprocess.run([sys.executable, "-c", _SIGBUS_CHILD, str(tmp_path / "a.fits"), how],
                         capture_output=True, text=True, timeout=120)
    if how == "checked":
        assert res.returncode == 3, (res.returncode, res.stderr)
        assert re.fullmatch(rf"InputChangedError {re.escape(str(tmp_path))}/a\.fits: the file "
                            r"shrank from \d+ to 2880 bytes while it was being read; restore "
                            r"it as it was\n", res.stdout), res.stdout
    elif how == "handler":
        assert res.returncode == 75, (res.returncode, res.stderr)
        assert res.stderr == (f"pyengine: input file {tmp_path / 'a.fits'} shrank while being "
                              "read (SIGBUS); completed tiles are journalled; restore the file "
                              "and resume with --resume\n")
    else:  # importing pyengine installs nothing; faults elsewhere keep their old action
        assert res.returncode == -signal.SIGBUS, (res.returncode, res.stderr)
        assert "pyengine: input file" not in res.stderr


def _cli(args, env):
    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)


def _cli_error_line(res) -> str:
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"(?i)error: ", lines[0]), res.output
    return lines[0]


def test_one_image_given_as_two_bands_is_refused(tmp_path, model, env):
    field = scanfield.make_field(tmp_path / "field")
    g = field["paths"][0]
    (tmp_path / "link.fits").symlink_to(g)
    os.link(g, tmp_path / "hard.fits")
    out = tmp_path / "o.fits"
    for second in (g, tmp_path / "link.fits", tmp_path / "hard.fits", f"{g}[0]"):
        line = _cli_error_line(_cli(["scan", g, second, "--bands", "g,i", "--grid", 50,
                                     "--model", model, "--out", out], env))
        assert f"{second}: the same image as {g} (one file, HDU 0) given as a second band" \
            in line, line
    assert not out.exists()


def test_bands_contradicting_filter_keys_are_warned_about(tmp_path, model, env):
    field = scanfield.make_field(tmp_path / "field")
    g, i = field["paths"]
    out = tmp_path / "o.fits"
    # --bands in the wrong order for the files: each is scanned as the band given.  The
    # engine reopens the mosaic in the model's band order (i.fits first): no second warning.
    res = CliRunner().invoke(main, [str(a) for a in ["scan", g, i, "--bands", "i,g", "--grid",
                                                     50, "--model", model, "--out", out,
                                                     "--quiet"]], env=env)
    assert res.exit_code == 0, res.output
    assert [line for line in res.stderr.splitlines() if line.strip()] == [
        f"Warning: {g}: FILTER = 'g' but given as band 'i'; scanning it as 'i' (check the "
        "order of --bands)",
        f"Warning: {i}: FILTER = 'i' but given as band 'g'; scanning it as 'g' (check the "
        "order of --bands)"], res.stderr
    assert out.exists()


def test_band_names_agreeing_by_key_are_not_warned_about(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"FILTER": "g.MP9401"})
    write_image(tmp_path / "b.fits", "f32", header_extra={"FILTER": "i.MP9702"}, seed=1)
    write_image(tmp_path / "c.fits", "f32", seed=2)  # no FILTER: nothing to contradict
    with Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits"],
                     bands=["G", "i", "r"]) as m:  # pytest turns any warning into an error
        assert m.bands == ("G", "i", "r")
    with pytest.warns(BandWarning, match=r"b\.fits: FILTER = 'i\.MP9702' but given as band 'r'"):
        Mosaic.open([tmp_path / "a.fits", tmp_path / "b.fits"], bands=["g", "r"]).close()


def test_resume_identity_is_content_not_path_or_mtime(tmp_path):
    """The fingerprint's band entries: a copy elsewhere with a new mtime is the same band;
    the same size with other bytes in the middle of the data is not."""
    from pyengine.scan.run import _file_identity

    field = scanfield.make_field(tmp_path / "a")
    g = field["paths"][0]
    ident = _file_identity(str(g))
    assert set(ident) == {"size", "sha256_sampled", "ext"}  # no path, no mtime
    copy = tmp_path / "b" / "g.fits"
    copy.parent.mkdir()
    shutil.copyfile(g, copy)
    os.utime(copy, ns=(0, 10**18))
    assert _file_identity(str(copy)) == ident
    data = bytearray(copy.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0x01 for b in data[middle : middle + 4])
    copy.write_bytes(data)
    assert _file_identity(str(copy))["size"] == ident["size"]
    assert _file_identity(str(copy)) != ident
    assert _file_identity(f"{g}[0]") != ident  # the HDU named is part of it


def test_one_image_twice_via_a_path_spelled_differently_is_refused_in_the_library(tmp_path):
    write_image(tmp_path / "a.fits", "f32", header_extra={"FILTER": "g"})
    other = Path(f"{tmp_path}/./a.fits")
    with pytest.raises(ConfigError, match=r"a\.fits: the same image as"):
        Mosaic.open([tmp_path / "a.fits", other], bands=["g", "i"])
