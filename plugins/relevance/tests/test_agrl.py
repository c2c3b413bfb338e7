"""TaoSR-AGRL's rule-aware reward shaping and its options, checked against the formulas written
out here (not by calling the function under test) and against the vanilla reward (formats.reward:
1 for the gold grade, else 0), which the defining properties must tell apart."""
import itertools

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pytest
import torch

from recis.rl import guide_mask, replay_old_logprobs, worst_rollouts

from recis_relevance.agrl import AGRLConfig, guided_prompt, hint_text, shaped_reward, violated_rule
from recis_relevance.formats import parse, render, reward
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.rationale import VERDICTS, Step, rationale
from recis_relevance.task import build_task
from relevance_testing import synthetic_items


@pytest.fixture(scope="module")
def rows():
    """Task rows of every gold grade, with and without negation and decade steps."""
    task = build_task(synthetic_items(), queries=24, per_query=8, seed=0)
    out = task.train.to_pylist()
    assert {r["label"] for r in out} == {1, 2, 3, 4}
    assert any(r["avoid_genre"] for r in out) and any(r["decade"] is None for r in out)
    return out


def with_verdicts(row, verdicts):
    """The gold steps of a row with some verdicts changed (words kept)."""
    return tuple(Step(s.rule, s.words, verdicts.get(s.rule, s.verdict)) for s in rationale(row))


def R(text, row, cfg=None, fmt="post_cot"):
    return shaped_reward(parse(fmt, text), row, cfg or AGRLConfig()).reward


def cap_of(verdicts, hard=("genre", "negation")):
    """The grade cap written out: a failed genre / negation check caps at 1; decade (when hard)
    no -> 2, near -> 3."""
    cap = 4
    if "genre" in hard and verdicts.get("genre") == "no":
        cap = 1
    if "negation" in hard and verdicts.get("negation") == "no":
        cap = 1
    if "decade" in hard:
        cap = min(cap, {"no": 2, "near": 3}.get(verdicts.get("decade"), 4))
    return cap


def test_a_fully_correct_rule_compliant_output_gets_the_maximum(rows):
    """The gold completion scores w_y + w_s + w_f (mean reduction: the steps weigh w_s in all), and
    no other completion over every label and every verdict of every step scores more; with the
    sum reduction and unequal rule weights, the maximum is w_y + w_s * sum of the row's rule
    weights + w_f."""
    cfg = AGRLConfig(label_weight=1.0, step_weight=0.5, format_weight=0.1)
    summed = AGRLConfig(label_weight=2.0, step_weight=0.25, format_weight=0.3, step_reduce="sum",
                        rule_weights={"genre": 3.0, "decade": 0.5})
    for row in rows[:40]:
        gold = render("post_cot", row["label"], rationale(row))
        rules = [s.rule for s in rationale(row)]
        best = 1.0 + 0.5 + 0.1
        best_sum = 2.0 + 0.25 * sum({"genre": 3.0, "decade": 0.5}.get(r, 1.0) for r in rules) + 0.3
        assert R(gold, row, cfg) == pytest.approx(best)
        assert R(gold, row, summed) == pytest.approx(best_sum)
        for label in (1, 2, 3, 4):
            for verdicts in itertools.product(*(VERDICTS[r] for r in rules)):
                text = render("post_cot", label, with_verdicts(row, dict(zip(rules, verdicts))))
                assert R(text, row, cfg) <= best + 1e-9 and R(text, row, summed) <= best_sum + 1e-9
                if text != gold:
                    assert R(text, row, cfg) < best


def test_a_hard_rule_violation_gets_only_the_format_reward_whatever_the_label(rows):
    """A completion that states the wanted genre missing (or the excluded genre present) yet grades
    above 1 gets w_f, also when its label is the gold label; the vanilla reward pays it in full. The
    gold gate zeroes a label above the cap of the row's gold verdicts even when the steps hide it."""
    cfg = AGRLConfig(format_weight=0.1)
    gold4 = next(r for r in rows if r["label"] == 4 and r["avoid_genre"])
    for rule in ("genre", "negation"):
        steps = with_verdicts(gold4, {rule: "no"})
        for label in (2, 3, 4):
            text = render("post_cot", label, steps)
            assert R(text, gold4, cfg) == pytest.approx(0.1)
            assert R(text, gold4, AGRLConfig(gate="stated")) == pytest.approx(0.1)
            assert R(text, gold4, AGRLConfig(gate="off")) > 0.1 + 0.3  # the gate is what zeroes it
        assert reward(parse("post_cot", render("post_cot", 4, steps)), 4) == 1.0  # vanilla: full reward
        # grade 1 agrees with the stated failure: not gated
        assert R(render("post_cot", 1, steps), gold4, cfg) > 0.1
    gold1 = next(r for r in rows if r["label"] == 1 and r["want_genre"] not in r["genres"])
    hidden = with_verdicts(gold1, {"genre": "yes"})  # the steps claim the genre is there
    for label in (2, 3, 4):
        text = render("post_cot", label, hidden)
        assert R(text, gold1, AGRLConfig(gate="gold")) == pytest.approx(0.1)
        assert R(text, gold1, AGRLConfig(gate="either")) == pytest.approx(0.1)
        assert R(text, gold1, AGRLConfig(gate="stated")) > 0.1  # its own steps do not contradict it
    # decade as a hard rule: a stated "near" caps the grade at 3
    decade = next(r for r in rows if r["decade"] is not None and r["label"] == 4)
    near = with_verdicts(decade, {"decade": "near"})
    assert R(render("post_cot", 4, near), decade, AGRLConfig(hard_rules=["genre", "decade"])) == pytest.approx(0.1)
    assert R(render("post_cot", 4, near), decade, AGRLConfig()) > 0.1


