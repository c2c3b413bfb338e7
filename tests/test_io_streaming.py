"""Streaming: new files are picked up as they land, half-written files are never read, the stream
resumes without re-reading consumed files, and stops on idle or on stop().

The tests that depend on settle_s and stop_after_idle run on a virtual clock (the `clock`
fixture): the stream's waits between polls advance it, and writers write on it, so no outcome
depends on how promptly a busy machine schedules the polling thread or a writer thread."""
import heapq
import importlib
import itertools
import json
import os
import threading
import types

import numpy as np
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
from test_io_helpers import id_table, ids_of

from recis.io import CorruptFileError, StreamingArrowDataset
from recis.io.watch import DirectoryWatcher

FAST = dict(poll_interval=0.02, settle_s=0.1)


class VirtualClock:
    """Time for recis.io.streaming and recis.io.watch that moves only when the stream waits.

    The stream reads time.monotonic() for settle_s and stop_after_idle, and waits poll_interval
    on its stop_event between polls. Under this clock each such wait advances the time by its
    timeout at once, first running the steps scheduled with `at` up to the new time (a writer's
    next line, say): settle and idle periods count polls, not the machine's load."""

    def __init__(self):
        self.now = 0.0
        self._steps = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def at(self, t: float, fn):
        """Runs fn once the time reaches t (in the thread whose wait gets there)."""
        with self._lock:
            heapq.heappush(self._steps, (t, next(self._seq), fn))

    def advance(self, dt: float):
        target = self.now + dt
        while True:
            with self._lock:
                if not self._steps or self._steps[0][0] > target:
                    break
                t, _, fn = heapq.heappop(self._steps)
            self.now = max(self.now, t)
            fn()
        self.now = target

    def event(self) -> threading.Event:
        """A stop_event for a StreamingArrowDataset whose timed waits advance this clock."""
        clock = self

        class VirtualEvent(threading.Event):
            def wait(self, timeout=None):
                if timeout is None or self.is_set():
                    return super().wait(timeout)
                clock.advance(timeout)
                return self.is_set()

        return VirtualEvent()


@pytest.fixture
def clock(monkeypatch):
    c = VirtualClock()
    virtual_time = types.SimpleNamespace(monotonic=c.monotonic)
    for module in ("recis.io.streaming", "recis.io.watch"):
        monkeypatch.setattr(importlib.import_module(module), "time", virtual_time)
    return c


def streaming(root, clock, **kwargs) -> StreamingArrowDataset:
    return StreamingArrowDataset(str(root), stop_event=clock.event(), **kwargs)


