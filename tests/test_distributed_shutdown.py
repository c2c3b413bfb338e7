"""recis.distributed.shutdown: a job's process groups end with the job, not with the interpreter.

A gloo backend outliving the job keeps worker threads that release the last collectives' tensors
and need the GIL for it; once Python finalizes, such a thread is ended mid-C++ and the process
aborts (SIGABRT) at random after a successful job. `recis train` / `recis eval` under torchrun
shut down the group they made (tests/test_distributed_launch.py runs them end to end)."""
import os

import pytest

import _dist_workers as w
from recis.distributed.local import run_local


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="lists threads through /proc")
def test_shutdown_joins_every_backend_thread():
    for r in run_local(w.shutdown_after_training, 2, 2, 16, timeout_s=180):
        before, after, initialized = r.value
        assert any("pt_gloo" in n for n in before), before  # the default group and the tables' subgroup
        assert after == [] and not initialized, (r.rank, after)
