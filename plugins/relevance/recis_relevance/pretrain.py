"""QE labels for pretraining EBRM's query-entity module: from impressions (click logs) and from
the entities a query states.

The paper's rule (methods.md §10): for a query q, the entities of clicked items are positives;
negatives are same-type entities of items that were shown and not clicked (unless the entity is
also a positive for q: a positive wins), *or ones conflicting with an entity explicit in q*.
`qe_labels_from_logs` gives the binary labels of the log rule alone:

>>> logs = [ClickLog("red shoes", shown=[1, 2], clicked=[1])]
>>> items = {1: ["colour: red", "category: shoes"], 2: ["colour: blue", "category: shoes", "brand: acme"]}
>>> qe_labels_from_logs(logs, items)
[('red shoes', 'colour: red', 1.0), ('red shoes', 'category: shoes', 1.0), ('red shoes', 'colour: blue', 0.0)]

The EBRM tower has one head per question its AND asks (`match`, read by the OR slots, and the
conflict heads c_1 .. c_{G-1}, read for every entity), so `qe_head_labels` gives one target per
head, None where the rule says nothing about that head [I]:

- a log positive (an entity of a clicked item): match 1, no conflict at any level (c_k = 1);
- a log negative (same type as a clicked entity, on a shown and unclicked item): match 0; the
  conflict heads only with `log_negatives="all"` (c_k = 0, the paper's binary form, where one
  score is both), since "not the genre asked for" is not a conflict when the item may carry
  several genres (the default "match" leaves them None);
- a conflict (the entity contradicts a `QueryConstraint` of q, e.g. q excludes genre g2 and the
  entity is `genre: g2`, or q names a decade and the entity is a year outside it): match 0 and
  c_k = 0 for every level k >= the constraint's `level` (below it: None). A conflict wins over a
  log positive (the query states it; a click may be noise).

>>> stated = lambda q: [QueryConstraint("colour", exclude=("blue",), level=1)]
>>> logs = [ClickLog("shoes not blue", shown=[1, 2], clicked=[1, 2])]
>>> for q, e, target in qe_head_labels(logs, items, grades=3, constraints=stated):
...     print(e, target)
colour: red (1.0, 1.0, 1.0)
category: shoes (1.0, 1.0, 1.0)
colour: blue (0.0, 0.0, 0.0)
brand: acme (1.0, 1.0, 1.0)

`simulate_click_logs` draws seeded sessions over a graded task (the public data have no logs);
`movie_query_constraints` reads the constraints the MovieLens task's queries state (an excluded
genre, a decade) from the query text. The pretraining itself is a recis job: the EBRM tower with
`objective: qe` reads the rows of `qe_table` (module `recis_relevance.qe_stage`).
"""
import random
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa
import torch

from recis.config_utils import bounded, check_types
from recis.rl import check_choice
from recis_relevance.entities import Entity

__all__ = ["ClickLog", "QueryConstraint", "qe_labels_from_logs", "qe_head_labels", "simulate_click_logs",
           "movie_query_constraints", "qe_table", "qe_loss", "CLICK_PROB", "LOG_NEGATIVES"]

CLICK_PROB = {1: 0.02, 2: 0.10, 3: 0.35, 4: 0.75}
LOG_NEGATIVES = ("match", "all")

QELabel = Tuple[str, str, Tuple[Optional[float], ...]]


@dataclass
class ClickLog:
    """One impression list: the items shown for a query and those clicked."""

    query: str
    shown: Sequence[int]
    clicked: Sequence[int] = field(default_factory=list)

    def __post_init__(self):
        stray = [i for i in self.clicked if i not in set(self.shown)]
        if stray:
            raise ValueError(f"log of {self.query!r}: clicked items {stray} were not shown")


@dataclass(frozen=True)
class QueryConstraint:
    """An entity a query states, as a rule over item entities of `type`: an entity conflicts when
    its value is in `exclude`, or when `allow` is given and its value is not in it. A conflict
    pulls the item below grade `level` + 1 (level 1: the lowest grade; the default None: the top
    level, i.e. the item is not an exact match)."""

    type: str
    allow: Optional[Tuple[str, ...]] = None
    exclude: Tuple[str, ...] = ()
    level: Optional[int] = bounded(None, ge=1)

    def __post_init__(self):
        check_types(self, f"query constraint on {self.type!r}", sep=": ")

    def conflicts(self, entity: Entity) -> bool:
        if entity.type != self.type:
            return False
        return entity.value in self.exclude or (self.allow is not None and entity.value not in self.allow)


