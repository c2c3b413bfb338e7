"""Group-relative advantages against numpy: each std convention (DyKnow-RAG population std with eps
inside the root, TRL unbiased + 1e-4, ROLL unbiased + 1e-6), the scales, clipping, a mask, and
exactly-zero advantages (and policy gradient) for a group of equal rewards."""
import numpy as np
import pytest
import torch

from recis.rl import GRPOConfig, group_advantages, grpo_loss

REWARDS = np.array([[1.0, 0.0, 0.0, 1.0, 1.0],
                    [0.2, 0.9, 0.4, 0.4, 0.0],
                    [3.0, 3.0, 3.0, 3.0, 3.5],
                    [0.0, 1e-4, 0.0, 0.0, 0.0]])  # a spread so small that the eps decides the scale


def _numpy(r, std, scale, eps):
    centred = r - r.mean(axis=1, keepdims=True)
    over = r if scale == "batch" else None
    if scale == "none":
        return centred
    if std == "population":
        var = np.var(over, ddof=0) if over is not None else np.var(r, axis=1, ddof=0, keepdims=True)
        return centred / np.sqrt(var + eps)
    s = np.std(over, ddof=1) if over is not None else np.std(r, axis=1, ddof=1, keepdims=True)
    return centred / (s + eps)


@pytest.mark.parametrize("std,eps", [("population", 1e-6), ("trl", 1e-4), ("roll", 1e-6)])
@pytest.mark.parametrize("scale", ["group", "batch"])
def test_each_convention_and_its_default_eps_match_numpy(std, eps, scale):
    got = group_advantages(torch.tensor(REWARDS), std=std, scale=scale)  # eps: the convention's default
    np.testing.assert_allclose(got.numpy(), _numpy(REWARDS, std, scale, eps), rtol=1e-12, atol=1e-12)


def test_the_conventions_differ_where_the_papers_do():
    r = torch.tensor(REWARDS)
    pop, trl, roll = (group_advantages(r, std=s).numpy() for s in ("population", "trl", "roll"))
    # an unbiased spread of 4.47e-5: TRL's 1e-4 dominates it (0.553), ROLL's 1e-6 does not (1.75)
    assert abs(trl[3, 1]) < 0.6 < 1.7 < abs(roll[3, 1])
    # population std is sqrt((G-1)/G) of the unbiased one: larger advantages by sqrt(G/(G-1))
    np.testing.assert_allclose(pop[1] / roll[1], np.sqrt(5 / 4), rtol=1e-4)


def test_an_explicit_eps_goes_inside_the_root_for_population_only():
    r = np.array([[0.0, 1.0]])
    pop = group_advantages(torch.tensor(r), std="population", eps=0.75).numpy()
    np.testing.assert_allclose(pop, [[-0.5, 0.5]])  # (-0.5) / sqrt(0.25 + 0.75)
    trl = group_advantages(torch.tensor(r), std="trl", eps=0.5).numpy()
    np.testing.assert_allclose(trl, [[-0.5 / (np.sqrt(0.5) + 0.5), 0.5 / (np.sqrt(0.5) + 0.5)]])


def test_scale_none_only_centres_and_clip_clamps():
    r = torch.tensor(REWARDS)
    np.testing.assert_allclose(group_advantages(r, scale="none").numpy(), REWARDS - REWARDS.mean(1, keepdims=True))
    got = group_advantages(r, std="roll", clip=1.0).numpy()
    np.testing.assert_allclose(got, np.clip(_numpy(REWARDS, "roll", "group", 1e-6), -1.0, 1.0), rtol=1e-12)
    assert got.max() == 1.0 and got.min() == -1.0  # the clip is active on these rewards


