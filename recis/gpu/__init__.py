"""GPU tables: Triton kernels for the id map, row initialization, pooled lookup, its backward
and the fused sparse optimizers, plus `TritonTable`, the backend a TableGroup uses when its
device is CUDA (or when `backend="triton"` is asked for on the CPU, where the same kernels run
in Triton's interpreter). See docs/gpu.md."""
from recis.gpu.table import TritonTable

__all__ = ["TritonTable"]
