"""The retrieval test bed's completion format (post_cot_context: label, context decision token,
steps) and the judge's prompt option."""
from relevance_testing import synthetic_items  # (first: puts the plugin on the path)
from types import SimpleNamespace

import pytest
import torch

from recis_relevance.formats import (CONTEXT_FORMATS, DECISION_TOKENS, FORMATS, REASONS, RESERVED_TOKENS, Parsed,
                                     gold_completion, parse, render, score, tokens)
from recis_relevance.rationale import Step
from recis_relevance.retrieval import CONTEXT_COLUMNS, ContextConfig
from recis_relevance.task import build_task

S = (Step("genre", ("comedy", "present"), "yes"), Step("decade", ("1990s", "year", "1988"), "near"))
COT = "<STEP> genre comedy present yes <STEP> decade 1990s year 1988 near"


def test_reserved_tokens_and_render():
    assert {"<USE>", "<PARTIAL>", "<IGNORE>"} <= set(RESERVED_TOKENS) and len(set(RESERVED_TOKENS)) == 8
    assert RESERVED_TOKENS[:5] == ("<L1>", "<L2>", "<L3>", "<L4>", "<STEP>")  # the old ids stay
    assert CONTEXT_FORMATS == ("post_cot_context",) and "post_cot_context" not in FORMATS
    assert render("post_cot_context", 3, S, "adopt") == "<L3> <USE> " + COT
    assert render("post_cot_context", 1, S, "ignore") == "<L1> <IGNORE> " + COT
    with pytest.raises(ValueError, match="context decision must be one of"):
        render("post_cot_context", 3, S)
    with pytest.raises(ValueError, match="needs at least one step"):
        render("post_cot_context", 3, (), "adopt")


@pytest.mark.parametrize("decision", list(DECISION_TOKENS))
def test_round_trip_returns_the_decision(decision):
    text = render("post_cot_context", 2, S, decision)
    assert parse("post_cot_context", text) == Parsed(2, S, None, decision)
    assert parse("post_cot_context", " ".join(tokens(text)).lower()) == Parsed(2, S, None, decision)
    # the vanilla formats are unchanged: their completions carry no decision
    assert parse("post_cot", render("post_cot", 2, S)) == Parsed(2, S)


@pytest.mark.parametrize("fmt, text, reason", [
    ("post_cot_context", "<L3> " + COT, "no context decision"),
    ("post_cot_context", "<L3> <USE> <IGNORE> " + COT, "two context decisions"),
    ("post_cot_context", "<USE> <L3> " + COT, "label in the wrong place"),
    ("post_cot_context", "<L3> " + COT + " <USE>", "context decision in the wrong place"),
    ("post_cot_context", "<L3> <USE>", "no steps"),
    ("post_cot_context", "<L3> <USE> <L2> " + COT, "two labels"),
    ("post_cot_context", "<L3> <USE> " + COT + " and more", "a step that does not end in a verdict of its rule"),
    ("post_cot", "<L3> <USE> " + COT, "a context decision in a format without one"),
    ("label_only", "<L3> <PARTIAL>", "a context decision in a format without one"),
    ("pre_cot", COT + " <IGNORE> <L3>", "a context decision in a format without one"),
])
def test_malformed(fmt, text, reason):
    got = parse(fmt, text)
    assert got == Parsed(None, (), reason) and reason in REASONS


def test_gold_completion_and_score_with_the_rows_decision():
    task = build_task(synthetic_items().append_column("ratings", [[1] * synthetic_items().num_rows]), queries=12,
                      per_query=8, seed=0, context=ContextConfig(noise=0.5, seed=0))
    rows = task.train.to_pylist()
    seen = set()
    for r in rows:
        text = gold_completion("post_cot_context", r)
        got = parse("post_cot_context", text)
        assert got.grade == r["label"] and got.decision == r["context_decision"]
        assert text.split()[1] == DECISION_TOKENS[r["context_decision"]]
        # the decision sits between the label and the same steps the post-CoT rationale has
        assert text.split()[:1] + text.split()[2:] == gold_completion("post_cot", r).split()
        seen.add(r["context_decision"])
    assert {"adopt", "ignore"} <= seen
    sc = score("post_cot_context", [gold_completion("post_cot_context", r) for r in rows[:4]] + ["<L1> " + COT],
               [r["label"] for r in rows[:4]] + [1])
    assert sc.rewards.tolist() == [1.0] * 4 + [0.0] and sc.reasons == {"no context decision": 1}
    assert [p.decision for p in sc.parsed[:4]] == [r["context_decision"] for r in rows[:4]]
    with pytest.raises(KeyError, match="'context_decision'"):
        gold_completion("post_cot_context", {k: v for k, v in rows[0].items() if k != "context_decision"})


LLAMA = {"config": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}, "seed": 0}


def test_the_judge_reads_the_configured_prompt_and_needs_the_chunk_column():
    from recis_relevance.judge import ROW_COLUMNS, JudgeTower
    from recis_relevance.prompts import context_prompts, prompt, tokenizer_spec

    task = build_task(synthetic_items().append_column("ratings", [[1] * synthetic_items().num_rows]), queries=8,
                      per_query=8, seed=0, context=ContextConfig(noise=0.5))
    spec = tokenizer_spec(task)
    rows = task.train.slice(0, 4)
    batch = SimpleNamespace(extras={c: rows[c] for c in rows.column_names},
                            labels=torch.tensor(rows["label"].to_pylist(), dtype=torch.float32))
    features = SimpleNamespace(passthrough=ROW_COLUMNS + CONTEXT_COLUMNS)
    prompts = {}
    for kind in ("full", "no_context", "with_context"):
        tower = JudgeTower.from_features(features, policy=LLAMA, tokenizer=spec, prompt=kind,
                                         format="post_cot_context", max_prompt_length=96)
        got = tower.rows(batch)
        prompts[kind] = tower.prompts(got)
        assert got[0]["context_decision"] == rows["context_decision"][0].as_py()
        assert tower.gold(got)[0] == gold_completion("post_cot_context", rows.to_pylist()[0])
        tower.train()
        assert torch.isfinite(tower(batch).loss)
    r = rows.to_pylist()
    assert prompts["full"] == [prompt(x) for x in r]
    assert prompts["no_context"] == [context_prompts(x)[0] for x in r]
    assert prompts["with_context"] == [context_prompts(x)[1] for x in r]
    with pytest.raises(ValueError, match=r"the features lack \['chunk'\]"):
        JudgeTower.from_features(SimpleNamespace(passthrough=ROW_COLUMNS), policy=LLAMA, tokenizer=spec,
                                 prompt="with_context")
    with pytest.raises(ValueError, match=r"the features lack \['context_decision'\]"):
        JudgeTower.from_features(SimpleNamespace(passthrough=ROW_COLUMNS + ("chunk",)), policy=LLAMA, tokenizer=spec,
                                 prompt="with_context", format="post_cot_context")