def test_a_mask_leaves_rewards_out_of_the_statistics():
    r = torch.tensor([[1.0, 0.0, 5.0, 0.5], [2.0, 7.0, 7.0, 7.0]], dtype=torch.float64)
    keep = torch.tensor([[True, True, False, True], [True, False, False, False]])
    got = group_advantages(r, std="trl", mask=keep).numpy()
    row = np.array([1.0, 0.0, 0.5])
    expect = (row - row.mean()) / (np.std(row, ddof=1) + 1e-4)
    np.testing.assert_allclose(got[0, [0, 1, 3]], expect, rtol=1e-12)
    assert got[0, 2] == 0 and (got[1] == 0).all()  # left out; a group of one counted reward


def test_integer_rewards_give_float32_and_float32_stays_float32():
    assert group_advantages(torch.tensor([[1, 0, 1, 1]])).dtype == torch.float32
    assert group_advantages(torch.tensor([[1.0, 0.0]], dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("std", ["population", "trl", "roll"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_rewards_in_a_group_give_exactly_zero(std, scale, dtype):
    # in float64, mean([0.1] * 7) - 0.1 = 1.4e-17: a std of ~1e-17, which eps 0 would blow up to +-1
    r = torch.tensor([[0.1] * 7, [0.7] * 7, [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [1 / 3] * 7], dtype=dtype)
    a = group_advantages(r, std=std, scale=scale, eps=0.0 if std == "population" else None)
    assert (a[[0, 1, 3]] == 0).all()
    assert (a[2] != 0).all()
    assert torch.isfinite(a).all()


def test_a_batch_of_equal_rewards_with_eps_zero_is_zero_not_nan():
    a = group_advantages(torch.full((2, 3), 0.5), std="population", scale="batch", eps=0.0)
    assert (a == 0).all()


def test_equal_rewards_give_exactly_zero_policy_gradient_so_only_kl_remains():
    g, c, beta = 4, 3, 0.04
    rewards = torch.tensor([[0.3] * g, [1.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards).reshape(-1)  # prompt-major rows
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(2 * g, c, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(2 * g, c, generator=gen, dtype=torch.float64)  # ratios != 1, unclipped
    ref = logp.detach() + 0.5 * torch.randn(2 * g, c, generator=gen, dtype=torch.float64)
    mask = torch.ones(2 * g, c, dtype=torch.float64)
    mask[1, 2] = mask[g + 1, 0] = 0

    # no KL: the equal group's rows get exactly zero gradient, the mixed group's do not
    loss, _ = grpo_loss(logp, old, adv, mask, GRPOConfig(loss_type="grpo"))
    loss.backward()
    assert (logp.grad[:g] == 0).all()
    assert ((logp.grad[g:] != 0) == (mask[g:] == 1)).all()
    # raw rewards as advantages (no group baseline) would move the equal group: the test discriminates
    logp.grad = None
    grpo_loss(logp, old, rewards.reshape(-1).double(), mask, GRPOConfig())[0].backward()
    assert (logp.grad[:g] != 0).any()

    # with KL: the equal group's gradient is the KL gradient alone, d/dlogp beta*(e^d - d - 1) = beta*(1 - e^d)
    logp.grad = None
    grpo_loss(logp, old, adv, mask, GRPOConfig(beta=beta), ref_logp=ref)[0].backward()
    d = (ref - logp).detach().numpy()
    m = mask.numpy()
    kl_grad = beta * (1 - np.exp(d)) * m / m.sum(1, keepdims=True) / (2 * g)  # "grpo": token mean, then row mean
    np.testing.assert_allclose(logp.grad[:g].numpy(), kl_grad[:g], rtol=1e-12, atol=1e-15)


def test_a_non_finite_reward_is_named_unless_masked_out():
    r = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match=r"rewards must be finite where counted .*rewards\[1, 0\] = nan"):
        group_advantages(r)
    a = group_advantages(r, mask=torch.tensor([[True, True], [False, True]]))
    assert a[1].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"rewards must be a tensor \[num_groups, group_size\], got \(4,\)"):
        group_advantages(torch.zeros(4))
