"""The retrieval test bed of the MovieLens relevance task: a chunk store built from the catalogue's
own fields, a BM25 retriever over it, and the context columns of a task table (the retrieved or a
deliberately off-target chunk, the context decision, the head / tail and negation slices).

A chunk is one sentence per movie, written from its title, genres and year (`chunk_text`). A row's
chunk is the top-1 chunk of BM25 queried with the item's title without its "(year)" (`ChunkStore.
retrieve`); a wrong top-1 (a sequel, a remake, shared words) is a natural noisy chunk and is kept.
On top, a seeded share of rows gets a deliberately off-target chunk (another movie's), so that the
noisy share of a table is exactly the configured `ContextConfig.noise`. docs/relevance_task.md,
"Retrieval test bed", has the rules; choices marked [I] are ours.

>>> chunk_text("Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"])
"Toy Story (1995) is an Animation, Children's, Comedy film from 1995."
>>> terms("Sci-Fi: Children's (1995)")
('sci', 'fi', 'children', 's', '1995')
>>> store = ChunkStore.from_items(pa.table({"item_id": [1, 2], "title": ["Heat (1995)", "Big (1988)"],
...                                         "year": [1995, 1988], "genres": [["Action"], ["Comedy"]]}))
>>> store.chunk(store.retrieve("Big"))
'Big (1988) is a Comedy film from 1988.'
>>> decision(1, {"genres": ["Comedy"], "year": 1988}, {"item_id": 1, "want_genre": "Comedy",
...          "avoid_genre": None, "decade": 1980, "genres": ["Comedy"], "year": 1988})
'adopt'
"""
import math
import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recis.config_utils import bounded, check_types
from recis.rl import check_choice
from recis_relevance.rationale import canonical_words, steps
from recis_relevance.task import grade, row_value

__all__ = ["RETRIEVERS", "CONTEXT_DECISIONS", "CONTEXT_COLUMNS", "ContextConfig", "chunk_text", "terms", "BM25",
           "ChunkStore", "decision", "attach_context", "rating_counts", "movielens_rating_counts",
           "natural_noise"]

RETRIEVERS = ("bm25",)
#: what a judge should do with the chunk: use it (it describes the item), use it in part (another
#: movie's chunk that agrees with the item on every rule the query checks), or ignore it
CONTEXT_DECISIONS = ("adopt", "partial", "ignore")
#: the columns `attach_context` adds to a task table
CONTEXT_COLUMNS = ("chunk", "chunk_item", "chunk_helpful", "chunk_injected", "context_decision", "head", "negation")
_TRAILING_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_STORE_COLUMNS = ("item_id", "title", "year", "genres")


@dataclass
class ContextConfig:
    """How a task table gets its chunks.

    `retriever`: bm25 (over `terms` of the chunk sentences; `k1`, `b` its parameters [I: Lucene's
    defaults 1.2 would do as well; we use the common 1.5 / 0.75]). `noise`: the share of the table's
    rows whose chunk is noisy (not the item's own), in [0, 1]; rows whose retrieved chunk is the
    item's own are turned into deliberately off-target ones (a seeded choice) until the share is met
    exactly (round(noise * rows) noisy rows); None keeps the retriever's natural noise only. A share
    below the table's natural noisy share is an error. `flip`: a deliberate chunk is drawn among the
    other movies whose facts give the row another grade (it would change the verdict), falling back
    to any other movie after 64 draws [I]. `seed`: the seed of those draws. `head_quantile`: an item
    is head when its rating count is >= this quantile of the catalogue's counts (0.5: the median)
    [I]. `store`: a Parquet chunk store written by `ChunkStore.save`, or None to build it from the
    catalogue."""

    retriever: str = "bm25"
    noise: Optional[float] = bounded(0.3, ge=0, le=1)
    flip: bool = True
    seed: int = bounded(0, ge=0, lt=1 << 63)
    head_quantile: float = bounded(0.5, ge=0, le=1)
    k1: float = bounded(1.5, ge=0)
    b: float = bounded(0.75, ge=0, le=1)
    store: Optional[str] = None

    def __post_init__(self):
        check_types(self, "context")
        check_choice("context.retriever", self.retriever, RETRIEVERS)
        if self.store is not None and not os.path.exists(self.store):
            raise FileNotFoundError(f"context.store: no chunk store at {self.store!r} (write one with "
                                    "ChunkStore.save, or leave context.store null to build it from the catalogue)")


