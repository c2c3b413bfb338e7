"""Deterministic per-id row initialization, bit for bit csrc/hashtable/initializer.cc.

Every value is a pure function of (seed, id, column): a splitmix64 counter, then uniform bits
or a Box-Muller normal built from +, *, IEEE division/sqrt and bit casts only. Launch with
`enable_fp_fusion=False` so that no multiply-add is contracted (the C++ is built without
contraction), which makes the GPU results equal the CPU results exactly.
"""
import triton
import triton.language as tl

from recis.vocabulary import INIT_KINDS

from .hashing import ATTEMPT_STEP, column_draw, row_key
from .reduce import any_true

CONSTANT: tl.constexpr = tl.constexpr(INIT_KINDS["constant"])
UNIFORM: tl.constexpr = tl.constexpr(INIT_KINDS["uniform"])
TRUNCATED_NORMAL: tl.constexpr = tl.constexpr(INIT_KINDS["truncated_normal"])


@triton.jit
def _fast_log(u):
    """ln(u) for u in (0, 1]: exponent plus 2 atanh((m - 1) / (m + 1)), as fast_log in C++."""
    bits = u.to(tl.int32, bitcast=True)
    e = ((bits >> 23) - 127).to(tl.float32)
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    t = tl.math.div_rn(m - 1.0, m + 1.0)
    t2 = t * t
    p = 1.0 + t2 * (0.3333333432674408 + t2 * (0.20000000298023224 + t2 * (0.1428571492433548 + t2 * (
        0.1111111119389534 + t2 * 0.09090909361839294))))
    return e * 0.6931471824645996 + 2.0 * t * p


@triton.jit
def _fast_cos_turns(v):
    """cos(2 pi v) for v in [0, 1): quadrant reduction, then Taylor polynomials."""
    quadrant = (4.0 * v + 0.5).to(tl.int32)
    r = 6.2831854820251465 * (v - 0.25 * quadrant.to(tl.float32))
    r2 = r * r
    c = 1.0 + r2 * (-0.5 + r2 * (0.0416666679084301 + r2 * (-0.0013888889225199819 + r2 * 2.4801587642286904e-05)))
    s = r * (1.0 + r2 * (-0.1666666716337204 + r2 * (0.008333333767950535 + r2 * (-0.00019841270113829523 + r2 *
                                                                                       2.7557318844628753e-06))))
    mag = tl.where((quadrant & 1) != 0, s, c)
    return tl.where(((quadrant + 1) & 2) != 0, -mag, mag)


@triton.jit
def _normal(key, col, salt):
    """One standard normal from the counter of (key, column, salt): Box-Muller's cosine branch."""
    r = column_draw(key, col, salt)
    hi = (r >> 40).to(tl.int32)
    mid = ((r >> 16) & 0xFFFFFF).to(tl.int32)
    u1 = (hi.to(tl.float32) + 0.5) * 5.960464477539063e-08
    u2 = mid.to(tl.float32) * 5.960464477539063e-08
    return tl.sqrt_rn(-2.0 * _fast_log(u1)) * _fast_cos_turns(u2)


@triton.jit
def init_rows_kernel(ids_ptr, ns_ptr, ns_key_ptr, dst_rows_ptr, emb_ptr, n, dim, a, b, c,
                     KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """emb[dst_rows[i], :] = initial row of (ns[i], ids[i]) for i < n. ns_key[s] holds
    recis.hashing.seed_key(seed_s), so the row key is mix64(ns_key ^ id). (a, b, c) are the
    InitSpec's, except that for uniform b is the span high - low (a float32 difference)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mr = offs < n
    mc = cols < dim
    ids = tl.load(ids_ptr + offs, mask=mr, other=0)
    ns = tl.load(ns_ptr + offs, mask=mr, other=0)
    dst = tl.load(dst_rows_ptr + offs, mask=mr, other=0)
    key = row_key(tl.load(ns_key_ptr + ns, mask=mr, other=0), ids)[:, None]
    col = cols.to(tl.uint64)[None, :]
    if KIND == CONSTANT:
        val = tl.full([BLOCK_N, BLOCK_D], 0, tl.float32) + a
    elif KIND == UNIFORM:
        bits = (column_draw(key, col, 0) >> 40).to(tl.int32)
        val = a + b * bits.to(tl.float32) * 5.960464477539063e-08
    else:
        z = _normal(key, col, tl.full([BLOCK_N, BLOCK_D], 0, tl.uint64))
        if KIND == TRUNCATED_NORMAL:
            # Values outside +-c are redrawn with the next attempt's counter (salt = attempt * step).
            step = tl.full([BLOCK_N, BLOCK_D], 0, tl.uint64) + ATTEMPT_STEP
            salt = step
            attempt = 1
            while (attempt < 32) & any_true(tl.abs(z) > c):
                z = tl.where(tl.abs(z) > c, _normal(key, col, salt), z)
                salt = salt + step
                attempt += 1
            z = tl.where(tl.abs(z) > c, tl.where(z < 0, z * 0.0 - c, z * 0.0 + c), z)
        val = a + b * z
    ptrs = emb_ptr + dst.to(tl.int64)[:, None] * dim + cols[None, :]
    tl.store(ptrs, val, mask=mr[:, None] & mc[None, :])
