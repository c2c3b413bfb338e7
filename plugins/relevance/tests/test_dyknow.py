"""DyKnow-RAG's dual-group GRPO as pure functions (recis_relevance.dyknow), each checked against the
formula written out here and against the vanilla case it must differ from."""
import math

import relevance_testing  # noqa: F401  (makes the plugin importable)
import pytest
import torch

from recis.rl import GRPOConfig

from recis_relevance.dyknow import (DyKnowConfig, PolicyGroup, correctness_gap, dual_group_advantages, dyknow_loss,
                                    gate, inter_group_objective, piecewise_scale, posterior_scale)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def stats(values, eps):
    """population mean and std with eps inside the root (DyKnow-RAG eqs. 7-8), by hand"""
    mu = sum(values) / len(values)
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / len(values) + eps)


# ---- scaling ------------------------------------------------------------------------------------
def test_posterior_scaling_product_monotone_bounds_and_gap_zero():
    gaps = torch.linspace(-1, 1, 41, dtype=torch.float64)
    alpha, beta = posterior_scale(gaps)
    for g, a, b in zip(gaps.tolist(), alpha.tolist(), beta.tolist()):
        assert b == pytest.approx(4 * sigmoid(4 * g), abs=1e-12)
        assert a * b == pytest.approx(0.1, abs=1e-12)
        assert 4 * sigmoid(-4) - 1e-15 <= b <= 4 * sigmoid(4) + 1e-15  # reached at gap -1 and 1
    assert bool((beta[1:] > beta[:-1]).all()) and bool((alpha[1:] < alpha[:-1]).all())
    a0, b0 = posterior_scale(torch.tensor([0.0]))
    assert float(b0) == 2.0 and float(a0) == pytest.approx(0.05, abs=1e-15)
    assert 4 * sigmoid(-4) == pytest.approx(0.0719, abs=1e-4) and 4 * sigmoid(4) == pytest.approx(3.9281, abs=1e-4)
    # the extremes of a gap in [-1, 1] reach the bounds of eq. 13
    assert float(beta[0]) == pytest.approx(4 * sigmoid(-4)) and float(beta[-1]) == pytest.approx(4 * sigmoid(4))


def test_gating_modes_and_gap_per_query_or_batch():
    c0 = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1.0]])
    c1 = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1.0]])
    per_query = correctness_gap(c0, c1, "query")
    assert per_query.tolist() == [1.0, -0.25, 0.0]
    batch = correctness_gap(c0, c1, "batch")
    assert batch.tolist() == [(9 - 6) / 12] * 3
    a, b = gate(DyKnowConfig(), per_query)
    assert b.tolist() == pytest.approx([4 * sigmoid(4), 4 * sigmoid(-1), 2.0])
    a, b = gate(DyKnowConfig(gap="batch"), batch)
    assert b.tolist() == pytest.approx([4 * sigmoid(1.0)] * 3)
    a, b = gate(DyKnowConfig(gating="fixed"), per_query)
    assert a.tolist() == [2.0] * 3 and b.tolist() == [0.05] * 3
    a, b = gate(DyKnowConfig(gating="human"), decisions=["adopt", "partial", "ignore"])
    assert a.tolist() == [0.05, 0.05, 2.0] and b.tolist() == [2.0, 2.0, 0.05]
    with pytest.raises(ValueError, match="context_decision must be one of"):
        gate(DyKnowConfig(gating="human"), decisions=["adopt", "maybe"])


def test_piecewise_scaling_by_sign():
    at = torch.tensor([[1.5, -0.5, 0.0], [-2.0, 0.25, 1.0]])
    t = piecewise_scale(at, torch.tensor([0.1, 2.0]), torch.tensor([1.0, 0.05]))
    expected = [[0.1 * 1.5, 1.0 * -0.5, 0.0], [0.05 * -2.0, 2.0 * 0.25, 2.0 * 1.0]]
    assert t.reshape(-1).tolist() == pytest.approx([x for row in expected for x in row])


# ---- advantages ---------------------------------------------------------------------------------
def test_per_group_and_union_statistics_population_std_eps_inside_the_root():
    r0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0.0, 1.0]], dtype=torch.float64)
    r1 = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    eps = 0.1  # large, so that eps inside vs outside the root differ
    a0, a1, at = dual_group_advantages(r0, r1, eps=eps)
    for q in range(2):
        m0, s0 = stats(r0[q].tolist(), eps)
        m1, s1 = stats(r1[q].tolist(), eps)
        mu, su = stats(r0[q].tolist() + r1[q].tolist(), eps)
        assert a0[q].tolist() == pytest.approx([(r - m0) / s0 for r in r0[q].tolist()])
        assert a1[q].tolist() == pytest.approx([(r - m1) / s1 for r in r1[q].tolist()])
        assert at[q].tolist() == pytest.approx([(r - mu) / su for r in r0[q].tolist()])
        # group isolation: A0 does not move when the other group's returns change
    assert torch.equal(dual_group_advantages(r0, 1 - r1, eps=eps)[0], a0)
    # the vanilla per-group advantage of the no-context rollouts is not the union one here
    assert not torch.allclose(at, a0)