def chunk_text(title: str, year: int, genres: Sequence[str]) -> str:
    """The chunk of a movie: one sentence with its title, genres and year [I: the wording is ours]."""
    if isinstance(genres, str) or not genres:
        raise ValueError(f"a chunk needs a non-empty list of genres, got {genres!r} for {title!r}")
    article = "an" if genres[0][:1].lower() in "aeiou" else "a"
    return f"{title} is {article} {', '.join(genres)} film from {int(year)}."


def terms(text: str) -> Tuple[str, ...]:
    """BM25 terms: the task's words (`canonical_words`: lower case, split at punctuation) without
    the punctuation marks themselves [I]."""
    return tuple(w for w in canonical_words(text) if any(c.isalnum() for c in w))


class BM25:
    """Okapi BM25 over a list of tokenized documents:

        score(q, d) = sum over distinct terms t of q of idf(t) * f(t, d) * (k1 + 1) /
                      (f(t, d) + k1 * (1 - b + b * |d| / avgdl)),
        idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5))

    (f: the term's count in d, |d|: d's length in terms, avgdl: the mean length, N: documents, n(t):
    documents holding t). A query term counts once however often it occurs [I]. `top` breaks ties
    by the lower document index, so retrieval is deterministic."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75):
        if not docs:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b, self.n = float(k1), float(b), len(docs)
        self.lengths = [len(d) for d in docs]
        self.avgdl = sum(self.lengths) / self.n or 1.0
        self.postings: Dict[str, List[Tuple[int, int]]] = {}
        for i, d in enumerate(docs):
            counts: Dict[str, int] = {}
            for t in d:
                counts[t] = counts.get(t, 0) + 1
            for t, f in counts.items():
                self.postings.setdefault(t, []).append((i, f))

    def idf(self, term: str) -> float:
        n = len(self.postings.get(term, ()))
        return math.log(1.0 + (self.n - n + 0.5) / (n + 0.5))

    def scores(self, query: Sequence[str]) -> List[float]:
        """The score of every document (index order) for the query terms."""
        out = [0.0] * self.n
        for t in dict.fromkeys(query):
            idf = self.idf(t)
            for i, f in self.postings.get(t, ()):
                norm = self.k1 * (1.0 - self.b + self.b * self.lengths[i] / self.avgdl)
                out[i] += idf * f * (self.k1 + 1.0) / (f + norm)
        return out

    def top(self, query: Sequence[str], k: int = 1) -> List[int]:
        """The indices of the k best documents (score descending, then index ascending)."""
        s = self.scores(query)
        if k == 1:
            return [min(range(self.n), key=lambda i: (-s[i], i))]
        return sorted(range(self.n), key=lambda i: (-s[i], i))[:k]


class ChunkStore:
    """The chunks of a catalogue (one per movie, `chunk_text`), their movies' facts and rating
    counts, and the retriever over them."""

    def __init__(self, items: pa.Table, k1: float = 1.5, b: float = 0.75):
        missing = [c for c in _STORE_COLUMNS if c not in items.column_names]
        if missing:
            raise KeyError(f"the chunk store needs the catalogue column(s) {missing} (has {items.column_names})")
        items = items.sort_by("item_id")
        self.item_ids: List[int] = [int(x) for x in items["item_id"].to_pylist()]
        if len(set(self.item_ids)) != len(self.item_ids):
            raise ValueError("the chunk store's catalogue has an item_id twice")
        self.titles = items["title"].to_pylist()
        self.years = [int(y) for y in items["year"].to_pylist()]
        self.genres = items["genres"].to_pylist()
        self.texts = (items["chunk"].to_pylist() if "chunk" in items.column_names else
                      [chunk_text(t, y, g) for t, y, g in zip(self.titles, self.years, self.genres)])
        self.counts = ([int(c) for c in items["ratings"].to_pylist()] if "ratings" in items.column_names else None)
        self.row_of = {i: r for r, i in enumerate(self.item_ids)}
        self.bm25 = BM25([terms(t) for t in self.texts], k1, b)
        self._retrieved: Dict[str, int] = {}

    @classmethod
    def from_items(cls, items: pa.Table, k1: float = 1.5, b: float = 0.75) -> "ChunkStore":
        """The store of a catalogue (item_id, title, year, genres; optional `ratings`: the rating
        count of each movie, for the head / tail slice)."""
        return cls(items, k1, b)

    @classmethod
    def load(cls, path: str, k1: float = 1.5, b: float = 0.75) -> "ChunkStore":
        if not os.path.exists(path):
            raise FileNotFoundError(f"context.store: no chunk store at {path!r}")
        return cls(pq.read_table(path), k1, b)

    def save(self, path: str) -> None:
        cols = {"item_id": pa.array(self.item_ids, pa.int64()), "title": self.titles,
                "year": pa.array(self.years, pa.int32()), "genres": pa.array(self.genres, pa.list_(pa.string())),
                "chunk": self.texts}
        if self.counts is not None:
            cols["ratings"] = pa.array(self.counts, pa.int64())
        pq.write_table(pa.table(cols), path)

    def __len__(self) -> int:
        return len(self.item_ids)

    def _row(self, item_id: int) -> int:
        try:
            return self.row_of[int(item_id)]
        except KeyError:
            raise KeyError(f"item {item_id} is not in the chunk store ({len(self)} movies)") from None

    def chunk(self, item_id: int) -> str:
        return self.texts[self._row(item_id)]

    def facts(self, item_id: int) -> Dict[str, object]:
        """{genres, year} of a stored movie."""
        r = self._row(item_id)
        return {"genres": self.genres[r], "year": self.years[r]}

    def retrieve(self, title: str) -> int:
        """The item_id of the top-1 chunk for a title (its trailing "(year)" is dropped first)."""
        query = _TRAILING_YEAR.sub("", title)
        if query not in self._retrieved:
            self._retrieved[query] = self.item_ids[self.bm25.top(terms(query), 1)[0]]
        return self._retrieved[query]

    def head_threshold(self, quantile: float) -> float:
        """The rating count at `quantile` of the catalogue's counts (numpy's linear quantile)."""
        if self.counts is None:
            raise KeyError("context.head_quantile: the chunk store has no rating counts; the head / tail slice needs "
                           "the catalogue column 'ratings' (movielens_items(ratings=True) adds it)")
        return float(np.quantile(np.asarray(self.counts, dtype=np.float64), quantile))

    def count(self, item_id: int) -> int:
        return self.counts[self._row(item_id)]


def decision(chunk_item: int, chunk_facts: Mapping, row: Mapping) -> str:
    """adopt when the chunk is the row's item's own; else partial when the chunk's movie gives the
    same verdict as the item on every rule the row's query checks (genre, negation, decade; the
    teacher's steps, `recis_relevance.rationale.steps`), else ignore [I: the partial rule is ours]."""
    if int(chunk_item) == int(row_value(row, "item_id")):
        return "adopt"
    query = [row_value(row, c) for c in ("want_genre", "avoid_genre", "decade")]
    own = [s.verdict for s in steps(row_value(row, "genres"), row_value(row, "year"), *query)]
    other = [s.verdict for s in steps(chunk_facts["genres"], chunk_facts["year"], *query)]
    return "partial" if own == other else "ignore"


