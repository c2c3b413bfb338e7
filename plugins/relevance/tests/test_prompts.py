"""Prompts and the task vocabulary: every token of every prompt and gold completion is covered,
the order is deterministic, and (once the core word tokenizer exists) nothing encodes to <unk>."""
from relevance_testing import synthetic_items  # (first: puts the plugin on the path)
import pytest

from recis_relevance.formats import FORMATS, RESERVED_TOKENS, gold_completion, parse, tokens
from recis_relevance.prompts import prompt, prompt_text, task_vocabulary, tokenizer_spec
from recis_relevance.rationale import canonical_words
from recis_relevance.task import build_task


@pytest.fixture(scope="module")
def task():
    return build_task(synthetic_items(), queries=40, per_query=8, seed=1)


def test_prompt_shows_query_title_year_and_genres():
    row = {"query": "1990s sci-fi but no horror", "title": "Twelve Monkeys (1995)", "year": 1995,
           "genres": ["Drama", "Sci-Fi"]}
    assert prompt(row) == "query: 1990s sci-fi but no horror\nitem: Twelve Monkeys\nyear: 1995\ngenres: Drama, Sci-Fi"
    # only a trailing "(year)" is cut from the title
    assert prompt_text("q", "1900 (Novecento) (1976)", 1976, ["Drama"]).split("\n")[1] == "item: 1900 (Novecento)"
    with pytest.raises(KeyError, match="'title'"):
        prompt({k: v for k, v in row.items() if k != "title"})
    with pytest.raises(TypeError, match="list of genre names"):
        prompt_text("q", "t", 1995, "Drama")


def test_vocabulary_covers_every_prompt_and_completion(task):
    vocab = task_vocabulary(task)
    assert vocab == sorted(set(vocab)) and not set(vocab) & set(RESERVED_TOKENS)
    known = set(vocab) | set(RESERVED_TOKENS)
    rows = task.train.to_pylist() + task.test.to_pylist()
    for r in rows:
        assert set(canonical_words(prompt(r))) <= known
        for fmt in FORMATS:
            assert set(tokens(gold_completion(fmt, r))) <= known
    # the test split's words are in it too, and the order does not depend on the row order
    assert task_vocabulary([task.test, task.train]) == vocab == task_vocabulary(rows[::-1])
    assert {"sci", "-", "fi", "children", "'", "s", "present", "missing", "near"} <= set(vocab)
    assert tokenizer_spec(task) == {"words": vocab, "reserved": list(RESERVED_TOKENS)}


def test_vocabulary_rejects_other_input():
    with pytest.raises(TypeError, match="RelevanceTask, tables or rows"):
        task_vocabulary(["query: comedy"])


def test_word_tokenizer_encodes_the_task_without_unknowns(task):
    lm_tokens = pytest.importorskip("recis.towers.lm_tokens")  # the core word tokenizer (issue 13, core)
    spec = tokenizer_spec(task)
    tok = lm_tokens.word_tokenizer(spec["words"], reserved=spec["reserved"])
    row = task.test.to_pylist()[0]
    for text in [prompt(row)] + [gold_completion(fmt, row) for fmt in FORMATS]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
    for fmt in FORMATS:
        ids = tok(gold_completion(fmt, row), add_special_tokens=False)["input_ids"]
        assert parse(fmt, tok.decode(ids)) == parse(fmt, gold_completion(fmt, row))
