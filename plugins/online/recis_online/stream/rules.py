"""Rules: one (type, pattern) key that gives a label; scoring, proposal and weak labelling.

Score of a candidate rule r with label y (STREAM / TALLOR): precision on the pool times the log
of its coverage,

    precision = |pool instances r matches with label y| / |pool instances r matches|
    score     = precision * log(coverage)

where coverage is the number of pool instances r matches with label y ("pool") or of candidate
spans r matches in the corpus ("corpus"). The naive scorers "precision" and "coverage" rank by
one factor alone.

>>> round(rule_score(18, 20, 18, "precision_log_coverage"), 4)
2.6013
>>> rule_score(1, 1, 1, "precision"), rule_score(60, 200, 60, "coverage")
(1.0, 60.0)
>>> Rule("Suffix", "ine", "CHEM")
Rule(kind='Suffix', pattern='ine', label='CHEM')
"""
import math
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from recis_online.stream.config import NONE, RULE_TYPES, RuleConfig
from recis_online.stream.spans import KeyIndex

__all__ = ["Rule", "rule_score", "ScoredRule", "score_candidates", "propose_rules", "apply_rules",
           "resolve_overlaps", "rule_votes", "label_spans"]


@dataclass(frozen=True)
class Rule:
    """`kind` one of RULE_TYPES, `pattern` its lower-case key, `label` the entity type it gives."""

    kind: str
    pattern: str
    label: str

    def __post_init__(self):
        if self.kind not in RULE_TYPES:
            raise ValueError(f"rule kind must be one of {list(RULE_TYPES)}, got {self.kind!r}")
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"rule {self.kind}: pattern must be a non-empty string, got {self.pattern!r}")
        if not isinstance(self.label, str) or not self.label or self.label == NONE:
            raise ValueError(f"rule {self.kind}({self.pattern!r}): label must be an entity type, got {self.label!r}")

    @property
    def key(self) -> Tuple[str, str]:
        return (self.kind, self.pattern)

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "pattern": self.pattern, "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> "Rule":
        return cls(d["kind"], d["pattern"], d["label"])

    def __str__(self) -> str:
        return f"{self.kind}({self.pattern!r}) -> {self.label}"


def rule_score(hits: int, matched: int, coverage: int, scorer: str) -> float:
    """The score of a rule that matches `matched` pool instances, `hits` of them with its label,
    and has `coverage` (see the module docstring)."""
    precision = hits / matched if matched else 0.0
    if scorer == "precision":
        return precision
    if scorer == "coverage":
        return float(coverage)
    if scorer == "precision_log_coverage":
        return precision * math.log(coverage) if coverage > 0 else 0.0
    raise ValueError(f"unknown rule scorer {scorer!r}")


@dataclass(frozen=True)
class ScoredRule:
    rule: Rule
    score: float
    precision: float
    hits: int
    matched: int
    coverage: int


def _form_labels(index: KeyIndex, pool: Mapping[int, str], sids: Sequence[int]) -> Dict[str, str]:
    """surface form -> its majority pool label among the pool instances `sids` (ties: by name)."""
    by_form: Dict[str, Counter] = {}
    for s in sids:
        by_form.setdefault(index.texts[s], Counter())[pool[s]] += 1
    return {f: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for f, c in by_form.items()}


def score_candidates(index: KeyIndex, pool: Mapping[int, str], cfg: RuleConfig,
                     labels: Sequence[str]) -> List[ScoredRule]:
    """Every (key, label) that some pool instance of an entity label proposes, scored; best first
    (ties by rule text, so the order is deterministic)."""
    by_key = index.keys_of(pool.keys())
    out: List[ScoredRule] = []
    for key, sids in by_key.items():
        if cfg.affix_count == "forms" and key[0] in ("Prefix", "Suffix"):
            counts = Counter(_form_labels(index, pool, sids).values())
            matched = sum(counts.values())
        else:
            counts = Counter(pool[s] for s in sids)
            matched = len(sids)
        for label in labels:
            hits = counts.get(label, 0)
            if not hits:
                continue
            coverage = hits if cfg.coverage == "pool" else len(index.matches(key))
            out.append(ScoredRule(Rule(key[0], key[1], label), rule_score(hits, matched, coverage, cfg.scorer),
                                  hits / matched, hits, matched, coverage))
    out.sort(key=lambda r: (-r.score, -r.hits, r.rule.kind, r.rule.pattern, r.rule.label))
    return out


