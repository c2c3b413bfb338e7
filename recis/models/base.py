"""What every CTR model shares: one hash table per sparse feature, dense-input checks, logits out."""
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from recis.config_utils import Range, check_value
from recis.nn import EmbeddingCollection, TableConfig, Zeros


def feature_tables(features: Sequence[str], embedding_dim: int, combiner: Optional[str] = "sum",
                   combiners: Optional[Mapping[str, Optional[str]]] = None, prefix: str = "",
                   shared: Optional[Mapping[str, Sequence[str]]] = None, **table_options) -> List[TableConfig]:
    """One TableConfig per feature (named `prefix + feature`), or one per entry of `shared`
    (table name -> the features that share its rows). `table_options` go to every TableConfig
    (initializer, admission, eviction, capacity, ...).

    >>> [(t.name, t.feature_names) for t in feature_tables(["a", "b", "c"], 4, shared={"ab": ["a", "b"]})]
    [('ab', ['a', 'b']), ('c', ['c'])]
    """
    combiners = dict(combiners or {})
    unknown = sorted(set(combiners) - set(features))
    if unknown:
        raise ValueError(f"combiners name features {unknown} that are not in the model's features {list(features)}")
    owner: Dict[str, str] = {}
    for table, feats in (shared or {}).items():
        for f in feats:
            if f not in features:
                raise ValueError(f"shared table {table!r} names feature {f!r}, not in the model's features")
            owner[f] = table
    configs, done = [], set()
    for f in features:
        name = owner.get(f, f)
        if name in done:
            continue
        done.add(name)
        feats = [g for g in features if owner.get(g, g) == name]
        combs = {combiners.get(g, combiner) for g in feats}
        if len(combs) != 1:
            raise ValueError(f"features {feats} share table {name!r} but have different combiners {combs}")
        configs.append(TableConfig(prefix + name, embedding_dim, feats, combiner=combs.pop(), **table_options))
    return configs


class CTRModel(nn.Module):
    """Base of the model zoo: `forward(batch) -> logits [B]`, where `batch` has `.sparse` (a torchrec
    KeyedJaggedTensor holding `sparse_features`) and `.dense` ([B, dense_dim] floats, or None when
    dense_dim is 0), as the feature engine's Batch does."""

    def __init__(self, sparse_features: Sequence[str], dense_dim: int, embedding_dim: int):
        super().__init__()
        if not sparse_features:
            raise ValueError(f"{type(self).__name__} needs at least one sparse feature")
        if len(set(sparse_features)) != len(sparse_features):
            raise ValueError(f"{type(self).__name__}: duplicate sparse features {list(sparse_features)}")
        check_value(f"{type(self).__name__} dense_dim", dense_dim, int, Range(ge=0))
        check_value(f"{type(self).__name__} embedding_dim", embedding_dim, int, Range(ge=1))
        self.sparse_features = list(sparse_features)
        self.dense_dim = dense_dim
        self.embedding_dim = embedding_dim

    def dense_input(self, batch) -> Optional[torch.Tensor]:
        dense = getattr(batch, "dense", None)
        if self.dense_dim == 0:
            return None
        if dense is None or dense.dim() != 2 or dense.shape[1] != self.dense_dim:
            found = None if dense is None else tuple(dense.shape)
            raise ValueError(f"{type(self).__name__} expects batch.dense of shape [B, {self.dense_dim}], got {found}")
        return dense.float()

    def fields(self, ec: EmbeddingCollection, batch) -> torch.Tensor:
        """Pooled embeddings of every feature of `ec`, stacked as [B, F, D]."""
        kt = ec(batch.sparse)
        values = kt.values()
        return values.view(values.shape[0], -1, self.embedding_dim)

    def first_order(self, features: Sequence[str], extra_keys: Sequence[str] = (),
                    **table_options) -> EmbeddingCollection:
        """A dim-1, zero-initialised table per feature: the linear (wide) term over ids. The
        batch's `extra_keys` (features that only other parts of the model use) are skipped."""
        table_options.setdefault("initializer", Zeros())
        return EmbeddingCollection(feature_tables(features, 1, prefix="linear_", **table_options),
                                   extra_keys=list(extra_keys))

    def predict(self, batch) -> torch.Tensor:
        """Click probabilities [B]."""
        return torch.sigmoid(self(batch))


def concat_dense(fields: torch.Tensor, dense: Optional[torch.Tensor]) -> torch.Tensor:
    """[B, F, D] fields flattened, with the dense features appended when present."""
    flat = fields.flatten(1)
    return flat if dense is None else torch.cat([flat, dense], dim=1)
