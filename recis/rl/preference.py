"""Sigmoid DPO on sequence log-probabilities (summed over completion tokens).

    D    = (logp(y_w) - ref(y_w)) - (logp(y_l) - ref(y_l))
    loss = mean over pairs of  -(1 - ls) * log sigmoid(beta * D) - ls * log sigmoid(-beta * D)

ls (label smoothing) is the assumed probability that a pair's preference is flipped
(conservative DPO); at ls = 0 this is DPO's loss. At policy == reference, D = 0 and the loss is
log 2 whatever beta and ls:

>>> z = torch.zeros(3)
>>> loss, stats = dpo_loss(z, z, z, z, beta=0.1)
>>> round(float(loss), 6) == round(math.log(2), 6), stats["accuracy"]
(True, 0.0)
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["dpo_loss"]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0
             ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The DPO loss of the module doc over P pairs (each argument [P]: a sequence's log-prob sum
    under the policy or the reference; the reference's are constants). Stats (floats, means over
    the pairs) with the implicit rewards r_w = beta * (logp(y_w) - ref(y_w)), r_l likewise:
    chosen_reward, rejected_reward, reward_margin (r_w - r_l) and accuracy (the fraction with
    r_w > r_l)."""
    named = {"policy_chosen": policy_chosen, "policy_rejected": policy_rejected, "ref_chosen": ref_chosen,
             "ref_rejected": ref_rejected}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [num_pairs] of sequence log-probs, got {shape}")
        if t.shape != policy_chosen.shape:
            raise ValueError(f"{name} must have the shape of policy_chosen {tuple(policy_chosen.shape)}, "
                             f"got {tuple(t.shape)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must be a number in [0, 0.5), got {label_smoothing!r}")
    chosen = policy_chosen - ref_chosen.detach()
    rejected = policy_rejected - ref_rejected.detach()
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    with torch.no_grad():
        r_w, r_l = beta * chosen, beta * rejected
        stats = {"chosen_reward": float(r_w.mean()), "rejected_reward": float(r_l.mean()),
                 "reward_margin": float((r_w - r_l).mean()), "accuracy": float((r_w > r_l).float().mean())}
    return losses.mean(), stats
