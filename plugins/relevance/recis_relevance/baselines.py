"""The baselines EBRM is compared with: a plain cross-encoder on (query, item text) and a
bi-encoder (query and item encoded apart, a head over [u, v, |u - v|, u * v]). Both classify
the grade directly (softmax over `grades`)."""
import abc
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from recis.config_utils import bounded
from recis.towers import FeatureInfo, Tower, TowerOutput, text_column

from recis_relevance.common import EncoderConfig, GradeSpec, build_text_encoder, labels_of, nll

__all__ = ["TextPairConfig", "CrossEncoderTower", "BiEncoderTower"]


@dataclass
class TextPairConfig(EncoderConfig):
    """Encoder options plus the text columns and graded labels."""

    query_column: str = "query"
    item_column: str = "item_text"
    grades: int = bounded(2, ge=2)
    label_base: int = bounded(0)
    relevant_grade: Optional[int] = bounded(None)

    def __post_init__(self):
        super().__post_init__()
        self.grade_spec = GradeSpec(self.grades, self.label_base, self.relevant_grade)


class _TextPairTower(Tower, abc.ABC):
    def __init__(self, config: Optional[TextPairConfig] = None, **options):
        super().__init__()
        if config is None:
            config = TextPairConfig(**options)
        elif options:
            raise TypeError(f"give a TextPairConfig or options, not both ({sorted(options)})")
        self.config = config
        self.grades = config.grade_spec
        self.encoder = build_text_encoder(self, config.encoder_config())
        self.drop = nn.Dropout(config.dropout)

    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "_TextPairTower":
        cfg = TextPairConfig(**args)
        for col in (cfg.query_column, cfg.item_column):
            if col not in features.passthrough:
                raise ValueError(f"{cls.__name__} reads pass-through column {col!r}; the feature config's "
                                 f"pass-through features are {list(features.passthrough)}")
        return cls(cfg)

    @abc.abstractmethod
    def grade_logits(self, queries, items) -> torch.Tensor:
        """[B, grades] logits of each (query, item text) pair."""

    def forward(self, batch) -> TowerOutput:
        queries = text_column(batch, self.config.query_column)
        items = text_column(batch, self.config.item_column)
        probs = torch.softmax(self.grade_logits(queries, items).float(), dim=1)
        labels = labels_of(batch)
        loss = targets = None
        if labels is not None:
            loss = nll(probs, self.grades.index(labels).to(probs.device))
            targets = self.grades.targets(labels)
        return TowerOutput(self.grades.relevant_logit(probs), loss, targets,
                           {"grade_probs": probs, "grade": probs.argmax(1) + self.config.label_base})


class CrossEncoderTower(_TextPairTower):
    """(query, item text) through one encoder; the pooled pair -> grade logits."""

    def __init__(self, config: Optional[TextPairConfig] = None, **options):
        super().__init__(config, **options)
        self.head = nn.Linear(self.encoder.hidden, self.config.grades)
        self.declare("head", self.head, "dense", lr=self.config.head_lr)

    def grade_logits(self, queries, items) -> torch.Tensor:
        return self.head(self.drop(self.encoder(queries, items)))


class BiEncoderTower(_TextPairTower):
    """Query and item encoded apart (one tokenizer call for both); a head on [u, v, |u-v|, u*v]."""

    def __init__(self, config: Optional[TextPairConfig] = None, **options):
        super().__init__(config, **options)
        h = self.encoder.hidden
        self.head = nn.Sequential(nn.Linear(4 * h, h), nn.GELU(), nn.Linear(h, self.config.grades))
        self.declare("head", self.head, "dense", lr=self.config.head_lr)

    def grade_logits(self, queries, items) -> torch.Tensor:
        emb = self.encoder(list(queries) + list(items))
        u, v = emb[:len(queries)], emb[len(queries):]
        return self.head(self.drop(torch.cat([u, v, (u - v).abs(), u * v], 1)))
