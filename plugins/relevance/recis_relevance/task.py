"""A graded query-item relevance task built from a real catalogue (MovieLens-1M movies: title,
year, genres), seeded. The rules are in docs/relevance_task.md; in short, a query asks for a genre
g, optionally not a genre g2 and optionally a decade D, and an item's grade is

- 1 (category mismatch): the item lacks g, or has g2;
- 2 (attribute mismatch): genres fit, but the year is more than 2 years outside D;
- 3 (partial): genres fit, the year is 1-2 years outside D;
- 4 (exact): genres fit and the year is in D (or no decade was asked).

Train and test queries come from disjoint (g, g2, D) combinations (a held-out split).

>>> grade(["Comedy", "Romance"], 1995, "Comedy", None, 1990)
4
>>> grade(["Comedy", "Romance"], 1988, "Comedy", None, 1990), grade(["Comedy"], 1975, "Comedy", None, 1990)
(3, 2)
>>> grade(["Comedy", "Horror"], 1995, "Comedy", "Horror", None)
1
"""
import random
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from recis_relevance.entities import EntityExtractor, words

__all__ = ["grade", "query_text", "all_query_texts", "movie_items", "movielens_items", "build_task", "hold_out_queries", "RelevanceTask", "GAZETTEER", "extractor",
           "feature_config", "tiny_encoder_options", "row_value"]

DECADES = (1930, 1940, 1950, 1960, 1970, 1980, 1990)
NEAR = 2  # years outside the decade that still count as a partial match
# title words that become typed entities (gazetteer); the grading rules ignore them
GAZETTEER = {"love": "theme", "war": "theme", "christmas": "theme", "night": "theme", "dead": "theme",
             "star": "theme", "man": "theme", "king": "theme", "story": "theme", "ii": "sequel", "2": "sequel",
             "3": "sequel", "part": "sequel", "return": "sequel"}


def grade(genres: Sequence[str], year: int, want: str, avoid: Optional[str], decade: Optional[int]) -> int:
    """The grade (1..4) of an item for a query (see the module docstring)."""
    if want not in genres or (avoid is not None and avoid in genres):
        return 1
    if decade is None or decade <= year <= decade + 9:
        return 4
    if decade - NEAR <= year < decade or decade + 9 < year <= decade + 9 + NEAR:
        return 3
    return 2


def row_value(row: Mapping, column: str):
    """`row[column]` of a task row (a dict of `build_task`'s tables), or a KeyError naming the column."""
    try:
        return row[column]
    except KeyError:
        raise KeyError(f"a relevance row needs the column {column!r} (has {sorted(row)})") from None


#: the query templates: {g} the wanted genre, {d} the decade, {a} the excluded genre (lower case)
GENRE_TEMPLATES = ("{g} movies", "{g} films", "{g}")
DECADE_TEMPLATES = ("{g} movies from the {d}s", "{d}s {g}", "{g} from the {d}s")
NEGATION_TEMPLATES = (" not {a}", " without {a}", " but no {a}")


def query_text(want: str, avoid: Optional[str], decade: Optional[int], rng: random.Random) -> str:
    g = want.lower()
    base = rng.choice(GENRE_TEMPLATES) if decade is None else rng.choice(DECADE_TEMPLATES)
    base = base.format(g=g, d=decade)
    if avoid is not None:
        base += rng.choice(NEGATION_TEMPLATES).format(a=avoid.lower())
    return base


def all_query_texts(genres: Sequence[str]) -> List[str]:
    """Every query text the templates can write for these genres and DECADES (a vocabulary's source)."""
    out = []
    for want in genres:
        for avoid in [None] + [a for a in genres if a != want]:
            for decade in (None,) + DECADES:
                for base in (GENRE_TEMPLATES if decade is None else DECADE_TEMPLATES):
                    text = base.format(g=want.lower(), d=decade)
                    tails = [""] if avoid is None else [t.format(a=avoid.lower()) for t in NEGATION_TEMPLATES]
                    out += [text + tail for tail in tails]
    return out


