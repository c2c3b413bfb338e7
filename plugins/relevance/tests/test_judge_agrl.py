"""The AGRL stage of the generative judge (objective agrl) on a tiny Llama: adaptive guided replay
against vanilla GRPO on a group where every rollout is wrong, the replay's trigger, hint-free
deployment prompts, and the stage as a job that resumes bit-identically.

The core tests train a "hint follower" first: a few steps of supervised training on one row teach
the tiny policy to write a wrong label under the plain prompt and the gold label under the hinted
prompt (what a pretrained LLM does with a hint in its context); that is the situation AGR is for.
"""
import copy
import os
import shutil
from types import SimpleNamespace

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pytest
import torch

from recis.run import Job
from recis.testing import KillAt, Killed, StepLogs
from recis.towers.lm_tokens import encode_prompts

import recis_relevance.judge as judge_module
from recis_relevance.agrl import HINT_FIELD, guided_prompt, violated_rule
from recis_relevance.formats import parse
from recis_relevance.judge import ROW_COLUMNS, JudgeTower
from recis_relevance.judge_agrl import AGRLJudge
from recis_relevance.prompts import prompt, tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import assert_same_job_state, synthetic_items, tiny_llama

import test_judge_jobs as jobs

LLAMA = tiny_llama()
FEATURES = SimpleNamespace(passthrough=ROW_COLUMNS)


@pytest.fixture(scope="module")
def task():
    return build_task(synthetic_items(), queries=16, per_query=8, seed=0)


@pytest.fixture(scope="module")
def spec(task):
    return tokenizer_spec(task)


def batch_of(rows):
    return SimpleNamespace(extras={c: [r[c] for r in rows] for c in ROW_COLUMNS},
                           labels=torch.tensor([float(r["label"]) for r in rows]))


def tower_of(spec, objective="agrl", **options):
    opts = {"policy": LLAMA, "tokenizer": spec, "objective": objective, "format": "label_only",
            "max_completion_length": 2, "sampling": {"group_size": 4, "max_new_tokens": 2, "seed": 3},
            "grpo": {"beta": 0.0}, **options}
    if objective == "agrl":
        opts.setdefault("agrl", {"tau_guide": 0.0, "guided": 2})
    torch.manual_seed(0)
    return JudgeTower.from_features(FEATURES, **opts)


def hinted(row):
    """The guided prompt AGR builds for a group of label-only completions of the row."""
    return guided_prompt(prompt(row), row, violated_rule([parse("label_only", "<L1>")], row))


def teach(tower, pairs, steps=30, until=None, max_steps=600):
    """Supervised steps on (prompt, completion) pairs: `steps` of them, then (with `until`, a
    predicate of the tower) more, `steps` at a time, until it holds or `max_steps` were taken:
    how many a tiny model needs depends on its initialisation."""
    opt = torch.optim.Adam(tower.parameters(), lr=3e-2)
    prompts, completions = zip(*pairs)
    enc = tower.encode(list(prompts), list(completions))
    done = 0
    while True:
        tower.train()
        for _ in range(steps):
            logp = judge_module.token_logprobs(tower.model, enc["input_ids"], enc["attention_mask"],
                                               enc["completion_mask"])
            (-logp.sum() / enc["completion_mask"].sum()).backward()
            opt.step()
            opt.zero_grad()
        done += steps
        if until is None or done >= max_steps:
            break
        tower.eval()
        with torch.no_grad():
            if until(tower):
                break
    return copy.deepcopy(tower.state_dict())


@pytest.fixture(scope="module")
def follower(task, spec):
    """(row A (the model is right on it), row B (wrong without a hint, right with it), weights)."""
    rows = task.train.to_pylist()
    b = next(r for r in rows if r["label"] == 4)
    a = next(r for r in rows if r["label"] == 2)
    tower = tower_of(spec)

    pairs = [(prompt(b), "<L1>"), (hinted(b), "<L4>"), (prompt(a), "<L2>")]
    enc = tower.encode([x for x, _ in pairs], [y for _, y in pairs])

    def taught(t):  # each label, and the whole completion (label, then end of sequence)
        p = t.label_probabilities([x for x, _ in pairs])
        seq = judge_module.token_logprobs(t.model, enc["input_ids"], enc["attention_mask"],
                                          enc["completion_mask"]).mul(enc["completion_mask"]).sum(1).exp()
        return float(p[0, 0]) > 0.97 and float(p[1, 3]) > 0.97 and float(p[2, 1]) > 0.97 and bool((seq > 0.95).all())

    weights = teach(tower, pairs, until=taught)
    tower.eval()
    assert taught(tower)
    return a, b, weights