def test_identical_return_multisets_give_the_union_advantage_equal_to_a0():
    r0 = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    r1 = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # the same multisets, permuted
    a0, _, at = dual_group_advantages(r0, r1)
    assert torch.allclose(at, a0, atol=1e-6)
    m, s = stats(r0[1].tolist(), 1e-6)
    assert at[1].tolist() == pytest.approx([(r - m) / s for r in r0[1].tolist()], abs=1e-6)
    # not so when the multisets differ
    _, _, other = dual_group_advantages(r0, torch.ones_like(r1))
    assert not torch.allclose(other, a0, atol=1e-3)


# ---- the loss -----------------------------------------------------------------------------------
def by_hand_grpo(logp, old, mask, adv, eps_low, eps_high, beta=0.0, ref=None):
    """The GRPO loss (grpo aggregation: token mean per sequence, mean over sequences), by hand."""
    total = 0.0
    for i in range(logp.shape[0]):
        s, n = 0.0, 0
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            rho = torch.exp(logp[i, t] - old[i, t])
            a = float(adv[i])
            term = -torch.minimum(rho * a, rho.clamp(1 - eps_low, 1 + eps_high) * a)
            if beta:
                d = ref[i, t] - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1)
            s, n = s + term, n + 1
        total = total + s / max(n, 1)
    return total / logp.shape[0]


def groups(seed, n=4, c=3, beta=False):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, c, generator=g) * 2).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(n, c, generator=g)
    mask = torch.ones(n, c)
    mask[0, -1] = 0
    ref = logp.detach() + 0.2 * torch.randn(n, c, generator=g) if beta else None
    return logp, old, mask, ref


