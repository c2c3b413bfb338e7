"""DCN-v2 (Wang et al., 2021): explicit feature crosses beside (or before) an MLP."""
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from recis.models.base import CTRModel, concat_dense, feature_tables
from recis.models.layers import MLP, CrossNetwork
from recis.nn import EmbeddingCollection


class DCNv2(CTRModel):
    """x0 = [e_1..e_F, dense]; `structure="stacked"`: MLP(cross(x0)); `"parallel"`: [cross(x0), MLP(x0)].
    `low_rank` replaces each cross matrix W by U V^T of that rank (the paper's mixture-free DCN-M)."""

    def __init__(self, sparse_features: Sequence[str], dense_dim: int = 0, embedding_dim: int = 16,
                 cross_layers: int = 3, low_rank: Optional[int] = None, hidden: Sequence[int] = (256, 128),
                 structure: str = "stacked", dropout: float = 0.0,
                 combiners: Optional[Mapping[str, Optional[str]]] = None, **table_options):
        super().__init__(sparse_features, dense_dim, embedding_dim)
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"DCNv2 structure must be 'stacked' or 'parallel', got {structure!r}")
        self.structure = structure
        self.embeddings = EmbeddingCollection(feature_tables(sparse_features, embedding_dim, combiners=combiners,
                                                             **table_options))
        width = len(sparse_features) * embedding_dim + dense_dim
        self.cross = CrossNetwork(width, cross_layers, low_rank)
        self.deep = MLP(width, hidden, dropout=dropout)
        self.head = nn.Linear(self.deep.out_dim + (width if structure == "parallel" else 0), 1)

    def forward(self, batch) -> torch.Tensor:
        x0 = concat_dense(self.fields(self.embeddings, batch), self.dense_input(batch))
        crossed = self.cross(x0)
        if self.structure == "stacked":
            return self.head(self.deep(crossed)).squeeze(1)
        return self.head(torch.cat([crossed, self.deep(x0)], dim=1)).squeeze(1)
