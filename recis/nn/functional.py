"""Functional layer: input checks and the autograd.Function around the fused lookup ops."""
from typing import List, NamedTuple, Optional

import torch

from recis._ops import kernels
from recis.vocabulary import COMBINERS, LOOKUP_MODES

# lookup_forward modes: eval (find only), train (insert), train with a backward to come
# (its rows are also protected from eviction until the optimizer step).
LOOKUP_EVAL, LOOKUP_TRAIN, LOOKUP_TRAIN_WITH_GRAD = (LOOKUP_MODES[m] for m in ("eval", "train", "train_with_grad"))
UNPOOLED = COMBINERS[None]


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


class Layout(NamedTuple):
    """Where a lookup op call reads and writes (recis::lookup_forward): per table (group) of the
    call its feature namespaces and output columns (F entries each, concatenated), the pooled
    block's width and each table's combiner code."""
    feature_ns: List[int]
    col_offsets: List[int]
    out_cols: int
    combiners: List[int]


class _HashLookup(torch.autograd.Function):
    """Forward: dedup + find-or-insert + pooled lookup of every group in one op call. Backward: one
    call for the groups whose optimizer is fused (their rows are updated right away) and one for
    the others (per-unique-row gradients into each table's pending buffer, which the sparse
    optimizer applies in place): one call in all when every group is of one kind."""

    @staticmethod
    def forward(ctx, groups, layout, values, offsets, weights, batch, *anchors_and_tokens):
        tokens = list(anchors_and_tokens[len(groups):])
        out, unique_rows, inverse = kernels(groups[0]).lookup_forward(
            tokens, [g.handle for g in groups], values, offsets, weights, layout.feature_ns, batch,
            layout.col_offsets, layout.out_cols, layout.combiners, LOOKUP_TRAIN_WITH_GRAD)
        ctx.save_for_backward(offsets, weights, unique_rows, inverse)
        if not torch.compiler.is_compiling():
            # unique_rows carries the forward's hold on its rows (see lookup_forward): the saved
            # tensor keeps it until the graph is freed; this reference keeps it until backward
            # even when a saved-tensor hook (offloading, activation checkpointing) copies or
            # drops the saved tensor.
            ctx.rows_hold = unique_rows
        ctx.groups, ctx.tokens, ctx.layout, ctx.batch = groups, tokens, layout, batch
        # The data-dependent outputs are returned too (non-differentiable), so torch.compile
        # sees where their dynamic sizes come from.
        ctx.mark_non_differentiable(unique_rows, inverse)
        ctx.set_materialize_grads(False)  # no zero gradients built for unique_rows and inverse
        return out, unique_rows, inverse

    @staticmethod
    def backward(ctx, grad_out, _unique_grad=None, _inverse_grad=None):
        offsets, weights, unique_rows, inverse = ctx.saved_tensors
        groups, tokens, layout, batch = ctx.groups, ctx.tokens, ctx.layout, ctx.batch
        compiling = torch.compiler.is_compiling()
        if not compiling:
            ctx.rows_hold = None  # the saved tensor (or the caller of another backward) holds on
        opts = [None] * len(groups) if compiling else [g.fused_update() for g in groups]
        fused = [i for i, o in enumerate(opts) if o is not None]
        if len(fused) == len(groups):  # the usual cases: all fused, or all deferred (one call)
            fused_backward(groups, tokens, grad_out, offsets, weights, unique_rows, inverse, layout, batch, opts)
        elif not fused:
            _deferred_backward(groups, tokens, grad_out, offsets, weights, unique_rows, inverse, layout, batch)
        else:  # a call each for the fused groups and the others
            gs, toks, lay, grad, rows, inv = _subset(fused, groups, tokens, layout, grad_out, unique_rows, inverse,
                                                     batch)
            fused_backward(gs, toks, grad, offsets, weights, rows, inv, lay, batch, [opts[i] for i in fused])
            deferred = [i for i, o in enumerate(opts) if o is None]
            gs, toks, lay, grad, rows, inv = _subset(deferred, groups, tokens, layout, grad_out, unique_rows, inverse,
                                                     batch)
            _deferred_backward(gs, toks, grad, offsets, weights, rows, inv, lay, batch)
        return (None,) * (6 + 2 * len(groups))


def _deferred_backward(groups, tokens, grad_out, offsets, weights, unique_rows, inverse, layout: Layout,
                       batch: int) -> None:
    """The backward of groups whose gradients wait for the optimizer's step(): one op call."""
    kernels(groups[0]).lookup_backward(tokens, [g.handle for g in groups], grad_out, offsets, weights, unique_rows,
                                       inverse, layout.feature_ns, batch, layout.col_offsets, layout.out_cols,
                                       layout.combiners)


