"""64-bit mixing in Triton, bit for bit the functions of csrc/common/hashing.h, with the
constants of recis.hashing (tests/hash_vectors.json pins all three)."""
import triton
import triton.language as tl

from recis import hashing as _hashing

GOLDEN: tl.constexpr = tl.constexpr(_hashing.GOLDEN)
MIX1: tl.constexpr = tl.constexpr(_hashing.CONSTANTS["mix1"])
MIX2: tl.constexpr = tl.constexpr(_hashing.CONSTANTS["mix2"])
COLUMN_STEP: tl.constexpr = tl.constexpr(_hashing.COLUMN_STEP)
ATTEMPT_STEP: tl.constexpr = tl.constexpr(_hashing.ATTEMPT_STEP)


@triton.jit
def mix64(x):
    """splitmix64 finalizer on uint64 values (wrapping arithmetic, logical shifts)."""
    x ^= x >> 30
    x *= MIX1
    x ^= x >> 27
    x *= MIX2
    x ^= x >> 31
    return x


@triton.jit
def hash_id(ids, ns):
    """hash_id(id, ns) = mix64(id + golden * (ns + 1)) as uint64; ids int64, ns int32/int64."""
    u = ids.to(tl.uint64, bitcast=True)
    k = (ns.to(tl.int64) + 1).to(tl.uint64, bitcast=True)
    return mix64(u + k * GOLDEN)


@triton.jit
def row_key(ns_key, ids):
    """The key of an id's initial row; ns_key = recis.hashing.seed_key(seed) as int64."""
    return mix64(ns_key.to(tl.uint64, bitcast=True) ^ ids.to(tl.uint64, bitcast=True))


@triton.jit
def column_draw(key, col, salt):
    """The 64 random bits of (row key, column, salt): mix64(key + (col + 1) * column_step + salt)."""
    return mix64(key + (col.to(tl.uint64) + 1) * COLUMN_STEP + salt)


@triton.jit
def reduce_range32(h, n):
    """floor(h * n / 2^64) for uint64 h and n < 2^32 (Lemire's reduction without 128-bit ints):
    exact, since hi * n + (lo * n >> 32) cannot overflow 64 bits."""
    n64 = h * 0 + n  # n may arrive as a constexpr (Triton specializes an argument of 1)
    hi = h >> 32
    lo = h & 0xFFFFFFFF
    return (hi * n64 + ((lo * n64) >> 32)) >> 32


@triton.jit
def hash_partition_kernel(ids_ptr, ns_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[i] = hash_id(ids[i], ns[i]) as int64 (the dedup order uses its top 3 bits)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ids = tl.load(ids_ptr + offs, mask=m, other=0)
    ns = tl.load(ns_ptr + offs, mask=m, other=0)
    tl.store(out_ptr + offs, hash_id(ids, ns).to(tl.int64, bitcast=True), mask=m)
