"""The CUDA kernels of the torch.ops.recis table ops: Triton (recis.gpu), registered with
torch.library for the CUDA dispatch key, next to the C++ CPU kernels and the fake kernels
(recis._ops). A CUDA tensor in an op call runs these; a Triton table on the CPU (Triton's
interpreter) calls the same ops with this kernel chosen explicitly (recis._ops.kernels).

The Triton backend's tables are found by their handle in this module's registry (written only
here, by `register`, which each TritonTable calls when it is made). Their handles are negative,
apart from the C++ tables' positive ones, so a handle names one table of either backend."""
import itertools
import weakref

import torch

from recis.gpu import jagged
from recis.gpu.jagged import MAX_VALUES, check_device, check_ids, check_layout, check_offsets, check_weights
from recis.vocabulary import COMBINERS, LOOKUP_MODES, optimizer_of_code

UNPOOLED = COMBINERS[None]

_TABLES: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_handles = itertools.count(-1, -1)


def register(table) -> int:
    """A new handle (negative, never reused) for a TritonTable."""
    handle = next(_handles)
    _TABLES[handle] = table
    return handle


def triton_table(handle: int):
    """The TritonTable of `handle`; a ValueError naming the handle if there is none (anymore)."""
    table = _TABLES.get(handle)
    if table is None:
        raise ValueError(f"recis: no Triton table has handle {handle} (a CPU tensor given to a GPU table's op, or "
                         "a table that was released)")
    return table


def cuda_kernel(name: str):
    """Registers fn as the CUDA kernel of recis::name. Kernels run eagerly: under torch.compile the
    op is a node of the graph (traced through its fake kernel), never the Python inside it."""
    def register_kernel(fn):
        torch.library.impl(f"recis::{name}", "CUDA")(torch.compiler.disable(fn))
        return fn
    return register_kernel


# ---- the lookup ops: lists of tables (see csrc/ops/table_ops.h for the layout), each table's
# share run by its TritonTable, one table after the other.

def _bump(tokens) -> None:
    for token in tokens:
        if token.numel() > 0:
            token.add_(1)


def _tables(tokens, handles):
    """The TritonTables of a list-taking op: distinct, one token each (or no tokens at all)."""
    if not handles:
        raise ValueError("recis: a table op needs at least one table")
    if tokens and len(tokens) != len(handles):
        raise ValueError(f"recis: {len(tokens)} tokens for {len(handles)} tables; pass one token per table")
    if len(set(handles)) != len(handles):
        dup = next(h for h in handles if list(handles).count(h) > 1)
        raise ValueError(f"recis: table handle {dup} appears twice in one call")
    return [triton_table(h) for h in handles]


def _layouts(tables, feature_ns, batch, col_offsets, out_cols, combiners, offsets, n):
    """Per table (feature_ns, col_offsets, combiner, start, end of its output block), checked;
    and the flat output's size."""
    T = len(tables)
    if len(combiners) != T:
        raise ValueError(f"recis: {len(combiners)} combiners for {T} tables; pass one per table")
    if not feature_ns or len(feature_ns) % T:
        raise ValueError(f"recis: feature_ns has {len(feature_ns)} entries; expected one per feature per table "
                         f"({T} tables)")
    if len(col_offsets) != len(feature_ns):
        raise ValueError("recis: col_offsets needs one entry per feature per table")
    if out_cols < 0:
        raise ValueError(f"recis: out_cols must be >= 0, got {out_cols}")
    F = len(feature_ns) // T
    end = batch * out_cols
    layouts = []
    for t, (table, c) in enumerate(zip(tables, combiners)):
        if c not in COMBINERS.values():
            raise ValueError(f"recis: unknown combiner code {c}")
        fns, cols = list(feature_ns[t * F:(t + 1) * F]), list(col_offsets[t * F:(t + 1) * F])
        check_layout(fns, batch, cols, offsets)
        if c == UNPOOLED:
            layouts.append((fns, cols, c, end, end + n * table.dim))
            end += n * table.dim
        else:
            for f, (ns, col) in enumerate(zip(fns, cols)):
                if ns >= 0 and (col < 0 or col + table.dim > out_cols):
                    raise ValueError(f"recis: feature {f} of table {t} lands in columns [{col}, {col + table.dim}) "
                                     f"outside the {out_cols} output columns")
            layouts.append((fns, cols, c, 0, batch * out_cols))
    return layouts, end


def _block(flat, batch, out_cols, layout, n, dim):
    """A table's block of a flat lookup output (or its gradient)."""
    fns, cols, c, start, end = layout
    return flat[start:end].view(n, dim) if c == UNPOOLED else flat[:batch * out_cols].view(batch, out_cols)


