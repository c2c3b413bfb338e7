"""The STREAM loop (methods notes §12): seeds from a two-template expert, then, per iteration,
propose and score rules from the pool, label the corpus with the rules, train a span classifier
on the weak labels, and add the classifier's predictions that agree with the rules (confidence
>= kappa') to the pool; stop when the pool grows by less than `min_growth`.

The pool maps a candidate span to a label. It starts with the seeds (entity and, with
`none_seeds`, NONE answers the two templates agree on: NONE instances count against a rule's
precision) and only ever grows; a span's pool label never changes.
"""
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from recis_online.stream.classifier import hashed_features, predict, train_classifier
from recis_online.stream.config import NONE, StreamConfig
from recis_online.stream.experts import batch_calibrate, consistent_seeds
from recis_online.stream.rules import Rule, ScoredRule, label_spans, propose_rules
from recis_online.stream.spans import KeyIndex, candidate_spans, span_text

__all__ = ["StreamResult", "select_for_expert", "STREAM", "tag"]


@dataclass
class StreamResult:
    rules: List[Rule]
    scored: List[List[ScoredRule]]           # the rules added at each iteration, with their scores
    pool_sizes: List[int]                    # after the seeds, then after each iteration
    seeds: Dict[int, str]
    pool: Dict[int, str]
    converged: bool
    iterations: int
    expert_prompts: int
    seconds: Dict[str, float] = field(default_factory=dict)

    def rules_by_label(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for r in self.rules:
            out.setdefault(r.label, []).append(f"{r.kind}({r.pattern!r})")
        return out


def select_for_expert(sentences, spans: np.ndarray, budget: int, how: str, seed: int) -> np.ndarray:
    """Span ids shown to the expert: the `budget` most frequent span texts (their first
    occurrence; ties by text) or `budget` occurrences drawn uniformly (seeded)."""
    if how == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(len(spans), size=min(budget, len(spans)), replace=False))
    first: Dict[str, int] = {}
    count: Dict[str, int] = {}
    for sid, span in enumerate(spans.tolist()):
        t = span_text(sentences, span)
        count[t] = count.get(t, 0) + 1
        first.setdefault(t, sid)
    top = sorted(count, key=lambda t: (-count[t], t))[:budget]
    return np.asarray(sorted(first[t] for t in top), dtype=np.int64)


