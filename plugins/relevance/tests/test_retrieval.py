"""The retrieval test bed: the chunk store and BM25 (against the formula written out here), the
noise share, the context decisions (against the rules re-derived here), the head / tail and
negation slices, the no-context / with-context prompts and the config errors."""
from relevance_testing import synthetic_items  # (first: puts the plugin on the path)
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from recis_relevance.evaluate import accuracy, macro_f1, slice_masks, slice_metrics
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.prompts import catalogue_vocabulary, context_prompts, prompt_of, task_vocabulary
from recis_relevance.rationale import canonical_words
from recis_relevance.retrieval import (CONTEXT_COLUMNS, BM25, ChunkStore, ContextConfig, attach_context, chunk_text,
                                       natural_noise, terms)
from recis_relevance.task import build_task

SCHEMA = pa.schema([("item_id", pa.int64()), ("title", pa.string()), ("year", pa.int32()),
                    ("genres", pa.list_(pa.string())), ("ratings", pa.int64())])


def catalogue(rows):
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, r)) for r in rows], schema=SCHEMA)


MOVIES = catalogue([
    (1, "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"], 2077),
    (2, "Toy Story 2 (1999)", 1999, ["Animation", "Children's", "Comedy"], 1585),
    (3, "Hamlet (1990)", 1990, ["Drama"], 40),
    (4, "Hamlet (1996)", 1996, ["Drama"], 150),
    (5, "Heat (1995)", 1995, ["Action", "Crime", "Thriller"], 940),
    (6, "Big (1988)", 1988, ["Comedy", "Fantasy"], 815),
    (7, "Alien (1979)", 1979, ["Action", "Horror", "Sci-Fi", "Thriller"], 2024),
])


def synthetic_with_counts():
    items = synthetic_items()
    return items.append_column("ratings", pa.array([(i * 37) % 101 for i in items["item_id"].to_pylist()], pa.int64()))


@pytest.fixture(scope="module")
def items():
    return synthetic_with_counts()


@pytest.fixture(scope="module")
def task(items):
    return build_task(items, queries=40, per_query=8, seed=3, context=ContextConfig(noise=0.3, seed=5))


def test_chunk_sentence_from_the_catalogue_fields():
    assert chunk_text("Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]) == \
        "Toy Story (1995) is an Animation, Children's, Comedy film from 1995."
    assert chunk_text("Big (1988)", 1988, ["Comedy"]) == "Big (1988) is a Comedy film from 1988."
    store = ChunkStore.from_items(MOVIES)
    assert store.chunk(5) == "Heat (1995) is an Action, Crime, Thriller film from 1995."
    assert terms("Children's (1995).") == ("children", "s", "1995")


def test_bm25_scores_are_the_formula():
    docs = [["toy", "story", "toy"], ["toy", "story", "2", "film"], ["heat"], ["big", "film", "film", "x", "y"]]
    k1, b = 1.2, 0.6
    bm = BM25(docs, k1, b)
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)

    def expected(query, d):
        total = 0.0
        for t in set(query):
            df = sum(t in doc for doc in docs)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            f = d.count(t)
            total += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        return total

    for query in (["toy"], ["toy", "story"], ["film", "film"], ["big", "film", "nothing"], ["zzz"]):
        assert bm.scores(query) == pytest.approx([expected(query, d) for d in docs], rel=1e-12)
    # a query term counts once; a term in no document adds nothing
    assert bm.scores(["film", "film"]) == bm.scores(["film"])
    # ties break by the lower index: documents 0 and 1 both lack "heat"... all score 0 on "zzz"
    assert bm.top(["zzz"], 3) == [0, 1, 2]
    assert bm.top(["toy"], 1) == [0]  # two "toy"s in a shorter document