def qe_labels_from_logs(logs: Sequence[ClickLog], item_entities: Mapping[int, Sequence[str]]
                        ) -> List[Tuple[str, str, float]]:
    """(query, entity text, 1.0 / 0.0) QE labels of the log rule, positives first per query,
    without duplicates."""
    pos, neg = _log_sets(logs, item_entities)
    out = []
    for q in pos:
        out += [(q, e, 1.0) for e in pos[q]]
        out += [(q, e, 0.0) for e in neg.get(q, {}) if e not in pos[q]]
    return out


def _log_sets(logs, item_entities):
    pos: Dict[str, Dict[str, None]] = {}
    neg: Dict[str, Dict[str, None]] = {}
    for log in logs:
        for item in log.shown:
            if item not in item_entities:
                raise KeyError(f"log of {log.query!r}: item {item!r} has no entities")
        clicked = set(log.clicked)
        p = pos.setdefault(log.query, {})
        for item in log.clicked:
            p.update(dict.fromkeys(item_entities[item]))
        types = {Entity.parse(e).type for item in log.clicked for e in item_entities[item]}
        n = neg.setdefault(log.query, {})
        for item in log.shown:
            if item not in clicked:
                n.update(dict.fromkeys(e for e in item_entities[item] if Entity.parse(e).type in types))
    return pos, neg


def conflict_level(constraints: Sequence[QueryConstraint], entity: str, grades: int) -> Optional[int]:
    """The lowest level (1 .. grades-1) at which `entity` conflicts with one of `constraints`, or
    None when it conflicts with none."""
    e = Entity.parse(entity)
    levels = [grades - 1 if c.level is None else min(c.level, grades - 1) for c in constraints if c.conflicts(e)]
    return min(levels) if levels else None


def qe_head_labels(logs: Sequence[ClickLog], item_entities: Mapping[int, Sequence[str]], grades: int,
                   constraints: Optional[Callable[[str], Sequence[QueryConstraint]]] = None,
                   log_negatives: str = "match") -> List[QELabel]:
    """(query, entity text, targets) with one target per head of an EBRM tower of `grades` grades,
    [match, c_1 .. c_{grades-1}], None where the rules say nothing (see the module docstring).
    `constraints(query)`: the query's stated entities (None: no conflict rule). Every entity of a
    shown item is checked against them. Per query: positives, log negatives, then conflicts that
    are neither, each in first-seen order."""
    if not isinstance(grades, int) or grades < 2:
        raise ValueError(f"grades must be an int >= 2, got {grades!r}")
    check_choice("log_negatives", log_negatives, LOG_NEGATIVES)
    pos, neg = _log_sets(logs, item_entities)
    shown: Dict[str, Dict[str, None]] = {}
    for log in logs:
        s = shown.setdefault(log.query, {})
        for item in log.shown:
            s.update(dict.fromkeys(item_entities[item]))
    levels = grades - 1
    out: List[QELabel] = []
    for q in shown:
        stated = list(constraints(q)) if constraints is not None else []
        conflict = {e: conflict_level(stated, e, grades) for e in shown[q]} if stated else {}
        order = list(pos.get(q, {})) + [e for e in neg.get(q, {}) if e not in pos.get(q, {})]
        order += [e for e, lv in conflict.items() if lv is not None and e not in set(order)]
        for e in order:
            lv = conflict.get(e)
            if lv is not None:
                target = (0.0,) + tuple(0.0 if k >= lv else None for k in range(1, levels + 1))
            elif e in pos.get(q, {}):
                target = (1.0,) * grades
            else:
                target = (0.0,) + ((0.0,) * levels if log_negatives == "all" else (None,) * levels)
            out.append((q, e, target))
    return out


