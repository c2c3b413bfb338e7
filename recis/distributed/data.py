"""Lockstep iteration: every rank takes the same number of steps, so no rank waits forever in a
collective that a rank with fewer batches never enters.

Training (`pad=False`) stops everyone at the first rank that runs out, like DistributedSampler's
drop_last. Evaluation (`pad=True`) goes on until every rank is done; a rank that ran out repeats
its last batch flagged `padding = True`, which the Trainer leaves out of losses and metrics.
"""
import copy
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from recis.distributed.env import ShardingEnv


class LockstepBatches:
    """Wraps a dataset; other attributes (state_dict, set_epoch, ...) pass through."""

    def __init__(self, data: Iterable, env: ShardingEnv, pad: bool = False):
        self.data, self.env, self.pad = data, env, pad

    def __getattr__(self, name):
        return getattr(self.__dict__["data"], name)

    def __iter__(self) -> Iterator:
        env = self.env
        it = iter(self.data)
        last, first = None, True
        while True:
            batch = next(it, None)
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int64)
            op = dist.ReduceOp.MAX if self.pad else dist.ReduceOp.MIN
            env.all_reduce(flag, what="lockstep batch count", op=op)
            if not int(flag):
                return
            if self.pad and first:
                last = self._template(batch)
                first = False
            if batch is None:
                batch = copy.copy(last)
                object.__setattr__(batch, "padding", True)
            elif self.pad:
                last = batch
            yield batch

    def _template(self, batch):
        """A rank with no batch at all pads with a copy of the first rank's first batch."""
        env = self.env
        have = env.all_gather_object(batch is not None, what="lockstep first batch")
        if all(have):
            return batch
        src = have.index(True)
        return env.broadcast_object(batch if env.rank == src else None, src=src, what="lockstep padding batch")


def is_padding(batch) -> bool:
    return bool(getattr(batch, "padding", False))