def test_with_the_inter_group_term_off_the_loss_is_two_independent_grpo_losses():
    r0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    r1 = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a0, a1, at = dual_group_advantages(r0, r1)
    cfg = GRPOConfig(beta=0.05, epsilon_low=0.2, epsilon_high=0.28)
    l0, o0, m0, ref0 = groups(0, beta=True)
    l1, o1, m1, ref1 = groups(1, beta=True)
    re, _, mre, _ = groups(2)
    alpha, beta = posterior_scale(correctness_gap(r0, r1))
    scaled = piecewise_scale(at, alpha, beta).reshape(-1).float()
    g0 = PolicyGroup(l0, o0, m0, a0.reshape(-1), ref0)
    g1 = PolicyGroup(l1, o1, m1, a1.reshape(-1), ref1)
    off, _ = dyknow_loss(g0, g1, re, mre, scaled, cfg, DyKnowConfig(inter_group="off"))
    expected = by_hand_grpo(l0, o0, m0, a0.reshape(-1), 0.2, 0.28, 0.05, ref0) + \
        by_hand_grpo(l1, o1, m1, a1.reshape(-1), 0.2, 0.28, 0.05, ref1)
    assert float(off.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert re.grad is None or float(re.grad.abs().sum()) == 0.0
    # the full DyKnow loss adds -l_hat, written out here, and so differs from vanilla
    on, st = dyknow_loss(g0, g1, re, mre, scaled, cfg, DyKnowConfig())
    l_hat = sum(float((re[i].detach().exp() * mre[i]).sum() / mre[i].sum()) * float(scaled[i]) for i in range(4)) / 4
    assert st["inter_group"] == pytest.approx(l_hat, rel=1e-5)
    assert float(on.detach()) == pytest.approx(float(expected.detach()) - l_hat, rel=1e-5) and abs(l_hat) > 1e-3


@pytest.mark.parametrize("gating", ["posterior", "fixed", "human"])
def test_all_returns_equal_leaves_only_the_kl_gradient(gating):
    r = torch.ones(1, 4)
    a0, a1, at = dual_group_advantages(r, r)
    assert a0.abs().sum() == 0 and a1.abs().sum() == 0 and at.abs().sum() == 0
    alpha, beta = gate(DyKnowConfig(gating=gating), correctness_gap(r, r), decisions=["adopt"])
    scaled = piecewise_scale(at, alpha, beta).reshape(-1).float()
    cfg = GRPOConfig(beta=0.05)
    l0, o0, m0, ref0 = groups(3, beta=True)
    l1, o1, m1, ref1 = groups(4, beta=True)
    re, _, mre, _ = groups(5)
    loss, _ = dyknow_loss(PolicyGroup(l0, o0, m0, a0.reshape(-1), ref0), PolicyGroup(l1, o1, m1, a1.reshape(-1), ref1),
                          re, mre, scaled, cfg, DyKnowConfig(gating=gating))
    loss.backward()
    assert torch.equal(re.grad, torch.zeros_like(re))  # the inter-group term: exactly zero
    for logp, ref, mask in ((l0, ref0, m0), (l1, ref1, m1)):
        lp = logp.detach().requires_grad_()
        d = ref - lp
        kl = (0.05 * (torch.exp(d) - d - 1) * mask).sum(-1) / mask.sum(-1)
        kl.mean().backward()
        assert torch.allclose(logp.grad, lp.grad, atol=1e-7)  # the gradient is the KL's alone
    # without KL, no gradient at all
    l0.grad = None
    loss, _ = dyknow_loss(PolicyGroup(l0, o0, m0, a0.reshape(-1)), PolicyGroup(l1, o1, m1, a1.reshape(-1)),
                          re, mre, scaled, GRPOConfig(), DyKnowConfig(gating=gating))
    loss.backward()
    assert torch.equal(l0.grad, torch.zeros_like(l0))


def test_separation_vanilla_dual_group_grpo_has_zero_policy_gradient_dyknow_does_not():
    """Every no-context rollout wrong, every with-context one right: A0 = A1 = 0, At = -1,
    T = -beta(gap 1) = -4 sigmoid(4); the loss's gradient on pi(o0 | p') is positive, so a descent
    step lowers those probabilities. (The tower-level version with a tiny Llama: test_judge_dyknow.)"""
    r0, r1 = torch.zeros(1, 4), torch.ones(1, 4)
    a0, a1, at = dual_group_advantages(r0, r1)
    alpha, beta = posterior_scale(correctness_gap(r0, r1))
    scaled = piecewise_scale(at, alpha, beta).reshape(-1).float()
    assert scaled.tolist() == pytest.approx([-4 * sigmoid(4) * (0.5 / math.sqrt(0.25 + 1e-6))] * 4)
    l0, o0, m0, _ = groups(6)
    l1, o1, m1, _ = groups(7)
    re, _, mre, _ = groups(8)
    g0, g1 = PolicyGroup(l0, o0, m0, a0.reshape(-1)), PolicyGroup(l1, o1, m1, a1.reshape(-1))
    vanilla, _ = dyknow_loss(g0, g1, re, mre, scaled, GRPOConfig(), DyKnowConfig(inter_group="off"))
    vanilla.backward()
    assert torch.equal(l0.grad, torch.zeros_like(l0)) and torch.equal(l1.grad, torch.zeros_like(l1))
    assert re.grad is None or torch.equal(re.grad, torch.zeros_like(re))
    loss, _ = dyknow_loss(g0, g1, re, mre, scaled, GRPOConfig(), DyKnowConfig())
    loss.backward()
    # d(-l_hat)/d logp_it = -pi_it * T_i / (n |o_i|), written out
    expected = -(re.detach().exp() * mre) * scaled[:, None] / (4 * mre.sum(-1, keepdim=True))
    assert torch.allclose(re.grad, expected, atol=1e-7)
    assert bool((re.grad[mre.bool()] > 0).all())
    before = float((re.detach().exp() * mre).sum())
    after = float(((re.detach() - 0.1 * re.grad).exp() * mre).sum())
    assert after < before


def test_the_reinforce_form_has_value_t_and_gradient_t_times_dlogpi():
    re, _, mre, _ = groups(9)
    scaled = torch.tensor([0.5, -1.0, 2.0, 0.0])
    value = inter_group_objective(re, mre, scaled, "reinforce")
    assert float(value.detach()) == pytest.approx(float(scaled.mean()))
    value.backward()
    assert torch.allclose(re.grad, mre * scaled[:, None] / (4 * mre.sum(-1, keepdim=True)))
    printed = inter_group_objective(re.detach(), mre, scaled, "printed")
    assert float(printed) != pytest.approx(float(value.detach()))  # the printed form weighs by the raw probability


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"model\.dyknow\.gap must be one of \('query', 'batch'\), got 'epoch'"):
        DyKnowConfig(gap="epoch")
    with pytest.raises(ValueError, match=r"model\.dyknow\.gating must be one of"):
        DyKnowConfig(gating="learned")
    with pytest.raises(ValueError, match=r"model\.dyknow\.inter_group must be one of"):
        DyKnowConfig(inter_group="clipped")
    with pytest.raises(ValueError, match=r"model\.dyknow\.eps must be a finite number >= 0"):
        DyKnowConfig(eps=-1e-3)
    with pytest.raises(ValueError, match=r"model\.dyknow\.format_weight"):
        DyKnowConfig(format_weight=-1.0)
    with pytest.raises(ValueError, match="gating 'posterior' needs the correctness gap"):
        gate(DyKnowConfig())
