"""The generative relevance judge: SFT, pass@N DPO and GRPO stages on a tiny Llama (no download),
checked against the mechanisms that define them and against the vanilla baselines."""
import copy
from types import SimpleNamespace

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pytest
import torch

from recis.rl import GRPOConfig, grpo_loss, k3_kl
from recis.towers.generation import token_logprobs

from recis_relevance.formats import LABEL_TOKENS, parse
from recis_relevance.judge import ROW_COLUMNS, JudgeTower
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.judge_rl import GroupMinibatch, GRPOJudge
from recis_relevance.prompts import tokenizer_spec
from recis_relevance.task import build_task
from relevance_testing import synthetic_items, tiny_llama

LLAMA = tiny_llama()
FEATURES = SimpleNamespace(passthrough=ROW_COLUMNS)


@pytest.fixture(scope="module")
def task():
    return build_task(synthetic_items(), queries=16, per_query=8, seed=0)


@pytest.fixture(scope="module")
def spec(task):
    return tokenizer_spec(task)


def batch_of(table, start=0, n=8):
    rows = table.slice(start, n)
    return SimpleNamespace(extras={c: rows[c] for c in rows.column_names},
                           labels=torch.tensor(rows["label"].to_pylist(), dtype=torch.float32))


def judge(spec, **options):
    options = {"policy": LLAMA, "tokenizer": spec, "sampling": {"max_new_tokens": 12}, **options}
    torch.manual_seed(0)
    return JudgeTower.from_features(FEATURES, **options)


def rollout(tower, batch, refill=lambda: None):
    tower.eval()
    with torch.no_grad():
        phase = tower.rollout(batch, refill)
    tower.train()
    return phase


@pytest.fixture(scope="module")
def sft_weights(task, spec):
    """A judge after a short SFT: it writes a label token first."""
    tower = judge(spec)
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-2)
    tower.train()
    for step in range(70):
        out = tower(batch_of(task.train, (step * 8) % (task.train.num_rows - 8)))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return copy.deepcopy(tower.state_dict())


def test_objective_classes_and_errors(spec):
    assert type(judge(spec)).__name__ == "JudgeTower"
    assert type(judge(spec, objective="dpo")).__name__ == "DPOJudge"
    assert isinstance(judge(spec, objective="grpo"), GRPOJudge)
    with pytest.raises(ValueError, match="model.objective must be one of"):
        judge(spec, objective="ppo")
    with pytest.raises(ValueError, match="pip:no-such-model|no-such-model"):
        judge(spec, policy="pip:no-such-model==0.0.0;x")
    with pytest.raises(ValueError, match="lack.*want_genre"):
        JudgeTower.from_features(SimpleNamespace(passthrough=("query", "title", "year", "genres")), policy=LLAMA,
                                 tokenizer=spec)
    with pytest.raises(ValueError, match="unknown model option"):
        judge(spec, objectve="sft")


def test_sft_loss_is_the_gold_completion_nll(task, spec):
    """The SFT loss is the token-mean NLL of the teacher completion, computed here by hand."""
    tower = judge(spec)
    tower.train()
    batch = batch_of(task.train)
    out = tower(batch)
    rows = tower.rows(batch)
    enc = tower.encode(tower.prompts(rows), tower.gold(rows))
    logits = tower.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, enc["input_ids"][:, 1:, None]).squeeze(-1)
    mask = enc["completion_mask"][:, 1:].float()
    assert float(out.loss.detach()) == pytest.approx(float(-(logp * mask).sum() / mask.sum()), rel=1e-5)


def test_label_only_decoding_matches_full_greedy_decoding(task, spec, sft_weights):
    tower = judge(spec)
    tower.load_state_dict(sft_weights)
    tower.eval()
    rows = tower.rows(batch_of(task.test, 0, 16))
    label = tower.judge(rows).predicted.long()
    texts = tower.generate(tower.prompts(rows))
    first = [t.split()[0] if t.split() else "" for t in texts]
    assert all(f in LABEL_TOKENS for f in first), first  # the trained judge writes a label first
    assert [int(f[2]) for f in first] == label.tolist()
    full = [parse("post_cot", t).grade for t in texts]
    assert [g for g in full if g is not None] == [l for l, g in zip(label.tolist(), full) if g is not None]


