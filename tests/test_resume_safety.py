"""The resume journal never merges a wrong tile, never blocks a run after a failed start, and
says exactly what happened: damaged or foreign entries (found at resume start, before any
new tile), refusals, a journal held by a running scan, a full disk, a changed threshold."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from astropy.table import Table
from click.testing import CliRunner

from pyengine.cli import main
from pyengine.flags import NOT_CANDIDATE
from pyengine.io.mosaic import Mosaic
from pyengine.output.journal import Journal
from pyengine.scan.engine import Engine
from pyengine.scan.run import run_scan, scan_fingerprint
from pyengine.sources.base import tiles_to_do
from pyengine.sources.catalog import CatalogSource

STOP_AFTER = 4  # tiles in the journal of the interrupted scan


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xdg")


def _engine(model, cache, **kw):
    return Engine(model, runner="onnxruntime", batch_size=8, threads=1, core=64,
                  cache_dir=cache, **kw)


def _cli(field, model, catalog, out, *extra, cache, mag_limit=None):
    args = ["scan", *[str(p) for p in field["paths"]], "--catalog", str(catalog), "--model",
            str(model), "--runner", "onnxruntime", "--batch-size", "8", "--threads", "1",
            "--tile-size", "64", "--out", str(out), *map(str, extra)]
    if mag_limit is not None:
        args += ["--mag-col", "mag", "--mag-limit", str(mag_limit)]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def _error_line(res) -> str:
    """The one error line of a failed command (no traceback, nothing else on stderr)."""
    assert res.exit_code not in (0, 130), res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].lower().startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def _events(res) -> list[dict]:
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.fixture(scope="module")
def journalled(tmp_path_factory, field, model, catalog, cache):
    """An uninterrupted scan's catalog, a journal of the same scan stopped after
    STOP_AFTER tiles (kept as a template), its fingerprint and the scan's tiles."""
    base = tmp_path_factory.mktemp("journalled")
    full = _cli(field, model, catalog, base / "full.fits", "-q", cache=cache)
    assert full.exit_code == 0, full.output
    # The journal a scan stopped after STOP_AFTER tiles leaves (made as run_scan makes it;
    # stopping a real scan journals a timing-dependent number of tiles).
    journal = Journal(base / "part.fits")
    with _engine(model, cache) as engine, Mosaic.open([str(p) for p in field["paths"]]) as m, \
            engine.prepared(m, CatalogSource(str(catalog))) as (mosaic, source, plan):
        fingerprint = scan_fingerprint(engine, mosaic, source, plan)
        tiles = [t.index for t in tiles_to_do(plan, source)]
        empty = [t.index for t in plan if t.index not in tiles]
        journal.start(fingerprint, resume=False, settings={"threshold": engine.threshold})
        results = engine.iter_results(mosaic, source, plan)
        for _, result in zip(range(STOP_AFTER), results, strict=False):
            journal.record(result.tile, result.to_arrays())
        results.close()
        journal.close()
    template = base / "part.fits.journal"
    done = sorted(Journal(base / "part.fits").completed())
    assert len(done) == STOP_AFTER and len(tiles) > STOP_AFTER + 2 and empty
    return {"full": base / "full.fits", "template": template, "fingerprint": fingerprint,
            "done": done, "tiles": tiles, "empty": empty, "plan_len": len(plan)}


def _copy_journal(journalled, out):
    folder = out.with_name(out.name + ".journal")
    shutil.copytree(journalled["template"], folder)
    return folder


def _assert_same_catalog(path, reference):
    a, b = Table.read(reference), Table.read(path)
    assert len(a) == len(b) and a.colnames == b.colnames
    for name in a.colnames:
        if name == "score":
            np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=0,
                                       atol=2e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(np.asarray(b[name]), np.asarray(a[name]),
                                          err_msg=name)


