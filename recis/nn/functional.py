"""Functional layer: input checks and the autograd.Function around the fused lookup ops."""
from typing import List, Optional

import torch

from recis._ops import kernels
from recis.vocabulary import LOOKUP_MODES

# lookup_forward modes: eval (find only), train (insert), train with a backward to come
# (its rows are also protected from eviction until the optimizer step).
LOOKUP_EVAL, LOOKUP_TRAIN, LOOKUP_TRAIN_WITH_GRAD = (LOOKUP_MODES[m] for m in ("eval", "train", "train_with_grad"))


def as_ids(ids, what: str) -> torch.Tensor:
    """An int64 id tensor from ids given as int64 or int32 (tensor or sequence); TypeError otherwise."""
    if not isinstance(ids, torch.Tensor):
        ids = torch.as_tensor(ids)
    if ids.dtype == torch.int32:
        ids = ids.long()
    if ids.dtype != torch.int64:
        raise TypeError(f"{what}: ids must be int64 (or int32), got dtype {ids.dtype}")
    return ids


def check_jagged(values: torch.Tensor, offsets: torch.Tensor, weights: Optional[torch.Tensor], device: torch.device,
                 what: str = "HashEmbedding") -> torch.Tensor:
    """Validates a jagged batch; returns int64 values. Offsets' contents are checked in C++."""
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{what}: values must be a tensor, got {type(values).__name__}")
    values = as_ids(values, what)
    if values.dim() != 1:
        raise ValueError(f"{what}: values must be 1-D, got shape {tuple(values.shape)}")
    if offsets.dtype != torch.int64:
        raise TypeError(f"{what}: offsets must be int64, got dtype {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{what}: offsets must be 1-D with B + 1 entries, got shape {tuple(offsets.shape)}")
    for name, t in (("values", values), ("offsets", offsets), ("per_sample_weights", weights)):
        if t is not None and t.device != device:
            raise RuntimeError(f"{what}: the table lives on {device} but {name} is on {t.device}")
    if weights is not None:
        if weights.dtype != torch.float32:
            raise TypeError(f"{what}: per_sample_weights must be float32, got dtype {weights.dtype}")
        if weights.shape != values.shape:
            raise ValueError(f"{what}: per_sample_weights has shape {tuple(weights.shape)}, values {tuple(values.shape)}")
        if weights.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{what}: per_sample_weights require grad, but recis does not differentiate with respect "
                             "to them; pass per_sample_weights.detach()")
    return values


class _HashLookup(torch.autograd.Function):
    """Forward: dedup + find-or-insert + pooled lookup in one op. Backward: per-unique-row
    gradients into the table's pending buffer, which the sparse optimizer applies in place."""

    @staticmethod
    def forward(ctx, anchor, token, group, values, offsets, weights, feature_ns, batch, col_offsets, out_cols,
                combiner):
        out, unique_rows, inverse = kernels(group).lookup_forward(
            token, group.handle, values, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner,
            LOOKUP_TRAIN_WITH_GRAD)
        ctx.save_for_backward(offsets, weights, unique_rows, inverse)
        if not torch.compiler.is_compiling():
            # unique_rows carries the forward's hold on its rows (see lookup_forward): the saved
            # tensor keeps it until the graph is freed; this reference keeps it until backward
            # even when a saved-tensor hook (offloading, activation checkpointing) copies or
            # drops the saved tensor.
            ctx.rows_hold = unique_rows
        ctx.token, ctx.group = token, group
        ctx.args = (feature_ns, batch, col_offsets, combiner)
        # The data-dependent outputs are returned too (non-differentiable), so torch.compile
        # sees where their dynamic sizes come from.
        ctx.mark_non_differentiable(unique_rows, inverse)
        return out, unique_rows, inverse

    @staticmethod
    def backward(ctx, grad_out, _unique_grad=None, _inverse_grad=None):
        offsets, weights, unique_rows, inverse = ctx.saved_tensors
        feature_ns, batch, col_offsets, combiner = ctx.args
        group = ctx.group
        fused = None if torch.compiler.is_compiling() else group.fused_update()
        if not torch.compiler.is_compiling():
            ctx.rows_hold = None  # the saved tensor (or the caller of another backward) holds on
        if fused is not None:
            fused.fused_backward(group, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch,
                                 col_offsets, combiner)
        else:
            kernels(group).lookup_backward(ctx.token, group.handle, grad_out, offsets, weights, unique_rows, inverse,
                                           feature_ns, batch, col_offsets, combiner)
        return (None,) * 11


def hash_lookup(group, values: torch.Tensor, offsets: torch.Tensor, weights: Optional[torch.Tensor],
                feature_ns: List[int], batch: int, col_offsets: List[int], out_cols: int, combiner: int,
                train: bool) -> torch.Tensor:
    """Looks up a (KeyedJaggedTensor-ordered) jagged batch in `group`; differentiable in training."""
    if train and torch.is_grad_enabled():
        out, _, _ = _HashLookup.apply(group.anchor, group.token, group, values, offsets, weights, feature_ns, batch,
                                      col_offsets, out_cols, combiner)
        return out
    mode = LOOKUP_TRAIN if train else LOOKUP_EVAL
    out, _, _ = kernels(group).lookup_forward(group.token, group.handle, values, offsets, weights, feature_ns, batch,
                                              col_offsets, out_cols, combiner, mode)
    return out
