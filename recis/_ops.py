"""The table engine: the single place that loads recis._C (the op schemas and their C++ CPU
kernels) and recis.gpu.ops (their Triton CUDA kernels), gives each op its fake kernel, makes the
tables of both backends (`new_table`) and says which kernels a table's op calls run (`kernels`)."""
import functools
import weakref

import torch

from recis import _C  # registers torch.ops.recis.*
from recis import vocabulary
from recis.vocabulary import COMBINERS, INIT_KINDS, OPTIM_KINDS  # noqa: F401  (re-exported)

vocabulary.check_native(_C.vocabulary())  # the C++ core was built with this vocabulary

ops = torch.ops.recis

_CUDA_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


class _CudaKernels:
    """torch.ops.recis with the CUDA kernel (Triton) chosen explicitly, for CPU tensors: how a
    Triton table on the CPU (Triton's interpreter) runs the same ops. Each call is
    `torch.ops.recis.<op>.default.redispatch(DispatchKeySet(CUDA), *args)`."""

    def __getattr__(self, name: str):
        call = torch.compiler.disable(functools.partial(getattr(ops, name).default.redispatch, _CUDA_KEYS))
        setattr(self, name, call)
        return call


_CUDA_KERNELS = _CudaKernels()


def kernels(group):
    """The table ops for `group` (a TableGroup: anything with `.backend` and `.device`). It is
    torch.ops.recis, whose dispatcher runs the C++ kernel for CPU tensors and the Triton kernel for
    CUDA tensors, except for a Triton table on the CPU: then the same ops with the CUDA (Triton)
    kernel chosen explicitly."""
    if group.backend == "triton" and group.device.type != "cuda":
        return _CUDA_KERNELS
    return ops


# handle -> embedding dim of every live table of either backend, so that fake kernels know output
# widths without touching table state. Written only by new_table.
_DIMS: dict = {}


def new_table(backend: str, device: torch.device, dim: int, seeds, init_kind: int, a: float, b: float, c: float):
    """An empty table of `backend` ("cpp": recis._C.HashTable on the CPU; "triton": recis.gpu's
    TritonTable on `device`) with its handle known to the fake kernels."""
    if backend == "cpp":
        impl = _C.HashTable(dim, list(seeds), init_kind, a, b, c)
    elif backend == "triton":
        from recis.gpu.table import TritonTable

        impl = TritonTable(dim, list(seeds), init_kind, a, b, c, device=device)
    else:
        raise ValueError(f"recis: unknown table backend {backend!r} (known: 'cpp', 'triton')")
    _DIMS[impl.handle] = int(dim)
    weakref.finalize(impl, _DIMS.pop, impl.handle, None)
    return impl


def table_dim(handle: int) -> int:
    dim = _DIMS.get(handle)
    if dim is None:
        raise ValueError(f"recis: unknown table handle {handle}")
    return dim


@torch.library.register_fake("recis::lookup_forward")
def _lookup_forward_fake(token, table, values, offsets, weights, feature_ns, batch_size, col_offsets, out_cols,
                         combiner, lookup_mode):
    dim = table_dim(table)
    n = values.shape[0]
    out = values.new_empty((n, dim) if combiner == COMBINERS[None] else (batch_size, out_cols), dtype=torch.float32)
    return out, values.new_empty((n,), dtype=torch.int64), values.new_empty((n,), dtype=torch.int32)


@torch.library.register_fake("recis::lookup_backward")
def _lookup_backward_fake(token, table, grad_out, offsets, weights, unique_rows, inverse, feature_ns, batch_size,
                          col_offsets, combiner):
    return None


@torch.library.register_fake("recis::apply_update")
def _apply_update_fake(token, table, kind, hyper, skip_nonfinite):
    return token.new_empty((2,), dtype=torch.int64)


@torch.library.register_fake("recis::clear_pending")
def _clear_pending_fake(token, table):
    return None


@torch.library.register_fake("recis::find")
def _find_fake(table, ns, ids):
    return ids.new_empty(ids.shape, dtype=torch.int64)


@torch.library.register_fake("recis::find_or_insert")
def _find_or_insert_fake(token, table, ns, ids):
    return ids.new_empty(ids.shape, dtype=torch.int64)


@torch.library.register_fake("recis::gather")
def _gather_fake(table, rows):
    return rows.new_empty((rows.shape[0], table_dim(table)), dtype=torch.float32)


