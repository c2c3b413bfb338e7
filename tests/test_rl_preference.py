"""Sigmoid DPO against its formula in numpy: log 2 at policy == reference, beta and label
smoothing, the gradient's sign under a swap of chosen and rejected, and the reward statistics."""
import math

import numpy as np
import pytest
import torch

from recis.rl import dpo_loss


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("ls", [0.0, 0.3])
def test_loss_is_log_2_at_the_reference(beta, ls):
    seq = _t([-12.5, -3.0, -40.25])  # any sequence log-probs, the policy equal to the reference
    loss, stats = dpo_loss(seq, seq - 1.0, seq.clone(), seq - 1.0, beta=beta, label_smoothing=ls)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-12)
    assert stats["reward_margin"] == 0 and stats["accuracy"] == 0


@pytest.mark.parametrize("beta,ls", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (1.0, 0.45)])
def test_loss_matches_numpy(beta, ls):
    rng = np.random.default_rng(7)
    pc, pr, rc, rr = (-rng.uniform(1, 30, size=8) for _ in range(4))
    loss, _ = dpo_loss(_t(pc), _t(pr), _t(rc), _t(rr), beta=beta, label_smoothing=ls)
    d = (pc - rc) - (pr - rr)
    expect = np.mean(-(1 - ls) * _log_sigmoid(beta * d) - ls * _log_sigmoid(-beta * d))
    assert float(loss) == pytest.approx(expect, rel=1e-12)


def test_swapping_chosen_and_rejected_flips_the_gradient():
    rng = np.random.default_rng(8)
    a, b, ra, rb = (-rng.uniform(1, 30, size=16) for _ in range(4))

    def grads(chosen, rejected, ref_c, ref_r, ls=0.0):
        c, r = _t(chosen, True), _t(rejected, True)
        dpo_loss(c, r, _t(ref_c), _t(ref_r), beta=0.3, label_smoothing=ls)[0].backward()
        return c.grad.numpy(), r.grad.numpy()

    ga, gb = grads(a, b, ra, rb)
    sb, sa = grads(b, a, rb, ra)  # a is now the rejected one
    assert (ga < 0).all() and (gb > 0).all()  # descent raises logp(chosen), lowers logp(rejected)
    assert (np.sign(sa) == -np.sign(ga)).all() and (np.sign(sb) == -np.sign(gb)).all()
    # dL/dD = -beta * sigmoid(-beta * D) / P; after the swap D -> -D
    d = (a - ra) - (b - rb)
    np.testing.assert_allclose(ga, -0.3 / (1 + np.exp(0.3 * d)) / 16, rtol=1e-10)
    np.testing.assert_allclose(sa, 0.3 / (1 + np.exp(-0.3 * d)) / 16, rtol=1e-10)
    # at the reference the swap negates the gradient exactly, label smoothing or not
    ga, gb = grads(a, b, a, b, ls=0.2)
    sb, sa = grads(b, a, b, a, ls=0.2)
    np.testing.assert_allclose(sa, -ga, rtol=1e-12)
    np.testing.assert_allclose(ga, -0.3 * (1 - 2 * 0.2) / 2 / 16, rtol=1e-12)


def test_the_reference_gets_no_gradient():
    ref = _t([-3.0, -4.0], True)
    pol = _t([-2.0, -5.0], True)
    dpo_loss(pol, pol.detach() - 1, ref, ref.detach(), beta=0.1)[0].backward()
    assert ref.grad is None and pol.grad is not None


def test_reward_stats_by_hand():
    _, stats = dpo_loss(_t([-1.0, -5.0, -2.0]), _t([-4.0, -3.0, -2.0]), _t([-2.0, -2.0, -2.0]),
                        _t([-2.0, -2.0, -2.0]), beta=0.5)
    # r_w = 0.5 * (1, -3, 0), r_l = 0.5 * (-2, -1, 0)
    assert stats["chosen_reward"] == pytest.approx(0.5 * (1 - 3 + 0) / 3)
    assert stats["rejected_reward"] == pytest.approx(0.5 * (-2 - 1 + 0) / 3)
    assert stats["reward_margin"] == pytest.approx(0.5 * (3 - 2 + 0) / 3)
    assert stats["accuracy"] == pytest.approx(1 / 3)  # only the first pair has r_w > r_l (a tie is not)


def test_bad_input_is_named():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match=r"ref_rejected must have the shape of policy_chosen \(3,\), got \(2,\)"):
        dpo_loss(z, z, z, torch.zeros(2), beta=0.1)
    with pytest.raises(ValueError, match=r"policy_chosen must be a tensor \[num_pairs\] of sequence log-probs, "
                                         r"got \(3, 1\)"):
        dpo_loss(torch.zeros(3, 1), z, z, z, beta=0.1)
    with pytest.raises(ValueError, match=r"beta must be a finite number > 0, got 0"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 0.5\), got 0.5"):
        dpo_loss(z, z, z, z, beta=0.1, label_smoothing=0.5)
