"""Reductions through tl.reduce with combine functions of this package. (tl.max and tl.sum are
jit functions of Triton's standard library, compiled or interpreted by how Triton was imported;
these helpers follow the flavor of this package, so the interpreted copy works whenever Triton
was imported.)"""
import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def any_true(mask):
    """Whether any lane of a 1-D or 2-D boolean block is set (a scalar)."""
    m = mask.to(tl.int32)
    if len(m.shape) == 2:
        m = tl.reduce(m, 1, _max)
    return tl.reduce(m, 0, _max) > 0


@triton.jit
def max_of(x):
    """The largest element of a 1-D block (a scalar)."""
    return tl.reduce(x, 0, _max)


@triton.jit
def row_sum(x):
    """Sums a 2-D block along its columns (tree order)."""
    return tl.reduce(x, 1, _add)