class STREAM:
    """`STREAM(config).fit(sentences, expert)` learns rules; `tag(...)` applies them."""

    def __init__(self, config: StreamConfig):
        self.cfg = config
        self.classes = config.classes

    def prepare(self, sentences: Sequence[Sequence[str]]):
        """Candidate spans, the rule-key index and the hashed features of a corpus."""
        self.sentences = sentences
        self.spans = candidate_spans(sentences, self.cfg.spans)
        if not len(self.spans):
            raise ValueError("the corpus has no candidate spans (empty sentences, or every span filtered out)")
        self.index = KeyIndex(sentences, self.spans, self.cfg.rules)
        self.features = hashed_features(sentences, self.spans, self.cfg.classifier.buckets)
        return self

    def seed(self, expert) -> Dict[int, str]:
        """The seed pool: the expert's consistent answers on the selected spans."""
        chosen = select_for_expert(self.sentences, self.spans, self.cfg.expert_budget,
                                   self.cfg.expert_selection, self.cfg.seed)
        p1, p2 = expert.template_probs(self.sentences, self.spans[chosen])
        if p1.shape[1] != len(self.classes):
            raise ValueError(f"the expert gives {p1.shape[1]} classes, STREAM has {len(self.classes)} {self.classes}")
        if self.cfg.expert_calibration == "batch":
            p1, p2 = batch_calibrate(p1), batch_calibrate(p2)
        seeds = {}
        for row, c in consistent_seeds(p1, p2, self.cfg.kappa):
            label = self.classes[c]
            if label != NONE or self.cfg.none_seeds:
                seeds[int(chosen[row])] = label
        return seeds

    def scoring_pool(self, pool: Dict[int, str]) -> Dict[int, str]:
        """The pool rules are scored on: with `boundary_none="ignore"`, without the NONE instances
        that overlap an entity instance of the pool."""
        if self.cfg.rules.boundary_none == "count":
            return pool
        covered = set()
        for sid, label in pool.items():
            if label != NONE:
                s, i, j = (int(x) for x in self.spans[sid])
                covered.update((s, t) for t in range(i, j))
        out = {}
        for sid, label in pool.items():
            s, i, j = (int(x) for x in self.spans[sid])
            if label == NONE and any((s, t) in covered for t in range(i, j)):
                continue
            out[sid] = label
        return out

    def iterate(self, pool: Dict[int, str], rules: List[Rule], it: int):
        """One iteration: (new scored rules, spans added to the pool)."""
        cfg = self.cfg
        new = propose_rules(self.index, self.scoring_pool(pool), cfg.rules, cfg.labels, rules)
        rules.extend(sr.rule for sr in new)
        weak, losers = label_spans(self.index, self.spans, rules, cfg.rules)
        labelled = np.asarray([i for i, w in enumerate(weak) if w is not None], dtype=np.int64)
        if not len(labelled):
            return new, {}
        rng = np.random.default_rng([cfg.seed, it])
        lost = set(losers)
        unlabelled = np.asarray([i for i, w in enumerate(weak) if w is None and i not in pool and i not in lost],
                                dtype=np.int64)
        n_neg = min(len(unlabelled), int(round(cfg.classifier.negative_ratio * len(labelled))))
        negatives = rng.choice(unlabelled, size=n_neg, replace=False) if n_neg else np.zeros(0, dtype=np.int64)
        if cfg.rules.overlap_negatives:
            negatives = np.concatenate([negatives, np.asarray(losers, dtype=np.int64)])
        pool_none = np.asarray([s for s, y in pool.items() if y == NONE], dtype=np.int64)
        rows = np.concatenate([labelled, negatives, pool_none])
        idx = {c: k for k, c in enumerate(self.classes)}
        targets = np.asarray([idx[weak[i]] for i in labelled] + [idx[NONE]] * (len(negatives) + len(pool_none)))
        self.model = train_classifier(self.features, rows, targets, len(self.classes), cfg.classifier, cfg.seed + it)
        probs = predict(self.model, self.features, labelled)
        conf, arg = probs.max(dim=1)
        added = {}
        for k, sid in enumerate(labelled.tolist()):
            if sid not in pool and self.classes[int(arg[k])] == weak[sid] and float(conf[k]) >= cfg.kappa_pool:
                added[sid] = weak[sid]
        if cfg.none_pool:
            rest = np.asarray([i for i, w in enumerate(weak) if w is None and i not in pool], dtype=np.int64)
            if len(rest):
                conf, arg = predict(self.model, self.features, rest).max(dim=1)
                none = self.classes.index(NONE)
                for sid in rest[((arg == none) & (conf >= cfg.kappa_pool)).numpy()].tolist():
                    added[sid] = NONE
        return new, added

    def fit(self, sentences: Sequence[Sequence[str]], expert, progress: Optional[callable] = None) -> StreamResult:
        t0 = time.perf_counter()
        self.prepare(sentences)
        t1 = time.perf_counter()
        seeds = self.seed(expert)
        t2 = time.perf_counter()
        pool = dict(seeds)
        rules: List[Rule] = []
        scored: List[List[ScoredRule]] = []
        sizes = [len(pool)]
        converged = False
        it = 0
        for it in range(1, self.cfg.max_iterations + 1):
            new, added = self.iterate(pool, rules, it)
            scored.append(new)
            before = len(pool)
            pool.update(added)
            sizes.append(len(pool))
            if progress is not None:
                progress(f"iteration {it}: +{len(new)} rules ({len(rules)} in all), pool {before} -> {len(pool)}")
            if len(pool) - before < self.cfg.min_growth * max(before, 1):
                converged = True
                break
        self.rules = rules
        return StreamResult(rules, scored, sizes, seeds, pool, converged, it, getattr(expert, "prompts", 0),
                            {"prepare": t1 - t0, "expert": t2 - t1, "loop": time.perf_counter() - t2})


def tag(sentences: Sequence[Sequence[str]], rules: Sequence[Rule], config: StreamConfig) -> List[tuple]:
    """(sentence, start, end, label) of the spans `rules` label in `sentences`, overlaps resolved
    by `config.rules.overlap`, in reading order."""
    spans = candidate_spans(sentences, config.spans)
    if not len(spans):
        return []
    index = KeyIndex(sentences, spans, config.rules)
    weak, _ = label_spans(index, spans, rules, config.rules)
    return [(int(spans[i, 0]), int(spans[i, 1]), int(spans[i, 2]), w) for i, w in enumerate(weak) if w is not None]
