"""PUMGPT model: exact identity at zero gates, trainable mask, K visual tokens, the image reaches the
logits, the prefix baseline, errors, and a learning effect the text-only LM cannot show."""
from pumgpt_testing import VOCAB, batch, one_thread, tiny_lm, tiny_pumgpt, tiny_vision  # noqa: I001, F401
import math

import pytest
import torch
from torch import nn

from recis.towers.generation import position_ids
from recis_multimodal.pumgpt.model import PUMGPT, PUMGPTConfig, PrefixLM, TextOnlyLM, build_vision
from recis_multimodal.pumgpt.vision import VisionEncoder


def equals_text_only(m, pixels, ids, mask) -> bool:
    """Whether PUMGPT's logits equal the frozen LM's own text-only logits bit for bit."""
    with torch.no_grad():
        ref = m.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        return torch.equal(m(pixels, ids, mask), ref)


@pytest.mark.parametrize("per_channel", [False, True])
def test_zero_gates_give_the_frozen_lm_logits_exactly_and_a_nonzero_gate_does_not(per_channel):
    m = tiny_pumgpt(per_channel_gate=per_channel)
    pixels, ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(m(pixels, ids, mask), m.lm(ids, mask).logits)  # no padding: the contract's form
    mask[0, :2] = 0  # left padding
    assert equals_text_only(m, pixels, ids, mask)
    with torch.no_grad():
        gate = m.adapters.gates()[1]
        gate.fill_(0.5) if per_channel else gate.copy_(torch.tensor(0.5))
    assert not equals_text_only(m, pixels, ids, mask)  # the check is not vacuous


def test_left_padding_gives_each_row_its_own_logits():
    m = tiny_pumgpt(gate_init=0.5)
    pixels, ids, mask = batch(b=2, t=6)
    padded_ids = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], 1)
    padded_mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), mask], 1)
    padded_mask[1, :3] = 1  # row 1 keeps 3 more real tokens in front
    with torch.no_grad():
        alone = m(pixels[:1], ids[:1], mask[:1])
        together = m(pixels, padded_ids, padded_mask)
    torch.testing.assert_close(together[0, 3:], alone[0], atol=1e-5, rtol=1e-5)


def test_only_adapters_and_projector_train_and_the_share_is_reported():
    m = tiny_pumgpt(adapter_dim=16)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    expected = {n for n, _ in m.named_parameters() if n.startswith(("projector.", "adapters.tasks.category."))}
    assert trainable == expected and expected
    assert all(not p.requires_grad for p in m.lm.parameters()) and all(not p.requires_grad for p in m.vision.parameters())
    count, total, share = m.trainable_share()
    want = sum(p.numel() for p in m.projector.parameters()) + sum(p.numel() for p in m.adapters.parameters())
    lm_and_vision = sum(p.numel() for p in m.lm.parameters()) + sum(p.numel() for p in m.vision.parameters())
    assert (count, total) == (want, want + lm_and_vision)
    assert share == pytest.approx(want / (want + lm_and_vision)) and share < 0.35, share
    # a real-sized LM's share is far smaller: the adapters grow with hidden^2 per layer, the LM with vocab too


def test_frozen_parts_stay_in_eval_mode():
    m = tiny_pumgpt()
    m.train()
    assert m.training and m.projector.training and not m.lm.training and not m.vision.model.training