def _land(path, table):
    """Writes a Parquet file the safe way: under a hidden temporary name, then renamed."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_until(data, n):
    """Ids of the batches until n ids arrived (then stop()); a safety stop_after_idle ends the
    stream if they never do."""
    got = []
    for batch in data:
        got += batch.column("id").to_pylist()
        if len(got) >= n:
            data.stop()
    return got


def test_picks_up_a_file_added_while_iterating(tmp_path, clock):
    _land(str(tmp_path / "a.parquet"), id_table(0, 10))
    data = streaming(tmp_path, clock, batch_size=5, stop_after_idle=5, **FAST)
    got = []
    for batch in data:
        got.append(batch.column("id").to_pylist())
        if len(got) == 1:
            _land(str(tmp_path / "b.parquet"), id_table(10, 5))
        if len(got) == 3:
            data.stop()
    assert got == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert data.stats.files_read == 2


def test_half_written_parquet_is_never_read(tmp_path, clock):
    """The writer pauses longer than settle_s between row groups: only the footer magic tells."""
    _land(str(tmp_path / "a.parquet"), id_table(0, 4))
    writer = pq.ParquetWriter(str(tmp_path / "b.parquet"), id_table(0, 1).schema)
    closed = {}
    for g in range(4):  # a row group every 0.15 s, then the footer
        clock.at(0.15 * g, lambda g=g: writer.write_table(id_table(4 + g * 5, 5), row_group_size=5))
    clock.at(0.6, lambda: (writer.close(), closed.setdefault("at", clock.now)))
    data = streaming(tmp_path, clock, batch_size=4, stop_after_idle=10, **FAST)
    got, first_b = [], None
    for batch in data:
        ids = batch.column("id").to_pylist()
        if first_b is None and any(i >= 4 for i in ids):
            first_b = clock.now
        got += ids
        if len(got) >= 24:
            data.stop()
    assert got == list(range(24)) and first_b > closed["at"]
    assert data.stats.files_skipped == 0


def test_half_written_csv_is_never_read(tmp_path, clock):
    """CSV has no footer: lines arrive with pauses longer than the poll interval but shorter than
    settle_s; nothing is read until the size has been stable for settle_s (a file read early
    would be consumed short, and the 8 ids would never all arrive)."""
    f = open(tmp_path / "b.csv", "w")
    f.write("id,s\n")
    f.flush()

    def line(i):
        f.write(f"{i},s{i}\n")
        f.flush()

    for i in range(8):
        clock.at(0.06 * (i + 1), lambda i=i: line(i))
    clock.at(0.06 * 8, f.close)
    data = streaming(tmp_path, clock, batch_size=4, stop_after_idle=3, poll_interval=0.02, settle_s=0.4)
    got = _read_until(data, 8)
    assert f.closed and got == list(range(8)) and data.stats.files_read == 1


def test_marker_gates_a_window(tmp_path, clock):
    window = tmp_path / "dt=2026112700"
    window.mkdir()
    (window / "a.csv").write_text("id\n1\n2\n")
    data = streaming(tmp_path, clock, windows="dt=*", marker="_SUCCESS", batch_size=10, stop_after_idle=0.6,
                     **FAST)
    assert ids_of(data) == [] and data.stats.files_waiting == 1
    (window / "_SUCCESS").write_text("")
    data = streaming(tmp_path, clock, windows="dt=*", marker="_SUCCESS", batch_size=10, stop_after_idle=0.6,
                     **FAST)
    assert ids_of(data) == [1, 2]


def test_time_windows_explicit_order_and_pattern(tmp_path, clock):
    for w, start in (("dt=2026112701", 100), ("dt=2026112700", 0), ("other", 500)):
        os.makedirs(tmp_path / w)
        _land(str(tmp_path / w / "part-1.parquet"), id_table(start + 10, 2))
        _land(str(tmp_path / w / "part-0.parquet"), id_table(start, 2))
    explicit = streaming(tmp_path, clock, windows=["dt=2026112701", "dt=2026112700", "dt=2026112702"], batch_size=2,
                         stop_after_idle=5, **FAST)
    assert _read_until(explicit, 8) == [100, 101, 110, 111, 0, 1, 10, 11]
    pattern = streaming(tmp_path, clock, windows="dt=*", batch_size=2, stop_after_idle=5, **FAST)
    assert _read_until(pattern, 8) == [0, 1, 10, 11, 100, 101, 110, 111]
    assert pattern.state_dict()["shards"]["0"]["files"][0] == "dt=2026112700/part-0.parquet"


def test_orc_footer_check(tmp_path):
    path = str(tmp_path / "a.orc")
    orc.write_table(id_table(0, 3, with_lists=False), path)
    with open(path, "rb") as f:
        data = f.read()
    (tmp_path / "b.orc").write_bytes(data[: len(data) // 2])  # an interrupted copy
    watcher = DirectoryWatcher(str(tmp_path), settle_s=0.0)
    watcher.poll()
    assert watcher.poll() == ["a.orc"] and watcher.waiting == 1


def test_stop_and_resume_never_rereads(tmp_path, clock):
    for i in range(3):
        _land(str(tmp_path / f"f{i}.parquet"), id_table(i * 10, 10))
    kw = dict(batch_size=4, shuffle_buffer=7, seed=3, stop_after_idle=0.5, **FAST)
    full = [b.column("id").to_pylist() for b in streaming(tmp_path, clock, **kw)]
    assert sorted(sum(full, [])) == list(range(30))
    data = streaming(tmp_path, clock, prefetch=2, **kw)
    head = []
    for batch in data:
        head.append(batch.column("id").to_pylist())
        if len(head) == 3:
            data.stop()
    assert len(head) == 3  # nothing after stop(), prefetched batches are not delivered
    state = json.loads(json.dumps(data.state_dict()))
    resumed = streaming(tmp_path, clock, **kw)
    resumed.load_state_dict(state)
    rest = [b.column("id").to_pylist() for b in resumed]
    assert head + rest == full
    # a file landing later is read once; consumed files are not read again
    _land(str(tmp_path / "f3.parquet"), id_table(30, 2))
    later = streaming(tmp_path, clock, **kw)
    later.load_state_dict(resumed.state_dict())
    assert ids_of(later) == [30, 31] and later.stats.files_read == 1


def test_stop_from_another_thread_wakes_an_idle_stream(tmp_path):
    """stop() from another thread, once the stream waits between polls (an hour apart), ends it:
    the wait wakes up. (stop() before the iteration starts would be cleared by it.)"""
    data = StreamingArrowDataset(str(tmp_path), batch_size=4, poll_interval=3600, settle_s=0.1)
    polled = threading.Event()
    real_poll = data.watcher.poll

    def poll(*args, **kwargs):
        out = real_poll(*args, **kwargs)
        polled.set()
        return out

    data.watcher.poll = poll
    got = []
    reader = threading.Thread(target=lambda: got.append(list(data)), daemon=True)
    reader.start()
    assert polled.wait(60)
    data.stop()
    reader.join(60)  # a hang guard: woken, the stream ends at once; not woken, in an hour
    assert not reader.is_alive() and got == [[]]


def test_streaming_shards_split_files_by_name(tmp_path, clock):
    for i in range(8):
        _land(str(tmp_path / f"f{i}.parquet"), id_table(i * 3, 3))
    parts = [ids_of(streaming(tmp_path, clock, rank=r, world_size=3, batch_size=5, stop_after_idle=0.5, **FAST))
             for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(24)) and sum(1 for p in parts if p) >= 2


def test_corrupt_streaming_file_is_an_error_or_skipped(tmp_path, clock):
    _land(str(tmp_path / "a.parquet"), id_table(0, 3))
    (tmp_path / "b.parquet").write_bytes(b"PAR1" + b"\0" * 32 + b"PAR1")  # magic at both ends, garbage inside
    with pytest.raises(CorruptFileError, match="b.parquet"):
        list(streaming(tmp_path, clock, stop_after_idle=0.5, **FAST))
    data = streaming(tmp_path, clock, stop_after_idle=0.5, on_error="skip", **FAST)
    assert ids_of(data) == [0, 1, 2] and data.stats.files_skipped == 1


def test_streaming_schema_given_handles_all_null_first_file(tmp_path, clock):
    schema = pa.schema([("id", pa.int64()), ("v", pa.float64())])
    _land(str(tmp_path / "a.parquet"), pa.table({"id": [0], "v": pa.nulls(1)}))
    _land(str(tmp_path / "b.parquet"), pa.table({"id": [1], "v": np.array([2.5])}))
    data = streaming(tmp_path, clock, schema=schema, batch_size=8, stop_after_idle=0.5, **FAST)
    (batch,) = list(data)
    assert batch.to_pydict() == {"id": [0, 1], "v": [None, 2.5]}
    inferred = streaming(tmp_path, clock, batch_size=8, stop_after_idle=0.5, **FAST)
    with pytest.raises(Exception, match="pass schema="):
        list(inferred)


@pytest.mark.parametrize("key", ["../outside/secret.csv", "/etc/secret.csv", "a/../../secret.csv", "./a.csv",
                                 "a//b.csv", "a\\..\\b.csv", ".hidden.csv"])
def test_a_saved_position_cannot_name_a_file_outside_the_root(tmp_path, key):
    """A checkpoint's data position is data from a file: its file keys are checked, so a crafted
    one can't make a resumed stream read a file outside the watched root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("id\n666\n")
    _land(str(root / "a.parquet"), id_table(0, 4))
    kw = dict(batch_size=4, stop_after_idle=0.3, **FAST)
    data = StreamingArrowDataset(str(root), **kw)
    assert ids_of(data) == [0, 1, 2, 3]
    state = json.loads(json.dumps(data.state_dict()))
    shard = state["shards"]["0"]
    shard["files"], shard["unit"] = [key] + shard["files"], 0
    resumed = StreamingArrowDataset(str(root), **kw)
    with pytest.raises(ValueError, match="is not a data file's path relative to the root"):
        resumed.load_state_dict(state)
        ids_of(resumed)