def propose_rules(index: KeyIndex, pool: Mapping[int, str], cfg: RuleConfig, labels: Sequence[str],
                  known: Sequence[Rule] = ()) -> List[ScoredRule]:
    """The top `cfg.top_k` new rules per label: keys not yet in `known`, with precision >=
    `min_precision` and >= `min_matches` pool instances of the label, by score."""
    taken = {r.key for r in known}
    chosen: Dict[str, List[ScoredRule]] = {label: [] for label in labels}
    for sr in score_candidates(index, pool, cfg, labels):
        picks = chosen[sr.rule.label]
        if (sr.rule.key in taken or len(picks) >= cfg.top_k or sr.precision < cfg.min_precision
                or sr.hits < cfg.min_matches or sr.score <= 0):
            continue
        picks.append(sr)
        taken.add(sr.rule.key)
    return [sr for label in labels for sr in chosen[label]]


def rule_votes(index: KeyIndex, rules: Sequence[Rule], n_spans: int) -> List[Optional[Counter]]:
    """label -> number of `rules` matching, for each candidate span (None: no rule matches)."""
    votes: List[Optional[Counter]] = [None] * n_spans
    for r in rules:
        for sid in index.matches(r.key).tolist():
            if votes[sid] is None:
                votes[sid] = Counter()
            votes[sid][r.label] += 1
    return votes


def apply_rules(index: KeyIndex, rules: Sequence[Rule], n_spans: int, conflict: str = "majority") -> List[Optional[str]]:
    """The weak label of each candidate span (None: no rule, or a conflict the policy drops)."""
    out: List[Optional[str]] = []
    for c in rule_votes(index, rules, n_spans):
        if c is None:
            out.append(None)
            continue
        top = c.most_common()
        if len(top) > 1 and (conflict == "drop" or top[0][1] == top[1][1]):
            out.append(None)
        else:
            out.append(top[0][0])
    return out


def resolve_overlaps(spans: np.ndarray, labelled: Sequence[int], overlap: str = "votes",
                     votes: Optional[Sequence[float]] = None) -> List[int]:
    """Labelled span ids without overlaps inside a sentence, kept in the order of `overlap`:
    "votes" (most `votes[span]` first, ties: the shorter), "longest" or "shortest"; then left to
    right. Returned in reading order."""
    def length(s):
        return int(spans[s, 2] - spans[s, 1])

    if overlap == "votes":
        if votes is None:
            raise ValueError("resolve_overlaps(overlap='votes') needs the votes")
        key = lambda s: (-votes[s], length(s), int(spans[s, 1]))  # noqa: E731
    elif overlap == "longest":
        key = lambda s: (-length(s), int(spans[s, 1]))  # noqa: E731
    elif overlap == "shortest":
        key = lambda s: (length(s), int(spans[s, 1]))  # noqa: E731
    else:
        raise ValueError(f"overlap must be 'votes', 'longest' or 'shortest', got {overlap!r}")
    taken: Dict[int, set] = {}
    keep: List[int] = []
    for s in sorted(labelled, key=lambda s: (int(spans[s, 0]),) + key(s)):
        sent, i, j = (int(x) for x in spans[s])
        used = taken.setdefault(sent, set())
        if any(t in used for t in range(i, j)):
            continue
        used.update(range(i, j))
        keep.append(s)
    return sorted(keep, key=lambda s: (int(spans[s, 0]), int(spans[s, 1])))


def label_spans(index: KeyIndex, spans: np.ndarray, rules: Sequence[Rule], cfg: RuleConfig):
    """(weak label per span or None, the labelled spans that lost an overlap): `apply_rules`, then
    `resolve_overlaps` by `cfg.overlap`; the losers' labels are cleared."""
    votes = rule_votes(index, rules, len(spans))
    weak = apply_rules(index, rules, len(spans), cfg.conflict)
    labelled = [i for i, w in enumerate(weak) if w is not None]
    strength = [0.0 if v is None else float(max(v.values())) for v in votes]
    keep = set(resolve_overlaps(spans, labelled, cfg.overlap, strength))
    losers = [i for i in labelled if i not in keep]
    for i in losers:
        weak[i] = None
    return weak, losers
