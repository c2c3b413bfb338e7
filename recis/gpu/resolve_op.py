"""The CUDA kernel (Triton) of the `recis::resolve` op, next to its C++ CPU kernel
(csrc/ops/resolve_op.cc): rows of distinct (namespace, id) keys, each counted `counts` times.
Same semantics: a training mode advances the table's step, counts hits, admits and inserts misses
(TritonTable.resolve), and mode train_with_grad holds the rows until the returned tensor is freed. Registered
for the CUDA dispatch key as recis.gpu.ops registers the other table ops; a Triton table on the
CPU reaches it through recis._ops.kernels."""
import torch

from recis.gpu.lookup import _bump
from recis.gpu.ops import cuda_kernel, triton_table
from recis.vocabulary import LOOKUP_MODES


@cuda_kernel("resolve")
def resolve_kernel(token, table, ns, ids, counts, lookup_mode):
    return triton_resolve(triton_table(table), token, ns, ids, counts, lookup_mode)


def triton_resolve(table, token, ns: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, mode: int) -> torch.Tensor:
    for what, t in (("ids", ids), ("namespaces", ns), ("counts", counts)):
        table._check_ids(t, what)
    n = ids.numel()
    if ns.numel() != n or counts.numel() != n:
        raise ValueError(f"recis: resolve takes one namespace and one count per id, got {ns.numel()} namespaces and "
                         f"{counts.numel()} counts for {n} ids")
    if mode not in LOOKUP_MODES.values():
        raise ValueError(f"recis: unknown lookup mode {mode}")
    if n:
        lo_ns, hi_ns, lo_count = torch.stack([ns.min(), ns.max(), counts.min()]).tolist()
        if lo_ns < 0 or hi_ns >= table.num_namespaces:
            raise IndexError(f"recis: resolve got namespace {lo_ns if lo_ns < 0 else hi_ns} for a table with "
                             f"{table.num_namespaces}")
        if lo_count < 1:
            raise ValueError(f"recis: resolve got count {lo_count} (each key occurs at least once)")
    train = mode != LOOKUP_MODES["eval"]
    with table._lock:
        step_before = table._step
        if train:
            table._advance_step()  # the TTL sweep due at this step boundary, then step + 1
        try:
            rows = table.resolve(ns.contiguous(), ids.contiguous(), counts.contiguous(), train)
        except BaseException:
            table._step = step_before  # a refused batch leaves no trace
            raise
        if mode == LOOKUP_MODES["train_with_grad"]:
            table._add_forward(rows, table._step)
    if train:
        _bump(token)
    return rows
