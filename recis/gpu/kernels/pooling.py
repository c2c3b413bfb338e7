"""Pooled forward over jagged bags and the per-unique-row gradient (a segment reduction).

Both keep csrc/ops/pooling.cc's summation order (values in bag order; a row's gradient
contributions in value order), so with `enable_fp_fusion=False` they equal the CPU results
bit for bit. Rows are addressed through `src`, one entry per unique key: >= 0 is a table row,
-1 reads zeros (a key without a row), <= -2 is row -src-2 of `fallback` (initial values).
"""
import triton
import triton.language as tl

from .reduce import max_of, row_sum


@triton.jit
def _row_values(emb_ptr, fb_ptr, r, cols, dim, live, mc):
    table = live & (r >= 0)
    fb = live & (r <= -2)
    v = tl.load(emb_ptr + tl.where(table, r, 0)[:, None] * dim + cols[None, :], mask=table[:, None] & mc[None, :],
                other=0.0)
    w = tl.load(fb_ptr + tl.where(fb, -r - 2, 0)[:, None] * dim + cols[None, :], mask=fb[:, None] & mc[None, :],
                other=0.0)
    return tl.where(fb[:, None], w, v)


@triton.jit
def pooled_forward_kernel(offsets_ptr, inverse_ptr, src_ptr, emb_ptr, fb_ptr, w_ptr, feature_ns_ptr, col_off_ptr,
                          out_ptr, num_bags, batch, out_cols, dim, HAS_W: tl.constexpr, MEAN: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[b, col_off[f] + j] = combine over the values i of bag k = f * batch + b of
    w_i * row(inverse[i])[j]; empty bags give 0; bags of features with ns < 0 are skipped."""
    k = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mc = cols < dim
    mk = k < num_bags
    f = k // batch
    b = k - f * batch
    active = mk & (tl.load(feature_ns_ptr + f, mask=mk, other=-1) >= 0)
    s = tl.load(offsets_ptr + k, mask=active, other=0)
    length = tl.load(offsets_ptr + k + 1, mask=active, other=0) - s
    acc = tl.full([BLOCK_B, BLOCK_D], 0, tl.float32)
    longest = max_of(length)  # once: the loop test is then a scalar compare, no block reduction
    j = 0
    while j < longest:
        live = j < length
        i = s + j
        u = tl.load(inverse_ptr + i, mask=live, other=0)
        r = tl.load(src_ptr + u, mask=live, other=-1)
        v = _row_values(emb_ptr, fb_ptr, r, cols, dim, live, mc)
        if HAS_W:
            w = tl.load(w_ptr + i, mask=live, other=1.0)
            acc = tl.where(live[:, None], acc + w[:, None] * v, acc)
        else:
            acc = tl.where(live[:, None], acc + v, acc)
        j += 1
    if MEAN:
        inv = tl.math.div_rn(tl.full([BLOCK_B], 1.0, tl.float32), tl.maximum(length, 1).to(tl.float32))
        acc = tl.where((length > 0)[:, None], acc * inv[:, None], acc)
    col0 = tl.load(col_off_ptr + f, mask=active, other=0)
    ptrs = out_ptr + (b * out_cols + col0)[:, None] + cols[None, :]
    tl.store(ptrs, acc, mask=active[:, None] & mc[None, :])


@triton.jit
def unpooled_forward_kernel(inverse_ptr, src_ptr, emb_ptr, fb_ptr, w_ptr, out_ptr, n, dim, HAS_W: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[i] = w_i * row(inverse[i]) for every value with inverse[i] >= 0 (combiner None)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mc = cols < dim
    u = tl.load(inverse_ptr + i, mask=i < n, other=-1)
    live = u >= 0
    r = tl.load(src_ptr + u, mask=live, other=-1)
    v = _row_values(emb_ptr, fb_ptr, r, cols, dim, live, mc)
    if HAS_W:
        v = tl.load(w_ptr + i, mask=live, other=1.0)[:, None] * v
    tl.store(out_ptr + i[:, None] * dim + cols[None, :], v, mask=live[:, None] & mc[None, :])


@triton.jit
def segment_sum_kernel(csr_ptr, src_ptr, scale_ptr, in_ptr, in_finite_ptr, out_ptr, finite_ptr, n_seg, dim,
                       HAS_SCALE: tl.constexpr, HAS_FINITE: tl.constexpr, INIT_FIRST: tl.constexpr,
                       BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[u] = sum over p in [csr[u], csr[u+1]) of scale[p] * in[src[p] : src[p] + dim], in p
    order (no atomics: one lane group owns a row). finite[u] = out[u] has no NaN/Inf (and, with
    HAS_FINITE, every in_finite[p] is set). INIT_FIRST starts from the first term instead of
    from 0 (C++ merges pending gradients by copying the first)."""
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    cols = tl.arange(0, BLOCK_D)
    mc = cols < dim
    mu = u < n_seg
    s = tl.load(csr_ptr + u, mask=mu, other=0)
    count = tl.load(csr_ptr + u + 1, mask=mu, other=0) - s
    acc = tl.full([BLOCK_U, BLOCK_D], 0, tl.float32)
    ok = mu
    longest = max_of(count)
    j = 0
    while j < longest:
        live = j < count
        p = s + j
        off = tl.load(src_ptr + p, mask=live, other=0)
        g = tl.load(in_ptr + off[:, None] + cols[None, :], mask=live[:, None] & mc[None, :], other=0.0)
        if HAS_SCALE:
            g = tl.load(scale_ptr + p, mask=live, other=0.0)[:, None] * g
        if INIT_FIRST:
            acc = tl.where(live[:, None], tl.where(j == 0, g, acc + g), acc)
        else:
            acc = tl.where(live[:, None], acc + g, acc)
        if HAS_FINITE:
            ok = ok & (~live | (tl.load(in_finite_ptr + p, mask=live, other=1) != 0))
        j += 1
    probe = row_sum(tl.where(mc[None, :], acc * 0.0, 0.0))
    ok = ok & (probe == probe)
    tl.store(out_ptr + u[:, None] * dim + cols[None, :], acc, mask=mu[:, None] & mc[None, :])
    tl.store(finite_ptr + u, ok.to(tl.int8), mask=mu)
