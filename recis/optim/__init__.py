"""recis.optim: fused sparse optimizers for hash tables (use any torch optimizer for dense parameters),
optimizers by name (`recis.optim.registry`, entry-point group `recis.optimizers`) and
`OptimizerSet`, several named optimizers acting as one."""
from recis.optim.collection import OptimizerSet
from recis.optim.optimizers import (SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad,
                                    SparseSGD)
from recis.optim.sparse_optimizer import SparseOptimizer
from recis.optim.registry import (OptimizerNotFoundError, available_optimizers, builtin_optimizers, load_optimizer,
                                  optimizer_kind, register_optimizer, unregister_optimizer)

__all__ = ["SparseOptimizer", "SparseSGD", "SparseAdagrad", "SparseRowwiseAdagrad", "SparseAdam", "SparseAdamW",
           "SparseFTRL", "OptimizerSet", "OptimizerNotFoundError", "available_optimizers", "builtin_optimizers",
           "load_optimizer", "optimizer_kind", "register_optimizer", "unregister_optimizer"]
