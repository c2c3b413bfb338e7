"""The owner's half of a sharded lookup: the rows of (namespace, id, count) keys that other ranks
(or this one) asked for, found or inserted in this rank's shard by the `recis::resolve` table op.

`resolve` takes distinct keys, each with its number of occurrences in the global batch, and
treats them exactly as one process's lookup of that batch would: the step advances once, hits
count `count` occurrences (LFU), misses pass admission with `count` at once and are inserted.
The rows are then read with `gather`; their gradient goes back to the table like a lookup's
(`lookup_backward` with one bag per key: the table's pending buffer, or the fused optimizer).
"""
from typing import Tuple

import torch

from recis._ops import COMBINERS, kernels
from recis.nn.functional import LOOKUP_EVAL, LOOKUP_TRAIN, LOOKUP_TRAIN_WITH_GRAD

_UNPOOLED = COMBINERS[None]


def resolve(group, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, mode: int) -> torch.Tensor:
    """Rows of the distinct keys (ns[i], ids[i]) in `group` (-1: none), each counted counts[i] times."""
    return kernels(group).resolve(group.token, group.handle, ns, ids, counts, mode)


def unique_keys(group, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ns, ids, summed counts, inverse) of the distinct keys among (ns[i], ids[i], counts[i]) of
    `group`'s tables (ranks send the same key once each), by the group's dedup kernel."""
    tables, dev = len(group.tables), ids.device
    if tables > 1:
        order = torch.sort(ns, stable=True).indices
        ids, counts = ids[order], counts[order]
        per_ns = torch.bincount(ns[order], minlength=tables)
        offsets = torch.cat([per_ns.new_zeros(1), torch.cumsum(per_ns, 0)])
    else:
        offsets = torch.tensor([0, ids.numel()], dtype=torch.int64, device=dev)
    u_ids, u_ns, _, inv = kernels(group).dedup_jagged(ids, offsets, list(range(tables)), 1)
    inv = inv.long()
    summed = torch.zeros_like(u_ids).scatter_add_(0, inv, counts)
    if tables > 1:
        inverse = torch.empty_like(inv)
        inverse[order] = inv
        inv = inverse
    return u_ns, u_ids, summed, inv


class _ResolvedRows(torch.autograd.Function):
    """Forward: resolve + gather of distinct keys. Backward: each key's gradient into the table,
    as lookup_backward with one bag per key (or the fused optimizer's update)."""

    @staticmethod
    def forward(ctx, anchor, group, ns, ids, counts):
        rows = resolve(group, ns, ids, counts, LOOKUP_TRAIN_WITH_GRAD)
        ctx.save_for_backward(rows)
        ctx.rows_hold = rows  # the forward's hold on its rows, until backward (as _HashLookup)
        ctx.group = group
        return _read(group, ns, ids, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        ctx.rows_hold = None
        group, n = ctx.group, rows.numel()
        dev = rows.device
        offsets = torch.arange(n + 1, dtype=torch.int64, device=dev)
        inverse = torch.arange(n, dtype=torch.int32, device=dev)
        grad = grad.contiguous()
        fused = group.fused_update()
        if fused is not None:
            fused.fused_backward(group, grad, offsets, None, rows, inverse, [0], n, [0], _UNPOOLED)
        else:
            kernels(group).lookup_backward(group.token, group.handle, grad, offsets, None, rows, inverse, [0],
                                                    n, [0], _UNPOOLED)
        return (None,) * 5


def _read(group, ns: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The embeddings of resolved keys; keys without a row read zeros or their initial values."""
    out = kernels(group).gather(group.handle, rows)
    if group.missing == "init":
        miss = (rows < 0).nonzero().squeeze(1)
        if miss.numel():
            for t in group.tables:
                sel = miss[ns[miss] == t.ns]
                if sel.numel():
                    out[sel] = t.initial_rows(ids[sel])
    return out


def owner_rows(group, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, training: bool,
               distinct: bool = False) -> torch.Tensor:
    """Rows [n, dim] of the keys (ns[i], ids[i]) in this rank's shard of `group`, in their order,
    inserted as in training when `training`; differentiable then (with grad enabled).
    `distinct=True` promises that no key repeats (saves the dedup)."""
    inverse = None
    if not distinct:
        ns, ids, counts, inverse = unique_keys(group, ns, ids, counts)
    if training and torch.is_grad_enabled():
        out = _ResolvedRows.apply(group.anchor, group, ns, ids, counts)
    else:
        rows = resolve(group, ns, ids, counts, LOOKUP_TRAIN if training else LOOKUP_EVAL)
        out = _read(group, ns, ids, rows)
    return out if inverse is None else out.index_select(0, inverse)
