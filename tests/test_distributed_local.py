"""run_local (the spawn + file-store launcher of the distributed tests) collects every rank's
result, however late the parent reads the queue, and starts a group that never formed again."""
import multiprocessing
import queue
import time

import pytest
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


def _count_call(path):
    with open(path, "a") as f:
        f.write("x")
    raise RuntimeError("fn failed on purpose")


def test_a_group_that_never_forms_is_started_again_and_named(tmp_path, monkeypatch):
    """A failure inside init_process_group (no rank ran fn) starts the whole group again, up to
    init_attempts times; the error says the group did not form."""
    starts = []
    real = local._run_once
    monkeypatch.setattr(local, "_run_once", lambda *a: starts.append(1) or real(*a))
    with pytest.raises(RuntimeError, match=r"(?s)rank 0 of 2 failed:\ninit_process_group failed \(the process "
                                           r"group did not form; fn did not run\).*bogus"):
        local.run_local(_count_call, 2, str(tmp_path / "calls"), backend="bogus", init_attempts=3, timeout_s=120)
    assert len(starts) == 3
    assert not (tmp_path / "calls").exists()  # fn never ran


def test_a_failure_of_fn_is_never_retried(tmp_path, monkeypatch):
    starts = []
    real = local._run_once
    monkeypatch.setattr(local, "_run_once", lambda *a: starts.append(1) or real(*a))
    results = local.run_local(_count_call, 2, str(tmp_path / "calls"), raise_on_error=False, timeout_s=120)
    assert len(starts) == 1 and [r.ok for r in results] == [False, False]
    assert all("fn failed on purpose" in r.error for r in results)
    assert (tmp_path / "calls").read_text() == "xx"  # once per rank
