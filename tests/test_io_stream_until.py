"""StreamingArrowDataset(until=W): windows after W are never read, and the stream ends once W is
closed (a later window exists, or W's marker) and everything up to it is read; not before."""
import os

import pytest
from test_io_helpers import id_table
from test_io_streaming import FAST, _land, clock, streaming  # noqa: F401  (clock: the virtual-clock fixture)

from recis.io import StreamingArrowDataset


def _windows(root, names):
    for i, w in enumerate(names):
        os.makedirs(root / w, exist_ok=True)
        _land(str(root / w / "part-0.parquet"), id_table(100 * i, 3))


def _ids(data):
    return [i for b in data for i in b.column("id").to_pylist()]


def test_until_reads_the_listed_windows_up_to_it_and_ends_once_a_later_one_exists(tmp_path, clock):
    _windows(tmp_path, ["b", "a", "c"])
    data = streaming(tmp_path, clock, windows=["b", "a", "c"], until="a", batch_size=10, stop_after_idle=1000, **FAST)
    assert _ids(data) == [0, 1, 2, 100, 101, 102]   # b, then a; c closes a and is never read
    assert clock.now < 1   # ended by `until`, not by the idle safety stop
    assert data.state_dict()["shards"]["0"]["files"] == ["b/part-0.parquet", "a/part-0.parquet"]


def test_until_waits_while_its_window_is_open(tmp_path, clock):
    _windows(tmp_path, ["dt=1", "dt=2"])
    data = streaming(tmp_path, clock, windows="dt=*", until="dt=2", batch_size=10, stop_after_idle=5, **FAST)
    assert _ids(data) == [0, 1, 2, 100, 101, 102] and clock.now >= 5   # dt=2 never closed: the idle stop ended it
    clock.at(clock.now + 0.5, lambda: os.makedirs(tmp_path / "dt=3"))   # a later window appears
    resumed = streaming(tmp_path, clock, windows="dt=*", until="dt=2", batch_size=10, stop_after_idle=50, **FAST)
    resumed.load_state_dict(data.state_dict())
    start = clock.now
    assert _ids(resumed) == [] and clock.now - start < 5   # closed by dt=3 once it exists; nothing re-read


def test_a_marker_closes_the_until_window(tmp_path, clock):
    _windows(tmp_path, ["dt=1"])
    (tmp_path / "dt=1" / "_SUCCESS").write_text("")
    data = streaming(tmp_path, clock, windows="dt=*", until="dt=1", marker="_SUCCESS", batch_size=10,
                     stop_after_idle=1000, **FAST)
    assert _ids(data) == [0, 1, 2] and clock.now < 1


def test_until_errors_name_it(tmp_path):
    with pytest.raises(ValueError, match=r"until='x' is not one of the windows \['a', 'b'\]"):
        StreamingArrowDataset(str(tmp_path), windows=["a", "b"], until="x")
    with pytest.raises(ValueError, match=r"until='dt=1' names the last window to read, but no windows are given"):
        StreamingArrowDataset(str(tmp_path), until="dt=1")
    with pytest.raises(ValueError, match=r"until='x' does not match the windows pattern 'dt=\*'"):
        StreamingArrowDataset(str(tmp_path), windows="dt=*", until="x")