def test_retrieval_top1_is_the_items_own_chunk_for_a_unique_title(items):
    store = ChunkStore.from_items(items)
    for item_id, title in zip(items["item_id"].to_pylist()[::17], items["title"].to_pylist()[::17]):
        assert store.retrieve(title) == item_id  # "Film 12": "12" is in no other chunk
    movies = ChunkStore.from_items(MOVIES)
    for item_id, title in ((1, "Toy Story (1995)"), (2, "Toy Story 2 (1999)"), (5, "Heat"), (7, "Alien (1979)")):
        assert movies.retrieve(title) == item_id
    # a remake shares the whole title: the top-1 is the shorter chunk (length normalization), a
    # natural noisy chunk for the other one; the retriever is deterministic
    assert movies.retrieve("Hamlet (1996)") == movies.retrieve("Hamlet (1990)") == 3
    report = natural_noise(movies)
    assert report["wrong"] == 1 and report["examples"] == [("Hamlet (1996)", "Hamlet (1990)")]


def test_missing_store_and_columns_are_named(tmp_path, items):
    with pytest.raises(KeyError, match=r"\['genres'\]"):
        ChunkStore.from_items(items.drop_columns(["genres"]))
    with pytest.raises(FileNotFoundError, match="context.store"):
        ContextConfig(store=str(tmp_path / "nope.parquet"))
    with pytest.raises(FileNotFoundError, match="context.store"):
        ChunkStore.load(str(tmp_path / "nope.parquet"))
    no_counts = build_task(items.drop_columns(["ratings"]), queries=8, per_query=4, seed=0)
    with pytest.raises(KeyError, match="'ratings'"):
        attach_context(no_counts.train, ChunkStore.from_items(items.drop_columns(["ratings"])))
    with pytest.raises(KeyError, match=r"\['label'\]"):
        attach_context(no_counts.train.drop_columns(["label"]), ChunkStore.from_items(items))
    with pytest.raises(KeyError, match="'chunk'"):
        context_prompts(no_counts.train.to_pylist()[0])
    with pytest.raises(KeyError, match="chunk_helpful"):
        slice_masks(no_counts.train)
    # a saved store loads back to the same chunks and counts
    store = ChunkStore.from_items(items)
    store.save(str(tmp_path / "store.parquet"))
    loaded = ChunkStore.load(ContextConfig(store=str(tmp_path / "store.parquet")).store)
    assert loaded.texts == store.texts and loaded.counts == store.counts


def test_config_errors_name_the_option():
    for bad, match in (({"noise": 1.5}, "context.noise"), ({"noise": -0.1}, "context.noise"),
                       ({"retriever": "dense"}, "context.retriever"), ({"head_quantile": 2.0}, "context.head_quantile"),
                       ({"seed": -1}, "context.seed"), ({"b": 1.5}, "context.b")):
        with pytest.raises((ValueError, TypeError), match=match):
            ContextConfig(**bad)
    policy = {"config": {"model_type": "llama"}}
    with pytest.raises(ValueError, match="model.context.noise"):
        JudgeConfig.from_options({"policy": policy, "context": {"noise": 2.0}})
    with pytest.raises(ValueError, match="unknown key"):
        JudgeConfig.from_options({"policy": policy, "context": {"nosie": 0.2}})
    with pytest.raises(ValueError, match="model.prompt must be one of"):
        JudgeConfig.from_options({"policy": policy, "prompt": "chunk"})
    cfg = JudgeConfig.from_options({"policy": policy, "prompt": "with_context", "format": "post_cot_context",
                                    "context": {"noise": 0.5, "seed": 2}})
    assert cfg.context == ContextConfig(noise=0.5, seed=2) and cfg.prompt == "with_context"


def test_without_context_build_task_is_unchanged_and_with_it_only_adds_columns(items, task):
    plain = build_task(items, queries=40, per_query=8, seed=3)
    assert plain.train.column_names == ["query", "query_id", "item_id", "title", "year", "genres", "item_text",
                                        "entities", "want_genre", "avoid_genre", "decade", "label"]
    for split in ("train", "test"):
        with_ctx = getattr(task, split)
        assert with_ctx.column_names == plain.train.column_names + list(CONTEXT_COLUMNS)
        assert with_ctx.select(plain.train.column_names).equals(getattr(plain, split))


