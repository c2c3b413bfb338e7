"""Wide & Deep (Cheng et al., 2016): a linear model over ids (and crosses) beside an MLP."""
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from recis.models.base import CTRModel, concat_dense, feature_tables
from recis.models.layers import MLP
from recis.nn import EmbeddingCollection


class WideAndDeep(CTRModel):
    """logit = wide(ids of `wide_features` (default: all), dense) + deep([e_1..e_F, dense]).
    Cross features come from the feature engine (a `cross` spec) and are listed in `wide_features`."""

    def __init__(self, sparse_features: Sequence[str], dense_dim: int = 0, embedding_dim: int = 16,
                 hidden: Sequence[int] = (256, 128), dropout: float = 0.0,
                 wide_features: Optional[Sequence[str]] = None, deep_features: Optional[Sequence[str]] = None,
                 combiners: Optional[Mapping[str, Optional[str]]] = None, **table_options):
        wide = list(wide_features or sparse_features)
        deep = list(deep_features or sparse_features)
        super().__init__(list(dict.fromkeys(deep + wide)), dense_dim, embedding_dim)
        linear_options = {k: v for k, v in table_options.items() if k != "initializer"}
        wide_combiners = {k: v for k, v in (combiners or {}).items() if k in wide}
        deep_combiners = {k: v for k, v in (combiners or {}).items() if k in deep}
        # Each collection skips the batch's features that only the other one serves.
        self.linear = self.first_order(wide, combiners=wide_combiners,
                                       extra_keys=[f for f in deep if f not in wide], **linear_options)
        self.embeddings = EmbeddingCollection(feature_tables(deep, embedding_dim, combiners=deep_combiners,
                                                             **table_options),
                                              extra_keys=[f for f in wide if f not in deep])
        self.dense_linear = nn.Linear(dense_dim, 1) if dense_dim else None
        self.deep = MLP(len(deep) * embedding_dim + dense_dim, hidden, out_dim=1, dropout=dropout)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        dense = self.dense_input(batch)
        logit = self.bias + self.linear(batch.sparse).values().sum(dim=1)
        if dense is not None:
            logit = logit + self.dense_linear(dense).squeeze(1)
        return logit + self.deep(concat_dense(self.fields(self.embeddings, batch), dense)).squeeze(1)
