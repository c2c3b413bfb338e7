"""The C++ kernels release the GIL, so other Python threads keep running during a lookup.

The probe does not compare loop counts with a rate measured moments earlier (on a busy machine
the share of CPU a thread gets changes from one moment to the next). It makes the interpreter
hand the GIL over only when a thread gives it up: with a switch interval far longer than the
test, a thread that holds the GIL keeps it until it blocks or releases it. Then whether this
thread runs at all while the worker is inside `fn` tells exactly whether `fn` let go of the GIL.
"""
import sys
import threading

import torch

from recis.nn import HashEmbedding, TableGroup, Zeros

_NEVER_SWITCH_S = 3600.0  # longer than any test may run (pytest's timeout is 600 s)


def python_ran_during(fn, calls: int = 8) -> bool:
    """Whether this thread ran Python code while `fn` was running on a worker thread.

    The worker calls fn up to `calls` times. If fn releases the GIL, this thread takes it during
    the first call and finds fewer than `calls` calls finished (True). If fn holds the GIL, this
    thread gets it back only when the worker exits, after all calls (False, every time: nothing
    can take the GIL from a thread that does not give it up)."""
    started, stop = threading.Event(), threading.Event()
    finished = []

    def worker():
        started.set()
        while len(finished) < calls and not stop.is_set():
            fn()
            finished.append(True)

    before = sys.getswitchinterval()
    sys.setswitchinterval(_NEVER_SWITCH_S)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        started.wait()
        seen = len(finished)  # the first Python this thread runs once the worker is going
        stop.set()
        thread.join()
    finally:
        sys.setswitchinterval(before)
    return seen < calls


def test_the_probe_sees_a_held_gil():
    # Builtins implemented in C that never release the GIL: the probe must report them.
    assert not python_ran_during(lambda: sum(range(300_000)))
    assert not python_ran_during(lambda: sorted(range(100_000), key=lambda x: -x))


def test_lookup_ops_release_the_gil():
    table = TableGroup(16, ["t"], [1], initializer=Zeros()).tables[0]
    ids = torch.randint(-2**62, 2**62, (2_000_000,), generator=torch.Generator().manual_seed(0))
    table.find_or_insert(ids)
    emb = HashEmbedding(16)
    offsets = torch.arange(0, ids.numel() + 1, 4)
    assert python_ran_during(lambda: table.find(ids))
    assert python_ran_during(lambda: emb(ids, offsets))
    # export is a pybind function, not a torch op: only its own release lets other threads run
    assert python_ran_during(table.export)
