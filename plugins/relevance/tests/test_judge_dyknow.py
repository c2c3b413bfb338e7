"""The DyKnow-RAG judge (objective dyknow) on a tiny Llama (no download): the rollout's two groups
and the re-scored no-context completions, the separation test against vanilla dual-group GRPO,
gating from the rows, and the options it names. Rows of the retrieval test bed are built here
(a chunk and a context decision per row)."""
import math
from types import SimpleNamespace

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pyarrow as pa
import pytest
import torch

from recis.rl import GRPOConfig, grpo_loss
from recis.towers.generation import token_logprobs

from recis_relevance.dyknow import DyKnowConfig
from recis_relevance.judge import ROW_COLUMNS, JudgeTower
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.judge_dyknow import DualGroupMinibatch, DyKnowJudge
from recis_relevance.prompts import context_prompts, tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import synthetic_items, tiny_llama

LLAMA = tiny_llama(positions=160)
CONTEXT = ("chunk", "context_decision")
FEATURES = SimpleNamespace(passthrough=ROW_COLUMNS + CONTEXT)


def with_context(table: pa.Table) -> pa.Table:
    """Task rows with a retrieved chunk each: the item's own description on even rows (adopt),
    another row's item on odd rows (ignore)."""
    rows = table.to_pylist()
    out = []
    for i, r in enumerate(rows):
        src = r if i % 2 == 0 else rows[(i + 5) % len(rows)]
        chunk = f"{src['title']} is a {' '.join(src['genres'])} film from {src['year']}"
        out.append({**r, "chunk": chunk, "context_decision": "adopt" if i % 2 == 0 else "ignore"})
    return pa.Table.from_pylist(out)


@pytest.fixture(scope="module")
def task():
    t = build_task(synthetic_items(), queries=16, per_query=8, seed=0)
    return SimpleNamespace(train=with_context(t.train), test=with_context(t.test))


@pytest.fixture(scope="module")
def spec(task):
    return tokenizer_spec([task.train, task.test])


def batch_of(table, start=0, n=8):
    rows = table.slice(start, n)
    return SimpleNamespace(extras={c: rows[c] for c in rows.column_names},
                           labels=torch.tensor(rows["label"].to_pylist(), dtype=torch.float32))


def judge(spec, cls=None, **options):
    options = {"policy": LLAMA, "tokenizer": spec, "objective": "dyknow", "dyknow": {}, "format": "label_only",
               "max_completion_length": 4, "sampling": {"group_size": 4, "max_new_tokens": 4, "seed": 1}, **options}
    torch.manual_seed(0)
    if cls is None:
        return JudgeTower.from_features(FEATURES, **options)
    return cls(JudgeConfig.from_options(options))


def rollout(tower, batch, refill=lambda: None):
    tower.eval()
    with torch.no_grad():
        phase = tower.rollout(batch, refill)
    tower.train()
    return phase


class Scripted(DyKnowJudge):
    """Returns from a script (no-context group, with-context group: [Q, n] each) instead of parsing."""

    script = None

    def _returns(self, rollout, rows):
        _, _, bad = super()._returns(rollout, rows)
        self.calls = getattr(self, "calls", 0) + 1
        which = (self.calls - 1) % 2  # the rollout scores the no-context group first
        r = torch.tensor(self.script[which], dtype=torch.float32).expand(len(rows), rollout.group_size).clone()
        return r, r.clone(), bad


