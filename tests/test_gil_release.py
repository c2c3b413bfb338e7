"""The C++ kernels release the GIL, so other Python threads keep running during a lookup."""
import threading
import time

import torch

from recis.nn import HashEmbedding, TableGroup, Zeros


def _python_work_during(fn):
    """Runs fn in a thread; returns (iterations of a Python loop meanwhile, fn's seconds)."""
    started, done = threading.Event(), threading.Event()
    span = {}

    def worker():
        started.set()
        t0 = time.perf_counter()
        fn()
        span["s"] = time.perf_counter() - t0
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait()
    count = 0
    while not done.is_set():
        count += 1
    thread.join()
    return count, span["s"]


def _loop_rate(seconds=0.05):
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        count += 1
    return count / seconds


def test_lookup_ops_release_the_gil(restore_threads):
    torch.set_num_threads(1)  # leave the second core to the Python loop
    table = TableGroup(16, ["t"], [1], initializer=Zeros()).tables[0]
    ids = torch.randint(-2**62, 2**62, (2_000_000,))
    table.find_or_insert(ids)
    emb = HashEmbedding(16)
    offsets = torch.arange(0, ids.numel() + 1, 4)
    rate = _loop_rate()
    for fn in (lambda: table.find(ids), lambda: emb(ids, offsets)):
        count, seconds = _python_work_during(fn)
        # Holding the GIL would allow at most one switch interval (5 ms) of looping.
        assert seconds > 0.02, "the op is too short to tell"
        assert count > 0.2 * rate * seconds, (count, rate, seconds)