def _off_target(store: ChunkStore, row: Mapping, rng: random.Random, flip: bool, tries: int = 64) -> int:
    """A seeded other movie for a deliberate chunk (one whose facts change the row's grade, when
    `flip` and one is found within `tries` draws)."""
    own = int(row["item_id"])
    if len(store) < 2:
        raise ValueError("a deliberately off-target chunk needs a chunk store of at least 2 movies")
    pick = own
    for _ in range(tries if flip else 1):
        pick = own
        while pick == own:
            pick = store.item_ids[rng.randrange(len(store))]
        f = store.facts(pick)
        if not flip or grade(f["genres"], f["year"], row["want_genre"], row["avoid_genre"], row["decade"]) \
                != int(row["label"]):
            break
    return pick


def attach_context(table: pa.Table, store: ChunkStore, cfg: Optional[ContextConfig] = None,
                   split: str = "") -> pa.Table:
    """`table` (rows of `build_task`) with the CONTEXT_COLUMNS added (see the module docstring and
    `ContextConfig`). `split` names the table in the seed of its off-target draws, so the train and
    test tables of one config draw independently."""
    cfg = cfg if cfg is not None else ContextConfig()
    need = ("item_id", "title", "year", "genres", "want_genre", "avoid_genre", "decade", "label")
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise KeyError(f"attach_context needs the task column(s) {missing} (has {table.column_names})")
    rows = table.select(list(need)).to_pylist()
    threshold = store.head_threshold(cfg.head_quantile)
    chunk_item = [store.retrieve(r["title"]) for r in rows]
    injected = [False] * len(rows)
    if cfg.noise is not None:
        want = int(round(cfg.noise * len(rows)))
        natural = sum(c != int(r["item_id"]) for c, r in zip(chunk_item, rows))
        if natural > want:
            raise ValueError(f"context.noise {cfg.noise} asks for {want} noisy chunks in {len(rows)} rows, but the "
                             f"retriever alone gives {natural} ({natural / max(len(rows), 1):.3f}); use a noise "
                             "share at least that, or null for the natural share only")
        rng = random.Random(f"context:{cfg.seed}:{split}")
        helpful = [i for i, (c, r) in enumerate(zip(chunk_item, rows)) if c == int(r["item_id"])]
        for i in sorted(rng.sample(helpful, want - natural)):
            chunk_item[i] = _off_target(store, rows[i], rng, cfg.flip)
            injected[i] = True
    cols = {
        "chunk": pa.array([store.chunk(c) for c in chunk_item], pa.string()),
        "chunk_item": pa.array(chunk_item, pa.int64()),
        "chunk_helpful": pa.array([c == int(r["item_id"]) for c, r in zip(chunk_item, rows)], pa.bool_()),
        "chunk_injected": pa.array(injected, pa.bool_()),
        "context_decision": pa.array([decision(c, store.facts(c), r) for c, r in zip(chunk_item, rows)], pa.string()),
        "head": pa.array([store.count(r["item_id"]) >= threshold for r in rows], pa.bool_()),
        "negation": pa.array([r["avoid_genre"] is not None for r in rows], pa.bool_()),
    }
    for name, values in cols.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, values)
    return table