def test_objective_and_options():
    assert JudgeConfig.from_options({"policy": LLAMA, "objective": "dyknow", "dyknow": {}}).dyknow == DyKnowConfig()
    with pytest.raises(ValueError, match=r"model\.dyknow is required with objective dyknow"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "dyknow"})
    with pytest.raises(ValueError, match=r"model\.dyknow is an option of objective dyknow; model\.objective is 'grpo'"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "grpo", "dyknow": {}})
    with pytest.raises(ValueError, match=r"model\.dyknow\.gap must be one of \('query', 'batch'\), got 'epoch'"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "dyknow", "dyknow": {"gap": "epoch"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beta'\] in model\.dyknow"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "dyknow", "dyknow": {"beta": 2.0}})
    with pytest.raises(ValueError, match=r"the features lack \['chunk'\]"):  # dyknow reads the chunk
        JudgeTower.from_features(SimpleNamespace(passthrough=ROW_COLUMNS), policy=LLAMA, objective="dyknow", dyknow={})
    with pytest.raises(ValueError, match=r"the features lack \['context_decision'\]"):  # human gating reads it
        JudgeTower.from_features(SimpleNamespace(passthrough=ROW_COLUMNS + ("chunk",)), policy=LLAMA,
                                 objective="dyknow", dyknow={"gating": "human"})
    cfg = JudgeConfig.from_options({"policy": LLAMA, "objective": "dyknow", "dyknow": {"gating": "human"},
                                    "dynamic_sampling": {"low": 0.01, "high": 0.9}})
    assert cfg.dynamic_sampling.high == 0.9 and cfg.dyknow.gating == "human"


def test_rollout_samples_both_prompts_and_rescores_the_no_context_completions_under_p_prime(task, spec):
    tower = judge(spec)
    assert isinstance(tower, DyKnowJudge)
    batch = batch_of(task.train, 0, 3)
    phase = rollout(tower, batch)
    rows = tower.rows(batch)
    (mb,) = phase.minibatches
    assert isinstance(mb, DualGroupMinibatch) and len(mb) == 3 * 4
    n = 4
    for i in range(3 * n):
        no_ctx, with_ctx = context_prompts(rows[i // n])
        p_ids = mb.no_context.input_ids[i][mb.no_context.attention_mask[i].bool() &
                                           ~mb.no_context.completion_mask[i].bool()]
        re_ids = mb.rescored_ids[i][mb.rescored_attention[i].bool() & ~mb.rescored_mask[i].bool()]
        w_ids = mb.with_context.input_ids[i][mb.with_context.attention_mask[i].bool() &
                                             ~mb.with_context.completion_mask[i].bool()]
        enc = lambda text: tower.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert p_ids.tolist()[-len(enc(no_ctx)):] == enc(no_ctx)
        assert re_ids.tolist() == w_ids.tolist() and len(re_ids) > len(p_ids)  # p' = p plus the context line
        # the re-scored completion is the no-context one
        assert mb.rescored_ids[i][mb.rescored_mask[i].bool()].tolist() == \
            mb.no_context.input_ids[i][mb.no_context.completion_mask[i].bool()].tolist()
    # at the rollout the old log-probs are the current policy's (ratio 1 at the first inner step)
    logp = token_logprobs(tower.model, mb.no_context.input_ids, mb.no_context.attention_mask,
                          mb.no_context.completion_mask)
    assert torch.allclose(logp, mb.no_context.old_logprobs, atol=1e-5)
    assert {"acc_no_context", "acc_with_context", "gap_mean", "beta_mean", "kept_groups"} <= set(phase.stats)


def _grads(tower, mb):
    tower.zero_grad()
    out = tower(mb)
    out.loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in tower.named_parameters()}


def _prob_of_o0_under_p_prime(tower, mb):
    with torch.no_grad():
        logp = token_logprobs(tower.model, mb.rescored_ids, mb.rescored_attention, mb.rescored_mask)
    m = mb.rescored_mask.bool()
    return logp.exp()[m]


def test_separation_vanilla_dual_group_grpo_has_zero_gradient_dyknow_lowers_pi_of_o0_under_p_prime(task, spec):
    """Every no-context rollout wrong (R0 = 0), every with-context rollout right (R1 = 1): both
    groups are constant, so vanilla dual-group GRPO (the inter-group term off) has a policy
    gradient of exactly zero; DyKnow's At = -1 is scaled by beta(gap 1) = 4 sigmoid(4) and one SGD
    step lowers pi(o0 | p') on the re-scored tokens."""
    Scripted.script = ([0.0], [1.0])
    batch = batch_of(task.train, 0, 4)
    vanilla = judge(spec, Scripted, dyknow={"inter_group": "off"})
    (mb,) = rollout(vanilla, batch).minibatches
    assert torch.equal(mb.no_context.advantages, torch.zeros(16)) and torch.equal(mb.with_context.advantages,
                                                                                 torch.zeros(16))
    grads = _grads(vanilla, mb)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads.values())
    # vanilla = two independent GRPO losses, computed here from recis.rl.grpo_loss on each group
    expected = 0.0
    for g in (mb.no_context, mb.with_context):
        logp = token_logprobs(vanilla.model, g.input_ids, g.attention_mask, g.completion_mask)
        expected += float(grpo_loss(logp, g.old_logprobs, g.advantages, g.completion_mask, GRPOConfig())[0].detach())
    assert float(vanilla(mb).loss.detach()) == pytest.approx(expected, abs=1e-7)

    tower = judge(spec, Scripted)
    phase = rollout(tower, batch)
    (mb,) = phase.minibatches
    assert torch.allclose(mb.scaled, torch.full((16,), -3.9281), atol=1e-3)  # -beta(1) * 1
    assert phase.stats["gap_mean"] == 1.0
    grads = _grads(tower, mb)
    assert any(float(g.abs().sum()) > 0 for g in grads.values())
    before = _prob_of_o0_under_p_prime(tower, mb)
    opt = torch.optim.SGD(tower.parameters(), lr=0.05)
    tower.zero_grad()
    tower(mb).loss.backward()
    opt.step()
    after = _prob_of_o0_under_p_prime(tower, mb)
    assert float(after.sum()) < float(before.sum())
    assert float((after < before).float().mean()) > 0.5


def test_human_gating_reads_the_rows_context_decision_and_fixed_gating_ignores_the_gap(task, spec):
    Scripted.script = ([0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0])  # At < 0 and > 0 both present
    batch = batch_of(task.train, 0, 2)  # row 0 adopt, row 1 ignore
    human = rollout(judge(spec, Scripted, dyknow={"gating": "human"}), batch)
    fixed = rollout(judge(spec, Scripted, dyknow={"gating": "fixed"}), batch)
    post = rollout(judge(spec, Scripted), batch)
    assert human.stats["alpha_mean"] == pytest.approx((0.05 + 2.0) / 2)
    assert human.stats["beta_mean"] == pytest.approx((2.0 + 0.05) / 2)
    assert fixed.stats["alpha_mean"] == 2.0 and fixed.stats["beta_mean"] == 0.05
    # the same union advantages, scaled by each gating's alpha (At > 0) and beta (At <= 0)
    union = torch.tensor([0.0, 1.0, 0.0, 0.0]) - 0.5  # R0 against the union mean 0.5, std 0.5
    union = union / (0.25 + 1e-6) ** 0.5
    scale = {"adopt": (0.05, 2.0), "ignore": (2.0, 0.05)}
    want = [float(u) * (scale[d][0] if u > 0 else scale[d][1]) for d in ("adopt", "ignore") for u in union]
    assert human.minibatches[0].scaled.tolist() == pytest.approx(want, abs=1e-5)
    want_fixed = [float(u) * (2.0 if u > 0 else 0.05) for _ in range(2) for u in union]
    assert fixed.minibatches[0].scaled.tolist() == pytest.approx(want_fixed, abs=1e-5)
    assert post.stats["alpha_mean"] == pytest.approx(0.1 / (4 / (1 + math.exp(-4 * 0.5))))  # gap 0.5 on both rows


def test_dynamic_sampling_drops_rows_by_accuracy_over_both_groups(task, spec):
    Scripted.script = ([0.0], [0.0])  # every rollout wrong: accuracy 0 over the 2n rollouts
    phase = rollout(judge(spec, Scripted, dynamic_sampling={"low": 0.0, "high": 1.0, "max_refills": 1}),
                    batch_of(task.train, 0, 2), lambda: batch_of(task.train, 2, 2))
    assert phase.minibatches == [] and phase.stats["dropped_groups"] == 4 and phase.stats["refills"] == 1
    Scripted.script = ([0.0], [1.0])  # accuracy 0.5: kept
    phase = rollout(judge(spec, Scripted, dynamic_sampling={"low": 0.0, "high": 1.0}), batch_of(task.train, 0, 2))
    assert phase.stats["kept_groups"] == 2 and phase.stats["dropped_groups"] == 0


def test_rows_without_a_chunk_are_named(task, spec):
    tower = judge(spec)
    rows = task.train.slice(0, 2)
    batch = SimpleNamespace(extras={c: rows[c] for c in rows.column_names if c not in CONTEXT},
                            labels=torch.tensor(rows["label"].to_pylist(), dtype=torch.float32))
    with pytest.raises(ValueError, match="objective dyknow needs each row's retrieved chunk"):
        rollout(tower, batch)
