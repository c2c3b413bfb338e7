"""DIN (Zhou et al., 2018): target attention of the candidate item over the user's behaviour sequence."""
from typing import Mapping, Optional, Sequence

import torch

from recis.models.base import CTRModel, concat_dense, feature_tables
from recis.models.layers import MLP, TargetAttention, jagged_to_padded
from recis.nn import EmbeddingCollection


class DIN(CTRModel):
    """The candidate (`target_feature`, one id per example) and the behaviour sequence
    (`behavior_feature`, the last `max_len` ids are kept by the feature engine or here, the first
    `max_len`) share one table. The attention-pooled interest, the candidate and the other pooled
    features feed an MLP."""

    def __init__(self, sparse_features: Sequence[str], target_feature: str, behavior_feature: str,
                 dense_dim: int = 0, embedding_dim: int = 16, max_len: int = 50,
                 attention_hidden: Sequence[int] = (80, 40), hidden: Sequence[int] = (200, 80),
                 dropout: float = 0.0, combiners: Optional[Mapping[str, Optional[str]]] = None, **table_options):
        features = list(dict.fromkeys([target_feature, behavior_feature, *sparse_features]))
        super().__init__(features, dense_dim, embedding_dim)
        if target_feature == behavior_feature:
            raise ValueError("DIN needs distinct target and behaviour features")
        if max_len < 1:
            raise ValueError(f"DIN max_len must be >= 1, got {max_len}")
        self.target_feature, self.behavior_feature, self.max_len = target_feature, behavior_feature, max_len
        self.others = [f for f in features if f not in (target_feature, behavior_feature)]
        tables = feature_tables([target_feature, behavior_feature], embedding_dim, combiner=None,
                                shared={"din_items": [target_feature, behavior_feature]}, **table_options)
        if self.others:
            tables += feature_tables(self.others, embedding_dim, combiners=combiners, **table_options)
        self.embeddings = EmbeddingCollection(tables, output="dict")
        self.attention = TargetAttention(embedding_dim, attention_hidden)
        self.mlp = MLP((len(self.others) + 2) * embedding_dim + dense_dim, hidden, out_dim=1, dropout=dropout)

    def forward(self, batch) -> torch.Tensor:
        out = self.embeddings(batch.sparse)
        target = out[self.target_feature]
        query, _ = jagged_to_padded(target.values(), target.lengths(), 1)
        query = query.squeeze(1)  # an example without a candidate id gets zeros
        seq = out[self.behavior_feature]
        keys, mask = jagged_to_padded(seq.values(), seq.lengths(), self.max_len)
        interest = self.attention(query, keys, mask)
        fields = torch.stack([query, interest] + [out[f] for f in self.others], dim=1)
        return self.mlp(concat_dense(fields, self.dense_input(batch))).squeeze(1)