def _subset(idx, groups, tokens, layout, grad_out, unique_rows, inverse, batch):
    """(groups, tokens, layout, output gradient, unique_rows, inverse) of the groups `idx` of a call.
    The gradient keeps the pooled block and the chosen unpooled blocks."""
    F = len(layout.feature_ns) // len(groups)
    pick = lambda xs: [x for i in idx for x in xs[i * F:(i + 1) * F]]  # noqa: E731
    lay = Layout(pick(layout.feature_ns), pick(layout.col_offsets), layout.out_cols,
                 [layout.combiners[i] for i in idx])
    flat = grad_out.reshape(-1)  # several groups' blocks: the output was flat
    blocks = output_blocks(flat, groups, layout, batch, inverse.shape[1])
    parts = [flat[:batch * layout.out_cols]] + [blocks[i].reshape(-1) for i in idx
                                                 if layout.combiners[i] == UNPOOLED]
    rows = torch.tensor(idx, device=unique_rows.device)
    return ([groups[i] for i in idx], [tokens[i] for i in idx], lay, torch.cat(parts),
            unique_rows.index_select(0, rows), inverse.index_select(0, rows))


def fused_backward(groups, tokens, grad_out, offsets, weights, unique_rows, inverse, layout: Layout,
                   batch: int, opts) -> None:
    """The backward of groups whose sparse optimizer is fused (`opts`: each group's): one op call
    sums and applies each unique row's gradient (each group with its own optimizer's kind and
    hyperparameters). Called from backward (grad mode is off there)."""
    kinds, hyper = [], []
    for g, opt in zip(groups, opts):
        kind, h = opt.fused_update_args(g)
        kinds.append(kind)
        hyper.extend(h)
    counts = kernels(groups[0]).lookup_backward_apply(
        tokens, [g.handle for g in groups], grad_out, offsets, weights, unique_rows, inverse, layout.feature_ns,
        batch, layout.col_offsets, layout.out_cols, layout.combiners, kinds, hyper).tolist()
    for g, opt, (applied, nonfinite) in zip(groups, opts, counts):
        if nonfinite:
            opt.report_fused_nonfinite(g, nonfinite, applied)


def collection_lookup(groups, values: torch.Tensor, offsets: torch.Tensor, weights: Optional[torch.Tensor],
                      layout: Layout, batch: int, train: bool) -> torch.Tensor:
    """Looks up a (KeyedJaggedTensor-ordered) jagged batch in the table groups `groups` (one
    backend and device) with one op call; differentiable in training. Returns the op's output
    (see `output_blocks`)."""
    if train and torch.is_grad_enabled():
        out, _, _ = _HashLookup.apply(tuple(groups), layout, values, offsets, weights, batch,
                                      *(g.anchor for g in groups), *(g.token for g in groups))
        return out
    mode = LOOKUP_TRAIN if train else LOOKUP_EVAL
    out, _, _ = kernels(groups[0]).lookup_forward([g.token for g in groups], [g.handle for g in groups], values,
                                                  offsets, weights, layout.feature_ns, batch, layout.col_offsets,
                                                  layout.out_cols, layout.combiners, mode)
    return out


def _one_group_layout(feature_ns, col_offsets, out_cols: int, combiner: int) -> Layout:
    return Layout(list(feature_ns), list(col_offsets), 0 if combiner == UNPOOLED else out_cols, [combiner])


def hash_lookup(group, values: torch.Tensor, offsets: torch.Tensor, weights: Optional[torch.Tensor],
                feature_ns: List[int], batch: int, col_offsets: List[int], out_cols: int, combiner: int,
                train: bool) -> torch.Tensor:
    """Looks up a (KeyedJaggedTensor-ordered) jagged batch in one group: [batch, out_cols] pooled,
    [n, dim] unpooled (the lookup op with a list of one table); differentiable in training."""
    layout = _one_group_layout(feature_ns, col_offsets, out_cols, combiner)
    return collection_lookup([group], values, offsets, weights, layout, batch, train)


@torch.no_grad()
def group_backward(group, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch: int, col_offsets,
                   out_cols: int, combiner: int) -> None:
    """The backward of one group's lookup (unique_rows/inverse: its [n] rows): the fused update when
    its optimizer is fused, else the gradients kept for step(). For callers with their own forward
    (the sharded owner lookup)."""
    layout = _one_group_layout(feature_ns, col_offsets, out_cols, combiner)
    rows, inv = unique_rows.reshape(1, -1), inverse.reshape(1, -1)
    opt = group.fused_update()
    if opt is not None:
        fused_backward([group], [group.token], grad_out, offsets, weights, rows, inv, layout, batch, [opt])
    else:
        _deferred_backward([group], [group.token], grad_out, offsets, weights, rows, inv, layout, batch)


def output_blocks(out: torch.Tensor, groups, layout: Layout, batch: int, n: int) -> List[torch.Tensor]:
    """Each group's output in a lookup's output: the [batch, out_cols] pooled block (shared by the
    pooled groups) or the group's own [n, dim] block; a one-block output is that block."""
    if out.dim() == 2:  # one block (recis::lookup_forward shapes such an output)
        return [out] * len(groups)

    def block(start, end, rows, cols):
        return out[start:end].view(rows, cols)

    pooled_end = batch * layout.out_cols
    pooled = block(0, pooled_end, batch, layout.out_cols) if pooled_end else None
    blocks, at = [], pooled_end
    for g, c in zip(groups, layout.combiners):
        if c == UNPOOLED:
            blocks.append(block(at, at + n * g.embedding_dim, n, g.embedding_dim))
            at += n * g.embedding_dim
        else:
            blocks.append(pooled)
    return blocks
