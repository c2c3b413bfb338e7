"""EBRM (arXiv 2307.00370): query-item relevance as soft logic over query-entity (QE) scores.

Each item entity e (typed, 'type: value') is scored against the query q by a cross-encoder with
heads [match, c_1 .. c_{G-1}] (G = grades): `match` says e is what q asks for (used by the OR
slots of `or_types`: "some genre matches"), c_k says e does not pull the item below grade k+1
(no conflict at that level). With a t-norm AND:

    s_k = AND( OR_{e of type t} match(q, e)  for t in or_types,
               c_j(q, e) for every entity e and j <= k,
               ids_j  for j <= k  (optional sparse evidence from recis hash tables) )
    P(grade >= k + 1) = s_k,   P(grade = k) = s_{k-1} - s_k

G = 2 is the paper's binary form (item = AND of entity scores). The per-entity scores come back
with the item's, so a prediction explains itself; `intervene` overrides entity scores or rules at
inference; in eval mode QE scores go through a bounded LRU cache (`QECache`), emptied whenever
the QE weights change (optimizer steps, checkpoint loads). [I]-marked choices
of the method notes (heads, t-norm, weights, slots) are options of `EBRMConfig`.

`objective: qe` makes the same tower a QE pretraining stage (its checkpoint starts the relevance
stage through `checkpoint.init_from`): each row is one (query, entity) pair, the one element of
`entities_column`, with per-head targets in `qe_target_column` (a list of `grades` numbers, null
where unlabelled; `recis_relevance.pretrain.qe_table`), and the loss is `pretrain.qe_loss` over
every head the AND reads. Its metrics: AUC/logloss of the match head, and the tower values
`qe_loss` and `qe_accuracy` (labelled heads right at 0.5).
"""
import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from recis.config_utils import bounded, check_types
from recis.models.base import feature_tables
from recis.nn import EmbeddingCollection
from recis.rl import check_choice
from recis.towers import FeatureInfo, Tower, TowerOutput, list_column, text_column
from recis.towers.text import column

from recis_relevance.cache import QECache
from recis_relevance.common import EncoderConfig, GradeSpec, build_text_encoder, labels_of, nll, pad_lists
from recis_relevance.entities import Entity
from recis_relevance.logic import check_tnorm, soft_and, soft_or
from recis_relevance.pretrain import qe_loss

__all__ = ["EBRMConfig", "EBRMTower", "EntityOverride", "RuleOverride", "OBJECTIVES"]

OBJECTIVES = ("relevance", "qe")


@dataclass
class EBRMConfig(EncoderConfig):
    """Options of the EBRM tower (the encoder's are those of `EncoderConfig`)."""

    query_column: str = "query"
    entities_column: str = "entities"
    grades: int = bounded(2, ge=2)
    label_base: int = bounded(0)
    relevant_grade: Optional[int] = bounded(None)
    tnorm: str = "product"
    type_weights: Dict[str, float] = bounded(default_factory=dict, ge=0, le=1)
    or_types: List[str] = field(default_factory=list)
    cache_size: int = bounded(100_000, ge=1)
    sparse_features: List[str] = field(default_factory=list)
    sparse_dim: int = bounded(8, ge=1)
    sparse_weight: float = bounded(1.0, ge=0, le=1)
    objective: str = "relevance"
    qe_target_column: str = "qe_target"
    qe_head_weights: Optional[List[float]] = bounded(None, ge=0)

    def __post_init__(self):
        super().__post_init__()  # checks every field's type and range, these included
        check_tnorm(self.tnorm)
        check_choice("objective", self.objective, OBJECTIVES)
        if self.qe_head_weights is not None and (len(self.qe_head_weights) != self.grades
                                                 or not sum(self.qe_head_weights) > 0):
            raise ValueError(f"qe_head_weights must give {self.grades} weights (match, c_1 .. c_{self.grades - 1}) "
                             f"with a positive sum, got {self.qe_head_weights}")
        self.grade_spec = GradeSpec(self.grades, self.label_base, self.relevant_grade)


@dataclass(frozen=True)
class EntityOverride:
    """Sets the score of `entity` (its text, 'type: value') to `value` for `query` (None: every
    query). `head`: 'match', a level 1..grades-1 (c_k) or 'all'."""

    entity: str
    value: float = bounded(ge=0, le=1)
    head: Union[str, int] = bounded("all", ge=1)
    query: Optional[str] = None

    def __post_init__(self):
        check_types(self, f"override of {self.entity!r}", sep=": ")
        Entity.parse(self.entity)


@dataclass(frozen=True)
class RuleOverride:
    """Changes a rule at inference: the `weight` of an entity type (0 ignores it) and/or whether
    the type is a `required` OR slot."""

    type: str
    weight: Optional[float] = bounded(None, ge=0, le=1)
    required: Optional[bool] = None

    def __post_init__(self):
        check_types(self, f"rule override of {self.type!r}", sep=": ")


