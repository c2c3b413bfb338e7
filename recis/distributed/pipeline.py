"""Pipelined input: the next batch's ids exchange runs while the current batch trains.

`pipelined(data, model)` yields the batches of `data` unchanged, but before handing out batch i
it starts the ids all-to-all of batch i + 1 on every ShardedEmbeddingCollection of `model`
(asynchronously); the forward of batch i + 1 then only waits for what is left of it. Results
are identical to the unpipelined loop: tables are read and written only in the forward.

>>> list(pipelined([1, 2, 3], torch.nn.Linear(1, 1)))   # no sharded tables: passes through
[1, 2, 3]
"""
from typing import Iterable, Iterator

import torch
from torch import nn

from recis.distributed.sharded_collection import ShardedEmbeddingCollection


def sharded_collections(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, ShardedEmbeddingCollection)]


def pipelined(data: Iterable, model: nn.Module, key: str = "sparse") -> Iterator:
    """Batches of `data` whose KeyedJaggedTensor (attribute `key`) is prefetched one step ahead."""
    collections = sharded_collections(model)
    if not collections:
        yield from data
        return
    it = iter(data)
    current = next(it, None)
    if current is None:
        return
    _prefetch(collections, current, key)
    for upcoming in it:
        _prefetch(collections, upcoming, key)
        yield current
        current = upcoming
    yield current


def _prefetch(collections, batch, key: str) -> None:
    features = getattr(batch, key, None)
    if features is None:
        return
    with torch.profiler.record_function("recis:prefetch_input_dist"):
        for c in collections:
            c.prefetch(features)
