"""Jagged-batch kernels without a table, shared by the Triton table ops and by the table-free
ops `dedup_jagged`, `pool_rows` and `pool_rows_backward` (their CUDA kernels, recis.gpu.ops):
input checks, the batch dedup, the pooled forward and the per-unique-row gradient. Each keeps
csrc/ops (dedup.cc, pooling.cc) order and rounding, so results equal the C++ ones bit for bit."""
from typing import Optional, Sequence

import torch

from recis.gpu._flavors import flavor
from recis.gpu.dedup import dedup_keys
from recis.vocabulary import COMBINERS

MAX_VALUES = 2**31 - 1
SUM, MEAN, UNPOOLED = COMBINERS["sum"], COMBINERS["mean"], COMBINERS[None]
# A row seen more often than this in one batch ("hot") gets its gradient summed in chunks of
# this many terms, then the chunks' sums are added: no lane waits for thousands of terms.
# Rows seen at most this often are summed in value order, bit for bit as on the CPU.
HOT_ROW_SPLIT = 128


def pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def check_device(t: torch.Tensor, what: str, device: torch.device) -> None:
    if t.device != device:
        raise RuntimeError(f"recis: the table lives on {device} but {what} is on {t.device}; "
                           "move the input to the table's device")


def check_ids(t: torch.Tensor, what: str, device: Optional[torch.device] = None) -> None:
    if t.dtype != torch.int64:
        raise TypeError(f"recis: {what} must be int64 ids, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"recis: {what} must be 1-D, got shape {list(t.shape)}")
    if device is not None:
        check_device(t, what, device)


def check_weights(w: Optional[torch.Tensor], n: int, device: torch.device) -> Optional[torch.Tensor]:
    if w is None:
        return None
    if w.dtype != torch.float32:
        raise TypeError(f"recis: per_sample_weights must be float32, got {w.dtype}")
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"recis: per_sample_weights must have shape [{n}], got {list(w.shape)}")
    check_device(w, "per_sample_weights", device)
    return w.contiguous()


def check_layout(feature_ns: Sequence[int], batch: int, col_offsets: Sequence[int], offsets: torch.Tensor) -> int:
    """Checks a (feature_ns, batch, col_offsets, offsets) layout; returns the number of bags."""
    F = len(feature_ns)
    if F < 1 or batch < 0:
        raise ValueError("recis: need at least one feature and a non-negative batch")
    if len(col_offsets) != F:
        raise ValueError("recis: col_offsets needs one entry per feature")
    num_bags = F * batch
    if offsets.shape[0] != num_bags + 1:
        raise ValueError(f"recis: offsets has {offsets.shape[0]} entries; expected num_bags + 1 = {num_bags + 1}")
    return num_bags


def check_offsets(off: torch.Tensor, n: int) -> None:
    """offsets start at 0, never decrease and end at n (one host sync)."""
    bad = (off[1:] < off[:-1]).nonzero()
    first, last, nbad = torch.stack([off[0], off[-1], bad.new_tensor(bad.shape[0])]).tolist()
    if first != 0:
        raise ValueError(f"recis: offsets must start at 0, got {first}")
    if nbad:
        k = int(bad[0, 0])
        a, b = off[k:k + 2].tolist()
        raise ValueError(f"recis: offsets must be non-decreasing, but offsets[{k}]={a} > offsets[{k + 1}]={b}")
    if last != n:
        raise ValueError(f"recis: the last offset ({last}) must equal the number of values ({n})")


def check_inverse(inverse: torch.Tensor, n: int, n_rows: int, device: torch.device) -> None:
    if inverse.dtype != torch.int32:
        raise TypeError(f"recis: inverse must be int32, got {inverse.dtype}")
    if inverse.dim() != 1 or inverse.shape[0] != n:
        raise ValueError(f"recis: inverse must have one entry per value ({n}), got shape {list(inverse.shape)}")
    check_device(inverse, "inverse", device)
    bad = ((inverse < -1) | (inverse >= n_rows)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"recis: inverse[{i}]={int(inverse[i])} is outside [-1, {n_rows})")


def dedup_jagged(values: torch.Tensor, offsets: torch.Tensor, feature_ns: Sequence[int], batch: int):
    """(unique ids, their namespaces, their counts, inverse int32 [n]) of a KeyedJaggedTensor-ordered
    batch, as csrc's dedup_jagged: values of features with ns < 0 get inverse -1. Offsets must
    have been checked (check_layout, check_offsets)."""
    dev, n, F = values.device, values.shape[0], len(feature_ns)
    bounds = offsets[torch.arange(F + 1, device=dev) * batch].tolist()
    lens = torch.tensor([bounds[f + 1] - bounds[f] for f in range(F)], device=dev)
    ns_v = torch.repeat_interleave(torch.tensor(list(feature_ns), dtype=torch.int64, device=dev), lens, output_size=n)
    one_ns = len({f for f in feature_ns if f >= 0}) == 1
    if any(f < 0 for f in feature_ns):
        sel = (ns_v >= 0).nonzero().flatten()
        uids, uns, counts, inv = dedup_keys(values[sel], ns_v[sel], one_ns=one_ns)
        inverse = torch.full((n,), -1, dtype=torch.int32, device=dev)
        inverse[sel] = inv.to(torch.int32)
        return uids, uns, counts, inverse
    uids, uns, counts, inv = dedup_keys(values, ns_v, one_ns=one_ns)
    return uids, uns, counts, inv.to(torch.int32)


