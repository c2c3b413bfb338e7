"""The GRPO objective against TRL's per-token loss written out in numpy here (every loss type, with
and without the KL term, symmetric and asymmetric clipping, the two-sided cap), the zero gradient
of clipped tokens, and the k3 KL estimator."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from recis.rl import GRPOConfig, aggregate, clipped_objective, grpo_loss, importance_ratio, k3_kl

N, C = 6, 5


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, size=(N, C))
    old = logp + rng.normal(0.0, 0.4, size=(N, C))  # ratios on both sides of the clip range
    ref = logp + rng.normal(0.0, 0.5, size=(N, C))
    lengths = np.array([5, 3, 1, 5, 2, 4])
    mask = (np.arange(C)[None, :] < lengths[:, None]).astype(np.float64)
    adv = rng.normal(0.0, 1.0, size=N)
    return logp, old, ref, mask, adv


def trl_loss(logp, old, ref, mask, adv, loss_type, beta, eps_low, eps_high, delta=None, max_len=None,
             num_items=None):
    """TRL GRPOTrainer._compute_loss for token-level importance sampling, in numpy."""
    adv = adv[:, None] if adv.ndim == 1 else adv
    coef_1 = np.exp(logp - old)
    coef_2 = np.clip(coef_1, 1 - eps_low, 1 + eps_high)
    if delta is not None:
        coef_1 = np.minimum(coef_1, delta)
    per_token = -np.minimum(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        per_token = per_token + beta * (np.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * mask).sum() / max(mask.sum(), 1.0)
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.shape[0] * max_len)
    assert loss_type == "dapo"
    return (per_token * mask).sum() / (mask.sum() if num_items is None else num_items)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps", [(0.2, None), (0.2, 0.28), (0.1, 0.4)])
@pytest.mark.parametrize("delta", [None, 1.6])
def test_grpo_loss_equals_trls_per_token_loss(loss_type, beta, eps, delta):
    logp, old, ref, mask, adv = _batch()
    eps_low, eps_high = eps
    cfg = GRPOConfig(epsilon_low=eps_low, epsilon_high=eps_high, beta=beta, loss_type=loss_type, delta=delta,
                     max_completion_length=8 if loss_type == "dr_grpo" else None)
    loss, stats = grpo_loss(_t(logp), _t(old), _t(adv), _t(mask), cfg, ref_logp=_t(ref))
    expect = trl_loss(logp, old, ref, mask, adv, loss_type, beta, eps_low, eps_low if eps_high is None else eps_high,
                      delta, max_len=8)
    assert float(loss) == pytest.approx(expect, rel=1e-12, abs=1e-15)

    high = eps_low if eps_high is None else eps_high
    ratio = np.exp(logp - old)
    a = adv[:, None]
    low_clip = (ratio < 1 - eps_low) & (a < 0)
    high_clip = (ratio > 1 + high) & (a > 0)
    assert stats["clip_low"] == pytest.approx((low_clip * mask).sum() / mask.sum())
    assert stats["clip_high"] == pytest.approx((high_clip * mask).sum() / mask.sum())
    assert stats["clip_fraction"] == pytest.approx(((low_clip | high_clip) * mask).sum() / mask.sum())
    assert 0 < stats["clip_fraction"] < 1  # the batch exercises both sides
    assert stats["ratio_mean"] == pytest.approx((ratio * mask).sum() / mask.sum())
    d = ref - logp
    assert stats["kl"] == pytest.approx(((np.exp(d) - d - 1) * mask).sum() / mask.sum())
    no_kl = trl_loss(logp, old, ref, mask, adv, loss_type, 0.0, eps_low, high, delta, max_len=8)
    assert stats["policy_loss"] == pytest.approx(no_kl, rel=1e-12, abs=1e-15)


def test_dapo_normalizes_by_the_generation_batchs_token_count():
    logp, old, ref, mask, adv = _batch(1)
    cfg = GRPOConfig(loss_type="dapo")
    halves = [slice(0, 3), slice(3, 6)]
    total = mask.sum()
    parts = [float(grpo_loss(_t(logp[h]), _t(old[h]), _t(adv[h]), _t(mask[h]), cfg, num_items=total)[0])
             for h in halves]
    expect = trl_loss(logp, old, ref, mask, adv, "dapo", 0.0, 0.2, 0.2)  # one token mean over the whole batch
    assert sum(parts) == pytest.approx(expect, rel=1e-12)
    bnpo = [trl_loss(logp[h], old[h], ref[h], mask[h], adv[h], "bnpo", 0.0, 0.2, 0.2) for h in halves]
    assert sum(parts) != pytest.approx(sum(bnpo) / 2)  # per-minibatch means weigh tokens differently


def test_per_token_advantages_match_trl_with_a_token_level_a():
    logp, old, ref, mask, _ = _batch(2)
    adv = np.random.default_rng(3).normal(size=(N, C))  # e.g. step-level credit
    for loss_type in ("grpo", "bnpo"):
        cfg = GRPOConfig(loss_type=loss_type, beta=0.02, epsilon_high=0.28)
        loss, _ = grpo_loss(_t(logp), _t(old), _t(adv), _t(mask), cfg, ref_logp=_t(ref))
        assert float(loss) == pytest.approx(trl_loss(logp, old, ref, mask, adv, loss_type, 0.02, 0.2, 0.28), rel=1e-12)


def test_aggregate_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(aggregate(x, m, "grpo")) == pytest.approx(((1 + 2) / 2 + 4 / 1) / 2)
    assert float(aggregate(x, m, "bnpo")) == pytest.approx((1 + 2 + 4) / 3)
    assert float(aggregate(x, m, "dr_grpo", max_completion_length=10)) == pytest.approx((1 + 2 + 4) / (2 * 10))
    assert float(aggregate(x, m, "dapo")) == pytest.approx((1 + 2 + 4) / 3)
    assert float(aggregate(x, m, "dapo", num_items=14)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_completion_length must be an integer >= 1 with loss_type 'dr_grpo'"):
        aggregate(x, m, "dr_grpo")
    with pytest.raises(ValueError, match=r"loss_type must be one of \('grpo', 'bnpo', 'dr_grpo', 'dapo'\), got 'ppo'"):
        aggregate(x, m, "ppo")


# --- clipping: a token pushed past the range in its advantage's direction gets zero gradient --------
# token:             0 high-clipped  1 low-clipped  2 pessimistic  3 pessimistic  4 on-policy  5 inside (asym)
RATIOS = np.array([1.5, 0.5, 1.5, 0.5, 1.0, 1.25])
ADV = np.array([2.0, -1.0, -1.5, 0.7, 1.2, 0.9])
CLIPPED = np.array([True, True, False, False, False, False])


def _clip_grad(loss_fn):
    logp = torch.full((1, 6), -1.0, dtype=torch.float64, requires_grad=True)
    old = (logp.detach() - _t(np.log(RATIOS))[None])
    loss_fn(logp, old, _t(ADV)[None]).backward()
    return logp.grad[0].numpy()


def test_clipped_tokens_get_exactly_zero_gradient_and_the_others_do_not():
    cfg = GRPOConfig(epsilon_low=0.2, epsilon_high=0.28, loss_type="bnpo")
    grad = _clip_grad(lambda lp, old, a: grpo_loss(lp, old, a, torch.ones(1, 6), cfg)[0])
    assert (grad[CLIPPED] == 0).all()
    # the others: d(-rho * A)/dlogp = -rho * A, over the 6 tokens (bnpo)
    np.testing.assert_allclose(grad[~CLIPPED], (-RATIOS * ADV / 6)[~CLIPPED], rtol=1e-12)
    # a loss without clipping moves every token: the assertion above discriminates
    vanilla = _clip_grad(lambda lp, old, a: -(importance_ratio(lp, old) * a).mean())
    assert (vanilla != 0).all()


def test_symmetric_clipping_clips_the_token_asymmetry_keeps():
    grad = _clip_grad(lambda lp, old, a: -clipped_objective(importance_ratio(lp, old), a, 0.2, 0.2).sum())
    assert grad[5] == 0  # ratio 1.25 > 1.2 with A > 0
    assert (grad[CLIPPED] == 0).all() and (grad[2:5] != 0).all()


def test_delta_caps_the_ratio_of_negative_advantages():
    logp = torch.tensor([[-1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    old = logp.detach() - np.log(5.0)  # ratio 5
    a = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    surr = clipped_objective(importance_ratio(logp, old), a, 0.2, 0.2, delta=3.0)
    np.testing.assert_allclose(surr.detach().numpy(), [[-3.0, 1.2]])  # min(3 * -1, 1.2 * -1); min(3 * 1, 1.2 * 1)
    surr.sum().backward()
    assert (logp.grad == 0).all()
    logp.grad = None
    clipped_objective(importance_ratio(logp, old), a, 0.2, 0.2).sum().backward()  # no cap: -5 moves
    assert logp.grad[0, 0] == pytest.approx(-5.0) and logp.grad[0, 1] == 0


def test_shapes_are_named():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"old_logp must have the shape of logp \(2, 3\), got \(3, 2\)"):
        grpo_loss(z, torch.zeros(3, 2), torch.zeros(2), z, GRPOConfig())
    with pytest.raises(ValueError, match=r"advantages must be \[N\] or \[N, C\] with N, C = 2, 3, got \(3,\)"):
        grpo_loss(z, z, torch.zeros(3), z, GRPOConfig())
    with pytest.raises(ValueError, match=r"ref_logp is required with a KL term \(GRPOConfig.beta = 0.1\)"):
        grpo_loss(z, z, torch.zeros(2), z, GRPOConfig(beta=0.1))


# --- k3 KL ------------------------------------------------------------------------------------------
# log-probs of likely tokens too (near 0), where ref - logp is small and finely resolved: there
# exp(d) - d - 1 rounds below 0 in floating point
logprobs = st.one_of(st.floats(-30.0, 0.0, width=32), st.floats(-2.0 ** -12, 0.0, width=32))


@given(st.lists(st.tuples(logprobs, logprobs), min_size=1, max_size=64))
def test_k3_kl_is_never_negative(pairs):
    for dtype in (torch.float32, torch.float64):
        logp = torch.tensor([[p for p, _ in pairs]], dtype=dtype)
        ref = torch.tensor([[r for _, r in pairs]], dtype=dtype)
        assert (k3_kl(logp, ref) >= 0).all()


@given(st.lists(logprobs, min_size=1, max_size=16))
def test_k3_kl_is_zero_at_the_reference(values):
    logp = torch.tensor([values])
    assert (k3_kl(logp, logp.clone()) == 0).all()


def test_k3_kl_matches_numpy_and_its_gradient():
    rng = np.random.default_rng(5)
    logp, ref = -rng.uniform(0, 5, (3, 4)), -rng.uniform(0, 5, (3, 4))
    lp = _t(logp).requires_grad_()
    kl = k3_kl(lp, _t(ref))
    d = ref - logp
    np.testing.assert_allclose(kl.detach().numpy(), np.exp(d) - d - 1, rtol=1e-12)
    kl.sum().backward()
    np.testing.assert_allclose(lp.grad.numpy(), 1 - np.exp(d), rtol=1e-12)  # d/dlogp; the reference is constant