def natural_noise(store: ChunkStore, item_ids: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """How often the retriever's top-1 is another movie's chunk, over `item_ids` (default: every
    stored movie): {items, wrong, rate, examples: up to 10 (title, retrieved title)}."""
    ids = list(store.item_ids if item_ids is None else item_ids)
    wrong = [(store.titles[store._row(i)], store.titles[store._row(store.retrieve(store.titles[store._row(i)]))])
             for i in ids if store.retrieve(store.titles[store._row(i)]) != int(i)]
    return {"items": len(ids), "wrong": len(wrong), "rate": len(wrong) / max(len(ids), 1), "examples": wrong[:10]}


def rating_counts(ratings: pa.Table) -> Dict[int, int]:
    """item_id -> its number of rows in a ratings table."""
    if "item_id" not in ratings.column_names:
        raise KeyError(f"the ratings table lacks the column 'item_id' (has {ratings.column_names})")
    vc = pc.value_counts(ratings["item_id"]).flatten()
    return {int(k): int(v) for k, v in zip(vc[0].to_pylist(), vc[1].to_pylist())}


def movielens_rating_counts() -> Dict[int, int]:
    """item_id -> rating count over all MovieLens-1M ratings (train and test of the random split,
    from recis' MovieLens cache)."""
    from recis.datasets import movielens

    files = movielens.load("random")
    out: Dict[int, int] = {}
    for path in (files.train, files.test):
        for k, v in rating_counts(pq.read_table(path, columns=["item_id"])).items():
            out[k] = out.get(k, 0) + v
    return out