def _flip_a_data_byte(path, member="x.npy"):
    """Flip the last byte of ``member``'s stored data (an array value, not a header)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(data[info.header_offset + 26:
                                                   info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    data[start + info.compress_size - 1] ^= 0x40
    path.write_bytes(bytes(data))


def _damage(kind, folder, journalled):
    """Damage the copied journal ``folder``; (file named in the warning, tile rescanned?)."""
    done = journalled["done"]
    if kind == "copied over another tile":
        victim = folder / f"tile-{done[1]:06d}.npz"
        shutil.copyfile(folder / f"tile-{done[0]:06d}.npz", victim)
        return victim, done[1]
    if kind == "truncated":
        victim = folder / f"tile-{done[2]:06d}.npz"
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        return victim, done[2]
    if kind == "bit-flipped":
        victim = folder / f"tile-{done[3]:06d}.npz"
        _flip_a_data_byte(victim)
        return victim, done[3]
    # A sound entry of this very scan (right identity and checksum) for a tile outside the
    # plan, and one for a plan tile without positions: both would add rows.
    j = Journal(folder.with_name(folder.name[: -len(".journal")]))
    j.start(journalled["fingerprint"], resume=True)
    arrays = j.load(done[0])
    bad = journalled["plan_len"] + 7 if kind == "outside the plan" else journalled["empty"][0]
    j.record(bad, arrays)
    j.close()
    return folder / f"tile-{bad:06d}.npz", None


@pytest.mark.parametrize("kind", ["copied over another tile", "outside the plan",
                                  "a tile without positions", "truncated", "bit-flipped"])
def test_a_bad_journal_entry_is_named_at_resume_start_and_its_tile_rescanned(
        kind, journalled, field, model, catalog, cache, tmp_path):
    out = tmp_path / "o.fits"
    folder = _copy_journal(journalled, out)
    victim, rescanned = _damage(kind, folder, journalled)
    res = _cli(field, model, catalog, out, "--resume", "--log-json", cache=cache)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    events = _events(res)
    start, tiles = events[0], [e for e in events if e["event"] == "tile"]
    # Found when the resume starts: the start event, before any tile, names it.
    assert start["event"] == "start"
    assert len(start["journal_rejected"]) == 1, start["journal_rejected"]
    note = start["journal_rejected"][0]
    assert note.startswith(f"{victim}: ") and "moved to " in note, note
    warnings = [line for line in res.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [f"Warning: {note}"], res.stderr
    good = len(journalled["done"]) - (rescanned is not None)
    assert start["tiles_resumed"] == good
    assert start["tiles_total"] == len(journalled["tiles"])
    assert start["tiles_todo"] == len(journalled["tiles"]) - good
    if rescanned is not None:
        assert f"tile {rescanned} will be scanned again" in note
        assert rescanned in [e["tile"] for e in tiles]
    else:
        assert "is not one of the" in note and "not a tile this scan has to do" in note
    reason = {"copied over another tile": f"holds tile {journalled['done'][0]}, not the tile",
              "truncated": "damaged journal entry", "bit-flipped": "damaged journal entry",
              "outside the plan": "is not one of the", "a tile without positions":
              "is not one of the"}[kind]
    assert reason in note, note
    assert events[-1]["event"] == "summary" and events[-1]["journal_rejected"] == [note]
    _assert_same_catalog(out, journalled["full"])
    assert not folder.exists()


def test_damage_found_at_start_is_set_aside_before_any_tile_is_scanned(
        journalled, field, model, catalog, cache, tmp_path):
    """In process: when the start event arrives the damaged file is already out of the
    journal and no new tile file exists yet."""
    out = tmp_path / "o.fits"
    folder = _copy_journal(journalled, out)
    victim = folder / f"tile-{journalled['done'][0]:06d}.npz"
    victim.write_bytes(b"PK\x03\x04 not a zip any more")
    seen = {}

    def progress(event):
        if event["event"] == "start":
            seen["files"] = sorted(p.name for p in folder.glob("tile-*.npz"))
            seen["rejected"] = sorted(p.name for p in (folder / "rejected").iterdir())

    with _engine(model, cache) as engine:
        summary = run_scan(engine, [str(p) for p in field["paths"]], CatalogSource(str(catalog)),
                           out, resume=True, progress=progress)
    assert seen["rejected"] == [victim.name]
    assert seen["files"] == [f"tile-{t:06d}.npz" for t in journalled["done"][1:]]
    assert summary.tiles_resumed == len(journalled["done"]) - 1
    _assert_same_catalog(out, journalled["full"])


def test_a_damaged_entry_at_assembly_is_one_line_naming_the_file(journalled, tmp_path):
    """An entry damaged after the resume started (verified then) is a ResumeError naming
    the file and what to do when it is loaded, never a BadZipFile/zlib traceback."""
    from pyengine.errors import ResumeError

    out = tmp_path / "o.fits"
    folder = _copy_journal(journalled, out)
    j = Journal(out)
    assert j.start(journalled["fingerprint"], resume=True) == set(journalled["done"])
    victim = folder / f"tile-{journalled['done'][0]:06d}.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ResumeError) as info:
        j.load(journalled["done"][0])
    msg = str(info.value)
    assert msg.startswith(f"{victim}: damaged journal entry") and "\n" not in msg
    assert msg.endswith("delete this file and rerun with --resume to scan that tile again")
    j.close()


@pytest.mark.parametrize("where", ["activation", "first batch"])
def test_a_failed_start_leaves_no_journal(where, field, model, catalog, cache, tmp_path,
                                          monkeypatch):
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    def fail(*args):
        raise RuntimeError("onnxruntime: Failed to allocate memory for requested buffer")

    monkeypatch.setattr(OnnxRuntimeRunner, "_activate" if where == "activation" else "_infer",
                        fail)
    out = tmp_path / "o.fits"
    line = _error_line(_cli(field, model, catalog, out, "-q", cache=cache))
    assert "out of memory" in line and "--batch-size" in line, line
    assert not out.with_name(out.name + ".journal").exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    again = _cli(field, model, catalog, out, "-q", cache=cache)  # no --resume needed
    assert again.exit_code == 0, again.output


def test_a_failed_resume_keeps_its_tiles(journalled, field, model, catalog, cache, tmp_path,
                                         monkeypatch):
    from pyengine.runners.onnxrt import OnnxRuntimeRunner

    def fail(*args):
        raise RuntimeError("onnxruntime: Failed to allocate memory for requested buffer")

    out = tmp_path / "o.fits"
    folder = _copy_journal(journalled, out)
    monkeypatch.setattr(OnnxRuntimeRunner, "_infer", fail)
    line = _error_line(_cli(field, model, catalog, out, "--resume", "-q", cache=cache))
    assert "out of memory" in line, line
    assert sorted(Journal(out).completed()) == journalled["done"]
    assert folder.is_dir()


def test_refused_resume_names_each_changed_option_with_both_values(
        field, model, catalog, cache, tmp_path):
    out = tmp_path / "o.fits"
    with _engine(model, cache) as engine, Mosaic.open([str(p) for p in field["paths"]]) as m, \
            engine.prepared(m, CatalogSource(str(catalog), mag_col="mag", mag_limit=20.0)) \
            as (mosaic, source, plan):
        fingerprint = scan_fingerprint(engine, mosaic, source, plan)
    j = Journal(out)
    j.start(fingerprint, resume=False)
    j.close()
    res = _cli(field, model, catalog, out, "--resume", "--max-nan", "0.9", cache=cache,
               mag_limit=19)
    line = _error_line(res)
    assert f"{out}.journal: resume refused" in line
    assert "--mag-limit: 20 → 19" in line and "--max-nan: 0.5 → 0.9" in line, line
    assert "…" not in line.split("refused", 1)[1].split("; rerun")[0]  # values whole
    assert Journal(out).start(fingerprint, resume=True) == set()  # the journal is untouched


_HOLDER = r"""
import sys, time
from pyengine.output.journal import Journal
j = Journal(sys.argv[1])
j.start({"a scan": 1}, resume=False)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_journal_held_by_a_running_scan_is_never_offered_for_deletion(
        field, model, catalog, cache, tmp_path):
    out = tmp_path / "o.fits"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.getcwd(), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for extra in ([], ["--resume"]):
            line = _error_line(_cli(field, model, catalog, out, "-q", *extra, cache=cache))
            assert (f"{out}: another scan (PID {proc.pid}) is running on this output and "
                    f"holds its journal {out}.journal; wait for it to finish, or choose "
                    "another --out") in line, line
            assert "delete" not in line
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_disk_full_keeps_the_tiles_and_gives_the_resume_command(
        journalled, field, model, catalog, cache, tmp_path, monkeypatch):
    import pyengine.output.journal as journal_module

    out = tmp_path / "o.fits"
    real = journal_module.publish
    calls = []

    def publish(pairs):
        pairs = list(pairs)
        if pairs[0][1].name.startswith("tile-"):
            calls.append(pairs[0][1])
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(pairs)

    monkeypatch.setattr(journal_module, "publish", publish)
    argv = ["pyengine", "scan", "g.fits", "i.fits", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    line = _error_line(_cli(field, model, catalog, out, "-q", cache=cache))
    assert line.endswith(f"{calls[2]}: cannot write the journal (No space left on device); the "
                         f"2 completed tiles are kept in {out}.journal; fix that (e.g. free "
                         "disk space), then resume with: pyengine scan g.fits i.fits --out "
                         f"{out} --resume"), line
    assert Journal(out).completed() == {int(p.name[5:11]) for p in calls[:2]}
    monkeypatch.undo()
    done = _cli(field, model, catalog, out, "-q", "--resume", cache=cache)
    assert done.exit_code == 0, done.output
    _assert_same_catalog(out, journalled["full"])


def test_a_full_disk_after_the_catalog_resumes_without_overwrite(
        journalled, field, model, catalog, cache, tmp_path, monkeypatch):
    """The catalog is written, then the regions file hits a full disk: the resume the
    message gives (no --overwrite) replaces the scan's own catalog and finishes."""
    import pyengine.output.regions as regions_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out, reg = tmp_path / "o.fits", tmp_path / "o.reg"
    monkeypatch.setattr(regions_module, "write_regions", full)
    line = _error_line(_cli(field, model, catalog, out, "-q", "--regions", reg, cache=cache))
    assert "No space left on device" in line and line.endswith("--resume"), line
    assert out.exists() and not reg.exists()
    monkeypatch.undo()
    done = _cli(field, model, catalog, out, "-q", "--regions", reg, "--resume", cache=cache)
    assert done.exit_code == 0, done.output
    assert reg.exists() and not out.with_name(out.name + ".journal").exists()
    _assert_same_catalog(out, journalled["full"])
    # A finished scan has nothing to resume, and says so.
    line = _error_line(_cli(field, model, catalog, out, "-q", "--resume", cache=cache))
    assert line == (f"Error: nothing to resume at {out}.journal ({out} exists: the scan has "
                    "finished); run without --resume (and with --overwrite to scan again)"), line


def test_resume_progress_counts_the_whole_scan(journalled, field, model, catalog, cache,
                                               tmp_path):
    out = tmp_path / "o.fits"
    _copy_journal(journalled, out)
    events = _events(_cli(field, model, catalog, out, "--resume", "--log-json", cache=cache))
    start, tiles = events[0], [e for e in events if e["event"] == "tile"]
    total, resumed = len(journalled["tiles"]), len(journalled["done"])
    assert (start["tiles_total"], start["tiles_resumed"], start["tiles_todo"]) == \
        (total, resumed, total - resumed)
    assert [e["tiles_done"] for e in tiles] == list(range(resumed + 1, total + 1))
    assert all(e["tiles_total"] == total for e in tiles)
    assert events[-1]["tiles"] == total and events[-1]["tiles_resumed"] == resumed


def test_a_changed_threshold_is_accepted_on_resume_and_said(journalled, field, model, catalog,
                                                            cache, tmp_path):
    """The threshold does not change per-tile results (candidates are decided when the
    catalog is assembled), so a resume may change it; the start line says so, and every
    row, resumed tiles' too, uses the new one."""
    full = Table.read(journalled["full"])
    # A threshold that makes about half the scored rows candidates (the model is random).
    threshold = round(float(np.nanmedian(np.asarray(full["score"]))), 6)
    out = tmp_path / "o.fits"
    _copy_journal(journalled, out)
    res = _cli(field, model, catalog, out, "--resume", "--threshold", threshold, cache=cache)
    assert res.exit_code == 0, res.output
    assert (f"; threshold {threshold:g} (was 0.5: candidates of every tile, resumed ones too, "
            "use the new threshold)") in res.stderr, res.stderr
    table = Table.read(out)
    assert table.meta["THRESH"] == threshold
    np.testing.assert_allclose(np.asarray(table["score"]), np.asarray(full["score"]), rtol=0,
                               atol=2e-5)
    score, flags = np.asarray(table["score"]), np.asarray(table["flags"])
    with np.errstate(invalid="ignore"):
        expect = (score >= threshold) & ((flags & NOT_CANDIDATE) == 0)
    np.testing.assert_array_equal(np.asarray(table["is_candidate"]), expect)
    # Rows of resumed tiles changed too (they were scored under threshold 0.5).
    resumed = np.isin(np.asarray(table["tile"]), journalled["done"])
    assert np.count_nonzero(expect & resumed) > np.count_nonzero(full["is_candidate"] & resumed)