def extractor() -> EntityExtractor:
    """Movie entities: genres, year, and gazetteer words of the title."""
    return EntityExtractor({"genres": "genre", "year": "year"}, gazetteer=GAZETTEER, title_column="title")


def movielens_items(ratings: bool = False) -> pa.Table:
    """The MovieLens-1M movies (item_id, title, year, genres), from recis' MovieLens cache
    (downloaded on first use, see recis.datasets.movielens); with `ratings`, also each movie's
    rating count over all the ratings (column `ratings`: the head / tail slice of the retrieval
    test bed, `recis_relevance.retrieval`)."""
    import pyarrow.parquet as pq

    from recis.datasets import movielens

    files = movielens.load("random")
    items = movie_items(pq.read_table(files.train, columns=["item_id", "title", "year", "genres"]))
    if ratings:
        from recis_relevance.retrieval import movielens_rating_counts

        counts = movielens_rating_counts()
        items = items.append_column("ratings", pa.array([counts.get(int(i), 0) for i in
                                                         items["item_id"].to_pylist()], pa.int64()))
    return items


def movie_items(ratings: pa.Table) -> pa.Table:
    """Distinct movies (item_id, title, year, genres) of a MovieLens ratings table."""
    need = ["item_id", "title", "year", "genres"]
    missing = [c for c in need if c not in ratings.column_names]
    if missing:
        raise KeyError(f"the ratings table lacks columns {missing}")
    t = ratings.select(need)
    idx = pc.index_in(pc.unique(t["item_id"]), t["item_id"])  # the first row of each movie
    t = t.take(idx).sort_by("item_id")
    return t.filter(pc.is_valid(t["title"]))


@dataclass
class RelevanceTask:
    train: pa.Table
    test: pa.Table

    @staticmethod
    def grade_counts(table: pa.Table) -> Dict[int, int]:
        return dict(sorted((int(k), int(v)) for k, v in zip(*pc.value_counts(table["label"]).flatten())))


