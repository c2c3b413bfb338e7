"""run_local (the spawn + file-store launcher of the distributed tests) collects every rank's
result, however late the parent reads the queue."""
import multiprocessing
import queue
import time

import torch.multiprocessing as tmp_mp

from recis.distributed import local


class _LateQueue:
    """A results queue whose first timed get() returns only after every child has exited, and
    then reports a timeout: the parent's view when a rank puts its result and exits while the
    parent's get is timing out (what a loaded machine does now and then)."""

    def __init__(self, inner):
        self.inner, self.first = inner, True

    def __getstate__(self):  # the children only put
        return {"inner": self.inner, "first": False}

    def put(self, item):
        self.inner.put(item)

    def get(self, timeout=None):
        if self.first:
            self.first = False
            deadline = time.monotonic() + 120
            while multiprocessing.active_children() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise queue.Empty
        return self.inner.get(timeout=timeout)

    def get_nowait(self):
        return self.inner.get_nowait()


class _Context:
    def __init__(self, real):
        self.real, self.Process = real, real.Process

    def Queue(self):  # noqa: N802 (the multiprocessing context's spelling)
        return _LateQueue(self.real.Queue())


def test_a_result_that_lands_after_a_get_timed_out_is_still_collected(monkeypatch):
    real = tmp_mp.get_context
    monkeypatch.setattr(local.mp, "get_context", lambda method: _Context(real(method)))
    results = local.run_local(local._rank_and_world, 2, timeout_s=120)
    assert [r.value for r in results] == [(0, 2), (1, 2)]
    assert [r.exitcode for r in results] == [0, 0]


def test_a_rank_that_exits_without_a_result_is_named():
    results = local.run_local(_exit_silently_on_rank_1, 2, timeout_s=120, raise_on_error=False)
    assert results[0].ok and results[0].value == "done"
    assert not results[1].ok and results[1].error == "rank 1 exited with code 3 without a result"


def _exit_silently_on_rank_1():
    import os

    import torch.distributed as dist

    if dist.get_rank() == 1:
        os._exit(3)
    return "done"
