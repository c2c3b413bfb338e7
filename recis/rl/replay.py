"""Guided replay: which groups of rollouts get guided (off-policy) replacements, which rollouts
they replace, and the old log-probs their importance ratios are taken against.

A group of G completions sampled for one prompt whose accuracy is at most `tau` carries little or
no learning signal (all wrong: every reward equal, zero advantage). Guided replay samples m
completions from the prompt plus a hint (the guided prompt x + h), replaces the m worst rollouts
of the group with them, and trains on them under the UNGUIDED prompt x. The replacements were not
drawn from pi(. | x), so their ratios are off-policy:

    guide_mask      fire_i = mean_g(correct[i, g]) <= tau                    (accuracy at most tau)
    worst_rollouts  the m lowest rewards of each firing group (ties: the earlier rollout first)
    replay_old_logprobs
        correction "none":      old_t = log pi_old(o_t | x, o_<t)      rho_t = pi / pi_old under x
        correction "behavior":  old_t = log pi_old(o_t | x + h, o_<t)  rho_t = pi(o_t | x) / pi_old(o_t | x + h)

With "none" a replacement's ratio is 1 at the first inner step and the standard clip bounds it
afterwards; with "behavior" the ratio is the importance weight of the policy that generated the
tokens, clipped by the same clip (our reading of Guide-GRPO's correction, which its abstract
states as "adjusts the importance sampling ratio for the off-policy trajectories"; the formula is
ours, see docs/rl.md).

>>> correct = torch.tensor([[0., 0., 0., 0.], [1., 0., 0., 0.], [1., 1., 0., 0.]])
>>> guide_mask(correct, 0.25)
tensor([ True,  True, False])
>>> worst_rollouts(torch.tensor([[0.3, 0.1, 0.1, 0.9], [1.0, 0.0, 0.5, 0.2]]), torch.tensor([True, True]), 2)
tensor([[1, 2],
        [1, 3]])
"""
import math

import torch

__all__ = ["CORRECTIONS", "guide_mask", "worst_rollouts", "replay_old_logprobs"]

#: how the old log-probs of a guided replacement are taken (see the module doc)
CORRECTIONS = ("none", "behavior")


def _check_groups(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor [num_groups, group_size], got {shape}")


def guide_mask(correct: torch.Tensor, tau: float) -> torch.Tensor:
    """Bool [num_groups]: the group's accuracy mean_g(correct[i, g]) is <= tau, for `correct`
    [num_groups, G] (1 for a correct rollout, else 0; or any score in [0, 1]). The mean is taken in
    float64, so a boundary such as 0.25 compares as written (accuracy 1/4 fires at tau = 0.25)."""
    _check_groups("correct", correct)
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and math.isfinite(tau) and 0 <= tau <= 1):
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")
    return correct.detach().to(torch.float64).mean(dim=1) <= tau


def worst_rollouts(rewards: torch.Tensor, fire: torch.Tensor, m: int) -> torch.Tensor:
    """Long [num_fired, m]: for each group with `fire` set (in group order), the positions 0..G-1
    of its m lowest rewards, lowest first (a stable sort: equal rewards keep their order)."""
    _check_groups("rewards", rewards)
    if fire.shape != rewards.shape[:1] or fire.dtype != torch.bool:
        raise ValueError(f"fire must be a bool tensor [{rewards.shape[0]}], got {fire.dtype} {tuple(fire.shape)}")
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= rewards.shape[1]:
        raise ValueError(f"m must be an integer in [1, group_size = {rewards.shape[1]}], got {m!r}")
    order = torch.sort(rewards.detach()[fire], dim=1, stable=True).indices
    return order[:, :m]


def replay_old_logprobs(unguided: torch.Tensor, behavior: torch.Tensor, guided: torch.Tensor,
                        correction: str) -> torch.Tensor:
    """The old log-probs [N, C] of a batch with guided replacements: `unguided` [N, C] (the
    sampling policy's log-probs under the unguided prompt, every row), `behavior` [N, C] (those of
    the rows' tokens under the prompt they were sampled from: the guided prompt for replacements),
    `guided` bool [N] (the replacements). Correction "none" keeps `unguided`; "behavior" takes
    `behavior` on the guided rows."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if unguided.shape != behavior.shape or unguided.dim() != 2:
        raise ValueError(f"unguided {tuple(unguided.shape)} and behavior {tuple(behavior.shape)} must be the same "
                         "[N, C] shape")
    if guided.shape != unguided.shape[:1]:
        raise ValueError(f"guided must be [N] = [{unguided.shape[0]}], got {tuple(guided.shape)}")
    if correction == "none":
        return unguided.detach()
    return torch.where(guided.bool()[:, None], behavior, unguided).detach()
