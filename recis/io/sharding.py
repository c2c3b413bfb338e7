"""Which shard this process (rank x DataLoader worker) reads.

shard = rank * num_workers + worker_id, num_shards = world_size * num_workers. rank and
world_size default to torch.distributed's when a process group is initialised, else 0 and 1;
the worker comes from torch.utils.data.get_worker_info() (0 of 1 outside DataLoader workers).

>>> resolve_shard(rank=1, world_size=2)
(1, 2)
>>> assign_round_robin(list("abcdefg"), shard=1, num_shards=3)
['b', 'e']
"""
from typing import List, Optional, Sequence, Tuple, TypeVar

import torch

T = TypeVar("T")


def distributed_rank_world(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(rank, world_size): the arguments when given, else the process group's, else (0, 1)."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, world_size={world_size}")
    return rank, world_size


def resolve_shard(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(shard, num_shards) of the calling process and DataLoader worker."""
    rank, world_size = distributed_rank_world(rank, world_size)
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


def assign_round_robin(units: Sequence[T], shard: int, num_shards: int) -> List[T]:
    """Units shard, shard + num_shards, ...: every unit in exactly one shard."""
    return list(units[shard::num_shards])