def test_the_noise_share_is_exact_for_a_seed_and_seeded(items, task):
    store = ChunkStore.from_items(items)
    table = build_task(items, queries=60, per_query=8, seed=1).train
    natural = sum(store.retrieve(t) != i for t, i in zip(table["title"].to_pylist(), table["item_id"].to_pylist()))
    for noise in (0.0 if natural == 0 else None, 0.1, 0.3, 0.5, 1.0):
        if noise is None:
            continue
        out = attach_context(table, store, ContextConfig(noise=noise, seed=0))
        noisy = out.num_rows - sum(out["chunk_helpful"].to_pylist())
        assert noisy == round(noise * out.num_rows)  # exact, not in expectation
        # a deliberately off-target chunk is another movie's, and only helpful rows were turned
        assert all(c != i for c, i, inj in zip(out["chunk_item"].to_pylist(), out["item_id"].to_pylist(),
                                                 out["chunk_injected"].to_pylist()) if inj)
        assert sum(out["chunk_injected"].to_pylist()) == noisy - natural
    a = attach_context(table, store, ContextConfig(noise=0.3, seed=0))
    assert a.equals(attach_context(table, store, ContextConfig(noise=0.3, seed=0)))  # the same for a seed
    b = attach_context(table, store, ContextConfig(noise=0.3, seed=1))
    assert a["chunk_injected"].to_pylist() != b["chunk_injected"].to_pylist()  # another seed draws other rows
    natural_only = attach_context(table, store, ContextConfig(noise=None))
    assert not any(natural_only["chunk_injected"].to_pylist())
    # the train and test tables draw independently: shares met in each
    for split in ("train", "test"):
        t = getattr(task, split)
        assert t.num_rows - sum(t["chunk_helpful"].to_pylist()) == round(0.3 * t.num_rows)


def test_noise_below_the_natural_share_is_an_error():
    rows = [{**r, "want_genre": "Drama", "avoid_genre": None, "decade": None, "label": 4 if "Drama" in r["genres"]
              else 1} for r in MOVIES.to_pylist()]
    table = pa.Table.from_pylist(rows)
    store = ChunkStore.from_items(MOVIES)
    with pytest.raises(ValueError, match=r"context.noise 0.0 asks for 0 noisy chunks in 7 rows, but the retriever "
                                         r"alone gives 1"):  # Hamlet (1996) retrieves Hamlet (1990)
        attach_context(table, store, ContextConfig(noise=0.0))
    out = attach_context(table, store, ContextConfig(noise=None))
    assert out["chunk_helpful"].to_pylist() == [True, True, True, False, True, True, True]
    assert out["context_decision"].to_pylist()[3] == "partial"  # both Hamlets are 1990s dramas: every rule agrees


def _verdicts(genres, year, want, avoid, decade):
    """The rule outcomes, written out here from docs/relevance_task.md (not the library's steps)."""
    out = ["yes" if want in genres else "no"]
    if avoid is not None:
        out.append("no" if avoid in genres else "yes")
    if decade is not None:
        if decade <= year < decade + 10:
            out.append("yes")
        elif decade - 2 <= year < decade or decade + 10 <= year < decade + 12:
            out.append("near")
        else:
            out.append("no")
    return out


@pytest.mark.parametrize("flip", [True, False])
def test_decisions_follow_the_rule(items, flip):
    store = ChunkStore.from_items(items)
    table = attach_context(build_task(items, queries=40, per_query=8, seed=2).train, store,
                           ContextConfig(noise=0.6, seed=1, flip=flip))
    facts = {r["item_id"]: r for r in items.to_pylist()}
    seen = set()
    for r in table.to_pylist():
        q = (r["want_genre"], r["avoid_genre"], r["decade"])
        other = facts[r["chunk_item"]]
        if r["chunk_item"] == r["item_id"]:
            want = "adopt"
        elif _verdicts(r["genres"], r["year"], *q) == _verdicts(other["genres"], other["year"], *q):
            want = "partial"
        else:
            want = "ignore"
        assert r["context_decision"] == want
        assert r["chunk"] == chunk_text(other["title"], other["year"], other["genres"])
        assert r["chunk_helpful"] == (want == "adopt")
        seen.add(want)
    assert seen == {"adopt", "partial", "ignore"} if not flip else {"adopt", "ignore"} <= seen
    injected = [r for r in table.to_pylist() if r["chunk_injected"]]
    flipped = sum(r["context_decision"] == "ignore" for r in injected) / len(injected)
    if flip:  # a deliberate chunk changes the verdict (an ignore) whenever one was found
        assert flipped == 1.0
    else:  # a random other movie: some agree with the item on every rule
        assert flipped < 1.0


