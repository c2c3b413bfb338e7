"""SGD, Adagrad, row-wise Adagrad, Adam, AdamW and FTRL-proximal for hash tables: each class
names its kind of recis.vocabulary.OPTIMIZERS (slots and kernel hyperparameters) and declares
its options with their defaults.

>>> from recis.nn import HashEmbedding, sparse_tables
>>> emb = HashEmbedding(4)
>>> opt = SparseRowwiseAdagrad(sparse_tables(emb), lr=0.05)
>>> emb(torch.tensor([1, 2]), torch.tensor([0, 2])).sum().backward()
>>> opt.step()

Hyperparameters are checked by name on construction (recis.optim.hyper):

>>> SparseSGD(sparse_tables(emb), lr=-0.1)
Traceback (most recent call last):
...
ValueError: SparseSGD.lr must be a finite number >= 0, got -0.1
"""
from typing import Tuple

import torch  # noqa: F401  (doctest namespace)

from recis.config_utils import Range
from recis.optim.sparse_optimizer import SparseOptimizer


class SparseSGD(SparseOptimizer):
    kind = "sgd"

    def __init__(self, tables, lr: float = 0.01, weight_decay: float = 0.0, skip_nonfinite: bool = False,
                 fused: bool = False):
        super().__init__(tables, dict(lr=lr, weight_decay=weight_decay), skip_nonfinite, fused)


class SparseAdagrad(SparseOptimizer):
    """torch.optim.Adagrad's update, on the rows present in each step."""

    kind = "adagrad"

    def __init__(self, tables, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, skip_nonfinite: bool = False,
                 fused: bool = False):
        super().__init__(tables, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps),
                         skip_nonfinite, fused)


class SparseRowwiseAdagrad(SparseOptimizer):
    """One accumulator per row: s += mean(g^2); w -= lr * g / (sqrt(s) + eps) (fbgemm's
    EXACT_ROWWISE_ADAGRAD). A quarter of Adagrad's memory, the CTR workhorse."""

    kind = "rowwise_adagrad"

    def __init__(self, tables, lr: float = 0.01, eps: float = 1e-8, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, skip_nonfinite: bool = False, fused: bool = False):
        super().__init__(tables, dict(lr=lr, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value), skip_nonfinite, fused)


class SparseAdam(SparseOptimizer):
    """torch.optim.Adam's update (L2 weight decay), applied lazily to the rows present in a step;
    bias correction uses the table's step count, as torch.optim.SparseAdam does."""

    kind = "adam"

    def __init__(self, tables, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, skip_nonfinite: bool = False, fused: bool = False):
        super().__init__(tables, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         skip_nonfinite, fused)


class SparseAdamW(SparseAdam):
    """torch.optim.AdamW's update (decoupled weight decay) on the rows present in a step."""

    kind = "adamw"

    def __init__(self, tables, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, skip_nonfinite: bool = False, fused: bool = False):
        super().__init__(tables, lr, betas, eps, weight_decay, skip_nonfinite, fused)


class SparseFTRL(SparseOptimizer):
    """FTRL-proximal (McMahan et al., KDD 2013), per coordinate:
    n' = n + g^2; z += g - (n'^-p - n^-p) / lr * w; w = 0 if |z| <= l1 else
    -(z - sign(z) l1) / ((beta + n'^-p) / lr + l2), with p = lr_power (-0.5 in the paper)."""

    kind = "ftrl"
    rules = {"lr": Range(gt=0)}  # FTRL divides by lr

    def __init__(self, tables, lr: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0,
                 lr_power: float = -0.5, initial_accumulator_value: float = 0.1, skip_nonfinite: bool = False,
                 fused: bool = False):
        super().__init__(tables, dict(lr=lr, beta=beta, l1=l1, l2=l2, lr_power=lr_power,
                                      initial_accumulator_value=initial_accumulator_value), skip_nonfinite, fused)