def test_the_reward_is_non_increasing_in_tier_distance(rows):
    """With the gold steps, R(y_hat) written out is w_f + g * (w_y * (1 - |y_hat - y| / 3) + w_s)
    (graded) with g = 0 iff y_hat exceeds the cap of the gold verdicts; it never rises with the
    distance, and falls strictly with it while ungated. Vanilla (exact) rewards are flat past 0."""
    for mode in ("graded", "exact"):
        cfg = AGRLConfig(label_reward=mode)
        for y in (1, 2, 3, 4):
            row = next(r for r in rows if r["label"] == y and r["decade"] is not None)
            verdicts = {s.rule: s.verdict for s in rationale(row)}
            by_distance = {}
            for y_hat in (1, 2, 3, 4):
                got = R(render("post_cot", y_hat, rationale(row)), row, cfg)
                d = abs(y_hat - y)
                label = 1 - d / 3 if mode == "graded" else float(d == 0)
                g = 0 if y_hat > cap_of(verdicts) else 1
                assert got == pytest.approx(0.1 + g * (label + 0.5)), (mode, y, y_hat)
                by_distance.setdefault(d, []).append(got)
            worst = [max(v) for _, v in sorted(by_distance.items())]
            best = [min(v) for _, v in sorted(by_distance.items())]
            assert all(b >= w - 1e-9 for b, w in zip(best, worst[1:])), (mode, y, by_distance)
            if mode == "graded" and y == 4:  # no gate below the gold grade: strictly decreasing
                assert all(a > b for a, b in zip(best, worst[1:]))


def test_same_label_different_step_correctness_gives_different_rewards(rows):
    """Two completions with the gold label, one with every step right and one with a wrong
    (non-gating) step: vanilla GRPO's reward is 1 for both (zero advantage between them), RRS
    separates them by that step's weight w_s / K."""
    row = next(r for r in rows if r["label"] == 4 and r["decade"] is not None)
    K = len(rationale(row))
    right = render("post_cot", 4, rationale(row))
    wrong = render("post_cot", 4, with_verdicts(row, {"decade": "near"}))
    assert reward(parse("post_cot", right), 4) == reward(parse("post_cot", wrong), 4) == 1.0
    assert R(right, row) - R(wrong, row) == pytest.approx(0.5 / K)
    # step_check exact: a right verdict with wrong words is wrong too
    words = tuple(Step(s.rule, s.words[:-1] + ("1900",) if s.rule == "decade" else s.words, s.verdict)
                  for s in rationale(row))
    text = render("post_cot", 4, words)
    assert R(text, row) == R(right, row)
    assert R(text, row, AGRLConfig(step_check="exact")) == pytest.approx(R(right, row) - 0.5 / K)


def test_malformed_and_label_only_completions(rows):
    row = rows[0]
    assert R("junk", row) == 0.0 and R(f"<L{row['label']}> <L1>", row) == 0.0
    assert R(f"<L{row['label']}>", row, fmt="label_only") == pytest.approx(1.0 + 0.1)  # no steps to earn


def test_hints_name_the_gold_label_and_the_violated_rule(rows):
    row = next(r for r in rows if r["label"] == 2 and r["avoid_genre"])
    gold = {s.rule: s for s in rationale(row)}
    # no completion states a step: the rule that sets the gold grade (decade says no)
    assert violated_rule([parse("label_only", "<L4>")] * 4, row) == "decade"
    # most completions misstate the negation step
    bad = render("post_cot", 4, with_verdicts(row, {"negation": "no"}))
    assert violated_rule([parse("post_cot", bad)] * 3 + [parse("post_cot", render("post_cot", 2, rationale(row)))],
                         row) == "negation"
    text = hint_text(row, "decade")
    s = gold["decade"]
    assert text == "hint: <L2> <STEP> decade " + " ".join(s.words) + " " + s.verdict
    assert guided_prompt("query: x", row, "decade") == "query: x\n" + text
    with pytest.raises(ValueError, match="rule 'decade' is not checked on this row"):
        hint_text(next(r for r in rows if r["decade"] is None), "decade")


