"""Per-token log-probs, grouped sampling (recis.towers.generation), LoRA adapters switched off
(recis.towers.lora.adapters_disabled) and the reference policy (recis.towers.reference).

The references are computed here, independently: every row is run ALONE, unpadded, through the
model's plain forward (default position ids), and log-probs / entropies / argmaxes are taken from
those logits step by step. The log-prob and sampling tests run on a tiny Llama and a tiny GPT-2:
Llama's rotary positions are nearly blind to a constant shift, GPT-2's learned absolute positions
are not, so position ids that left padding shifted show up there.
"""
import copy

import pytest
import torch

pytest.importorskip("transformers")

from recis.towers import (ReferencePolicy, Rollout, adapters_disabled, apply_lora, load_causal_lm,  # noqa: E402
                          sample_groups, token_entropy, token_logprobs)

V, EOS, PAD = 48, 3, 0
TINY = {"model_type": "llama", "vocab_size": V, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def one_thread(restore_threads):
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention on a busy 2-core machine


GPT2 = {"model_type": "gpt2", "vocab_size": V, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    m, _ = load_causal_lm({"config": dict(TINY if request.param == "llama" else GPT2), "seed": 0})
    return m.eval()


def row_logits(model, ids):
    """[L, V] logits of one unpadded row, run alone."""
    with torch.no_grad():
        return model(torch.as_tensor(ids)[None]).logits[0].float()


def ref_logprobs(model, ids, temperature=1.0):
    """[L]: 0, then log softmax(logits_{t-1} / T)[x_t] of one unpadded row."""
    logp = (row_logits(model, ids)[:-1] / temperature).log_softmax(-1)
    return torch.cat([torch.zeros(1), logp.gather(1, torch.as_tensor(ids)[1:, None]).squeeze(1)])


def left_right_batch(prompts, completions):
    """The encode_completions layout from raw id lists: [pad][prompt][completion][pad]."""
    P, C = max(map(len, prompts)), max(map(len, completions))
    ids = torch.full((len(prompts), P + C), PAD)
    attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P], ids[i, P:P + len(c)] = torch.tensor(p), torch.tensor(c)
        attn[i, P - len(p):P + len(c)] = 1
        comp[i, P:P + len(c)] = 1
    return ids, attn, comp, P


PROMPTS = [[2, 10, 11, 12, 13, 14], [2, 20], [2, 30, 31, 32], [2, 40, 41, 42, 43, 44, 45, 46]]
COMPLETIONS = [[5, 6, EOS], [7, 8, 9, 10, 11, EOS], [12], [13, 14, EOS]]


def prompt_batch(prompts=PROMPTS):
    ids, attn, _, _ = left_right_batch(prompts, [[PAD]] * len(prompts))
    return ids[:, :-1], attn[:, :-1]


# ---------------------------------------------------------------------------- token log-probs
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equal_each_row_run_alone(model, temperature):
    ids, attn, comp, P = left_right_batch(PROMPTS, COMPLETIONS)
    full = token_logprobs(model, ids, attn, temperature=temperature)
    only = token_logprobs(model, ids, attn, comp, temperature=temperature)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        ref = ref_logprobs(model, p + c, temperature)
        lo, hi = P - len(p), P + len(c)
        assert torch.allclose(full[i, lo:hi], ref, atol=1e-5, rtol=0), i
        assert (full[i, :lo] == 0).all() and (full[i, hi:] == 0).all()  # padding, and the first real token
        assert torch.allclose(only[i, P:hi], ref[len(p):], atol=1e-5, rtol=0), i
        assert (only[i, :P] == 0).all() and (only[i, hi:] == 0).all()


def test_token_entropy_equals_each_row_run_alone(model):
    ids, attn, comp, P = left_right_batch(PROMPTS, COMPLETIONS)
    ent = token_entropy(model, ids, attn, comp, temperature=0.9)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        ref = torch.distributions.Categorical(logits=row_logits(model, p + c)[:-1] / 0.9).entropy()
        assert torch.allclose(ent[i, P:P + len(c)], ref[len(p) - 1:], atol=1e-5, rtol=0), i
        assert (ent[i, :P] == 0).all() and (ent[i, P + len(c):] == 0).all()


def test_token_logprobs_are_differentiable_and_reject_bad_input(model):
    ids, attn, comp, _ = left_right_batch(PROMPTS, COMPLETIONS)
    token_logprobs(model, ids, attn, comp).sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0, got 0"):
        token_logprobs(model, ids, attn, comp, temperature=0)
    with pytest.raises(ValueError, match="completion_mask"):
        token_logprobs(model, ids, attn, comp[:, 1:])
    assert (token_logprobs(model, ids, attn, torch.zeros_like(comp)) == 0).all()


# ---------------------------------------------------------------------------- sampling
def sample(model, seed=0, prompts=PROMPTS, **kw):
    ids, attn = prompt_batch(prompts)
    args = dict(group_size=4, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD)
    args.update(kw)
    return sample_groups(model, ids, attn, generator=torch.Generator().manual_seed(seed), **args)


def check_stops(r, stops):
    """Mask 1 up to and including the first stop token, 0 (pad id, logprob 0) after it."""
    for row, mask, lp in zip(r.completion_ids.tolist(), r.completion_mask.tolist(), r.logprobs.tolist()):
        n = next((t + 1 for t, x in enumerate(row) if x in stops), len(row))
        assert mask == [1] * n + [0] * (len(row) - n)
        assert row[n:] == [PAD] * (len(row) - n) and lp[n:] == [0.0] * (len(row) - n)


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_sampling_logprobs_equal_recomputed_logprobs(model, temperature):
    r = sample(model, temperature=temperature)
    P = r.prompt_ids.shape[1]
    again = token_logprobs(model, r.input_ids, r.attention_mask, r.full_completion_mask, temperature=temperature)
    assert torch.allclose(again[:, P:], r.logprobs, atol=1e-5, rtol=0)
    assert (r.logprobs[r.completion_mask.bool()] < 0).all()
    # and against the per-row reference, which knows nothing of padding or caches
    for i in range(len(r)):
        p = r.prompt_ids[i][r.prompt_mask[i].bool()].tolist()
        c = r.completion_ids[i][r.completion_mask[i].bool()].tolist()
        assert torch.allclose(ref_logprobs(model, p + c, temperature)[len(p):], r.logprobs[i, :len(c)], atol=1e-5)


def test_top_k_samples_stay_within_the_top_k(model):
    k, temperature = 3, 1.5
    r = sample(model, temperature=temperature, top_k=k, seed=5)
    for i in range(len(r)):
        p = r.prompt_ids[i][r.prompt_mask[i].bool()].tolist()
        c = r.completion_ids[i][r.completion_mask[i].bool()].tolist()
        logits = row_logits(model, p + c)[len(p) - 1:-1] / temperature if c else None
        for t, token in enumerate(c):
            top = logits[t].topk(k)
            assert token in top.indices.tolist(), (i, t)
            want = logits[t][token] - top.values.logsumexp(0)  # renormalised over the k kept tokens
            assert abs(float(want) - float(r.logprobs[i, t])) < 1e-5


def test_same_seed_same_rollout_other_seed_another(model):
    a, b, c = sample(model, seed=11), sample(model, seed=11), sample(model, seed=12)
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs", "prompt_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_greedy_is_the_stepwise_argmax(model):
    r = sample(model, temperature=0.0, group_size=2, max_new_tokens=6, eos_token_id=V + 1)
    assert r.completion_ids.shape == (8, 6) and r.completion_mask.all()
    for i, p in enumerate(PROMPTS):
        seq, want, lps = list(p), [], []
        for _ in range(6):
            logits = row_logits(model, seq)[-1]
            want.append(int(logits.argmax()))
            lps.append(float(logits.log_softmax(-1)[want[-1]]))
            seq.append(want[-1])
        for row in (2 * i, 2 * i + 1):
            assert r.completion_ids[row].tolist() == want
            assert torch.allclose(r.logprobs[row], torch.tensor(lps), atol=1e-5, rtol=0)
    # make the token greedy decoding writes third in row 0 the eos: that row stops at its first occurrence
    row = r.completion_ids[0].tolist()
    n = row.index(row[2]) + 1
    s = sample(model, temperature=0.0, group_size=2, max_new_tokens=6, eos_token_id=row[2])
    assert s.completion_mask[0].tolist() == [1] * n + [0] * (6 - n) and s.completion_ids[0, :n].tolist() == row[:n]
    check_stops(s, {row[2]})


def test_rows_stop_after_eos_or_a_stop_token(model):
    stops = set(range(8, 40))  # most of the vocabulary: nearly every row stops early
    r = sample(model, eos_token_id=EOS, stop_token_ids=sorted(stops - {EOS}), seed=3)
    check_stops(r, stops | {EOS})
    assert r.completion_mask.sum(1).min() < r.completion_mask.shape[1]
    greedy = sample(model, temperature=0.0, eos_token_id=EOS, stop_token_ids=sorted(stops))
    check_stops(greedy, stops | {EOS})


def test_rollout_rows_are_prompt_major(model):
    r = sample(model, group_size=3, max_new_tokens=4)
    ids, attn = prompt_batch()
    assert isinstance(r, Rollout) and r.group_size == 3 and len(r) == 12
    assert r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert torch.equal(r.prompt_ids, ids.repeat_interleave(3, 0))
    assert torch.equal(r.input_ids, torch.cat([r.prompt_ids, r.completion_ids], 1))
    assert torch.equal(r.attention_mask, torch.cat([r.prompt_mask, r.completion_mask], 1))
    assert r.full_completion_mask[:, :ids.shape[1]].sum() == 0
    sub = r.index_select([4, 0])
    assert sub.prompt_index.tolist() == [1, 0] and torch.equal(sub.logprobs, r.logprobs[[4, 0]])
    assert torch.equal(r.index_select(r.prompt_index == 2).completion_ids, r.completion_ids[6:9])


def test_sampling_input_errors(model):
    ids, attn = prompt_batch()
    g = torch.Generator()
    right = attn.flip(1)
    with pytest.raises(ValueError, match="prompt row 0 is not left-padded"):
        sample_groups(model, ids, right, 2, 4, generator=g, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(TypeError, match="needs a torch.Generator"):
        sample_groups(model, ids, attn, 2, 4, generator=None, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sample_groups(model, ids, attn, 2, 4, temperature=-1.0, generator=g, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
        sample_groups(model, ids, attn, 2, 4, top_k=-2, generator=g, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="group_size must be an integer >= 1"):
        sample_groups(model, ids, attn, 0, 4, generator=g, eos_token_id=EOS, pad_token_id=PAD)


# ---------------------------------------------------------------------------- LoRA off, references
def lora_model(seed=0):
    m, _ = load_causal_lm({"config": dict(TINY), "seed": seed})
    base = copy.deepcopy(m).eval()
    apply_lora(m, targets=["q_proj", "v_proj"], rank=4)
    for p in m.parameters():
        p.requires_grad_(False)
    lora = [p for n, p in m.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    return m.eval(), base, lora


def test_adapters_disabled_is_the_base_model_and_restores_flags():
    m, base, lora = lora_model()
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.5)  # B != 0: the adapted model is no longer the base
    ids, attn, _, _ = left_right_batch(PROMPTS, COMPLETIONS)
    with torch.no_grad():
        want = base(ids, attention_mask=attn).logits
        assert not torch.allclose(m(ids, attention_mask=attn).logits, want)
        with adapters_disabled(m):
            assert torch.equal(m(ids, attention_mask=attn).logits, want)
    layers = [x for x in m.modules() if hasattr(x, "enabled")]
    assert len(layers) == 4 and all(x.enabled for x in layers)
    layers[0].enabled = False  # a layer switched off before stays off after
    with pytest.raises(RuntimeError, match="boom"):
        with adapters_disabled(m):
            raise RuntimeError("boom")
    assert [x.enabled for x in layers] == [False, True, True, True]
    with pytest.raises(ValueError, match="LlamaForCausalLM has no LoRA adapters"):
        with adapters_disabled(base):
            pass


def k3(ref, logp, mask):
    d = (ref - logp)[mask.bool()]
    return float((d.exp() - d - 1).mean())


def one_step(model, params, ids, attn, comp):
    opt = torch.optim.SGD(params, lr=0.5)
    opt.zero_grad()
    (-token_logprobs(model, ids, attn, comp).sum()).backward()
    opt.step()


def test_copy_reference_is_frozen_and_unregistered():
    policy, _ = load_causal_lm({"config": dict(TINY), "seed": 1})
    holder = torch.nn.Module()
    holder.policy, holder.reference = policy, ReferencePolicy(policy)
    assert sorted(holder.state_dict()) == sorted(f"policy.{k}" for k in policy.state_dict())
    assert len(list(holder.parameters())) == len(list(policy.parameters()))
    ids, attn, comp, _ = left_right_batch(PROMPTS, COMPLETIONS)
    start = token_logprobs(policy, ids, attn, comp).detach()
    assert torch.equal(holder.reference.logprobs(ids, attn, comp), start)
    assert k3(holder.reference.logprobs(ids, attn, comp), start, comp) == 0.0
    one_step(policy, list(policy.parameters()), ids, attn, comp)
    after = token_logprobs(policy, ids, attn, comp).detach()
    ref = holder.reference.logprobs(ids, attn, comp)
    assert torch.equal(ref, start) and not torch.allclose(after, start, atol=1e-4)
    assert k3(ref, after, comp) > 0
    assert not any(p.requires_grad for p in holder.reference.module.parameters())
    holder.reference.reset()  # new starting weights: the reference follows
    assert torch.equal(holder.reference.logprobs(ids, attn, comp), after)


def test_adapters_disabled_reference_equals_policy_at_init_and_not_after_a_step():
    policy, base, lora = lora_model(seed=2)
    ref = ReferencePolicy(policy, mode="adapters_disabled")
    ids, attn, comp, _ = left_right_batch(PROMPTS, COMPLETIONS)
    base_lp = token_logprobs(base, ids, attn, comp)
    policy.train()
    assert torch.equal(ref.logprobs(ids, attn, comp), token_logprobs(policy, ids, attn, comp).detach())
    assert policy.training and all(x.training for x in policy.modules())  # modes restored
    assert k3(ref.logprobs(ids, attn, comp), token_logprobs(policy, ids, attn, comp).detach(), comp) == 0.0
    one_step(policy, lora, ids, attn, comp)  # B moves off zero
    after = token_logprobs(policy, ids, attn, comp).detach()
    assert torch.equal(ref.logprobs(ids, attn, comp), base_lp)
    assert not torch.allclose(after, base_lp, atol=1e-4) and k3(ref.logprobs(ids, attn, comp), after, comp) > 0


def test_reference_errors():
    m, _ = load_causal_lm({"config": dict(TINY), "seed": 0})
    with pytest.raises(ValueError, match="'adapters_disabled' needs LoRA adapters"):
        ReferencePolicy(m, mode="adapters_disabled")
    with pytest.raises(ValueError, match=r"reference mode must be one of \['copy', 'adapters_disabled'\]"):
        ReferencePolicy(m, mode="frozen")


def test_cat_rollouts_scores_every_row_as_its_own_part_does(model):
    """Rollouts of different prompt and completion widths, concatenated: every row's token
    log-probs over its completion equal those of its own part (the padding changes nothing), the
    prompt index continues across parts, and mixed group sizes are refused."""
    from recis.towers.generation import cat_rollouts, sample_groups, token_logprobs

    g = torch.Generator().manual_seed(0)
    parts = []
    for width, new in ((3, 2), (5, 4)):
        ids = torch.randint(4, V, (2, width), generator=g)
        parts.append(sample_groups(model, ids, torch.ones_like(ids), 2, new, generator=g, eos_token_id=EOS,
                                   pad_token_id=PAD))
    whole = cat_rollouts(parts, pad_token_id=0)
    assert whole.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and len(whole) == 8
    got = token_logprobs(model, whole.input_ids, whole.attention_mask, whole.full_completion_mask)
    C = whole.completion_ids.shape[1]
    row = 0
    for p in parts:
        own = token_logprobs(model, p.input_ids, p.attention_mask, p.full_completion_mask)
        c = p.completion_ids.shape[1]
        for i in range(len(p)):
            assert torch.allclose(got[row, -C:][:c], own[i, -c:], atol=1e-5)
            assert torch.equal(whole.completion_ids[row, :c], p.completion_ids[i])
            row += 1
    other = sample_groups(model, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), 3, 1,
                          generator=g, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="different group sizes"):
        cat_rollouts([parts[0], other], pad_token_id=0)
    with pytest.raises(ValueError, match="no rollouts"):
        cat_rollouts([], pad_token_id=0)