@cuda_kernel("lookup_forward")
def lookup_forward(tokens, tables, values, offsets, weights, feature_ns, batch_size, col_offsets, out_cols, combiners,
                   lookup_mode):
    tabs = _tables(tokens, tables)
    dev = tabs[0].device
    check_ids(values, "values", dev)
    check_ids(offsets, "offsets", dev)
    if lookup_mode not in LOOKUP_MODES.values():
        raise ValueError(f"recis: unknown lookup mode {lookup_mode}")
    values, offsets = values.contiguous(), offsets.contiguous()
    n = values.shape[0]
    layouts, size = _layouts(tabs, feature_ns, batch_size, col_offsets, out_cols, combiners, offsets, n)
    if n > MAX_VALUES:
        raise ValueError("recis: at most 2^31 - 1 values per call")
    w = check_weights(weights, n, dev)
    for table, (fns, _, _, _, _) in zip(tabs, layouts):
        for f in fns:
            if f >= 0:
                table.check_ns(f)
    check_offsets(offsets, n)
    T = len(tabs)
    out = torch.empty(size, device=dev)
    unique_rows = torch.empty(T, n, dtype=torch.int64, device=dev)
    inverse = torch.empty(T, n, dtype=torch.int32, device=dev)
    covered = sum(t.dim for t, lay in zip(tabs, layouts) if lay[2] != UNPOOLED for f in lay[0] if f >= 0)
    if covered != out_cols:
        out[:batch_size * out_cols].zero_()  # columns no table writes are 0
    for t, (table, lay) in enumerate(zip(tabs, layouts)):
        table.lookup_into(values, offsets, w, lay[0], batch_size, lay[1], out_cols if lay[2] != UNPOOLED else table.dim,
                          lay[2], lookup_mode, _block(out, batch_size, out_cols, lay, n, table.dim), unique_rows[t],
                          inverse[t])
    _bump(tokens)
    unpooled = [lay for lay in layouts if lay[2] == UNPOOLED]
    if not unpooled:
        out = out.view(batch_size, out_cols)
    elif T == 1 and batch_size * out_cols == 0:
        out = out.view(n, tabs[0].dim)
    return out, unique_rows, inverse


def _backward_inputs(tokens, tables, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                     col_offsets, out_cols, combiners):
    tabs = _tables(tokens, tables)
    dev = tabs[0].device
    check_device(grad_out, "the output gradient", dev)
    if grad_out.dtype != torch.float32:
        raise TypeError(f"recis: output gradient must be float32, got {grad_out.dtype}")
    T = len(tabs)
    if inverse.dim() != 2 or inverse.shape[0] != T or inverse.dtype != torch.int32:
        raise ValueError(f"recis: inverse must be int32 [{T}, n], got {inverse.dtype} {list(inverse.shape)}")
    if unique_rows.shape != inverse.shape or unique_rows.dtype != torch.int64:
        raise ValueError(f"recis: unique_rows must be int64 with the shape of inverse {list(inverse.shape)}, got "
                         f"{list(unique_rows.shape)}")
    n = inverse.shape[1]
    layouts, size = _layouts(tabs, feature_ns, batch_size, col_offsets, out_cols, combiners, offsets, n)
    if grad_out.numel() != size:
        raise ValueError(f"recis: the output gradient has {grad_out.numel()} elements; the lookup's output had {size}")
    grad = grad_out.contiguous().view(-1)
    w = check_weights(weights, n, dev)
    return tabs, layouts, grad, w, n


@cuda_kernel("lookup_backward")
def lookup_backward(tokens, tables, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                    col_offsets, out_cols, combiners):
    tabs, layouts, grad, w, n = _backward_inputs(tokens, tables, grad_out, offsets, weights, unique_rows, inverse,
                                                 feature_ns, batch_size, col_offsets, out_cols, combiners)
    for t, (table, lay) in enumerate(zip(tabs, layouts)):
        table.backward_into(_block(grad, batch_size, out_cols, lay, n, table.dim), offsets, w, unique_rows[t],
                            inverse[t], lay[0], batch_size, lay[1], lay[2])
    _bump(tokens)


@cuda_kernel("lookup_backward_apply")
def lookup_backward_apply(tokens, tables, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                          col_offsets, out_cols, combiners, kinds, hyper):
    tabs, layouts, grad, w, n = _backward_inputs(tokens, tables, grad_out, offsets, weights, unique_rows, inverse,
                                                 feature_ns, batch_size, col_offsets, out_cols, combiners)
    if len(kinds) != len(tabs):
        raise ValueError(f"recis: {len(kinds)} optimizer kinds for {len(tabs)} tables; pass one per table")
    hypers, at = [], 0
    for kind in kinds:
        size = len(optimizer_of_code(kind).hyper)
        hypers.append(list(hyper[at:at + size]))
        at += size
    if at != len(hyper):
        raise ValueError(f"recis: hyper has {len(hyper)} entries; the optimizer kinds {list(kinds)} take {at}")
    for table, kind, h in zip(tabs, kinds, hypers):  # bad hyperparameters fail before any work
        table.check_fused(kind, h)
    counts = [table.backward_apply_into(_block(grad, batch_size, out_cols, lay, n, table.dim), offsets, w,
                                        unique_rows[t], inverse[t], lay[0], batch_size, lay[1], lay[2], kind, h)
              for t, (table, lay, kind, h) in enumerate(zip(tabs, layouts, kinds, hypers))]
    _bump(tokens)
    return torch.stack(counts).to(torch.int64)


@cuda_kernel("apply_update")
def apply_update(token, table, kind, hyper, skip_nonfinite):
    return triton_table(table).apply_update(token, kind, hyper, skip_nonfinite)


@cuda_kernel("clear_pending")
def clear_pending(tokens, tables):
    for table in _tables(tokens, tables):
        table.clear_pending()
    _bump(tokens)


@cuda_kernel("find")
def find(table, ns, ids):
    return triton_table(table).find(ns, ids)


@cuda_kernel("find_or_insert")
def find_or_insert(token, table, ns, ids):
    return triton_table(table).find_or_insert(token, ns, ids)


@cuda_kernel("erase")
def erase(token, table, ns, ids):
    return triton_table(table).erase(token, ns, ids)


@cuda_kernel("gather")
def gather(table, rows):
    return triton_table(table).gather(rows)


cuda_kernel("dedup_jagged")(jagged.dedup_jagged_op)
cuda_kernel("pool_rows")(jagged.pool_rows_op)
cuda_kernel("pool_rows_backward")(jagged.pool_rows_backward_op)