def rollout(tower, rows):
    tower.eval()
    with torch.no_grad():
        phase = tower.rollout(batch_of(rows), lambda: None)
    tower.train()
    return phase


def loaded(tower, weights):
    tower.load_state_dict(weights)
    tower.on_weights_loaded()
    return tower


def grad_norm(tower, phase):
    tower.zero_grad()
    for mb in phase.minibatches:
        tower(mb).loss.backward()
    return sum(float(p.grad.abs().sum()) for p in tower.parameters() if p.grad is not None)


def p_gold(tower, row):
    tower.eval()
    with torch.no_grad():
        return float(tower.label_probabilities([prompt(row)])[0, row["label"] - 1])


@pytest.mark.parametrize("guide,correction", [("hint", "none"), ("hint", "behavior"), ("gold", "none")])
def test_all_wrong_group_vanilla_grpo_has_zero_gradient_agr_raises_p_gold(spec, follower, guide, correction):
    """Every rollout of row B is wrong: vanilla GRPO (and AGRL without replay) have equal rewards,
    zero advantages and a policy gradient of exactly 0. AGR replaces the 2 worst rollouts with
    guided ones (right), trained under the plain prompt: the gradient is nonzero and one SGD step
    raises p(gold | plain prompt). The sequences trained on carry no hint."""
    _, b, weights = follower
    vanilla = loaded(tower_of(spec, objective="grpo"), weights)
    phase = rollout(vanilla, [b])
    assert phase.stats["reward_mean"] == 0.0  # every rollout wrong
    assert all(bool((mb.advantages == 0).all()) for mb in phase.minibatches)
    assert grad_norm(vanilla, phase) == 0.0
    off = loaded(tower_of(spec, agrl={"replay": False}), weights)
    assert grad_norm(off, rollout(off, [b])) == 0.0  # shaped rewards alone: all rollouts alike

    agr = loaded(tower_of(spec, agrl={"tau_guide": 0.0, "guided": 2, "guide": guide, "correction": correction}), weights)
    phase = rollout(agr, [b])
    s = phase.stats
    assert s["accuracy"] == 0.0 and s["guided_groups"] == 1.0 and s["guided_accuracy"] == 1.0
    assert s["replay_accuracy"] == 0.5  # 2 of 4 replaced by right ones
    mb = phase.minibatches[0]
    plain = encode_prompts(agr.tokenizer, [prompt(b)], agr.cfg.max_prompt_length)["input_ids"]
    P = plain.shape[1]
    assert mb.input_ids.shape[1] == P + 2  # label-only completions: the label and eos
    assert torch.equal(mb.input_ids[:, :P], plain.expand(4, -1))  # every row, guided ones too, after the plain prompt
    completions = [agr.decode(mb.input_ids[i:i + 1, -2:], mb.completion_mask[i:i + 1, -2:])[0] for i in range(4)]
    assert sorted(completions) == ["<L1>", "<L1>", "<L4>", "<L4>"]
    assert bool((mb.advantages != 0).all())
    before = p_gold(agr, b)
    assert before < 0.03
    opt = torch.optim.SGD(agr.parameters(), lr=0.5)
    agr.train()
    out = agr(mb)
    out.loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in agr.parameters() if p.grad is not None) > 0
    # the guided label tokens' old log-probs: under the plain prompt (ratio 1 at this first step), or
    # under the hinted prompt that generated them (ratio pi(o | x) / pi_old(o | x + hint) << 1)
    label_at = mb.input_ids.shape[1] - 2
    guided_rows = [i for i, c in enumerate(completions) if c == "<L4>"]
    old = mb.old_logprobs[guided_rows, label_at].exp()
    if correction == "none":
        assert out.stats["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert bool((old < 0.03).all())
        opt.step()
        assert p_gold(agr, b) > before
        return
    # behavior: the old log-prob of a guided label token is its log-prob under the hinted prompt,
    # computed here through the plain forward of (hinted prompt, "<L4>")
    enc = agr.encode([hinted(b)], ["<L4>"])
    with torch.no_grad():
        agr.eval()
        under_hint = judge_module.token_logprobs(agr.model, enc["input_ids"], enc["attention_mask"],
                                                 enc["completion_mask"])
        agr.train()
    first = int(enc["completion_mask"][0].nonzero()[0])
    assert torch.allclose(old, under_hint[0, first].exp().expand_as(old), rtol=1e-4)
    assert bool((old > 0.97).all()) and out.stats["ratio_mean"] < 0.9
    # No claim that this step raises p(gold | plain prompt): the guided label tokens are weighted by
    # pi(gold | x) / pi(gold | x + hint), about 1e-6 for this hint follower, so the sign of the step's
    # effect on p(gold) is left to the other tokens and to the initialisation (the correction
    # trades AGR's push for unbiasedness; docs/rl.md, TaoSR-AGRL).


def test_agr_never_fires_above_tau(spec, follower):
    """Row A's group is all right (accuracy 1), row B's all wrong (accuracy 0): at tau 0.0, 0.5 and
    0.99 only B's group gets guided rollouts and A's rows are exactly those a rollout without replay
    samples (the same generator state); at tau 1.0 both fire."""
    a, b, weights = follower
    base = loaded(tower_of(spec, agrl={"replay": False}), weights)
    plain = rollout(base, [a, b]).minibatches[0]
    for tau in (0.0, 0.5, 0.99):
        agr = loaded(tower_of(spec, agrl={"tau_guide": tau, "guided": 2}), weights)
        phase = rollout(agr, [a, b])
        assert phase.stats["guided_groups"] == 1.0 and phase.stats["accuracy"] == 0.5
        mb = phase.minibatches[0]
        assert torch.equal(mb.input_ids[:4], plain.input_ids[:4])  # group A untouched
        assert not torch.equal(mb.input_ids[4:], plain.input_ids[4:])  # group B spliced
    agr = loaded(tower_of(spec, agrl={"tau_guide": 1.0, "guided": 1}), weights)
    assert rollout(agr, [a, b]).stats["guided_groups"] == 2.0


def test_deployment_prompts_never_carry_hints(spec, follower, monkeypatch):
    """Evaluation (label-only and full decoding) encodes the plain prompts only, and the AGRL judge
    gives the same label probabilities as the SFT judge with the same weights."""
    a, b, weights = follower
    seen = []
    real = judge_module.encode_prompts

    def spy(tokenizer, prompts, max_length):
        seen.extend(prompts)
        return real(tokenizer, prompts, max_length)

    monkeypatch.setattr(judge_module, "encode_prompts", spy)
    agr = loaded(tower_of(spec, agrl={"tau_guide": 1.0, "guided": 2}), weights)
    sft = loaded(tower_of(spec, objective="sft"), weights)
    agr.eval(), sft.eval()
    assert agr.prompts([a, b]) == [prompt(a), prompt(b)]
    with torch.no_grad():
        out = agr(batch_of([a, b]))
        agr.cfg.eval_decoding = "full"
        agr(batch_of([a, b]))
        reference = sft(batch_of([a, b]))
    assert seen and all(HINT_FIELD not in p and "<L" not in p for p in seen)
    assert torch.equal(out.outputs["grade_probs"], reference.outputs["grade_probs"])
    assert HINT_FIELD in hinted(b)  # the spy would see one


def test_guided_rollouts_cannot_outnumber_the_group(spec):
    with pytest.raises(ValueError, match=r"model.agrl.guided \(5\) exceeds model.sampling.group_size \(4\)"):
        tower_of(spec, agrl={"guided": 5})


def test_the_agrl_stage_resumes_bit_identical(tmp_path_factory):
    """SFT -> AGRL (guided replay firing, mu = 2 inner steps over 2 minibatches, k3 KL, a checkpoint
    every 2 steps) killed at step 6 and resumed by a new Job ends where the uninterrupted job ends:
    weights, optimizer state, the sampling generator (which also draws the guided rollouts) and the
    reference."""
    d = tmp_path_factory.mktemp("agrl_jobs")
    task = build_task(synthetic_items(), queries=16, per_query=8, seed=0)
    import pyarrow.parquet as pq

    pq.write_table(task.train, d / "train.parquet")
    pq.write_table(task.test.slice(0, 24), d / "eval.parquet")
    workdir = (d, tokenizer_spec(task))
    sft = Job(jobs.job(workdir, "sft"))
    sft.train()
    options = {"objective": "agrl", "grpo": {"beta": 0.05, "inner_steps": 2}, "minibatch_size": 16,
               "agrl": {"tau_guide": 0.25, "guided": 2}}

    def stage(name):
        return Job(jobs.job(workdir, name, steps=10, lr=1e-3, init_from=str(d / "sft"), **options))

    full = stage("agrl_full")
    assert isinstance(full.model, AGRLJudge)
    rec = StepLogs()
    full.trainer.hooks.append(rec)
    full.train()
    assert full.trainer.step == 10
    rollouts = [log for log in rec.logs if "guided_groups" in log]
    assert rollouts and sum(log["guided_groups"] for log in rollouts) > 0  # the replay fired
    killed = stage("agrl_cut")
    killed.trainer.hooks.append(KillAt(6))
    with pytest.raises(Killed):
        killed.train()
    resumed = stage("agrl_cut")
    resumed.train()
    assert resumed.trainer.step == 10
    assert_same_job_state(full, resumed)
    shutil.rmtree(d)


def test_the_agrl_example_yamls_chain_and_their_options_check():
    """sft.yaml -> agrl.yaml: the AGRL stage starts from the SFT checkpoint directory, both read the
    task files run.py writes, each model section is a valid judge config of its objective, and the
    pipeline function lists them in order."""
    from recis.run import RunConfig
    from recis_relevance.agrl_stages import STAGES, stage_yamls
    from recis_relevance.judge_config import JudgeConfig

    here = os.path.join(jobs.ROOT, "examples", "agrl_movielens")
    assert [name for name, _ in stage_yamls(here)] == list(STAGES) == ["sft", "agrl"]
    sft, agrl = (RunConfig.from_yaml(path) for _, path in stage_yamls(here))
    assert [JudgeConfig.from_options(c.model.args).objective for c in (sft, agrl)] == ["sft", "agrl"]
    assert agrl.checkpoint.init_from == sft.checkpoint.dir == "runs/agrl_movielens/sft/checkpoints"
    for c in (sft, agrl):
        assert os.path.normpath(c.data.train) == os.path.join(jobs.ROOT, "runs", "agrl_movielens", "data",
                                                             "train.parquet")
    cfg = JudgeConfig.from_options(agrl.model.args).agrl
    assert cfg.replay and 0 <= cfg.tau_guide <= 1 and cfg.guided <= 4
    with pytest.raises(ValueError, match=r"unknown AGRL stage\(s\) \['grpo'\]"):
        stage_yamls(here, ("sft", "grpo"))


@pytest.mark.slow
def test_the_agrl_example_runs_small(tmp_path):
    """examples/agrl_movielens/run.py --small: SFT then AGRL (from the SFT checkpoint) on the
    MovieLens catalogue, the replay fires, and the deployed judge reports test metrics."""
    import json
    import runpy

    from recis.checkpoint import CheckpointManager

    example = runpy.run_path(os.path.join(jobs.ROOT, "examples", "agrl_movielens", "run.py"))
    out = tmp_path / "run"
    result = example["main"](["--small", "--out", str(out)])
    assert json.loads((out / "agrl_result.json").read_text()) == json.loads(json.dumps(result))
    for stage in ("sft", "agrl"):
        assert {"accuracy", "macro_f1", "step"} <= set(result[stage]), stage
        assert CheckpointManager(out / stage / "checkpoints").latest() is not None, stage
    assert result["replay"]["rollouts"] > 0 and result["replay"]["guided_groups"] > 0
    label = result["test"]["label"]
    assert label["items"] == result["task"]["test_rows"] and 0 <= label["macro_f1"] <= 1