def test_grpo_second_inner_step_sees_ratios_off_one_and_clips(task, spec, sft_weights):
    """mu = 2: the old-policy log-probs are those of the rollout, so after one update the second
    step's ratios differ from 1, and tokens clipped in the advantage's direction get zero
    gradient. A loop that recomputes the old policy at every step has ratio 1 (no clipping)."""
    tower = judge(spec, objective="grpo", grpo={"inner_steps": 2, "epsilon_low": 0.05, "epsilon_high": 0.05},
                  sampling={"group_size": 4, "temperature": 1.5, "max_new_tokens": 12})
    tower.load_state_dict(sft_weights)
    phase = rollout(tower, batch_of(task.train, 0, 8))
    mbs = phase.minibatches
    assert phase.inner_steps == 2 and mbs and any(bool((mb.advantages != 0).any()) for mb in mbs)
    opt = torch.optim.SGD(tower.parameters(), lr=0.5)
    for mb in mbs:  # inner step 1
        tower(mb).loss.backward()
        opt.step()
        opt.zero_grad()
    mb = next(m for m in mbs if bool((m.advantages != 0).any()))
    logp = token_logprobs(tower.model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                          tower.cfg.sampling.temperature).detach().requires_grad_()
    loss, stats = grpo_loss(logp, mb.old_logprobs, mb.advantages, mb.completion_mask, tower.cfg.grpo)
    loss.backward()
    m = mb.completion_mask.bool()
    ratio = (logp - mb.old_logprobs).exp().detach()
    assert float((ratio[m] - 1).abs().max()) > 1e-3  # the second step is off-policy
    adv = mb.advantages[:, None].expand_as(ratio)
    clipped = m & (((ratio > 1.05) & (adv > 0)) | ((ratio < 0.95) & (adv < 0)))
    assert bool(clipped.any()), "no token left the clip range; raise the step size"
    assert torch.all(logp.grad[clipped] == 0)
    assert bool((logp.grad[m & ~clipped & (adv != 0)] != 0).all())
    # the vanilla loop (old policy recomputed before the step): ratio == 1 everywhere, nothing clipped
    fresh = logp.detach()
    assert torch.equal((logp.detach() - fresh).exp()[m], torch.ones(int(m.sum())))


def test_adapters_disabled_reference_kl_is_zero_at_start_and_positive_after_a_step(task, spec):
    tower = judge(spec, objective="grpo", lora={"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]},
                  reference="adapters_disabled", grpo={"beta": 0.05})
    assert tower.reference is not None and tower.reference.mode == "adapters_disabled"
    phase = rollout(tower, batch_of(task.train))
    mb = phase.minibatches[0]

    def kl():
        logp = token_logprobs(tower.model, mb.input_ids, mb.attention_mask, mb.completion_mask, 1.0)
        ref = tower.reference.logprobs(mb.input_ids, mb.attention_mask, mb.completion_mask, 1.0)
        return float((k3_kl(logp, ref) * mb.completion_mask).sum())

    assert kl() == 0.0
    trainable = [p for p in tower.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in tower.named_parameters() if p.requires_grad)
    opt = torch.optim.SGD(trainable, lr=0.5)
    tower.eval()  # no dropout; the loss of a supervised step moves the adapters
    tower.train()
    tower(batch_of(task.train)).loss.backward()
    opt.step()
    assert kl() > 0.0


class ScriptedGRPO(GRPOJudge):
    """GRPO whose rewards come from a script (per rollout call: [groups, G]) instead of parsing."""

    script = []

    def _sample_scored(self, rows):
        r, _, bad = super()._sample_scored(rows)
        rewards = torch.tensor(self.script.pop(0), dtype=torch.float32)
        assert rewards.shape[0] == len(rows)
        return r, rewards, bad


def test_dynamic_sampling_keeps_only_groups_with_reward_variance_and_refills(task, spec):
    opts = dict(policy=LLAMA, tokenizer=spec, objective="grpo", sampling={"group_size": 2, "max_new_tokens": 6},
                dynamic_sampling={"low": 0.0, "high": 1.0, "max_refills": 3})
    constant, mixed = [0.0, 0.0], [1.0, 0.0]
    tower = ScriptedGRPO(JudgeConfig.from_options(opts))
    ScriptedGRPO.script = [[constant, mixed, [1.0, 1.0], constant], [mixed, constant, constant, constant],
                           [constant, [0.0, 1.0], mixed, mixed]]
    more = iter([batch_of(task.train, 4, 4), batch_of(task.train, 8, 4)])
    phase = rollout(tower, batch_of(task.train, 0, 4), lambda: next(more, None))
    adv = torch.cat([mb.advantages for mb in phase.minibatches]).view(-1, 2)
    assert adv.shape[0] == 4  # refilled up to the batch's 4 groups
    assert bool((adv != 0).any(1).all())  # every kept group has reward variance (a learning signal)
    assert phase.stats["dropped_groups"] == 3 + 3 + 1 and phase.stats["refills"] == 2
    # the vanilla rollout on the same rewards keeps the constant groups: zero-advantage groups
    vanilla = ScriptedGRPO(JudgeConfig.from_options({**opts, "dynamic_sampling": None}))
    ScriptedGRPO.script = [[constant, mixed, [1.0, 1.0], constant]]
    adv = torch.cat([mb.advantages for mb in rollout(vanilla, batch_of(task.train, 0, 4)).minibatches]).view(-1, 2)
    assert not bool((adv != 0).any(1).all())


def test_dpo_rollout_pairs_from_the_reference_and_loss_is_log2_at_start(task, spec, sft_weights):
    tower = judge(spec, objective="dpo", sampling={"group_size": 4, "temperature": 1.5, "max_new_tokens": 12})
    tower.load_state_dict(sft_weights)
    tower.on_weights_loaded()  # the stage's start: the reference is the SFT model
    phase = rollout(tower, batch_of(task.train, 0, 8))
    s = phase.stats
    assert s["groups_mixed"] + s["groups_all_wrong"] + s["groups_all_correct"] == 8
    assert s["pairs"] == s["groups_mixed"] + s["groups_all_wrong"]  # max_pairs 1
    for mb in phase.minibatches:
        assert not torch.equal(mb.chosen["input_ids"], mb.rejected["input_ids"])
        out = tower(mb)
        assert float(out.loss) == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-5)


