"""DeepFM (Guo et al., 2017): linear term + factorization machine + MLP over shared embeddings."""
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from recis.models.base import CTRModel, concat_dense, feature_tables
from recis.models.layers import MLP, fm_interaction
from recis.nn import EmbeddingCollection


class DeepFM(CTRModel):
    """logit = bias + sum_i w_{id_i} + w_d . dense + FM(e_1..e_F) + MLP([e_1..e_F, dense]).

    >>> m = DeepFM(["user", "item"], dense_dim=2, embedding_dim=4, hidden=(8,))
    >>> sorted(t.name for t in m.embeddings.configs)
    ['item', 'user']
    """

    def __init__(self, sparse_features: Sequence[str], dense_dim: int = 0, embedding_dim: int = 16,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
                 combiners: Optional[Mapping[str, Optional[str]]] = None, **table_options):
        super().__init__(sparse_features, dense_dim, embedding_dim)
        self.embeddings = EmbeddingCollection(feature_tables(sparse_features, embedding_dim, combiners=combiners,
                                                             **table_options))
        linear_options = {k: v for k, v in table_options.items() if k != "initializer"}
        self.linear = self.first_order(sparse_features, combiners=combiners, **linear_options)
        self.dense_linear = nn.Linear(dense_dim, 1) if dense_dim else None
        self.deep = MLP(len(sparse_features) * embedding_dim + dense_dim, hidden, out_dim=1, dropout=dropout)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        dense = self.dense_input(batch)
        fields = self.fields(self.embeddings, batch)
        logit = self.bias + self.linear(batch.sparse).values().sum(dim=1) + fm_interaction(fields)
        if dense is not None:
            logit = logit + self.dense_linear(dense).squeeze(1)
        return logit + self.deep(concat_dense(fields, dense)).squeeze(1)
