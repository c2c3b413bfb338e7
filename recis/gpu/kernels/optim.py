"""Fused sparse optimizer updates: one pass reads a row, its slots and its gradient and writes
the row and slots back. The formulas are csrc/optim/sparse_update.cc's, operation for operation
(IEEE division and square root; launch with `enable_fp_fusion=False`), so results are equal
to the CPU's bit for bit. FTRL with lr_power != -0.5 computes n^p as exp2(p * log2(n)), which
can differ from the C library's powf in the last bits.

KIND is a code of recis.vocabulary.OPTIM_KINDS; hyperparameters h0..h6 are prepared on the
host (recis.gpu.lookup.kernel_hyper) as the C++ prepares them:
  sgd              h = [lr, weight_decay]
  adagrad          h = [lr / (1 + (step - 1) * lr_decay), weight_decay, eps]
  rowwise_adagrad  h = [lr, weight_decay, eps]
  adam, adamw      h = [lr, beta1, beta2, eps, weight_decay, lr / bc1, 1 / sqrt(bc2)]
  ftrl             h = [lr, beta, l1, l2, p = -lr_power, 0^p]
"""
import triton
import triton.language as tl

from recis.vocabulary import OPTIM_KINDS, REDUCTION_LANES

from .reduce import row_sum

SGD: tl.constexpr = tl.constexpr(OPTIM_KINDS["sgd"])
ADAGRAD: tl.constexpr = tl.constexpr(OPTIM_KINDS["adagrad"])
ROWWISE_ADAGRAD: tl.constexpr = tl.constexpr(OPTIM_KINDS["rowwise_adagrad"])
ADAM: tl.constexpr = tl.constexpr(OPTIM_KINDS["adam"])
ADAMW: tl.constexpr = tl.constexpr(OPTIM_KINDS["adamw"])
FTRL: tl.constexpr = tl.constexpr(OPTIM_KINDS["ftrl"])
LANES: tl.constexpr = tl.constexpr(REDUCTION_LANES["rowwise_adagrad"])  # its sum of squares, as the C++ sums it


@triton.jit
def _root(n, p, root0, SQRT: tl.constexpr):
    """n^p (root0 = 0^p, from the host)."""
    if SQRT:
        return tl.sqrt_rn(n)
    else:
        return tl.where(n > 0, tl.exp2(p * tl.log2(tl.maximum(n, n * 0.0 + 1e-38))), n * 0.0 + root0)


@triton.jit
def sparse_update_kernel(emb_ptr, slots_ptr, rows_ptr, grads_ptr, finite_ptr, n, dim, width,
                         h0, h1, h2, h3, h4, h5, h6, KIND: tl.constexpr, SQRT: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Applies grads[i] to row rows[i] for i < n with rows[i] >= 0 and finite[i] != 0.
    Rows must be distinct (the caller dedups them)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mc = cols < dim
    mi = i < n
    row = tl.load(rows_ptr + i, mask=mi, other=-1)
    act = mi & (row >= 0) & (tl.load(finite_ptr + i, mask=mi, other=0) != 0)
    r = tl.where(act, row, 0)
    m2 = act[:, None] & mc[None, :]
    wp = emb_ptr + r[:, None] * dim + cols[None, :]
    w = tl.load(wp, mask=m2, other=0.0)
    # Scalars enter through tensors: scalar-only arithmetic would run in double in the interpreter.
    one = tl.full([BLOCK_R, BLOCK_D], 1.0, tl.float32)
    g = tl.load(grads_ptr + i[:, None] * dim + cols[None, :], mask=m2, other=0.0)
    if KIND == SGD:
        w = w - h0 * (g + h1 * w)
    elif KIND == ADAGRAD:
        sp = slots_ptr + r[:, None] * width + cols[None, :]
        s = tl.load(sp, mask=m2, other=0.0)
        gj = g + h1 * w
        s = s + gj * gj
        w = w - tl.math.div_rn(h0 * gj, tl.sqrt_rn(s) + h2)
        tl.store(sp, s, mask=m2)
    elif KIND == ROWWISE_ADAGRAD:
        # The sum of squares runs in LANES lanes (column j adds to lane j % LANES, in column
        # order), and then the lanes add up in lane order: the C++ order (a tree sum rounds otherwise).
        lanes = tl.arange(0, LANES)
        sq_lanes = tl.full([BLOCK_R, LANES], 0, tl.float32)
        for c in range(0, BLOCK_D, LANES):  # columns past dim add 0 * 0
            cj = c + lanes
            mj = act[:, None] & (cj < dim)[None, :]
            gc = tl.load(grads_ptr + i[:, None] * dim + cj[None, :], mask=mj, other=0.0)
            if h1 != 0.0:
                gc = gc + h1 * tl.load(emb_ptr + r[:, None] * dim + cj[None, :], mask=mj, other=0.0)
            sq_lanes = sq_lanes + gc * gc
        sq = tl.full([BLOCK_R], 0, tl.float32)
        for lane in range(0, LANES):  # one lane at a time: x + 0 is exact
            sq = sq + row_sum(tl.where(lanes[None, :] == lane, sq_lanes, 0.0))
        acc = tl.load(slots_ptr + r * width, mask=act, other=0.0)
        acc = acc + tl.math.div_rn(sq, tl.full([BLOCK_R], 0, tl.float32) + dim)
        tl.store(slots_ptr + r * width, acc, mask=act)
        mult = tl.math.div_rn(tl.full([BLOCK_R], 0, tl.float32) + h0, tl.sqrt_rn(acc) + h2)
        if h1 != 0.0:
            w = w - mult[:, None] * (g + h1 * w)
        else:
            w = w - mult[:, None] * g
    elif KIND == ADAM or KIND == ADAMW:
        mp = slots_ptr + r[:, None] * width + cols[None, :]
        m = tl.load(mp, mask=m2, other=0.0)
        v = tl.load(mp + dim, mask=m2, other=0.0)
        if KIND == ADAMW:
            w = w * (one - (one * h0) * h4)
            gj = g
        else:
            gj = g + h4 * w
        m = h1 * m + (one - h1) * gj
        v = h2 * v + (one - h2) * gj * gj
        w = w - tl.math.div_rn(h5 * m, tl.sqrt_rn(v) * h6 + h3)
        tl.store(mp, m, mask=m2)
        tl.store(mp + dim, v, mask=m2)
    else:  # FTRL
        zp = slots_ptr + r[:, None] * width + cols[None, :]
        z = tl.load(zp, mask=m2, other=0.0)
        nn = tl.load(zp + dim, mask=m2, other=0.0)
        n_new = nn + g * g
        root_new = _root(n_new, h4, h5, SQRT)
        sigma = tl.math.div_rn(root_new - _root(nn, h4, h5, SQRT), tl.full([BLOCK_R, BLOCK_D], 0, tl.float32) + h0)
        z = z + (g - sigma * w)
        sign = tl.where(z > 0.0, one, -one)
        den = tl.math.div_rn(h1 + root_new, tl.full([BLOCK_R, BLOCK_D], 0, tl.float32) + h0) + h3
        w = tl.where(tl.abs(z) <= h2, 0.0, -tl.math.div_rn(z - sign * h2, den))
        tl.store(zp, z, mask=m2)
        tl.store(zp + dim, n_new, mask=m2)
    tl.store(wp, w, mask=m2)