def simulate_click_logs(table: pa.Table, click_prob: Mapping[int, float] = CLICK_PROB, seed: int = 0,
                        sessions_per_query: int = 3) -> List[ClickLog]:
    """Seeded sessions over a graded task table (query, item_id, label): each session shows a
    query's items and clicks each with click_prob[grade]."""
    rng = random.Random(seed)
    by_query: Dict[str, List[Tuple[int, int]]] = {}
    for q, item, g in zip(table["query"].to_pylist(), table["item_id"].to_pylist(), table["label"].to_pylist()):
        by_query.setdefault(q, []).append((item, int(g)))
    logs = []
    for q, shown in by_query.items():
        for _ in range(sessions_per_query):
            clicked = [i for i, g in shown if rng.random() < click_prob[g]]
            if clicked:
                logs.append(ClickLog(q, [i for i, _ in shown], clicked))
    return logs


_NEGATION = re.compile(r"\b(?:not|without|but no)\s+(.+)$")
_DECADE = re.compile(r"\b(\d{3}0)s\b")


def movie_query_constraints(query: str, genres: Sequence[str], near: Optional[int] = None,
                            far_level: int = 2) -> List[QueryConstraint]:
    """The constraints a MovieLens task query states, read from its text: an excluded genre
    ("... not horror", "without", "but no") conflicts at level 1 (a category mismatch); a decade
    ("1990s") makes every year outside it a conflict at the top level, and with `near` years
    more than `near` years outside it a conflict at `far_level` too [I]: these are the rules of
    docs/relevance_task.md written as QE conflicts (`near` = `task.NEAR` states them in full).

    >>> movie_query_constraints("1990s comedy not horror", ["Comedy", "Horror"])
    [QueryConstraint(type='genre', allow=None, exclude=('Horror',), level=1), QueryConstraint(type='year', allow=('1990', '1991', '1992', '1993', '1994', '1995', '1996', '1997', '1998', '1999'), exclude=(), level=None)]
    """
    out: List[QueryConstraint] = []
    text = query.lower()
    neg = _NEGATION.search(text)
    if neg is not None:
        tail = neg.group(1).strip()
        hit = [g for g in genres if g.lower() == tail]
        if hit:
            out.append(QueryConstraint("genre", exclude=tuple(hit), level=1))
        text = text[:neg.start()]
    dec = _DECADE.search(text)
    if dec is not None:
        d = int(dec.group(1))
        out.append(QueryConstraint("year", allow=tuple(str(y) for y in range(d, d + 10))))
        if near is not None:
            out.append(QueryConstraint("year", allow=tuple(str(y) for y in range(d - near, d + 10 + near)),
                                       level=far_level))
    return out


def qe_table(labels: Sequence[QELabel], item_of: Optional[Mapping[str, int]] = None) -> pa.Table:
    """The rows of a QE pretraining job: `query`, `entities` (the one entity the row labels),
    `item_id` (an item carrying it, from `item_of`, else 0: the columns of the relevance task, so
    one feature config serves both stages) and `qe_target` (a list of per-head targets, null
    where the rules say nothing)."""
    if not labels:
        raise ValueError("qe_table got no QE labels")
    widths = {len(t) for _, _, t in labels}
    if len(widths) != 1:
        raise ValueError(f"QE labels have targets of different lengths {sorted(widths)}")
    item_of = item_of or {}
    return pa.table({"query": pa.array([q for q, _, _ in labels], pa.string()),
                     "entities": pa.array([[e] for _, e, _ in labels], pa.list_(pa.string())),
                     "item_id": pa.array([int(item_of.get(e, 0)) for _, e, _ in labels], pa.int64()),
                     "qe_target": pa.array([list(t) for _, _, t in labels], pa.list_(pa.float32()))})


def qe_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            head_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-row QE loss: the mean over a row's labelled heads (mask) of the binary cross-entropy of
    sigmoid(logits) against targets, heads weighted by `head_weights` [G] (None: equal); rows
    without a labelled head give 0. Shapes [P, G] -> [P]."""
    if logits.shape != targets.shape or logits.shape != mask.shape:
        raise ValueError(f"qe_loss: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape")
    w = mask.to(logits.dtype)
    if head_weights is not None:
        w = w * head_weights.to(logits.dtype)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.where(mask, targets, 0.0).to(logits.dtype),
                                                               reduction="none")
    return (bce * w).sum(-1) / w.sum(-1).clamp_min(1e-12)
