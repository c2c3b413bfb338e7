"""Count-min sketch of the admission policy (csrc/hashtable/count_sketch.h) on the GPU.

Counters are int64 holding uint32 values. `peek` is exact. `add` raises each counter to the
key's new estimate with an atomic max computed from the counters before the batch: where two
keys of one batch share a counter, the C++ (which adds keys one by one) may count higher;
estimates never fall below the true counts either way.
"""
import triton
import triton.language as tl

from .hashing import GOLDEN, hash_id, mix64, reduce_range32


@triton.jit
def sketch_kernel(counts_ptr, ids_ptr, ns_ptr, add_ptr, sel_ptr, est_ptr, n, width,
                  DEPTH: tl.constexpr, COMMIT: tl.constexpr, BLOCK: tl.constexpr):
    """est[i] = min over the depth rows of the key's counters + add[i] (saturating at 2^32 - 1);
    with COMMIT, the counters of keys with sel[i] != 0 are raised to est[i]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    if COMMIT:
        m = m & (tl.load(sel_ptr + offs, mask=m, other=0) != 0)
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    ns = tl.load(ns_ptr + offs, mask=m, other=0)
    h = hash_id(ids, ns)
    row_len = tl.full([BLOCK], 0, tl.int64) + width  # 64-bit: depth * width may pass 2^31
    est = tl.full([BLOCK], 4294967295, tl.int64)
    hh = h
    for d in range(0, DEPTH):
        hh = mix64(hh + GOLDEN)
        idx = row_len * d + reduce_range32(hh, width).to(tl.int64)
        est = tl.minimum(est, tl.load(counts_ptr + idx, mask=m, other=0))
    target = tl.minimum(est + tl.load(add_ptr + offs, mask=m, other=0), 4294967295)
    tl.store(est_ptr + offs, target, mask=m)
    if COMMIT:
        hh = h
        for d in range(0, DEPTH):
            hh = mix64(hh + GOLDEN)
            idx = row_len * d + reduce_range32(hh, width).to(tl.int64)
            tl.atomic_max(counts_ptr + idx, target, mask=m)