def pool(emb, src, fallback, offsets, inverse, w, feature_ns, batch, col_offsets, out_cols, combiner, n, out=None):
    """The pooled (combiner SUM, MEAN) or per-value (UNPOOLED) forward over rows `src` of `emb`
    (-1: zeros, <= -2: row -src-2 of `fallback`), as csrc's pooled_forward; into `out` ([batch,
    out_cols] or [n, dim], contiguous) when given, writing only the columns/values of its features."""
    dev, dim = emb.device, emb.shape[1]
    k = flavor(dev).pooling
    block_d = min(128, pow2(dim))
    wt = w if w is not None else emb
    if combiner == UNPOOLED:
        out = torch.empty(n, dim, device=dev) if out is None else out
        if n:
            grid = (-(-n // 16), -(-dim // block_d))
            k.unpooled_forward_kernel[grid](inverse, src, emb, fallback, wt, out, n, dim, HAS_W=w is not None,
                                            BLOCK_N=16, BLOCK_D=block_d, enable_fp_fusion=False)
        return out
    out = torch.empty(batch, out_cols, device=dev) if out is None else out
    num_bags = len(feature_ns) * batch
    if num_bags:
        fns = torch.tensor(list(feature_ns), dtype=torch.int64, device=dev)
        cols = torch.tensor(list(col_offsets), dtype=torch.int64, device=dev)
        grid = (-(-num_bags // 16), -(-dim // block_d))
        k.pooled_forward_kernel[grid](offsets, inverse, src, emb, fallback, wt, fns, cols, out, num_bags, batch,
                                      out_cols, dim, HAS_W=w is not None, MEAN=combiner == MEAN, BLOCK_B=16,
                                      BLOCK_D=block_d, enable_fp_fusion=False)
    return out


def segment_sum(csr, src, scale, values, in_finite, out, finite, has_scale: bool, init_first: bool) -> None:
    """out[u] = sum of scale[p] * values[src[p]:src[p]+dim] over p in [csr[u], csr[u+1]), in p order."""
    n_seg, dim = out.shape
    block_d = pow2(dim)
    block_u = max(1, min(64, 4096 // block_d))
    flavor(out.device).pooling.segment_sum_kernel[(-(-n_seg // block_u),)](
        csr, src, scale, values, in_finite if in_finite is not None else finite, out, finite, n_seg, dim,
        HAS_SCALE=has_scale, HAS_FINITE=in_finite is not None, INIT_FIRST=init_first, BLOCK_U=block_u,
        BLOCK_D=block_d, enable_fp_fusion=False)


def unique_grads(grad_out, offsets, w, inverse, feature_ns, batch, col_offsets, combiner, dim: int,
                 n_unique: Optional[int] = None, split: int = HOT_ROW_SPLIT):
    """(grads [U, dim], finite [U] int8): the summed gradient of every unique row, as csrc's
    unique_row_grads. U is `n_unique`, or else the largest inverse index + 1. Values of features
    with ns < 0 (which the forward skips) add nothing."""
    dev, n = grad_out.device, inverse.shape[0]
    grad_out = grad_out.contiguous()
    inv = inverse.to(torch.int64)
    valid = inv >= 0
    if combiner != UNPOOLED:
        pos = torch.arange(n, device=dev)
        k = torch.searchsorted(offsets, pos, right=True) - 1
        f = torch.div(k, batch, rounding_mode="floor")
        valid &= torch.tensor(list(feature_ns), device=dev)[f] >= 0
    if n_unique is None:  # every unique key has a value: the counts per key give U
        counts = torch.bincount(inv[valid]) if n else inv.new_zeros(0)
    else:
        counts = torch.bincount(inv[valid], minlength=n_unique) if n else inv.new_zeros(n_unique)
    U = counts.numel()
    grads = torch.empty(U, dim, device=dev)
    finite = torch.empty(U, dtype=torch.int8, device=dev)
    if U == 0:
        return grads, finite
    scale = w
    if combiner != UNPOOLED:
        base = (k - f * batch) * grad_out.shape[-1] + torch.tensor(list(col_offsets), device=dev)[f]
        if combiner == MEAN:
            lens = (offsets[k + 1] - offsets[k]).to(torch.float32)
            scale = 1.0 / lens if w is None else (1.0 / lens) * w
    else:
        base = torch.arange(n, device=dev) * dim
    csr = torch.zeros(U + 1, dtype=torch.int64, device=dev)
    csr[1:] = torch.cumsum(counts, 0)
    n_valid, longest = torch.stack([csr[-1], counts.max()]).tolist()
    order = torch.argsort(torch.where(valid, inv, U), stable=True)[:n_valid]
    src = base[order].contiguous()
    sc = scale[order].contiguous() if scale is not None else src
    if longest <= split:
        segment_sum(csr, src, sc, grad_out, None, grads, finite, scale is not None, False)
        return grads, finite
    # Hot rows: chunks of `split` terms (a row's chunks are consecutive), then one sum per row.
    n_chunks = (counts + split - 1) // split
    seg = torch.repeat_interleave(torch.arange(U, device=dev), n_chunks)
    first = torch.cumsum(n_chunks, 0) - n_chunks
    C = seg.numel()
    ccsr = torch.empty(C + 1, dtype=torch.int64, device=dev)
    ccsr[:C] = csr[seg] + (torch.arange(C, device=dev) - first[seg]) * split
    ccsr[C] = csr[U]
    partial = torch.empty(C, dim, device=dev)
    pfinite = torch.empty(C, dtype=torch.int8, device=dev)
    segment_sum(ccsr, src, sc, grad_out, None, partial, pfinite, scale is not None, False)
    rcsr = torch.zeros(U + 1, dtype=torch.int64, device=dev)
    rcsr[1:] = torch.cumsum(n_chunks, 0)
    chunk_src = torch.arange(C, device=dev) * dim
    segment_sum(rcsr, chunk_src, chunk_src, partial, None, grads, finite, False, False)
    return grads, finite


# ---- the table-free ops (CUDA kernels of recis::dedup_jagged, pool_rows, pool_rows_backward) ----

def dedup_jagged_op(values, offsets, feature_ns, batch):
    check_ids(values, "values")
    check_ids(offsets, "offsets", values.device)
    check_layout(feature_ns, batch, [0] * len(feature_ns), offsets)
    values, offsets = values.contiguous(), offsets.contiguous()
    n = values.shape[0]
    if n > MAX_VALUES:
        raise ValueError("recis: at most 2^31 - 1 values per call")
    check_offsets(offsets, n)
    return dedup_jagged(values, offsets, feature_ns, batch)


def _pool_checks(t, inverse, offsets, weights, feature_ns, batch, col_offsets, combiner, n_rows):
    if combiner not in (SUM, MEAN):
        raise ValueError(f"recis: pool_rows pools (sum or mean), got combiner {combiner}")
    dev = t.device
    check_ids(offsets, "offsets", dev)
    check_layout(feature_ns, batch, col_offsets, offsets)
    offsets, inverse = offsets.contiguous(), inverse.contiguous()
    n = inverse.numel()
    check_offsets(offsets, n)
    check_inverse(inverse, n, n_rows, dev)
    return offsets, inverse, check_weights(weights, n, dev), n


def pool_rows_op(rows, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner):
    if rows.dtype != torch.float32:
        raise TypeError(f"recis: rows must be float32, got {rows.dtype}")
    if rows.dim() != 2:
        raise ValueError(f"recis: rows must be [n, dim], got shape {list(rows.shape)}")
    offsets, inverse, w, n = _pool_checks(rows, inverse, offsets, weights, feature_ns, batch, col_offsets,
                                          combiner, rows.shape[0])
    rows = rows.contiguous()
    src = torch.arange(rows.shape[0], dtype=torch.int64, device=rows.device)
    return pool(rows, src, rows[:0], offsets, inverse, w, feature_ns, batch, col_offsets, out_cols, combiner, n)


def pool_rows_backward_op(grad_out, inverse, offsets, weights, feature_ns, batch, col_offsets, out_cols, combiner,
                          n_rows, dim):
    if grad_out.dtype != torch.float32:
        raise TypeError(f"recis: output gradient must be float32, got {grad_out.dtype}")
    if grad_out.dim() != 2 or grad_out.shape[0] != batch or grad_out.shape[1] != out_cols:
        raise ValueError(f"recis: output gradient must be [{batch}, {out_cols}], got {list(grad_out.shape)}")
    if n_rows < 0 or dim < 1:
        raise ValueError(f"recis: need n_rows >= 0 and dim >= 1, got {n_rows} and {dim}")
    offsets, inverse, w, _ = _pool_checks(grad_out, inverse, offsets, weights, feature_ns, batch, col_offsets,
                                          combiner, n_rows)
    grads, _ = unique_grads(grad_out, offsets, w, inverse, feature_ns, batch, col_offsets, combiner, dim,
                            n_unique=n_rows)
    return grads
