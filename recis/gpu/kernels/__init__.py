"""Triton kernels of the GPU tables. `recis.gpu.flavor(device)` picks the compiled copy of this
package for CUDA tensors and an interpreted copy (Triton's interpreter, as TRITON_INTERPRET=1
gives) for CPU tensors; every submodule is imported here so that both copies are complete."""
from . import hashing, id_map, init, optim, pooling, reduce, sketch  # noqa: F401