@functools.lru_cache(maxsize=1 << 16)
def _entity_type(text: str) -> str:
    return Entity.parse(text).type  # parsed (and checked) once per distinct entity text


class EBRMTower(Tower):
    """Reads pass-through columns `query_column` (a string) and `entities_column` (a list of
    'type: value' strings), and the sparse features `sparse_features`; labels are grades."""

    def __init__(self, config: Optional[EBRMConfig] = None, **options):
        super().__init__()
        if config is None:
            config = EBRMConfig(**options)
        elif options:
            raise TypeError(f"give an EBRMConfig or options, not both ({sorted(options)})")
        self.config = cfg = config
        self.grades = cfg.grade_spec
        self.qe = build_text_encoder(self, cfg.encoder_config())
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(self.qe.hidden, cfg.grades)  # [match, c_1 .. c_{G-1}]
        with torch.no_grad():  # conflicts start unlikely, so an AND over many entities starts near neutral
            self.head.bias[1:] = 2.0
        self.declare("head", self.head, "dense", lr=cfg.head_lr)
        self.ids = None
        if cfg.sparse_features:
            self.ids = EmbeddingCollection(feature_tables(cfg.sparse_features, cfg.sparse_dim))
            self.ids_head = nn.Linear(cfg.sparse_dim * len(cfg.sparse_features), cfg.grades - 1)
            nn.init.zeros_(self.ids_head.weight)
            nn.init.constant_(self.ids_head.bias, 4.0)  # starts near "no objection" (sigmoid(4) = 0.98)
            self.declare("ids_head", self.ids_head, "dense", lr=cfg.head_lr)
        self.cache = QECache(cfg.cache_size) if cfg.cache_size else None
        self._entity_overrides: List[EntityOverride] = []
        self._rule_overrides: Dict[str, RuleOverride] = {}
        self._cache_stamp: tuple = ()
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "EBRMTower":
        cfg = EBRMConfig(**args)
        cols = (cfg.query_column, cfg.entities_column) + ((cfg.qe_target_column,) if cfg.objective == "qe" else ())
        for col in cols:
            if col not in features.passthrough:
                raise ValueError(f"EBRM reads pass-through column {col!r}; the feature config's pass-through "
                                 f"features are {list(features.passthrough)}")
        missing = [f for f in cfg.sparse_features if f not in features.sparse]
        if missing:
            raise ValueError(f"EBRM sparse_features {missing} are not sparse features of the feature config "
                             f"({list(features.sparse)})")
        return cls(cfg)

    # ---- cache -----------------------------------------------------------------------------
    def clear_cache(self) -> None:
        if self.cache is not None:
            self.cache.clear()

    def on_weights_loaded(self) -> None:
        """A stage's starting weights were loaded (checkpoint.init_from): cached scores are stale."""
        self.clear_cache()

    def _weights_stamp(self) -> tuple:
        """Changes whenever a parameter of the QE model changes in place (optimizer steps, loads)."""
        return tuple(p._version for p in self.qe.parameters()) + tuple(p._version for p in self.head.parameters())

    # ---- QE scores -------------------------------------------------------------------------
    def qe_logits(self, pairs: Sequence[Tuple[str, str]], use_cache: Optional[bool] = None) -> torch.Tensor:
        """[P, grades] head logits of (query, entity text) pairs. The cache is used in eval mode
        without autograd (use_cache=None), or as told."""
        if use_cache is None:
            use_cache = self.cache is not None and not self.training and not torch.is_grad_enabled()
        if not pairs:
            return self.head.weight.new_zeros(0, self.config.grades)
        if not use_cache:
            return self._encode(pairs)
        if self.cache is None:
            raise ValueError("use_cache=True but the tower was built with cache_size=0")
        stamp = self._weights_stamp()
        if stamp != self._cache_stamp:  # the weights changed since the entries were computed
            self.cache.clear()
            self._cache_stamp = stamp
        found, missing = self.cache.lookup(pairs)
        if missing:
            fresh = self._encode(list(dict.fromkeys(missing)))
            for key, row in zip(dict.fromkeys(missing), fresh):
                self.cache.put(key[0], key[1], row)
                found[key] = row
        return torch.stack([found[p] for p in pairs])

    def _encode(self, pairs: Sequence[Tuple[str, str]]) -> torch.Tensor:
        pooled = self.qe([q for q, _ in pairs], [e for _, e in pairs])
        return self.head(self.drop(pooled))

    # ---- aggregation -----------------------------------------------------------------------
    def score(self, queries: Sequence[str], entities: Sequence[Sequence[str]], sparse=None,
              use_cache: Optional[bool] = None) -> Dict[str, Any]:
        """Scores items: `entities[i]` are item i's entity texts for `queries[i]`. Returns
        grade_probs [B, G], levels [B, G-1] (P(grade >= k+1)), match [B, N], consistency
        [B, N, G-1], mask [B, N], and entities (the texts)."""
        cfg = self.config
        if len(queries) != len(entities):
            raise ValueError(f"{len(queries)} queries but {len(entities)} entity lists")
        ents = [list(dict.fromkeys(e)) for e in entities]
        types = [[_entity_type(t) for t in row] for row in ents]
        flat, rows, cols, width = pad_lists(ents)
        pairs = [(queries[r], e) for r, e in zip(rows.tolist(), flat)]
        index = {p: i for i, p in enumerate(dict.fromkeys(pairs))}
        logits = self.qe_logits(list(index), use_cache)
        probs = torch.sigmoid(logits)
        probs = self._apply_entity_overrides(probs, list(index))
        B, G = len(queries), cfg.grades
        device = probs.device
        grid = probs.new_ones(B, width, G)
        mask = torch.zeros(B, width, dtype=torch.bool, device=device)
        if pairs:
            grid = grid.index_put((rows.to(device), cols.to(device)), probs[torch.tensor([index[p] for p in pairs],
                                                                                         device=device)])
            mask[rows, cols] = True
        weights, required = self._rules(types, width, device, probs.dtype)
        match, consistency = grid[..., 0], grid[..., 1:]
        slots = [soft_or(match, mask & (required == k), weights, cfg.tnorm) for k in range(len(self._slot_types()))]
        slot_w = torch.tensor([self._type_weight(t) for t in self._slot_types()], dtype=probs.dtype, device=device)
        ids = self._ids(sparse, B, probs.dtype, device)
        levels = []
        for k in range(G - 1):
            parts = [torch.stack(slots, 1) if slots else probs.new_ones(B, 0),
                     consistency[..., :k + 1].reshape(B, -1)]
            masks = [torch.ones(B, len(slots), dtype=torch.bool, device=device),
                     mask.unsqueeze(-1).expand(B, width, k + 1).reshape(B, -1)]
            ws = [slot_w.expand(B, -1), weights.unsqueeze(-1).expand(B, width, k + 1).reshape(B, -1)]
            if ids is not None:
                parts.append(ids[:, :k + 1])
                masks.append(torch.ones(B, k + 1, dtype=torch.bool, device=device))
                ws.append(torch.full((B, k + 1), cfg.sparse_weight, dtype=probs.dtype, device=device))
            levels.append(soft_and(torch.cat(parts, 1), torch.cat(masks, 1), torch.cat(ws, 1), cfg.tnorm))
        levels_t = torch.stack(levels, 1)
        upper = torch.cat([levels_t.new_ones(B, 1), levels_t], 1)
        lower = torch.cat([levels_t, levels_t.new_zeros(B, 1)], 1)
        grade_probs = (upper - lower).clamp_min(0.0)
        return {"grade_probs": grade_probs, "levels": levels_t, "match": match, "consistency": consistency,
                "mask": mask, "entities": ents, "ids": ids}

    def _slot_types(self) -> List[str]:
        types = list(self.config.or_types)
        for t, r in self._rule_overrides.items():
            if r.required is True and t not in types:
                types.append(t)
            elif r.required is False and t in types:
                types.remove(t)
        return types

    def _type_weight(self, t: str) -> float:
        r = self._rule_overrides.get(t)
        if r is not None and r.weight is not None:
            return float(r.weight)
        return float(self.config.type_weights.get(t, 1.0))

    def _rules(self, types: List[List[str]], width: int, device, dtype):
        slots = {t: k for k, t in enumerate(self._slot_types())}
        type_weight: Dict[str, float] = {}
        weights = [[1.0] * width for _ in types]  # built as lists: one tensor each, not one write per entity
        required = [[-1] * width for _ in types]
        for i, row in enumerate(types):
            for j, t in enumerate(row):
                if t not in type_weight:
                    type_weight[t] = self._type_weight(t)
                weights[i][j] = type_weight[t]
                required[i][j] = slots.get(t, -1)
        return (torch.tensor(weights, dtype=dtype).reshape(len(types), width).to(device),
                torch.tensor(required, dtype=torch.long).reshape(len(types), width).to(device))

    def _ids(self, sparse, B: int, dtype, device) -> Optional[torch.Tensor]:
        if self.ids is None:
            return None
        if sparse is None:
            raise ValueError(f"EBRM was configured with sparse_features {self.config.sparse_features} but got no "
                             "sparse ids (batch.sparse)")
        pooled = self.ids(sparse).values()
        return torch.sigmoid(self.ids_head(pooled)).to(dtype)

    def _apply_entity_overrides(self, probs: torch.Tensor, pairs: List[Tuple[str, str]]) -> torch.Tensor:
        if not self._entity_overrides:
            return probs
        probs = probs.clone()
        for o in self._entity_overrides:
            heads = self._heads(o.head)
            for i, (q, e) in enumerate(pairs):
                if e == o.entity and (o.query is None or o.query == q):
                    probs[i, heads] = o.value
        return probs

    def _heads(self, head) -> List[int]:
        G = self.config.grades
        if head == "all":
            return list(range(G))
        if head == "match":
            return [0]
        if isinstance(head, int) and 1 <= head <= G - 1:
            return [head]
        raise ValueError(f"override head must be 'match', 'all' or a level 1..{G - 1}, got {head!r}")

    @contextlib.contextmanager
    def intervene(self, *overrides: Union[EntityOverride, RuleOverride]) -> Iterator["EBRMTower"]:
        """Within the block, entity scores and rules follow `overrides` (cached QE scores are
        kept: overrides act after the cache)."""
        ents = [o for o in overrides if isinstance(o, EntityOverride)]
        rules = {o.type: o for o in overrides if isinstance(o, RuleOverride)}
        bad = [o for o in overrides if not isinstance(o, (EntityOverride, RuleOverride))]
        if bad:
            raise TypeError(f"intervene takes EntityOverride / RuleOverride objects, got {bad}")
        for o in ents:
            self._heads(o.head)
        saved = (self._entity_overrides, self._rule_overrides)
        self._entity_overrides = saved[0] + ents
        self._rule_overrides = {**saved[1], **rules}
        try:
            yield self
        finally:
            self._entity_overrides, self._rule_overrides = saved

    # ---- the tower -------------------------------------------------------------------------
    def forward(self, batch) -> TowerOutput:
        cfg = self.config
        if cfg.objective == "qe":
            return self._qe_forward(batch)
        queries = text_column(batch, cfg.query_column)
        entities = list_column(batch, cfg.entities_column)
        out = self.score(queries, entities, getattr(batch, "sparse", None))
        labels = labels_of(batch)
        loss = targets = None
        if labels is not None:
            index = self.grades.index(labels)
            loss = nll(out["grade_probs"], index.to(out["grade_probs"].device))
            targets = self.grades.targets(labels)
        out["grade"] = out["grade_probs"].argmax(1) + cfg.label_base
        return TowerOutput(self.grades.relevant_logit(out["grade_probs"]), loss, targets, out)

    def _qe_forward(self, batch) -> TowerOutput:
        """The QE pretraining objective (module docstring)."""
        cfg = self.config
        queries = text_column(batch, cfg.query_column)
        entities = list_column(batch, cfg.entities_column)
        bad = [i for i, e in enumerate(entities) if len(e) != 1]
        if bad:
            raise ValueError(f"objective qe reads one entity per row from {cfg.entities_column!r}; row {bad[0]} has "
                             f"{len(entities[bad[0]])}")
        raw = column(batch, cfg.qe_target_column)
        if any(not isinstance(t, (list, tuple)) or len(t) != cfg.grades for t in raw):
            raise ValueError(f"objective qe: column {cfg.qe_target_column!r} must hold a list of {cfg.grades} targets "
                             f"(match, c_1 .. c_{cfg.grades - 1}; null where unlabelled) per row")
        logits = self.qe_logits([(q, e[0]) for q, e in zip(queries, entities)])
        targets = torch.tensor([[float("nan") if v is None else float(v) for v in t] for t in raw],
                               dtype=logits.dtype, device=logits.device)
        mask = ~torch.isnan(targets)
        weights = None if cfg.qe_head_weights is None else torch.tensor(cfg.qe_head_weights, device=logits.device)
        per_row = qe_loss(logits, targets, mask, weights)
        right = ((logits > 0) == (targets > 0.5)) & mask
        accuracy = right.sum(1).to(logits.dtype) / mask.sum(1).clamp_min(1).to(logits.dtype)
        match_target = torch.nan_to_num(targets[:, 0], nan=0.0)
        return TowerOutput(logits[:, 0], per_row.mean(), match_target, {"qe_logits": logits},
                           values={"qe_loss": per_row.detach(), "qe_accuracy": accuracy.detach()})

    @torch.no_grad()
    def explain(self, query: str, entities: Sequence[str], sparse=None) -> Dict[str, Any]:
        """One item's prediction with every entity's scores: {grade, grade_probs, entities:
        [{entity, match, levels}]}."""
        out = self.score([query], [list(entities)], sparse)
        ents = out["entities"][0]
        return {"grade": int(out["grade_probs"][0].argmax()) + self.config.label_base,
                "grade_probs": [float(x) for x in out["grade_probs"][0]],
                "entities": [{"entity": e, "match": float(out["match"][0, j]),
                              "levels": [float(x) for x in out["consistency"][0, j]]} for j, e in enumerate(ents)]}