@torch.library.register_fake("recis::dedup_jagged")
def _dedup_jagged_fake(values, offsets, feature_ns, batch):
    u = torch.library.get_ctx().new_dynamic_size()
    return (values.new_empty((u,)), values.new_empty((u,)), values.new_empty((u,)),
            values.new_empty(values.shape, dtype=torch.int32))


@torch.library.register_fake("recis::pool_rows")
def _pool_rows_fake(rows, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner):
    return rows.new_empty((batch, out_cols))


@torch.library.register_fake("recis::pool_rows_backward")
def _pool_rows_backward_fake(grad_out, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner,
                             n_rows, dim):
    return grad_out.new_empty((n_rows, dim))


@torch.library.register_fake("recis::erase")
def _erase_fake(token, table, ns, ids):
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("recis::lookup_backward_apply")
def _lookup_backward_apply_fake(token, table, grad_out, offsets, weights, unique_rows, inverse, feature_ns,
                                batch_size, col_offsets, combiner, kind, hyper):
    return token.new_empty((2,), dtype=torch.int64)


# ---- feature engine ops (recis.features): lists of columns in, one output per column ----------

def _like(t, n, dtype):
    return t.new_empty((n,), dtype=dtype)


@torch.library.register_fake("recis::feat_hash_str")
def _feat_hash_str_fake(offsets, data, index, mask, seeds, num_hashes):
    return [_like(o, (i.shape[0] if i is not None else o.shape[0] - 1) * k, torch.int64)
            for o, i, k in zip(offsets, index, num_hashes)]


@torch.library.register_fake("recis::feat_hash_int")
def _feat_hash_int_fake(values, seeds, num_hashes):
    return [_like(v, v.shape[0] * k, torch.int64) for v, k in zip(values, num_hashes)]


def _fake_map(dtype):
    def fake(values, *params):
        return [_like(v, v.shape[0], dtype) for v in values]
    return fake


for _name, _dtype in (("mod", torch.int64), ("bucketize", torch.int64), ("log1p", torch.float64),
                      ("normalize", torch.float64), ("clip", torch.float64)):
    torch.library.register_fake(f"recis::feat_{_name}")(_fake_map(_dtype))


def _fake_jagged(like, items, rows):
    n = torch.library.get_ctx().new_dynamic_size()
    return (_like(like, n, torch.int64), _like(like, items * rows, torch.int64),
            _like(like, items * rows + 1, torch.int64))


@torch.library.register_fake("recis::feat_assemble_sparse")
def _feat_assemble_sparse_fake(values, widths, index, mask, fill, splits, rows):
    return _fake_jagged(values[0] if values else torch.empty(0), len(values), rows)


@torch.library.register_fake("recis::feat_assemble_dense")
def _feat_assemble_dense_fake(values, index, mask, fill, rows):
    return (values[0] if values else torch.empty(0)).new_empty((rows, len(values)), dtype=torch.float32)


@torch.library.register_fake("recis::feat_truncate")
def _feat_truncate_fake(values, splits, max_len, keep_last, pad_value, pad, rows):
    like = values[0] if values else torch.empty(0)
    return _fake_jagged(like, len(values), rows) + (like.new_empty((len(values), 2), dtype=torch.int64),)


@torch.library.register_fake("recis::feat_cross")
def _feat_cross_fake(values, splits, arity, cap, seeds, rows):
    like = values[0] if values else torch.empty(0)
    return _fake_jagged(like, len(arity), rows) + (like.new_empty((len(arity), 1), dtype=torch.int64),)


@torch.library.register_fake("recis::feat_same_bytes")
def _feat_same_bytes_fake(a, b):
    return (a[0] if a else torch.empty(0)).new_empty((len(a),), dtype=torch.bool)


@torch.library.register_fake("recis::feat_unpack_bits")
def _feat_unpack_bits_fake(bitmaps, bit_offsets, lengths):
    return [b.new_empty((n,), dtype=torch.bool) for b, n in zip(bitmaps, lengths)]


from recis.gpu import ops as _gpu_ops  # noqa: E402,F401  (registers the CUDA kernels: Triton)


# ---- recis::resolve (the owner's half of a sharded lookup; C++ kernel csrc/ops/resolve_op.cc) ---
@torch.library.register_fake("recis::resolve")
def _resolve_fake(token, table, ns, ids, counts, lookup_mode):
    return ids.new_empty(ids.shape, dtype=torch.int64)


from recis.gpu import resolve_op as _resolve_op  # noqa: E402,F401  (registers its CUDA kernel: Triton)
