"""run_local: runs a function on N local processes joined in a torch.distributed group.

For tests, benchmarks and notebooks; production jobs use `torchrun`. Each rank runs
`fn(*args)` after `init_process_group` (gloo by default, over a file store in a fresh temporary
directory, so no port is needed); results come back per rank, in rank order.

>>> [r.value for r in run_local(_rank_and_world, 2)] 
[(0, 2), (1, 2)]
"""
import datetime
import os
import pickle
import queue
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recis.distributed.env import shutdown


#: how a rank's error starts when the process group never formed on it (fn did not run)
_INIT_FAILED = "init_process_group failed (the process group did not form; fn did not run):\n"


@dataclass
class RankResult:
    rank: int
    ok: bool
    value: Any = None
    error: Optional[str] = None      # the formatted traceback when fn raised
    exitcode: Optional[int] = None   # the process exit code (None while it had not exited)


def _worker(fn, rank, world_size, store, backend, collective_timeout_s, threads, args, results):
    torch.set_num_threads(threads)
    try:
        try:
            dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=collective_timeout_s))
        except BaseException:  # noqa: BLE001 (the group never formed: fn has not run on this rank)
            results.put((rank, False, None, _INIT_FAILED + traceback.format_exc()))
            return
        # Plain pickle bytes: tensors are copied, not shared through file descriptors that die with this process.
        results.put((rank, True, pickle.dumps(fn(*args)), None))
    except BaseException:  # noqa: BLE001 (reported to the parent with its traceback)
        results.put((rank, False, None, traceback.format_exc()))
    finally:
        # Destroy and free the groups now (joining their threads), not at interpreter exit, where a
        # gloo thread can abort the process after its result was sent (see env.shutdown).
        shutdown()


def run_local(fn: Callable, world_size: int, *args, timeout_s: float = 300.0, backend: str = "gloo",
              collective_timeout_s: float = 60.0, threads_per_rank: int = 1,
              raise_on_error: bool = True, init_attempts: int = 3) -> List[RankResult]:
    """Runs `fn(*args)` on `world_size` local ranks (fn and args must be picklable: a module-level
    function). Raises RuntimeError with the first failing rank's traceback unless
    `raise_on_error=False`; a rank still running after `timeout_s` is killed and reported.

    When the process group itself fails to form (every failing rank failed inside
    `init_process_group`, so `fn` ran on no rank), the whole group is started again on a fresh
    store, up to `init_attempts` times in all: gloo's TCP mesh handshake between local processes
    occasionally fails with "Connection closed by peer" on a loaded machine. A failure of `fn`
    itself is never retried."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if init_attempts < 1:
        raise ValueError(f"init_attempts must be >= 1, got {init_attempts}")
    for attempt in range(init_attempts):
        ranked = _run_once(fn, world_size, args, timeout_s, backend, collective_timeout_s, threads_per_rank)
        failed = [r for r in ranked if not r.ok]
        group_never_formed = failed and all(r.error and r.error.startswith(_INIT_FAILED) for r in failed) and \
            not any(r.ok for r in ranked)
        if not group_never_formed or attempt + 1 == init_attempts:
            break
    if failed and raise_on_error:
        raise RuntimeError(f"rank {failed[0].rank} of {world_size} failed:\n{failed[0].error}")
    return ranked


def _run_once(fn, world_size, args, timeout_s, backend, collective_timeout_s, threads_per_rank) -> List[RankResult]:
    """One start of the `world_size` ranks on a fresh store; each rank's result."""
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="recis-dist-")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, os.path.join(tmp, "store"), backend,
                                               collective_timeout_s, threads_per_rank, args, results), daemon=True)
             for r in range(world_size)]
    out = {r: RankResult(r, False) for r in range(world_size)}
    try:
        for p in procs:
            p.start()
        out.update(_collect(procs, results, timeout_s))
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for r, p in enumerate(procs):
            out[r].exitcode = p.exitcode
        shutil.rmtree(tmp, ignore_errors=True)
    return [out[r] for r in range(world_size)]


def _collect(procs, results, timeout_s: float) -> Dict[int, RankResult]:
    """Each rank's result from the `results` queue, or why it has none (it exited without one, or
    is still running at the deadline)."""
    out: Dict[int, RankResult] = {}

    def record(item) -> None:
        rank, ok, value, error = item
        out[rank] = RankResult(rank, ok, pickle.loads(value) if ok else None, error)
        pending.discard(rank)

    deadline = time.monotonic() + timeout_s
    pending = set(range(len(procs)))
    while pending and time.monotonic() < deadline:
        try:
            record(results.get(timeout=0.2))
            continue
        except queue.Empty:
            pass
        exited = [r for r in pending if procs[r].exitcode is not None]
        if not exited:
            continue
        # A rank's result is in the queue's pipe before the rank exits, but it may have arrived
        # after the get above timed out: read everything there before calling a rank silent.
        while True:
            try:
                record(results.get_nowait())
            except queue.Empty:
                break
        for r in exited:
            if r in pending:
                out[r] = RankResult(r, False, error=f"rank {r} exited with code {procs[r].exitcode} without a result")
                pending.discard(r)
    for r in pending:
        out[r] = RankResult(r, False, error=f"rank {r} did not finish within {timeout_s:g} s")
    return out


def _rank_and_world():
    return dist.get_rank(), dist.get_world_size()
