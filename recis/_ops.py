"""The single place that loads recis._C and gives each torch op its fake (meta) kernel."""
import torch

from recis import _C  # noqa: F401  (registers torch.ops.recis.*)

COMBINERS = {"sum": 0, "mean": 1, None: 2}
OPTIM_KINDS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2, "adam": 3, "adamw": 4, "ftrl": 5}
INIT_KINDS = {"constant": 0, "uniform": 1, "normal": 2, "truncated_normal": 3}

ops = torch.ops.recis


@torch.library.register_fake("recis::lookup_forward")
def _lookup_forward_fake(token, table, values, offsets, weights, feature_ns, batch_size, col_offsets, out_cols,
                         combiner, lookup_mode):
    dim = _table_dims[table]
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
    return rows.new_empty((rows.shape[0], _table_dims[table]), dtype=torch.float32)


# handle -> embedding dim, so fake kernels know output widths without touching C++ state.
_table_dims: dict = {}


@torch.library.register_fake("recis::erase")
def _erase_fake(token, table, ns, ids):
    return torch.library.get_ctx().new_dynamic_size()


@torch.library.register_fake("recis::lookup_backward_apply")
def _lookup_backward_apply_fake(token, table, grad_out, offsets, weights, unique_rows, inverse, feature_ns,
                                batch_size, col_offsets, combiner, kind, hyper):
    return token.new_empty((2,), dtype=torch.int64)
