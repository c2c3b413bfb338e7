"""Every Triton kernel of recis.gpu compiles for an H100 (sm_90) without a GPU: Triton's
bundled LLVM and ptxas take it to a cubin. The float kernels' PTX has no fused multiply-add and
only correctly rounded (.rn) arithmetic, which is what makes GPU results equal the CPU's."""
import re

import pytest

triton = pytest.importorskip("triton")

P64, P32, PF, P8 = "*i64", "*i32", "*fp32", "*i8"
MAP = dict(map_ptr=P64, ids_ptr=P64, ns_ptr=P64, rows_ptr=P64, n="i32", mask_slots="i64", shift="i32")
INIT = dict(ids_ptr=P64, ns_ptr=P64, ns_key_ptr=P64, dst_rows_ptr=P64, emb_ptr=PF, n="i32", dim="i32", a="fp32",
            b="fp32", c="fp32")
POOL = dict(offsets_ptr=P64, inverse_ptr=P32, src_ptr=P64, emb_ptr=PF, fb_ptr=PF, w_ptr=PF, feature_ns_ptr=P64,
            col_off_ptr=P64, out_ptr=PF, num_bags="i32", batch="i32", out_cols="i32", dim="i32")
SEG = dict(csr_ptr=P64, src_ptr=P64, scale_ptr=PF, in_ptr=PF, in_finite_ptr=P8, out_ptr=PF, finite_ptr=P8,
           n_seg="i32", dim="i32")
OPT = dict(emb_ptr=PF, slots_ptr=PF, rows_ptr=P64, grads_ptr=PF, finite_ptr=P8, n="i32", dim="i32", width="i32",
           **{f"h{i}": "fp32" for i in range(7)})

# (module, kernel, signature, constexprs, float kernel?)
CASES = [("hashing", "hash_partition_kernel", dict(ids_ptr=P64, ns_ptr=P64, out_ptr=P64, n="i32"), dict(BLOCK=256),
          False),
         ("id_map", "find_kernel", dict(MAP, counts_ptr=P64, add_ptr=P64, last_ptr=P64, step="i32"),
          dict(TOUCH=True, BLOCK=128), False),
         ("id_map", "insert_kernel", MAP, dict(BLOCK=128), False),
         ("id_map", "erase_kernel", MAP, dict(BLOCK=128), False),
         ("id_map", "rehash_kernel", dict(old_ptr=P64, old_cap="i32", map_ptr=P64, mask_slots="i64", shift="i32"),
          dict(BLOCK=128), False),
         ("sketch", "sketch_kernel", dict(counts_ptr=P64, ids_ptr=P64, ns_ptr=P64, add_ptr=P64, sel_ptr=P8,
                                          est_ptr=P64, n="i32", width="i32"), dict(DEPTH=4, COMMIT=True, BLOCK=128),
          False),
         ("pooling", "unpooled_forward_kernel", dict(inverse_ptr=P32, src_ptr=P64, emb_ptr=PF, fb_ptr=PF, w_ptr=PF,
                                                     out_ptr=PF, n="i32", dim="i32"),
          dict(HAS_W=True, BLOCK_N=16, BLOCK_D=64), True)]
CASES += [("init", "init_rows_kernel", INIT, dict(KIND=k, BLOCK_N=32, BLOCK_D=d), True)
          for k in range(4) for d in (8, 64)]
CASES += [("pooling", "pooled_forward_kernel", POOL, dict(HAS_W=w, MEAN=m, BLOCK_B=16, BLOCK_D=64), True)
          for w, m in ((True, False), (False, True))]
CASES += [("pooling", "segment_sum_kernel", SEG, dict(HAS_SCALE=s, HAS_FINITE=f, INIT_FIRST=f, BLOCK_U=64,
                                                         BLOCK_D=64), True) for s, f in ((True, False), (False, True))]
# FTRL with lr_power != -0.5 (SQRT=False) uses exp2/log2, documented as not bit-exact: compiled only.
CASES += [("optim", "sparse_update_kernel", OPT, dict(KIND=k, SQRT=q, BLOCK_R=32, BLOCK_D=64), k != 5 or q)
          for k in range(6) for q in ((True, False) if k == 5 else (False,))]


@pytest.fixture(scope="module")
def compile_for_h100():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from recis.gpu import kernels

    try:
        triton.compile(ASTSource(kernels.hashing.hash_partition_kernel, dict(CASES[0][2], BLOCK="constexpr"),
                                 dict(BLOCK=256)), target=GPUTarget("cuda", 90, 32))
    except Exception as e:  # noqa: BLE001 - no CUDA backend or ptxas in this Triton build
        pytest.skip(f"Triton cannot compile for sm_90 here: {type(e).__name__}: {e}")

    def run(module, name, sig, const):
        fn = getattr(getattr(kernels, module), name)
        src = ASTSource(fn, dict(sig, **{k: "constexpr" for k in const}), const)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False))
    return run


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_contraction(compile_for_h100):
    for module, name, sig, const, floats in CASES:
        ptx = compile_for_h100(module, name, sig, const).asm["ptx"]
        assert ".entry" in ptx, name
        if floats:
            what = f"{name} {const}"
            assert not re.search(r"\bfma\.", ptx), f"{what}: fused multiply-add in the PTX"
            assert not re.search(r"\b(mul|add|sub)\.f32", ptx), f"{what}: float op without .rn (ptxas may fuse it)"
            assert not re.search(r"(div|sqrt)\.(approx|full)", ptx), f"{what}: approximate division or sqrt"
