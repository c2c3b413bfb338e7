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


@cuda_kernel("lookup_forward")
def lookup_forward(token, table, values, offsets, weights, feature_ns, batch_size, col_offsets, out_cols, combiner,
                   lookup_mode):
    return triton_table(table).lookup_forward(token, values, offsets, weights, feature_ns, batch_size, col_offsets,
                                              out_cols, combiner, lookup_mode)


@cuda_kernel("lookup_backward")
def lookup_backward(token, table, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                    col_offsets, combiner):
    triton_table(table).lookup_backward(token, grad_out, offsets, weights, unique_rows, inverse, feature_ns,
                                        batch_size, col_offsets, combiner)


@cuda_kernel("lookup_backward_apply")
def lookup_backward_apply(token, table, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                          col_offsets, combiner, kind, hyper):
    return triton_table(table).lookup_backward_apply(token, grad_out, offsets, weights, unique_rows, inverse,
                                                     feature_ns, batch_size, col_offsets, combiner, kind, hyper)


@cuda_kernel("apply_update")
def apply_update(token, table, kind, hyper, skip_nonfinite):
    return triton_table(table).apply_update(token, kind, hyper, skip_nonfinite)


@cuda_kernel("clear_pending")
def clear_pending(token, table):
    triton_table(table).clear_pending(token)


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
