"""Rules with one home each: cutout flags, the tiles still to do, the output probe."""

import numpy as np
import pytest

from pyengine.errors import OutputError
from pyengine.flags import BLANK, EDGE, NOT_CANDIDATE, OFF_IMAGE, OFF_IMAGE_FLAGS, cutout_flags
from pyengine.io.tiles import TilePlan
from pyengine.sources.base import tiles_to_do


def test_cutout_flags_from_nan_fraction():
    frac = np.array([0.0, 0.01, 0.5, 0.51, 1.0], np.float32)
    flags = cutout_flags(frac, 0.5)
    assert flags.dtype == np.int32
    assert flags.tolist() == [0, EDGE, EDGE, EDGE | BLANK, EDGE | BLANK]
    # No data at all is BLANK whatever the limit, 1.0 included.
    assert cutout_flags(frac, 1.0).tolist() == [0, EDGE, EDGE, EDGE, EDGE | BLANK]
    assert OFF_IMAGE_FLAGS == OFF_IMAGE | BLANK and OFF_IMAGE_FLAGS & NOT_CANDIDATE


class _Counts:
    """A source whose counts are known for some tiles (None: unknown until read)."""

    def __init__(self, counts):
        self.counts = counts

    def count(self, tile):
        return self.counts.get(tile.index)


def test_tiles_to_do_skips_done_and_empty_tiles_only():
    plan = TilePlan((300, 300), core=100, halo=8)
    source = _Counts({0: 0, 1: 5, 2: None, 3: 2})   # tiles 4..8: None
    todo = [t.index for t in tiles_to_do(plan, source)]
    assert todo == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [t.index for t in tiles_to_do(plan, source, {3, 5})] == [1, 2, 4, 6, 7, 8]
    assert all(t == plan[t.index] for t in tiles_to_do(plan, source, (np.int64(1),)))


def test_output_check_without_probe_creates_no_file(tmp_path, monkeypatch):
    from pyengine.output import catalog as catalog_module
    from pyengine.scan.run import output_paths

    def no_create(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(catalog_module, "open", no_create, raising=False)
    paths = output_paths(tmp_path / "c.fits", tmp_path / "c.reg", probe=False)
    assert paths == {"catalog": tmp_path / "c.fits", "regions": tmp_path / "c.reg"}
    (tmp_path / "d.fits").mkdir()
    with pytest.raises(OutputError, match="is a directory"):       # cheap checks still run
        output_paths(tmp_path / "d.fits", probe=False)
    with pytest.raises(OutputError, match=r"cannot create files in .* \(Permission denied\)"):
        output_paths(tmp_path / "c.fits")
    assert [p.name for p in tmp_path.iterdir()] == ["d.fits"]
