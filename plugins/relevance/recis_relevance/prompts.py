"""Prompts of a generative relevance judge on the MovieLens task, and the task's vocabulary for
the word tokenizer of a small LM trained from scratch.

A prompt shows the query and the item's title (without its trailing "(year)"), year and genres,
one field a line; the completion (`recis_relevance.formats`) follows it. The retrieval test bed's
prompts (`context_prompts`) leave the genres out: the no-context prompt shows the query, title and
year only, and the with-context prompt adds the row's retrieved chunk as a last line `context: ...`.

>>> print(prompt_text("1990s comedy not horror", "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]))
query: 1990s comedy not horror
item: Toy Story
year: 1995
genres: Animation, Children's, Comedy
>>> row = {"query": "comedy", "title": "Big (1988)", "year": 1988, "genres": ["Comedy"], "want_genre": "Comedy",
...        "avoid_genre": None, "decade": None, "label": 4}
>>> no_ctx, with_ctx = context_prompts({**row, "chunk": "Big (1988) is a Comedy film from 1988."})
>>> print(with_ctx)
query: comedy
item: Big
year: 1988
context: Big (1988) is a Comedy film from 1988.
>>> no_ctx.splitlines() == with_ctx.splitlines()[:3]
True
>>> task_vocabulary([row])
[',', '1988', ':', 'big', 'comedy', 'decade', 'genre', 'genres', 'item', 'missing', 'near', 'negation', 'no', 'present', 'query', 'year', 'yes']
"""
import re
from typing import Iterable, List, Mapping, Sequence, Union

import pyarrow as pa

from recis_relevance.formats import CONTEXT_FORMATS, FORMATS, RESERVED_TOKENS, gold_completion, tokens
from recis_relevance.rationale import FACT_WORDS, RULES, VERDICTS, canonical_words
from recis_relevance.task import DECADES, RelevanceTask, all_query_texts, grade, row_value

__all__ = ["FIELDS", "CONTEXT_FIELD", "PROMPTS", "prompt_text", "prompt", "context_prompts", "prompt_of",
           "task_vocabulary", "catalogue_vocabulary", "tokenizer_spec"]

#: the field names a prompt shows, in order
FIELDS = ("query", "item", "year", "genres")
#: the field of the with-context prompt's chunk line
CONTEXT_FIELD = "context"
#: which prompt a single-prompt judge reads (JudgeConfig.prompt): the full one (genres shown), or
#: the retrieval test bed's no-context / with-context prompt (`context_prompts`)
PROMPTS = ("full", "no_context", "with_context")
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def prompt_text(query: str, title: str, year: int, genres: Sequence[str]) -> str:
    """The prompt of a (query, item)."""
    if isinstance(genres, str):
        raise TypeError(f"genres must be a list of genre names, got the string {genres!r}")
    values = (query, _TRAILING_YEAR.sub("", title), str(int(year)), ", ".join(genres))
    return "\n".join(f"{k}: {v}" for k, v in zip(FIELDS, values))


def prompt(row: Mapping) -> str:
    """The prompt of a row of `build_task`'s tables."""
    return prompt_text(*(row_value(row, c) for c in ("query", "title", "year", "genres")))


def _no_context(row: Mapping) -> str:
    query, title, year = (row_value(row, c) for c in ("query", "title", "year"))
    values = (query, _TRAILING_YEAR.sub("", title), str(int(year)))
    return "\n".join(f"{k}: {v}" for k, v in zip(FIELDS, values))


def context_prompts(row: Mapping):
    """(no_context, with_context) prompts of a row of a task built with a retriever: the query, the
    item's title (without its trailing "(year)") and its year, no genres, so the genres must come
    from what the model has learned; the with-context prompt adds the line `context: <chunk>`."""
    no_context = _no_context(row)
    chunk = row_value(row, "chunk")
    if not isinstance(chunk, str):
        raise TypeError(f"the row's chunk must be a string, got {chunk!r}")
    return no_context, f"{no_context}\n{CONTEXT_FIELD}: {chunk}"


def prompt_of(kind: str, row: Mapping) -> str:
    """The prompt of a row for a `PROMPTS` kind: full (`prompt`), no_context or with_context."""
    if kind == "full":
        return prompt(row)
    if kind not in PROMPTS:
        raise ValueError(f"unknown prompt {kind!r} (known: {list(PROMPTS)})")
    if kind == "no_context":  # needs no chunk
        return _no_context(row)
    return context_prompts(row)[1]


def _rows(data) -> Iterable[Mapping]:
    if isinstance(data, RelevanceTask):
        data = (data.train, data.test)
    elif isinstance(data, pa.Table):
        data = (data,)
    for part in data:
        if isinstance(part, pa.Table):
            yield from part.to_pylist()
        elif isinstance(part, Mapping):
            yield part
        else:
            raise TypeError(f"expected a RelevanceTask, tables or rows, got a {type(part).__name__}")


def task_vocabulary(data: Union[RelevanceTask, pa.Table, Iterable]) -> List[str]:
    """Every word of the prompts and of the gold completions in every format of `data` (a
    RelevanceTask, a table, or tables / rows of the task), plus the fixed words of the templates
    (field names, rules, verdicts, fact words), without the reserved tokens; sorted, so the order
    is deterministic."""
    vocab = set(canonical_words(" ".join(FIELDS) + ": ,")) | set(RULES) | set(FACT_WORDS)
    vocab |= {v for vs in VERDICTS.values() for v in vs}
    for row in _rows(data):
        vocab.update(canonical_words(prompt(row)))
        for fmt in FORMATS:
            vocab.update(tokens(gold_completion(fmt, row)))
        if row.get("chunk") is not None:  # a row of the retrieval test bed
            vocab.update(canonical_words(context_prompts(row)[1]))
            if row.get("context_decision") is not None:
                for fmt in CONTEXT_FORMATS:
                    vocab.update(tokens(gold_completion(fmt, row)))
    return sorted(vocab - set(RESERVED_TOKENS))


def tokenizer_spec(data: Union[RelevanceTask, pa.Table, Iterable]) -> dict:
    """The word tokenizer's spec of the task: {"words": task_vocabulary(data), "reserved": the
    reserved tokens of the formats}."""
    return {"words": task_vocabulary(data), "reserved": list(RESERVED_TOKENS)}


def catalogue_vocabulary(items: pa.Table) -> List[str]:
    """The vocabulary of every task that can be built from the catalogue `items` (columns title,
    year, genres): the words of all its items' prompts and of every query the templates can write,
    and of the gold completions for every rule outcome. It depends on the catalogue only, not on a
    task's seed or split, so every stage of a job chain builds the same tokenizer. The retrieval test
    bed's words are in it too: every item's chunk (`retrieval.chunk_text`) in the with-context prompt."""
    from recis_relevance.retrieval import chunk_text

    rows = items.select(["title", "year", "genres"]).to_pylist()
    genres = sorted({g for r in rows for g in r["genres"]})
    queries = sorted({w for q in all_query_texts(genres) for w in canonical_words(q)})
    synthetic = []
    for r in rows:
        for want, avoid in ((r["genres"][0], None), (genres[0], genres[-1])):
            for decade in DECADES:
                synthetic.append({"query": " ".join(queries), "title": r["title"], "year": r["year"],
                                  "genres": r["genres"], "want_genre": want, "avoid_genre": avoid, "decade": decade,
                                  "label": grade(r["genres"], r["year"], want, avoid, decade),
                                  "chunk": chunk_text(r["title"], r["year"], r["genres"]), "context_decision": "adopt"})
    return task_vocabulary(synthetic)
