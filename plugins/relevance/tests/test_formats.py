"""Output formats: render/parse round trips, the malformed cases by hand, a regex reference of the
grammar on random token strings, parse never raising on any text, and rewards that count
malformed completions."""
from relevance_testing import WORDS  # noqa: F401 (first: puts the plugin on the path)
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recis_relevance.formats import (FORMATS, LABEL_TOKENS, REASONS, RESERVED_TOKENS, STEP, Parsed,
                                     gold_completion, parse, render, reward, score, tokens)
from recis_relevance.rationale import Step, steps

ROW = {"genres": ["Sci-Fi", "Horror"], "year": 1988, "want_genre": "Sci-Fi", "avoid_genre": "Drama",
       "decade": 1990, "label": 3}
S = steps(ROW["genres"], ROW["year"], ROW["want_genre"], ROW["avoid_genre"], ROW["decade"])
COT = "<STEP> genre sci - fi present yes <STEP> negation drama missing yes <STEP> decade 1990s year 1988 near"


def test_reserved_tokens_are_defined_once_and_distinct():
    assert LABEL_TOKENS == ("<L1>", "<L2>", "<L3>", "<L4>")
    assert RESERVED_TOKENS[:4] == LABEL_TOKENS and STEP in RESERVED_TOKENS
    assert len(set(RESERVED_TOKENS)) == len(RESERVED_TOKENS)


def test_render_by_hand():
    assert render("label_only", 3, S) == "<L3>"
    assert render("post_cot", 3, S) == "<L3> " + COT
    assert render("pre_cot", 3, S) == COT + " <L3>"
    assert gold_completion("post_cot", ROW) == "<L3> " + COT


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_also_through_a_word_tokenizer_decode(fmt):
    text = render(fmt, 3, S)
    want = Parsed(3, () if fmt == "label_only" else S)
    assert parse(fmt, text) == want
    # what a word tokenizer decode gives: tokens joined by spaces, any case, extra whitespace
    assert parse(fmt, " ".join(tokens(text))) == want
    assert parse(fmt, "\n " + text.upper().replace("<STEP>", "<step>") + "  ") == want
    assert parse(fmt, text.replace("sci - fi", "Sci-Fi")) == want


@pytest.mark.parametrize("fmt, text, reason", [
    ("label_only", "", "empty"),
    ("label_only", "  \n ", "empty"),
    ("label_only", "comedy", "no label"),
    ("label_only", "<L2> <L3>", "two labels"),
    ("label_only", "<L2> yes", "trailing junk"),
    ("label_only", "yes <L2>", "label in the wrong place"),
    ("label_only", "<L2> <eos>", "trailing junk"),
    ("post_cot", "<L3>", "no steps"),
    ("post_cot", COT, "no label"),
    ("post_cot", COT + " <L3>", "label in the wrong place"),
    ("post_cot", "<L3> " + COT + " <L4>", "two labels"),
    ("post_cot", "<L3> " + COT + " and more", "a step that does not end in a verdict of its rule"),
    ("post_cot", "<L3> " + COT + " <eos>", "a step that does not end in a verdict of its rule"),
    ("post_cot", "<L3> so " + COT, "text before the first step"),
    ("post_cot", "<L3> <STEP> genre comedy present yes <STEP>", "a step without a rule and a verdict"),
    ("post_cot", "<L3> <STEP> yes", "a step without a rule and a verdict"),
    ("post_cot", "<L3> <STEP> brand acme yes", "unknown rule"),
    ("post_cot", "<L3> <STEP> genre comedy present near", "a step that does not end in a verdict of its rule"),
    ("post_cot", "<L3> <STEP> genre comedy yes <STEP> genre drama no", "a rule twice"),
    ("pre_cot", "<L3> " + COT, "label in the wrong place"),
    ("pre_cot", COT + " <L3> ok", "trailing junk"),
    ("pre_cot", "<STEP> genre <L3> comedy yes", "label in the wrong place"),
    ("pre_cot", "<L3>", "no steps"),
    ("pre_cot", "because " + COT + " <L3>", "text before the first step"),
])
def test_malformed_by_hand(fmt, text, reason):
    got = parse(fmt, text)
    assert got == Parsed(None, (), reason) and got.malformed
    assert reward(got, 3) == 0.0 and reason in REASONS


def test_well_formed_edge_cases():
    # the steps' order is free, words may be empty, the label token's case is free
    assert parse("post_cot", "<l2> <STEP> decade no <STEP> genre yes") == \
        Parsed(2, (Step("decade", (), "no"), Step("genre", (), "yes")))
    assert parse("pre_cot", "<STEP> negation , no <L1>") == Parsed(1, (Step("negation", (",",), "no"),))


