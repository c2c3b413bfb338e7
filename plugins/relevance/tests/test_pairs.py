"""pass@N DPO pairs: counts of a hand-built set of groups computed by hand, no pair with
chosen = rejected, the chosen side always correct (or gold), seeded choice."""
from relevance_testing import WORDS  # noqa: F401 (first: puts the plugin on the path)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recis_relevance.formats import tokens
from recis_relevance.pairs import Group, PairConfig, Sample, build_pairs, group_from_completions

OK1 = "<L4> <STEP> genre comedy present yes"
OK2 = "<L4> <STEP> genre comedy present yes <STEP> decade 1990s year 1995 yes"
BAD1 = "<L1> <STEP> genre comedy missing no"
BAD2 = "<L2> <STEP> genre comedy present yes <STEP> decade 1990s year 1995 no"
BAD3 = "<L4> comedy"  # malformed: wrong
GOLD = OK2


def hand_groups():
    return [
        # mixed: distinct correct {OK1}, wrong {BAD1, BAD2}: 2 candidate pairs (a respaced OK1 is OK1)
        Group("a", GOLD, (Sample(OK1, True), Sample(BAD1, False), Sample(" " + OK1.upper() + " ", True),
                          Sample(BAD2, False))),
        # all wrong: distinct wrong {BAD1, BAD3}: 2 candidates (gold, wrong)
        Group("b", GOLD, (Sample(BAD1, False), Sample(BAD3, False), Sample(BAD1, False))),
        # all correct: none
        Group("c", GOLD, (Sample(OK1, True), Sample(OK2, True))),
        # mixed: 2 correct x 3 wrong = 6 candidates
        Group("d", GOLD, (Sample(OK1, True), Sample(OK2, True), Sample(BAD1, False), Sample(BAD2, False),
                          Sample(BAD3, False))),
        # all wrong, one sample: 1 candidate
        Group("e", GOLD, (Sample(BAD2, False),)),
        # all correct, one sample
        Group("f", GOLD, (Sample(OK2, True),)),
    ]


def check_pairs(groups, pairs):
    by_prompt = {g.prompt: g for g in groups}
    seen = set()
    for p in pairs:
        g = by_prompt[p.prompt]
        assert tokens(p.chosen) != tokens(p.rejected)
        assert any(s.text == p.rejected and not s.correct for s in g.samples)
        if p.kind == "mixed":
            assert any(s.text == p.chosen and s.correct for s in g.samples)
        else:
            assert p.kind == "all_wrong" and p.chosen == g.gold
        key = (p.prompt, tokens(p.chosen), tokens(p.rejected))
        assert key not in seen
        seen.add(key)


@pytest.mark.parametrize("max_pairs, n_pairs", [(1, 4), (2, 7), (100, 2 + 2 + 6 + 1)])
def test_counts_by_hand(max_pairs, n_pairs):
    groups = hand_groups()
    pairs, counts = build_pairs(groups, PairConfig(max_pairs=max_pairs, seed=0))
    assert counts == {"mixed": 2, "all_wrong": 2, "all_correct": 2, "pairs": n_pairs}
    assert len(pairs) == n_pairs
    # per group: min(max_pairs, candidates) with candidates a 2, b 2, d 6, e 1
    per = {q: sum(p.prompt == q for p in pairs) for q in "abcdef"}
    assert per == {q: min(max_pairs, c) for q, c in zip("abcdef", (2, 2, 0, 6, 1, 0))}
    check_pairs(groups, pairs)


def test_seeded_choice():
    groups = hand_groups()
    runs = {seed: build_pairs(groups, PairConfig(max_pairs=2, seed=seed))[0] for seed in range(6)}
    assert build_pairs(groups, PairConfig(max_pairs=2, seed=3))[0] == runs[3]
    assert len({tuple(r) for r in runs.values()}) > 1  # the seed does choose


def test_pairs_from_parsed_completions():
    # correctness from parsing against the gold grade: a malformed label-4 text is wrong
    g = group_from_completions("post_cot", "p", GOLD, 4, [OK1, BAD3, BAD1])
    assert [s.correct for s in g.samples] == [True, False, False]
    assert [s.grade for s in g.samples] == [4, None, 1]
    pairs, counts = build_pairs([g], PairConfig(max_pairs=5))
    assert counts == {"mixed": 1, "all_wrong": 0, "all_correct": 0, "pairs": 2}
    assert {(p.chosen, p.rejected) for p in pairs} == {(OK1, BAD3), (OK1, BAD1)}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="group 0 .*'p'.* has no samples"):
        build_pairs([Group("p", GOLD, ())])
    with pytest.raises(ValueError, match="marked both correct and wrong"):
        build_pairs([Group("p", GOLD, (Sample(OK1, True), Sample(OK1 + " ", False)))])
    with pytest.raises(ValueError, match="identical to the gold completion is marked wrong"):
        build_pairs([Group("p", GOLD, (Sample(GOLD, False),))])
    with pytest.raises(ValueError, match="pairs.max_pairs"):
        PairConfig(max_pairs=0)
    with pytest.raises(TypeError, match="Sample objects"):
        build_pairs([Group("p", GOLD, (OK1,))])


TEXTS = [OK1, OK2, BAD1, BAD2, BAD3, "<L3>", "<L2> <STEP> genre x yes"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, len(TEXTS) - 1), st.booleans()), min_size=1, max_size=6),
                max_size=8), st.integers(1, 4), st.integers(0, 50))
def test_counts_match_the_rules_on_random_groups(raw, max_pairs, seed):
    groups = []
    for i, samples in enumerate(raw):
        correct = {}
        for t, c in samples:  # one correctness per distinct text, as parsing gives
            correct.setdefault(t, c)
        groups.append(Group(f"q{i}", "gold <L4> <STEP> genre gold yes",
                            tuple(Sample(TEXTS[t], correct[t]) for t, _ in samples)))
    want = {"mixed": 0, "all_wrong": 0, "all_correct": 0, "pairs": 0}
    for samples in raw:
        correct = {}
        for t, c in samples:
            correct.setdefault(t, c)
        n_right = sum(correct.values())
        n_wrong = len(correct) - n_right
        kind = "all_correct" if n_wrong == 0 else "mixed" if n_right else "all_wrong"
        want[kind] += 1
        want["pairs"] += 0 if kind == "all_correct" else min(max_pairs, (n_right or 1) * n_wrong)
    pairs, counts = build_pairs(groups, PairConfig(max_pairs=max_pairs, seed=seed))
    assert counts == want
    check_pairs(groups, pairs)
