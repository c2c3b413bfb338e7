"""DLRM (Naumov et al., 2019): bottom MLP for dense features, pairwise dot interaction, top MLP."""
from typing import Mapping, Optional, Sequence

import torch

from recis.models.base import CTRModel, feature_tables
from recis.models.layers import MLP, dot_interaction
from recis.nn import EmbeddingCollection


class DLRM(CTRModel):
    """The bottom MLP maps dense features to one more embedding-sized field; the top MLP sees
    the dense field and the dot products of every pair of fields."""

    def __init__(self, sparse_features: Sequence[str], dense_dim: int = 0, embedding_dim: int = 16,
                 bottom: Sequence[int] = (64,), top: Sequence[int] = (256, 128), dropout: float = 0.0,
                 combiners: Optional[Mapping[str, Optional[str]]] = None, **table_options):
        super().__init__(sparse_features, dense_dim, embedding_dim)
        self.embeddings = EmbeddingCollection(feature_tables(sparse_features, embedding_dim, combiners=combiners,
                                                             **table_options))
        self.bottom = MLP(dense_dim, bottom, out_dim=embedding_dim) if dense_dim else None
        fields = len(sparse_features) + (1 if dense_dim else 0)
        top_in = fields * (fields - 1) // 2 + (embedding_dim if dense_dim else 0)
        self.top = MLP(top_in, top, out_dim=1, dropout=dropout)

    def forward(self, batch) -> torch.Tensor:
        dense = self.dense_input(batch)
        fields = self.fields(self.embeddings, batch)
        parts = []
        if dense is not None:
            bottom = self.bottom(dense)
            fields = torch.cat([bottom.unsqueeze(1), fields], dim=1)
            parts.append(bottom)
        parts.append(dot_interaction(fields))
        return self.top(torch.cat(parts, dim=1)).squeeze(1)
