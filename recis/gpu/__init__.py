"""GPU tables: Triton kernels for the id map, row initialization, pooled lookup, its backward
and the fused sparse optimizers, plus `TritonTable`, the backend a TableGroup uses when its
device is CUDA (or when `backend="triton"` is asked for on the CPU, where the same kernels run
in Triton's interpreter). See docs/gpu.md."""
__all__ = ["TritonTable"]


def __getattr__(name):
    # Lazy: `import recis` registers the CUDA kernels (recis.gpu.ops) without loading the table.
    if name == "TritonTable":
        from recis.gpu.table import TritonTable
        return TritonTable
    raise AttributeError(f"module 'recis.gpu' has no attribute {name!r}")