def test_head_is_the_rating_count_at_the_quantile(items, task):
    counts = {r["item_id"]: r["ratings"] for r in items.to_pylist()}
    ordered = sorted(counts.values())
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    for t in (task.train, task.test):
        for r in t.to_pylist():
            assert r["head"] == (counts[r["item_id"]] >= median)
            assert r["negation"] == (r["avoid_genre"] is not None)
    store = ChunkStore.from_items(items)
    low = attach_context(task.train, store, ContextConfig(head_quantile=0.0))
    assert all(low["head"].to_pylist())  # every count is >= the minimum


def test_slices_partition_the_rows_and_their_metrics_are_the_subsets(task):
    t = task.test
    masks = slice_masks(t)
    n = t.num_rows
    assert set(masks) == {"helpful", "noisy", "head", "tail", "negation"}
    assert np.all(masks["helpful"] ^ masks["noisy"]) and np.all(masks["head"] ^ masks["tail"])
    assert masks["helpful"].sum() + masks["noisy"].sum() == n and masks["head"].sum() + masks["tail"].sum() == n
    assert masks["negation"].tolist() == [a is not None for a in t["avoid_genre"].to_pylist()]
    assert masks["helpful"].tolist() == [c == i for c, i in zip(t["chunk_item"].to_pylist(), t["item_id"].to_pylist())]
    true = t["label"].to_pylist()
    pred = [random.Random(i).choice([1, 2, 3, 4]) for i in range(n)]
    got = slice_metrics(true, pred, masks, classes=[1, 2, 3, 4])
    for name, mask in masks.items():
        sub_t = [x for x, m in zip(true, mask) if m]
        sub_p = [x for x, m in zip(pred, mask) if m]
        assert got[name]["accuracy"] == accuracy(sub_t, sub_p) and got[name]["items"] == len(sub_t)
        assert got[name]["macro_f1"] == macro_f1(sub_t, sub_p, [1, 2, 3, 4])


def test_no_context_prompts_never_show_genres_and_with_context_adds_the_chunk(task):
    for r in task.train.to_pylist() + task.test.to_pylist():
        no_ctx, with_ctx = context_prompts(r)
        assert [line.split(":")[0] for line in no_ctx.splitlines()] == ["query", "item", "year"]
        own = set(canonical_words(r["query"])) | set(canonical_words(r["title"]))
        for g in r["genres"]:  # no genre word the query or the title does not already hold
            assert set(canonical_words(g)) <= own or not set(canonical_words(g)) & set(canonical_words(no_ctx))
        assert with_ctx == f"{no_ctx}\ncontext: {r['chunk']}"
        assert prompt_of("no_context", r) == no_ctx and prompt_of("with_context", r) == with_ctx
        assert "genres:" in prompt_of("full", r)


def test_the_vocabularies_cover_the_chunks(items, task):
    from recis_relevance.formats import RESERVED_TOKENS, gold_completion, tokens

    vocab = set(task_vocabulary(task)) | set(RESERVED_TOKENS)
    for r in task.train.to_pylist() + task.test.to_pylist():
        assert set(canonical_words(context_prompts(r)[1])) <= vocab
        assert set(tokens(gold_completion("post_cot_context", r))) <= vocab
    small = items.slice(0, 60)
    cat = set(catalogue_vocabulary(small))
    for r in small.to_pylist():
        assert set(canonical_words(chunk_text(r["title"], r["year"], r["genres"]))) <= cat
    assert {"context", "is", "film", "."} <= cat