def test_guide_mask_fires_exactly_at_accuracy_at_most_tau():
    """fire <=> (number correct) / G <= tau, written with integer counts, over every group of G = 4
    and a grid of taus including the boundaries 0, 1/4, 1/2, 1."""
    groups = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))
    for tau in (0.0, 0.2, 0.25, 0.3, 0.5, 0.75, 0.99, 1.0):
        fired = guide_mask(groups, tau).tolist()
        assert fired == [int(g.sum()) <= tau * 4 + 1e-12 for g in groups], tau
    assert not guide_mask(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 0.2499).any()  # just above tau: never fires
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="tau must be a number in \\[0, 1\\]"):
            guide_mask(groups, bad)


def test_worst_rollouts_and_replay_old_logprobs():
    rewards = torch.tensor([[0.5, 0.1, 0.9, 0.1], [0.2, 0.2, 0.2, 0.2], [3.0, 1.0, 2.0, 0.0]])
    fire = torch.tensor([True, False, True])
    got = worst_rollouts(rewards, fire, 2).tolist()
    expected = [sorted(range(4), key=lambda g: (float(rewards[i, g]), g))[:2] for i in (0, 2)]
    assert got == expected == [[1, 3], [3, 1]]
    with pytest.raises(ValueError, match=r"m must be an integer in \[1, group_size = 4\], got 5"):
        worst_rollouts(rewards, fire, 5)
    u, b = torch.zeros(3, 2), torch.ones(3, 2)
    guided = torch.tensor([False, True, False])
    assert torch.equal(replay_old_logprobs(u, b, guided, "none"), u)
    assert replay_old_logprobs(u, b, guided, "behavior").tolist() == [[0, 0], [1, 1], [0, 0]]
    with pytest.raises(ValueError, match="correction must be one of"):
        replay_old_logprobs(u, b, guided, "guide")


@pytest.mark.parametrize("agrl,message", [
    ({"rule_weights": {"genre": 1.0, "brand": 2.0}},
     r"model.agrl.rule_weights: unknown rule\(s\) \['brand'\] \(known: \['genre', 'negation', 'decade'\]\)"),
    ({"hard_rules": ["genre", "category"]}, r"model.agrl.hard_rules: unknown rule\(s\) \['category'\]"),
    ({"tau_guide": 1.5}, r"model.agrl.tau_guide must be a finite number in \[0, 1\], got 1.5"),
    ({"tau_guide": -0.25}, r"model.agrl.tau_guide must be a finite number in \[0, 1\], got -0.25"),
    ({"gate": "soft"}, r"model.agrl.gate must be one of \('either', 'stated', 'gold', 'off'\), got 'soft'"),
    ({"label_reward": "linear"}, r"model.agrl.label_reward must be one of \('graded', 'exact'\)"),
    ({"correction": "is"}, r"model.agrl.correction must be one of \('none', 'behavior'\)"),
    ({"guided": 0}, r"model.agrl.guided must be an integer >= 1, got 0"),
    ({"rule_weights": {"genre": -1.0}}, r"model.agrl.rule_weights.genre must be a finite number >= 0, got -1.0"),
    ({"guide": "gold", "correction": "behavior"}, r"model.agrl.correction 'behavior' needs guide 'hint'"),
    ({"guide": "teacher"}, r"model.agrl.guide must be one of \('hint', 'gold'\)"),
    ({"temperature": 2.0}, r"unknown key\(s\) \['temperature'\] in model.agrl"),
])
def test_bad_agrl_options_name_the_option(agrl, message):
    with pytest.raises((TypeError, ValueError), match=message):
        JudgeConfig.from_options({"policy": "x", "objective": "agrl", "agrl": agrl})


def test_objective_agrl_needs_its_section_and_only_it_has_one():
    cfg = JudgeConfig.from_options({"policy": "x", "objective": "agrl", "agrl": {"tau_guide": 0.0}})
    assert cfg.agrl.tau_guide == 0.0 and cfg.agrl.hard_rules == ("genre", "negation")
    with pytest.raises(ValueError, match="model.agrl is required with objective agrl"):
        JudgeConfig.from_options({"policy": "x", "objective": "agrl"})
    with pytest.raises(ValueError, match="model.agrl is an option of objective agrl; model.objective is 'grpo'"):
        JudgeConfig.from_options({"policy": "x", "objective": "grpo", "agrl": {}})
