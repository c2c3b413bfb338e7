"""ShardingEnv: this process's rank and world, with or without a torch.distributed process group.

Every collective recis issues goes through here, so a dead or stuck peer surfaces as one clear
`DistributedError` (naming the collective, this rank and the timeout) instead of a hang or a
transport message. With no process group the env is rank 0 of 1 and collectives are local.

>>> env = ShardingEnv.current()
>>> env.rank, env.world_size, env.distributed
(0, 1, False)
"""
import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective failed: a peer rank died, hung past the timeout, or disagreed on its inputs."""


@dataclass
class ShardingEnv:
    """`group` is None for a single process; `timeout_s` is the collective timeout it was made with."""

    rank: int = 0
    world_size: int = 1
    group: Optional[Any] = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a world of size {self.world_size}")
        if self.world_size > 1 and self.group is None:
            raise ValueError(f"a world of {self.world_size} ranks needs a process group")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        """The process group's backend ("gloo", "nccl", ...); "local" for a single process."""
        return dist.get_backend(self.group) if self.group is not None else "local"

    @property
    def device(self) -> torch.device:
        """Where this env's collectives take their tensors: the current CUDA device for nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @classmethod
    def current(cls, group=None) -> "ShardingEnv":
        """The env of `group` (default: the default group) if torch.distributed is initialized, else a single process."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        group = group or dist.group.WORLD
        return cls(dist.get_rank(group), dist.get_world_size(group), group, _timeout_of(group))

    def subgroup(self) -> "ShardingEnv":
        """A new process group over the same ranks (collectives on it never interleave with DDP's)."""
        if not self.distributed:
            return self
        group = dist.new_group(ranks=list(range(self.world_size)),
                               timeout=datetime.timedelta(seconds=self.timeout_s))
        return ShardingEnv(self.rank, self.world_size, group, self.timeout_s)

    # ---- collectives (no-ops for one process) ----
    @contextlib.contextmanager
    def failing_as(self, what: str):
        """Re-raises transport errors and timeouts of the collective `what` as DistributedError."""
        try:
            yield
        except DistributedError:
            raise
        except (RuntimeError, OSError) as e:
            raise DistributedError(
                f"rank {self.rank}/{self.world_size}: {what} failed (collective timeout {self.timeout_s:g} s): a peer "
                f"rank probably died or stopped; the last complete checkpoint is intact. Cause: {e}") from e

    def all_to_all(self, tensor: torch.Tensor, send_counts: List[int], recv_counts: List[int],
                   what: str = "all_to_all", async_op: bool = False):
        """Sends rows [sum(send_counts), ...] of `tensor` split by destination; returns the received
        rows ([sum(recv_counts), ...]), or (rows, work) with async_op."""
        if not self.distributed:
            return (tensor, None) if async_op else tensor
        out = tensor.new_empty((sum(recv_counts),) + tuple(tensor.shape[1:]))
        with self.failing_as(what):
            work = dist.all_to_all_single(out, tensor.contiguous(), list(recv_counts), list(send_counts),
                                          group=self.group, async_op=async_op)
        return (out, work) if async_op else out

    def exchange_counts(self, send_counts: torch.Tensor, what: str = "count exchange") -> torch.Tensor:
        """recv[r] = what rank r sends to this rank, given send[r] = what this rank sends to r."""
        if not self.distributed:
            return send_counts.clone()
        out = torch.empty_like(send_counts)
        with self.failing_as(what):
            dist.all_to_all_single(out, send_counts.contiguous(), group=self.group)
        return out

    def all_reduce(self, tensor: torch.Tensor, what: str = "all_reduce", op=None) -> torch.Tensor:
        """In place; returns `tensor`."""
        if self.distributed:
            with self.failing_as(what):
                dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=self.group)
        return tensor

    def all_gather_object(self, obj: Any, what: str = "all_gather_object") -> List[Any]:
        if not self.distributed:
            return [obj]
        out: List[Any] = [None] * self.world_size
        with self.failing_as(what):
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def all_gather_rows(self, tensor: torch.Tensor, what: str = "all_gather") -> List[torch.Tensor]:
        """Every rank's `tensor` (rows may differ in number across ranks)."""
        if not self.distributed:
            return [tensor]
        n = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        with self.failing_as(what):
            dist.all_gather(sizes, n, group=self.group)
            top = int(max(int(s) for s in sizes))
            padded = tensor.new_zeros((top,) + tuple(tensor.shape[1:]))
            padded[:tensor.shape[0]] = tensor
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded, group=self.group)
        return [p[:int(s)] for p, s in zip(parts, sizes)]

    def broadcast_object(self, obj: Any, src: int = 0, what: str = "broadcast") -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        with self.failing_as(what):
            dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def barrier(self, what: str = "barrier") -> None:
        if self.distributed:
            with self.failing_as(what):
                # A barrier as a tiny all_reduce: it honours the group's timeout on every backend.
                dist.all_reduce(torch.zeros(1, device=self.device), group=self.group)


def _timeout_of(group) -> float:
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return float(group._get_backend(device).options._timeout.total_seconds())
    except (AttributeError, RuntimeError):
        return float(os.environ.get("RECIS_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def init_from_env(backend: Optional[str] = None, timeout_s: Optional[float] = None) -> ShardingEnv:
    """Initializes torch.distributed from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)
    when it is set and not initialized yet: gloo on CPU, nccl when CUDA is available. Without
    torchrun's environment returns a single-process env (no process group). A script that made
    the group here ends with `shutdown()`."""
    if dist.is_available() and dist.is_initialized():
        return ShardingEnv.current()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ShardingEnv()
    if timeout_s is None:
        timeout_s = float(os.environ.get("RECIS_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    env = ShardingEnv.current()
    env.timeout_s = timeout_s
    return env


def shutdown() -> None:
    """Destroys the default process group and every group made from it, and frees their backends
    now: their worker threads are joined. Call it at the end of a job whose group init_from_env
    made, once the job's modules, DDP wrappers and ShardingEnvs are no longer referenced (they
    hold the groups; the collection below frees the ones caught in reference cycles).

    A group left to the end of the interpreter aborts the process at random after a successful
    job: a gloo worker thread that drops its last collective's tensors needs the GIL, and once
    Python has started finalizing, a thread that asks for the GIL is ended with pthread_exit,
    which unwinds through C++ frames that may not throw ("terminate called without an active
    exception", SIGABRT, and torchrun reports the job as failed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