def test_rewards_and_malformed_counts():
    texts = ["<L3>", "<L2>", "<L3> x", "", "<L4>"]
    got = score("label_only", texts, [3, 3, 3, 3, 4])
    assert torch.equal(got.rewards, torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))
    assert got.malformed == 2 and got.reasons == {"empty": 1, "trailing junk": 1}
    assert got.stats == {"reward": pytest.approx(0.4), "malformed_fraction": pytest.approx(0.4)}
    # a malformed completion never earns a reward, even when it names the gold label first
    assert reward(parse("post_cot", "<L3> <STEP> genre comedy"), 3) == 0.0


def test_bad_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="unknown output format 'cot'"):
        parse("cot", "<L1>")
    with pytest.raises(ValueError, match="unknown output format 'cot'"):
        render("cot", 1, S)
    with pytest.raises(ValueError, match="grade must be one of"):
        render("post_cot", 5, S)
    for gold in (0, True, 2.0, "2"):
        with pytest.raises(ValueError, match="grade must be one of"):
            reward(parse("label_only", "<L2>"), gold)
    assert reward(parse("label_only", "<L2>"), np.int8(2)) == 1.0  # a label column's integer type
    with pytest.raises(ValueError, match="needs at least one step"):
        render("pre_cot", 2, ())
    with pytest.raises(ValueError, match="2 gold grades"):
        score("label_only", ["<L1>"], [1, 2])
    with pytest.raises(KeyError, match="'label'"):
        gold_completion("post_cot", {k: v for k, v in ROW.items() if k != "label"})
    assert parse("label_only", None) == Parsed(None, (), "not text")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FORMATS), st.text())
def test_parse_never_raises_on_any_text(fmt, text):
    got = parse(fmt, text)
    assert (got.grade is None) == got.malformed
    assert got.reason is None or got.reason in REASONS


# A reference of the grammar as one regular expression over space-joined tokens (independent of the
# parser's loop): the rule and its verdicts, with free words between.
_WORD = r"(?!(?:<L[1-4]>|<STEP>|<USE>|<PARTIAL>|<IGNORE>)(?: |$))\S+"  # any token but a reserved one
_STEP_RE = (r"<STEP> (?:genre(?: {w})* (?:yes|no)|negation(?: {w})* (?:yes|no)|decade(?: {w})* (?:yes|near|no))"
            .format(w=_WORD))
_LABEL = r"<L[1-4]>"
REFERENCE = {"label_only": re.compile(f"{_LABEL}"),
             "post_cot": re.compile(f"{_LABEL}(?: {_STEP_RE})+"),
             "pre_cot": re.compile(f"(?:{_STEP_RE} )+{_LABEL}")}
ALPHABET = list(RESERVED_TOKENS) + ["genre", "negation", "decade", "yes", "no", "near", "comedy", "1990s", ",", "x", "<", ">"]


def reference_grade(fmt, toks):
    joined = " ".join(toks)
    if not REFERENCE[fmt].fullmatch(joined):
        return None
    rules = [toks[i + 1] for i, t in enumerate(toks) if t == STEP]
    if len(rules) != len(set(rules)):
        return None
    return int(re.search(_LABEL, joined).group()[2])


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(FORMATS), st.data())
def test_parse_matches_a_regex_reference_on_random_token_strings(fmt, data):
    # mostly near-valid strings: a rendered completion with random edits, or random tokens
    if data.draw(st.booleans()):
        toks = list(tokens(render(fmt, data.draw(st.integers(1, 4)), S)))
        for _ in range(data.draw(st.integers(0, 2))):
            i = data.draw(st.integers(0, len(toks)))
            op = data.draw(st.sampled_from(["insert", "delete", "replace", "repeat a step"]))
            starts = [j for j, x in enumerate(toks) if x == STEP]
            if op == "repeat a step" and starts:
                j = data.draw(st.sampled_from(starts))
                end = next((e for e in starts if e > j), len(toks) if fmt == "post_cot" else len(toks) - 1)
                toks[end:end] = toks[j:end]
            elif op == "insert":
                toks.insert(i, data.draw(st.sampled_from(ALPHABET)))
            elif toks and i < len(toks):
                if op == "delete":
                    del toks[i]
                else:
                    toks[i] = data.draw(st.sampled_from(ALPHABET))
    else:
        toks = data.draw(st.lists(st.sampled_from(ALPHABET), max_size=12))
    got = parse(fmt, " ".join(toks))
    assert got.grade == reference_grade(fmt, toks)
    if not got.malformed and fmt != "label_only":
        assert tokens(render(fmt, got.grade, got.steps)) == tuple(toks)
