"""Differentiable collectives of the sharded embedding path.

Gradients are averaged over ranks (divided by the world size), as DDP averages dense gradients,
so N ranks with a per-rank mean loss train the model that one process trains on the global batch.
"""
from typing import List

import torch

from recis.distributed.env import ShardingEnv


class RowsExchange(torch.autograd.Function):
    """Forward: all-to-all of flat row data (`send[i]` floats to rank i). Backward: the reverse
    all-to-all of the gradients, divided by the world size."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, env: ShardingEnv, send: List[int], recv: List[int]):
        ctx.env, ctx.send, ctx.recv = env, send, recv
        return env.all_to_all(flat, send, recv, what="embedding rows all-to-all")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        env = ctx.env
        out = env.all_to_all(grad.contiguous(), ctx.recv, ctx.send, what="embedding gradients all-to-all")
        return out / env.world_size if env.distributed else out, None, None, None


class AllReduceGrad(torch.autograd.Function):
    """Forward: identity. Backward: the gradient summed over ranks, divided by the world size
    (replicated tables then apply the same update on every rank)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, env: ShardingEnv):
        ctx.env = env
        return rows.view_as(rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        env = ctx.env
        if not env.distributed:
            return grad, None
        grad = grad.contiguous().clone()
        env.all_reduce(grad, what="replicated table gradients all_reduce")
        return grad / env.world_size, None