def test_config_checks():
    with pytest.raises(ValueError, match="adapters_disabled.*needs model.lora"):
        JudgeConfig.from_options({"policy": LLAMA, "reference": "adapters_disabled"})
    with pytest.raises(ValueError, match="dynamic_sampling is a GRPO option"):
        JudgeConfig.from_options({"policy": LLAMA, "objective": "dpo", "dynamic_sampling": {}})
    with pytest.raises(ValueError, match="pre_cot"):
        JudgeConfig.from_options({"policy": LLAMA, "format": "pre_cot"})
    with pytest.raises(ValueError, match="max_new_tokens"):
        JudgeConfig.from_options({"policy": LLAMA, "sampling": {"max_new_tokens": 40}, "max_completion_length": 8})
    assert isinstance(JudgeConfig.from_options({"policy": LLAMA, "objective": "grpo"}).grpo, GRPOConfig)


def test_a_dpo_rollout_whose_groups_are_all_correct_has_no_pairs_and_trains_on_nothing(task, spec):
    """All-correct groups give no pair (methods.md section 6): the rollout returns no minibatch."""
    from recis_relevance.judge_rl import DPOJudge

    class AllCorrect(DPOJudge):
        def decode(self, ids, mask):  # every sample is the gold completion of its row
            return [self._gold[i // self.cfg.sampling.group_size] for i in range(ids.shape[0])]

    tower = AllCorrect(JudgeConfig.from_options({"policy": LLAMA, "tokenizer": spec, "objective": "dpo",
                                                 "sampling": {"group_size": 3, "max_new_tokens": 4}}))
    batch = batch_of(task.train, 0, 5)
    tower._gold = tower.gold(tower.rows(batch))
    phase = rollout(tower, batch)
    assert phase.minibatches == [] and phase.stats["pairs"] == 0 and phase.stats["groups_all_correct"] == 5
    assert phase.stats["reward_mean"] == 1.0


def test_reserved_tokens_added_to_a_tokenizer_start_from_the_text_they_stand_for(spec):
    """A tokenizer without the reserved tokens (a pretrained LM's) gets them as new rows, each the
    embedding of its text ("<L3>" = "3"), so frozen-base LoRA can tell the labels apart."""
    words = {"words": spec["words"] + ["1", "2", "3", "4", "step"]}
    tower = judge(spec, tokenizer=words, policy={**LLAMA, "config": {**LLAMA["config"], "vocab_size": 600}})
    emb = tower.model.get_input_embeddings().weight
    tok = tower.tokenizer
    for token, text in (("<L1>", "1"), ("<L3>", "3"), ("<STEP>", "step")):
        new, old = tok.convert_tokens_to_ids(token), tok.convert_tokens_to_ids(text)
        assert new >= len(spec["words"]) and torch.equal(emb[new], emb[old])
    label = emb[tower.label_ids]
    assert all(not torch.equal(label[i], label[j]) for i in range(4) for j in range(i))