@pytest.mark.parametrize("size", [28, 64])
def test_k_visual_tokens_whatever_the_image_size(size):
    m = tiny_pumgpt(num_visual_tokens=6)
    pixels = torch.rand(2, 1, size, size)
    assert m.vision(pixels).shape[1] == (size // 4) ** 2 + 1  # the patch count changes with the size ...
    assert m.visual_tokens(pixels).shape == (2, 6, 32)  # ... K does not
    assert m(pixels, torch.randint(0, VOCAB, (2, 5))).shape == (2, 5, VOCAB)


def test_a_convolutional_vision_model_feature_map_becomes_patch_tokens():
    enc = build_vision({"model_type": "convnext", "num_channels": 1, "hidden_sizes": [8, 16], "depths": [1, 1],
                        "patch_size": 4, "num_stages": 2, "seed": 0})
    assert enc.dim == 16
    m = PUMGPT(tiny_lm(), enc, PUMGPTConfig(num_visual_tokens=5))
    m.add_task("category")
    for size, patches in ((28, 9), (64, 64)):  # 4x4 stem, then a 2x downsampling stage
        assert enc(torch.rand(2, 1, size, size)).shape == (2, patches, 16)
        assert m.visual_tokens(torch.rand(2, 1, size, size)).shape == (2, 5, 32)


def test_a_gradient_step_makes_the_image_matter():
    m = tiny_pumgpt()
    pixels, ids, mask = batch(b=2)
    other = torch.rand_like(pixels)
    with torch.no_grad():
        before = m(pixels, ids, mask)
        assert torch.equal(before, m(other, ids, mask))  # gates at zero: the image does not reach the logits
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss = nn.functional.cross_entropy(m(pixels, ids, mask)[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    gates = m.adapters.gates()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates.values())
    opt.step()
    assert all(g.item() != 0 for g in gates.values())
    with torch.no_grad():
        after = m(pixels, ids, mask)
        assert not torch.equal(after, before)
        assert (after - m(other, ids, mask)).abs().max() > 1e-6  # two images, two outputs


def test_text_only_lm_ignores_the_image_and_can_be_trained_on_a_copy():
    lm = tiny_lm()
    pixels, ids, mask = batch()
    t = TextOnlyLM(lm)
    with torch.no_grad():
        assert torch.equal(t(pixels, ids, mask), lm(ids, mask).logits)
        assert torch.equal(t(None, ids, mask), t(torch.rand_like(pixels), ids, mask))
    assert t.trainable_share()[0] == 0
    tuned = TextOnlyLM(lm, trainable=True)
    assert tuned.lm is not lm and tuned.trainable_share()[2] == 1.0
    assert all(not p.requires_grad for p in lm.parameters())


def test_prefix_baseline_matches_the_trainable_count_and_returns_text_logits():
    m = tiny_pumgpt(num_visual_tokens=4)
    target = m.trainable_share()[0]
    p = PrefixLM.matching(tiny_lm(), tiny_vision(), trainable=target, num_visual_tokens=4)
    got = p.trainable_share()[0]
    assert abs(got - target) <= 0.02 * target and p.matched["achieved"] == got and p.matched["target"] == target
    assert {n for n, q in p.named_parameters() if q.requires_grad} == {n for n, _ in p.projector.named_parameters(
        prefix="projector")}
    pixels, ids, mask = batch(b=2, t=5)
    with torch.no_grad():
        logits = p(pixels, ids, mask)
        assert logits.shape == (2, 5, VOCAB)
        # reference: the prefix embeddings in front of the text embeddings, run by hand
        embeds = torch.cat([p.visual_tokens(pixels), p.lm.get_input_embeddings()(ids)], 1)
        ref = p.lm(inputs_embeds=embeds).logits[:, 4:]
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        # left and right padding: each row's text logits as it has them alone
        left = p(pixels, torch.cat([torch.zeros(2, 2, dtype=torch.long), ids], 1),
                 torch.cat([torch.zeros(2, 2, dtype=torch.long), mask], 1))
        right = p(pixels, torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], 1),
                  torch.cat([mask, torch.zeros(2, 2, dtype=torch.long)], 1))
    torch.testing.assert_close(left[:, 2:], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[:, :5], ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot reach 10 trainable parameters"):
        PrefixLM.matching(tiny_lm(), tiny_vision(), trainable=10, num_visual_tokens=4)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="PUMGPTConfig.adapter_every must be an integer >= 1, got 0"):
        PUMGPTConfig(adapter_every=0)
    with pytest.raises(TypeError, match="PUMGPTConfig.num_visual_tokens"):
        PUMGPTConfig(num_visual_tokens="8")
    with pytest.raises(TypeError, match="PUMGPTConfig.per_channel_gate must be true or false"):
        PUMGPTConfig(per_channel_gate="yes")
    with pytest.raises(ValueError, match="PUMGPTConfig.adapter_dim=30 must be a multiple of PUMGPTConfig.adapter_heads=4"):
        PUMGPTConfig(adapter_dim=30)
    with pytest.raises(ValueError, match="projector_heads"):
        PUMGPT(tiny_lm(), tiny_vision(), PUMGPTConfig(projector_heads=5))

    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(8, 4)

    with pytest.raises(ValueError, match="cannot find the decoder layers of NoLayers"):
        PUMGPT(NoLayers(), tiny_vision())
    m = tiny_pumgpt(task=None)
    pixels, ids, mask = batch()
    with pytest.raises(RuntimeError, match="add_task"):
        m(pixels, ids, mask)
    m.add_task("category")
    with pytest.raises(ValueError, match=r"3 channels; the vision model ViTModel takes 1"):
        m(torch.rand(3, 3, 28, 28), ids, mask)
    with pytest.raises(ValueError, match="one image per row"):
        m(pixels[:2], ids, mask)
    with pytest.raises(ValueError, match="vision.config: unknown key"):
        build_vision({"model_type": "vit", "hiden_size": 8})


def test_build_vision_from_a_saved_directory(tmp_path):
    enc = tiny_vision(seed=3)
    enc.model.save_pretrained(tmp_path / "vit")
    again = build_vision(str(tmp_path / "vit"))
    assert isinstance(again, VisionEncoder) and again.channels == 1 and again.dim == 32
    pixels = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(enc(pixels), again(pixels))


# ---- the learning effect: the answer is in the image only ---------------------------------------
PROMPT = [5, 6, 7]
ANSWERS = torch.tensor([10, 11, 12, 13])


def quadrant_batch(n: int, g: torch.Generator):
    """16x16 images, dark noise with a bright 8x8 square in one of 4 quadrants; the answer token says which."""
    q = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    for i, k in enumerate(q.tolist()):
        r, c = divmod(k, 2)
        x[i, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8] += 0.8
    return x, torch.tensor(PROMPT).expand(n, -1), q


def answer_loss(model, x, ids, q):
    logits = model(x, ids, torch.ones_like(ids))[:, -1, ANSWERS]  # the next token after the prompt, among the 4
    return nn.functional.cross_entropy(logits, q), (logits.argmax(-1) == q).float().mean().item()


def train(model, steps: int = 100, lr: float = 5e-3):
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss, _ = answer_loss(model, *quadrant_batch(32, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return answer_loss(model, *quadrant_batch(256, torch.Generator().manual_seed(99)))


def test_pumgpt_learns_an_image_only_answer_the_text_only_lm_cannot():
    torch.manual_seed(0)
    m = PUMGPT(tiny_lm(), tiny_vision(), PUMGPTConfig(num_visual_tokens=4))
    m.add_task("quadrant")
    loss, acc = train(m)
    text_loss, text_acc = train(TextOnlyLM(tiny_lm(), trainable=True))
    chance = math.log(4)
    assert text_loss.item() > chance - 0.05 and text_acc < 0.4, (text_loss, text_acc)  # the vanilla baseline
    assert loss.item() < chance - 0.3 and acc > 0.9, (loss, acc)  # PUMGPT reads the answer off the image