def build_task(items: pa.Table, queries: int = 300, per_query: int = 12, test_fraction: float = 0.2,
               seed: int = 0, context=None, store=None) -> RelevanceTask:
    """`queries` queries, each with up to `per_query` items spread evenly over the four grades.
    With `context` (a `recis_relevance.retrieval.ContextConfig`), every row also gets its retrieved
    chunk and the context columns (`retrieval.attach_context`) from `store` (a ChunkStore; default:
    `context.store`, else one built from `items`, which then need the column `ratings`); the other
    columns are the same as without."""
    if queries < 2 or per_query < 4 or not 0 < test_fraction < 1:
        raise ValueError(f"need queries >= 2, per_query >= 4 and 0 < test_fraction < 1, got {queries}, "
                         f"{per_query}, {test_fraction}")
    rng = random.Random(seed)
    rows = items.to_pylist()
    genres = sorted({g for r in rows for g in r["genres"]})
    ents = extractor()
    combos, seen = [], set()
    while len(combos) < queries:
        want = rng.choice(genres)
        avoid = rng.choice([g for g in genres if g != want]) if rng.random() < 0.4 else None
        decade = rng.choice(DECADES) if rng.random() < 0.6 else None
        if (want, avoid, decade) in seen:
            if len(seen) >= len(genres) ** 2 * (len(DECADES) + 1):
                raise ValueError(f"cannot draw {queries} distinct queries from {len(genres)} genres")
            continue
        seen.add((want, avoid, decade))
        combos.append((want, avoid, decade))
    test_combos = set(rng.sample(combos, max(1, int(round(test_fraction * len(combos))))))
    out = {"train": [], "test": []}
    for qid, (want, avoid, decade) in enumerate(combos):
        text = query_text(want, avoid, decade, rng)
        buckets: Dict[int, List[dict]] = {1: [], 2: [], 3: [], 4: []}
        for r in rows:
            buckets[grade(r["genres"], r["year"], want, avoid, decade)].append(r)
        k, chosen = per_query // 4, []
        for g in (2, 3, 4):
            chosen += rng.sample(buckets[g], min(k, len(buckets[g])))
        # with an excluded genre, half the mismatches are items that have both genres (hard negatives)
        hard = [r for r in buckets[1] if want in r["genres"]] if avoid is not None else []
        easy = [r for r in buckets[1] if want not in r["genres"]] if avoid is not None else buckets[1]
        n_hard = min((k + 1) // 2, len(hard))
        chosen += rng.sample(hard, n_hard) + rng.sample(easy, min(k - n_hard, len(easy)))
        split = "test" if (want, avoid, decade) in test_combos else "train"
        for r in chosen:
            out[split].append({
                "query": text, "query_id": f"q{qid}", "item_id": int(r["item_id"]), "title": r["title"],
                "year": int(r["year"]), "genres": list(r["genres"]),
                "item_text": f"{r['title']} | {', '.join(r['genres'])}",
                "entities": [e.text for e in ents.extract(r)],
                "want_genre": want, "avoid_genre": avoid, "decade": decade,
                "label": grade(r["genres"], r["year"], want, avoid, decade)})
    schema = pa.schema([("query", pa.string()), ("query_id", pa.string()), ("item_id", pa.int64()),
                        ("title", pa.string()), ("year", pa.int32()), ("genres", pa.list_(pa.string())),
                        ("item_text", pa.string()), ("entities", pa.list_(pa.string())),
                        ("want_genre", pa.string()), ("avoid_genre", pa.string()), ("decade", pa.int32()),
                        ("label", pa.int8())])
    tables = {}
    for split, recs in out.items():
        rng.shuffle(recs)
        tables[split] = pa.Table.from_pylist(recs, schema=schema)
    if context is not None:
        from recis_relevance.retrieval import ChunkStore, attach_context

        if store is None:
            store = (ChunkStore.load(context.store, context.k1, context.b) if context.store is not None
                     else ChunkStore.from_items(items, context.k1, context.b))
        tables = {split: attach_context(t, store, context, split) for split, t in tables.items()}
    return RelevanceTask(tables["train"], tables["test"])


def hold_out_queries(table: pa.Table, fraction: float = 0.2, seed: int = 0):
    """(rest, held out): the rows of a `fraction` of the table's queries (by query_id, seeded) are
    held out, e.g. validation queries carved out of the training split for model selection."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    ids = sorted(set(table["query_id"].to_pylist()))
    if len(ids) < 2:
        raise ValueError(f"the table holds {len(ids)} query; holding queries out needs at least 2")
    held = set(random.Random(seed).sample(ids, max(1, int(round(fraction * len(ids))))))
    mask = pa.array([q in held for q in table["query_id"].to_pylist()])
    return table.filter(pc.invert(mask)), table.filter(mask)


def feature_config(sparse: bool = True) -> dict:
    """The feature-engine config of the task: text pass-through columns, hashed ids, the grade label."""
    feats = [{"name": c, "kind": "passthrough", "column": c} for c in ("query", "entities", "item_text")]
    if sparse:
        feats += [{"name": "query_id", "kind": "sparse", "column": "query", "ops": [{"op": "hash"}]},
                  {"name": "item_id", "kind": "sparse", "column": "item_id", "ops": [{"op": "hash"}]},
                  {"name": "entity_ids", "kind": "sparse", "column": "entities", "ops": [{"op": "hash"}]}]
    feats.append({"name": "label", "kind": "label", "column": "label"})
    return {"features": feats}


def tiny_encoder_options(task: RelevanceTask, seed: int = 0, max_positions: int = 64) -> dict:
    """Encoder options of a tiny random BERT (hidden 32, 2 layers, `max_positions` positions) with a
    word-list tokenizer over the task's words: a relevance tower on the task without any download
    (tests, `--small`)."""
    vocab = sorted({w for t in (task.train, task.test) for col in ("query", "item_text")
                    for s in t[col].to_pylist() for w in words(s)}
                   | {w for t in (task.train, task.test) for es in t["entities"].to_pylist() for e in es
                      for w in words(e)} | {":", ",", "|", "(", ")", "-"})
    return {"encoder": {"config": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 2, "intermediate_size": 64,
                                   "vocab_size": len(vocab) + 8, "max_position_embeddings": max_positions},
                        "seed": seed},
            "tokenizer": {"vocab": vocab}, "pooling": "cls"}
