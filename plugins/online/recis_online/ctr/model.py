"""The online logistic tower: hashed features (recis tables) under a linear head constrained by its optimizer.

    logit = head([e_1(x_1), ..., e_F(x_F)]) = w . concat_f e_f + b

e_f: one recis hash table per sparse feature (`embedding_dim` wide, `combiner` pooling for
multi-valued features such as `genres`), trained by the job's sparse optimizer (row-wise
Adagrad). The head (w, b) is the declared parameter group `head` (parameter names `head.weight`,
`head.bias`): an online job gives it a constrained online optimizer through `optim.params`
(`{match: "head.*", optimizer: {name: bogd_ip, set: l1_ball, radius: ...}}`), which keeps it in
the l1 ball; the tower itself does not project. The head starts at 0, inside every ball.

Registered as the tower `online_logistic` (entry-point group `recis.towers`).

>>> t = OnlineLogisticTower(["user_id", "item_id"], embedding_dim=4)
>>> [(g.name, [tuple(p.shape) for p in g.trainable]) for g in t.param_groups()]
[('head', [(1, 8), (1,)])]
>>> OnlineLogisticConfig(embedding_dim=0)
Traceback (most recent call last):
...
ValueError: online_logistic.embedding_dim must be an integer >= 1, got 0
"""
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn

from recis._ops import COMBINERS
from recis.config_utils import bounded, check_types
from recis.models.base import feature_tables
from recis.nn import EmbeddingCollection
from recis.towers import FeatureInfo, Tower, TowerOutput

__all__ = ["OnlineLogisticConfig", "OnlineLogisticTower"]


@dataclass
class OnlineLogisticConfig:
    """`sparse_features`: the features with a table (empty: every sparse feature of the job);
    `seed`: mixed into every table's seed (tables of the same name and seed start equal);
    `init_std`: the tables' truncated-normal std (None: 1/sqrt(embedding_dim))."""

    sparse_features: List[str] = field(default_factory=list)
    embedding_dim: int = bounded(8, ge=1)
    combiner: str = "mean"
    bias: bool = True
    seed: int = bounded(0, ge=0, lt=1 << 32)
    init_std: Optional[float] = bounded(None, gt=0)

    def __post_init__(self):
        check_types(self, "online_logistic")
        pooled = [c for c in COMBINERS if c is not None]  # the head takes one pooled vector per feature
        if self.combiner not in pooled:
            raise ValueError(f"online_logistic.combiner must be {' or '.join(map(repr, pooled))}, "
                             f"got {self.combiner!r}")
        if len(set(self.sparse_features)) != len(self.sparse_features):
            raise ValueError(f"online_logistic.sparse_features lists a feature twice: {self.sparse_features}")


class OnlineLogisticTower(Tower):
    """Logistic regression over the concatenated pooled embeddings of the sparse features."""

    def __init__(self, sparse_features: Sequence[str] = (), config: Optional[OnlineLogisticConfig] = None, *,
                 extra_keys: Sequence[str] = (), **options):
        super().__init__()
        if config is None:
            config = OnlineLogisticConfig(sparse_features=list(sparse_features), **options)
        elif options or sparse_features:
            raise TypeError("give an OnlineLogisticConfig or features and options, not both")
        if not config.sparse_features:
            raise ValueError("online_logistic needs at least one sparse feature")
        self.config = cfg = config
        init = {"name": "truncated_normal", "std": cfg.init_std} if cfg.init_std is not None else None
        tables = feature_tables(cfg.sparse_features, cfg.embedding_dim, combiner=cfg.combiner, initializer=init)
        for t in tables:
            t.seed = zlib.crc32(f"{t.name}:{cfg.seed}".encode())
        # extra_keys: the batch's other sparse features (left to other parts of a job, not looked up)
        self.tables = EmbeddingCollection(tables, extra_keys=list(extra_keys))
        self.head = nn.Linear(len(cfg.sparse_features) * cfg.embedding_dim, 1, bias=cfg.bias)
        with torch.no_grad():
            self.head.weight.zero_()
            if self.head.bias is not None:
                self.head.bias.zero_()
        self.declare("head", self.head, "dense")

    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "OnlineLogisticTower":
        cfg = OnlineLogisticConfig(**args)
        if not cfg.sparse_features:
            cfg.sparse_features = list(features.sparse)
        missing = [f for f in cfg.sparse_features if f not in features.sparse]
        if missing:
            raise ValueError(f"online_logistic.sparse_features {missing} are not sparse features of the feature "
                             f"config ({list(features.sparse)})")
        return cls(config=cfg, extra_keys=[f for f in features.sparse if f not in cfg.sparse_features])

    def inputs(self, batch) -> torch.Tensor:
        """The head's input [B, F * embedding_dim]: the pooled embeddings, feature after feature."""
        return self.tables(batch.sparse).values()

    def forward(self, batch) -> TowerOutput:
        return TowerOutput(self.head(self.inputs(batch)).squeeze(1))
