"""Diffusion-DPO against its formula recomputed in numpy from raw predictions: per-sample errors as
means over (C, F, H, W), log 2 at model == reference, the sign convention (lower winner error lowers
the loss), the implicit accuracy and margin, and input checks that name the argument."""
import math

import numpy as np
import pytest
import torch

from recis.rl import diffusion_dpo_loss


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _reference(pred_w, pred_l, ref_pred_w, ref_pred_l, target, beta):
    """The reference code's loss, written with explicit loops over pairs."""
    losses, inside_all = [], []
    for i in range(pred_w.shape[0]):
        e = [float(np.mean((x[i] - target[i]) ** 2)) for x in (pred_w, pred_l, ref_pred_w, ref_pred_l)]
        inside = -0.5 * beta * ((e[0] - e[1]) - (e[2] - e[3]))
        inside_all.append(inside)
        losses.append(-_log_sigmoid(inside))
    return float(np.mean(losses)), np.array(inside_all)


def _errors(pred, target):
    return ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))


@pytest.mark.parametrize("beta", [1.0, 50.0, 2500.0])
def test_matches_the_reference_formula(beta):
    rng = np.random.default_rng(3)
    shape = (6, 1, 2, 4, 4)
    target = rng.normal(size=shape)
    preds = [target + rng.normal(scale=s, size=shape) for s in (0.3, 0.35, 0.32, 0.33)]
    expect, inside = _reference(*preds, target, beta)
    t = torch.tensor(target)
    e = [_errors(torch.tensor(p), t) for p in preds]
    loss, stats = diffusion_dpo_loss(*e, beta=beta)
    assert float(loss) == pytest.approx(expect, rel=1e-10)
    assert stats["implicit_accuracy"] == pytest.approx(float(np.mean(inside > 0)))
    assert stats["margin"] == pytest.approx(float(np.mean(inside)), rel=1e-10)


@pytest.mark.parametrize("beta", [0.5, 2500.0, 5000.0])
def test_log_2_at_the_reference(beta):
    e_w, e_l = torch.tensor([0.2, 0.9, 1.3]), torch.tensor([0.4, 0.1, 1.3])
    loss, stats = diffusion_dpo_loss(e_w, e_l, e_w.clone(), e_l.clone(), beta=beta)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-7)
    assert stats["implicit_accuracy"] == 0.0 and stats["margin"] == 0.0


def test_sign_convention_lower_winner_error_lowers_the_loss():
    w = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    l = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.5, 0.5], dtype=torch.float64)
    loss, _ = diffusion_dpo_loss(w, l, ref, ref, beta=10.0)
    loss.backward()
    assert (w.grad > 0).all() and (l.grad < 0).all()  # descent lowers e(w), raises e(l)
    # the model denoising the winner better than the reference does: accuracy 1, loss below log 2
    better, stats = diffusion_dpo_loss(torch.tensor([0.4]), torch.tensor([0.5]), torch.tensor([0.5]),
                                       torch.tensor([0.5]), beta=10.0)
    assert float(better) < math.log(2) and stats["implicit_accuracy"] == 1.0 and stats["margin"] > 0


def test_reference_is_a_constant():
    e = torch.tensor([0.3, 0.6], requires_grad=True)
    r = torch.tensor([0.4, 0.5], requires_grad=True)
    loss, _ = diffusion_dpo_loss(e, e.flip(0), r, r.flip(0), beta=3.0)
    loss.backward()
    assert r.grad is None


@pytest.mark.parametrize("args,match", [
    (dict(model_w=torch.zeros(2, 3)), "model_w must be a tensor \\[num_pairs\\]"),
    (dict(ref_l=torch.zeros(3)), "ref_l must have the shape of model_w"),
    (dict(model_l=[0.1, 0.2]), "model_l must be a tensor"),
    (dict(ref_w=torch.zeros(2, dtype=torch.long)), "ref_w must be a floating-point"),
    (dict(beta=0.0), "beta must be a finite number > 0"),
    (dict(beta=float("inf")), "beta must be a finite number > 0"),
])
def test_bad_inputs_are_named(args, match):
    base = dict(model_w=torch.zeros(2), model_l=torch.zeros(2), ref_w=torch.zeros(2), ref_l=torch.zeros(2), beta=1.0)
    base.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        diffusion_dpo_loss(**base)
