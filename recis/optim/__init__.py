"""recis.optim: fused sparse optimizers for hash tables (use any torch optimizer for dense parameters)."""
from recis.optim.optimizers import (SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad,
                                    SparseSGD)
from recis.optim.sparse_optimizer import SparseOptimizer

__all__ = ["SparseOptimizer", "SparseSGD", "SparseAdagrad", "SparseRowwiseAdagrad", "SparseAdam", "SparseAdamW",
           "SparseFTRL"]
