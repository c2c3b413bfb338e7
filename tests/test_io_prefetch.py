"""Prefetcher: order, bounded read-ahead, errors, shutdown, pinning only with CUDA; bounded memory."""
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.io import ArrowDataset, Prefetcher, pin_memory
from recis.io.prefetch import resolve_pin_memory


def test_items_arrive_in_order():
    assert list(Prefetcher(range(100), depth=3)) == list(range(100))


def test_read_ahead_is_bounded_by_depth():
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    it = iter(Prefetcher(source(), depth=3))
    assert next(it) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 1  # received + queued + one being put
    it.close()


def test_producer_errors_reach_the_consumer():
    def source():
        yield 1
        raise KeyError("broken source")

    it = iter(Prefetcher(source()))
    assert next(it) == 1
    with pytest.raises(KeyError, match="broken source"):
        next(it)


def test_breaking_out_stops_the_thread():
    closed = threading.Event()

    def source():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = set(threading.enumerate())
    for i in Prefetcher(source(), depth=2):
        if i == 5:
            break
    # No thread of this Prefetcher is left (other threads of the process may come and go).
    assert closed.is_set() and [t for t in threading.enumerate() if t not in before] == []


def test_pinning_needs_cuda():
    assert resolve_pin_memory(False) is False
    assert resolve_pin_memory("auto") is torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            Prefetcher([], pin_memory=True)
        out = next(iter(Prefetcher([torch.ones(2)], pin_memory="auto")))
        assert not out.is_pinned()
    with pytest.raises(ValueError, match="pin_memory"):
        resolve_pin_memory("yes")


def test_pin_memory_walks_containers():
    class Pinnable:
        def pin_memory(self):
            return "pinned"

    pinned = pin_memory({"a": [Pinnable(), (Pinnable(), 3)], "b": "text"})
    assert pinned == {"a": ["pinned", ("pinned", 3)], "b": "text"}


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc to measure RSS")
def test_memory_stays_bounded_while_streaming_many_batches(tmp_path):
    """~100 MB of column data flows through shuffle, prefetch and rebatching; RSS must not grow
    with it (bounded read-ahead, windows and queue)."""
    n = 200_000
    table = pa.table({"id": pa.array(range(n), pa.int64()), "a": pa.array(range(n), pa.float64())})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=50_000)
    data = ArrowDataset(str(tmp_path), batch_size=8192, shuffle_buffer=32_768, epochs=30, prefetch=2)
    rows, peak, base = 0, 0, None
    for i, batch in enumerate(data):
        rows += batch.num_rows
        if i == 50:
            base = _rss_bytes()
        elif base is not None:
            peak = max(peak, _rss_bytes())
    assert rows == 30 * n
    assert peak - base < 48 * 2 ** 20, f"RSS grew by {(peak - base) / 2 ** 20:.1f} MiB"
