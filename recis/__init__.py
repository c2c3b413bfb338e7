"""recis: sparse-dense training of recommendation and relevance models on PyTorch."""
from recis import _ops  # noqa: F401  (loads the C++ ops and their fake kernels)
from recis import nn, optim

__version__ = "0.1.0"
__all__ = ["nn", "optim", "__version__"]
