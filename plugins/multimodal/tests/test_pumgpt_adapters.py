"""PUMGPT's layer-wise adapters: which layers, task banks (a later task leaves the earlier one and the
projector bit-identical), the visual-token context, and LMs other than Llama."""
from pumgpt_testing import VOCAB, batch, one_thread, tiny_lm, tiny_pumgpt, tiny_vision  # noqa: I001, F401
import pytest
import torch
from torch import nn

from recis.towers.causal_lm import load_causal_lm
from recis.towers.generation import sample_groups
from recis_multimodal.pumgpt.adapters import AdapterBank, decoder_layers
from recis_multimodal.pumgpt.model import PUMGPT, PUMGPTConfig


@pytest.mark.parametrize("every,layers", [(1, [0, 1, 2, 3]), (2, [1, 3]), (3, [2]), (4, [3])])
def test_adapters_on_every_rth_layer(every, layers):
    m = tiny_pumgpt(layers=4, adapter_every=every)
    assert m.adapters.layers == layers
    assert sorted(m.adapters.tasks["category"].keys(), key=int) == [str(i) for i in layers]
    assert len(m.adapters._handles) == len(layers)
    with pytest.raises(ValueError, match="adapter_every=5 exceeds the 4 decoder layers of LlamaForCausalLM"):
        AdapterBank(m.lm, every=5)


def test_a_gate_only_changes_the_layers_it_sits_on():
    """A hook adds the adapter to its layer's output: the hidden states before that layer are untouched."""
    m = tiny_pumgpt(layers=4, adapter_every=2)
    pixels, ids, mask = batch()
    with torch.no_grad():
        m.adapters.gates()[3].fill_(1.0)
        plain = m.lm(ids, mask, output_hidden_states=True).hidden_states
        with m.visual_context(pixels):
            gated = m.lm(ids, mask, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output (the last one after the final norm)
    assert all(torch.equal(plain[i], gated[i]) for i in range(4)) and not torch.equal(plain[4], gated[4])


def _step(m, pixels, ids, mask, opt):
    loss = nn.functional.cross_entropy(m(pixels, ids, mask)[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_a_later_task_leaves_the_earlier_adapters_and_the_projector_bit_identical():
    m = tiny_pumgpt(task="caption")
    pixels, ids, mask = batch(b=4)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        _step(m, pixels, ids, mask, opt)
    caption = {n: p.detach().clone() for n, p in m.adapters.task_parameters("caption").items()}
    projector = {n: p.detach().clone() for n, p in m.projector.named_parameters()}
    with torch.no_grad():
        caption_logits = m(pixels, ids, mask)

    m.add_task("category")
    assert m.task == "category" and m.tasks == ["caption", "category"]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"adapters.tasks.category.{n}" for n in m.adapters.task_parameters("category")}
    fresh = {n: p.detach().clone() for n, p in m.adapters.task_parameters("category").items()}
    # the optimizer over what requires grad now, and the old one too (frozen tensors have no grad to apply)
    opt2 = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        _step(m, pixels, ids, mask, opt2)
        opt.step()

    groups = m.parameter_groups()
    assert {k: v[1] for k, v in groups.items()} == {"lm": False, "vision": False, "projector": False,
                                                    "adapters.caption": False, "adapters.category": True}
    assert sum(sum(p.numel() for p in mod.parameters()) for mod, _ in groups.values()) == m.trainable_share()[1]
    assert all(torch.equal(p, caption[n]) for n, p in m.adapters.task_parameters("caption").items())
    assert all(torch.equal(p, projector[n]) for n, p in m.projector.named_parameters())
    assert all(not torch.equal(p, fresh[n]) for n, p in m.adapters.task_parameters("category").items())
    m.set_task("caption")
    with torch.no_grad():
        assert torch.equal(m(pixels, ids, mask), caption_logits)  # task 1 answers exactly as before
    m.set_task("category")
    with torch.no_grad():
        assert not torch.equal(m(pixels, ids, mask), caption_logits)


def test_task_errors_name_the_task_and_the_known_ones():
    m = tiny_pumgpt(task="caption")
    with pytest.raises(ValueError, match=r"unknown task 'qa' \(known tasks: \['caption'\]"):
        m.set_task("qa")
    with pytest.raises(ValueError, match=r"task 'caption' already has adapters"):
        m.add_task("caption")
    with pytest.raises(ValueError, match="task name"):
        m.add_task("a.b")
    assert m.tasks == ["caption"] and any(p.requires_grad for p in m.projector.parameters())


def test_visual_tokens_are_cleared_after_the_call_even_on_errors():
    m = tiny_pumgpt(gate_init=0.5)
    pixels, ids, mask = batch()
    with pytest.raises(KeyError):
        with m.visual_context(pixels):
            raise KeyError("boom")
    assert m.adapters._visual is None
    bad_ids = ids.clone()
    bad_ids[0, 0] = VOCAB + 5  # the LM's embedding fails inside the forward
    with pytest.raises(IndexError):
        m(pixels, bad_ids, mask)
    assert m.adapters._visual is None
    with torch.no_grad():  # outside a PUMGPT call the bare LM is untouched, whatever the gates
        assert torch.equal(m.lm(ids, mask).logits, tiny_lm()(ids, mask).logits)


def test_grouped_sampling_on_the_bare_lm_sees_the_images():
    """`visual_context` + recis's grouped sampler: G completions per image repeat that image's tokens."""
    m = tiny_pumgpt(gate_init=1.0)
    pixels, ids, mask = batch(b=2, t=4)
    with torch.no_grad():
        with m.visual_context(pixels):
            r = sample_groups(m.lm, ids, mask, group_size=3, max_new_tokens=3, eos_token_id=1, pad_token_id=0,
                              generator=torch.Generator().manual_seed(0))
        assert r.completion_ids.shape == (6, 3)
        # the sampled tokens' log-probs agree with PUMGPT's own forward on each (image, prompt + completion)
        logits = m(pixels.repeat_interleave(3, 0), r.input_ids, r.attention_mask)
    logprobs = torch.log_softmax(logits[:, 3:-1], -1).gather(-1, r.input_ids[:, 4:, None])[..., 0]
    valid = r.full_completion_mask[:, 4:].bool()
    torch.testing.assert_close(logprobs[valid], r.logprobs[valid], atol=1e-4, rtol=1e-4)


def test_other_causal_lms_gpt2_tuple_outputs():
    """A GPT-2 (decoder layers at transformer.h) works the same: exact at zero gates, changed when gated."""
    lm, _ = load_causal_lm({"config": {"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 2,
                                       "n_head": 4, "n_positions": 64}, "seed": 0})
    assert decoder_layers(lm) is lm.transformer.h
    m = PUMGPT(lm, tiny_vision(), PUMGPTConfig(num_visual_tokens=4))
    m.add_task("category")
    pixels, ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(m(pixels, ids, mask), lm(ids, attention_mask=mask).logits)
        m.adapters.gates()[0].fill_(0.5)
        assert not torch.equal(m(pixels, ids, mask), lm(ids, attention_mask=mask).logits)
