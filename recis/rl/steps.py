"""Process rewards: step segmentation of completions and step-level token advantages (SRPO).

A chain-of-thought completion is a run of steps, each opened by a separator token. With
outcome rewards o [num_groups, G] (one per completion) and step rewards r [num_groups, G, K]
(one per step, `step_mask` marking the steps a completion has), the advantage of token t of
completion i, in its step k, is

    A_it   = A_out_i + lam * c_ik * Ahat_ik          (tokens outside every step: A_out_i)
    A_out  = group_advantages(o)                     the GRPO advantage of the outcome
    Ahat_ik = (r_ik - b_ik) / s                      s: the spread of the step rewards of the
                                                     group (all counted steps of its G rollouts)

with the baseline b (`STEP_BASELINES`) either the group's mean step reward ("group": Ahat is the
z-score of the step rewards over all steps of the group) or the completion's own outcome
("outcome", ours: Ahat measures what a step adds to or takes from its rollout's outcome, so step
rewards equal to the outcomes leave GRPO's advantages exactly). c is the critical-step mask
(`critical_steps`): the first incorrect step of a wrong completion, and the steps of a correct
completion the caller marks decisive. lam = 0 gives GRPO's advantages exactly.

>>> ids = torch.tensor([[7, 9, 5, 5, 9, 5, 2]]); mask = torch.ones_like(ids)
>>> step_index(ids, mask, separator_id=9, stop_ids=(2,)).tolist()   # 7: a label before the steps, 2: eos
[[-1, 0, 0, 0, 1, 1, -1]]
>>> r = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]); m = torch.ones(1, 2, 2, dtype=torch.bool)
>>> step_advantages(r, m, std="population", eps=0.0)
tensor([[[ 1., -1.],
         [ 1., -1.]]])
"""
from typing import Optional, Sequence

import torch

from recis.rl.advantages import _spread, group_advantages
from recis.rl.config import DEFAULT_STD_EPS, SCALES, STD_CONVENTIONS, check_choice

__all__ = ["STEP_BASELINES", "step_index", "step_counts", "step_slots", "step_advantages", "critical_steps",
           "token_advantages", "srpo_advantages"]

#: what a step reward is compared with: the group's mean step reward, or its completion's outcome
STEP_BASELINES = ("group", "outcome")


def _check_2d(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor [N, C], got {shape}")


def step_index(completion_ids: torch.Tensor, completion_mask: torch.Tensor, separator_id: int,
               stop_ids: Sequence[int] = ()) -> torch.Tensor:
    """The step of every completion token: long [N, C], k = 0, 1, ... from the k-th separator
    token (the separator belongs to the step it opens) up to the next separator, or up to a stop
    token (`stop_ids`: an end-of-sequence token, a label written after the steps); -1 before the
    first separator, from a stop token to the next separator, and where the mask is 0."""
    _check_2d("completion_ids", completion_ids)
    if completion_mask.shape != completion_ids.shape:
        raise ValueError(f"completion_mask {tuple(completion_mask.shape)} must have completion_ids' shape "
                         f"{tuple(completion_ids.shape)}")
    stops = [int(s) for s in stop_ids]
    if int(separator_id) in stops:
        raise ValueError(f"separator_id {separator_id} is also a stop id")
    on = completion_mask.bool()
    sep = (completion_ids == int(separator_id)) & on
    stop = torch.isin(completion_ids, torch.tensor(stops, dtype=completion_ids.dtype,
                                                   device=completion_ids.device)) & on
    pos = torch.arange(completion_ids.shape[1], device=completion_ids.device).expand_as(completion_ids)
    last_sep = torch.where(sep, pos, -1).cummax(1).values
    last_stop = torch.where(stop, pos, -1).cummax(1).values
    inside = on & (last_sep >= 0) & (last_sep > last_stop)
    return torch.where(inside, sep.long().cumsum(1) - 1, torch.full_like(pos, -1))


def step_counts(index: torch.Tensor) -> torch.Tensor:
    """Steps per completion [N] of a `step_index` result (its largest index + 1)."""
    _check_2d("index", index)
    if index.shape[1] == 0:
        return torch.zeros(index.shape[0], dtype=torch.long, device=index.device)
    return (index.max(1).values + 1).clamp_min(0)


def step_slots(counts: torch.Tensor, num_steps: Optional[int] = None) -> torch.Tensor:
    """Bool [N, K]: slot k holds a step of completion i (k < counts[i]); K = `num_steps` or the
    largest count."""
    K = int(counts.max()) if num_steps is None and counts.numel() else (num_steps or 0)
    return torch.arange(K, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)


def step_advantages(step_rewards: torch.Tensor, step_mask: torch.Tensor, outcomes: Optional[torch.Tensor] = None,
                    baseline: str = "group", std: str = "trl", scale: str = "group", eps: Optional[float] = None,
                    clip: Optional[float] = None) -> torch.Tensor:
    """Ahat [num_groups, G, K] = (r - b) / s for step rewards r [num_groups, G, K] (see the module
    doc): s is the spread of the counted step rewards by the `std` convention over the group's
    steps (scale "group"), the batch's (centred per group, "batch") or 1 ("none"), as
    `group_advantages` takes it over outcomes; b the group's mean step reward (baseline "group":
    exactly `group_advantages` of the group's steps flattened) or the step's completion's outcome
    (baseline "outcome", needs `outcomes` [num_groups, G] on the step rewards' scale). Steps not in
    `step_mask` get 0, and so does every step of a group whose counted step rewards are all equal
    (no step-level contrast); clipped to +-clip."""
    check_choice("baseline", baseline, STEP_BASELINES)
    check_choice("std", std, STD_CONVENTIONS)
    check_choice("scale", scale, SCALES)
    if not isinstance(step_rewards, torch.Tensor) or step_rewards.dim() != 3:
        shape = tuple(step_rewards.shape) if isinstance(step_rewards, torch.Tensor) else type(step_rewards).__name__
        raise ValueError(f"step_rewards must be a tensor [num_groups, G, K], got {shape}")
    if step_mask.shape != step_rewards.shape:
        raise ValueError(f"step_mask must have step_rewards' shape {tuple(step_rewards.shape)}, "
                         f"got {tuple(step_mask.shape)}")
    B, G, K = step_rewards.shape
    flat_r, flat_m = step_rewards.reshape(B, G * K), step_mask.reshape(B, G * K)
    if baseline == "group":
        return group_advantages(flat_r, std=std, scale=scale, eps=eps, clip=clip, mask=flat_m).reshape(B, G, K)
    if outcomes is None or tuple(outcomes.shape) != (B, G):
        got = None if outcomes is None else tuple(outcomes.shape)
        raise ValueError(f"baseline 'outcome' needs outcomes [num_groups, G] = {(B, G)}, got {got}")
    eps = DEFAULT_STD_EPS[std] if eps is None else eps
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    out_dtype = step_rewards.dtype if step_rewards.is_floating_point() else torch.float32
    keep = flat_m.to(device=flat_r.device, dtype=torch.bool)
    r = torch.where(keep, flat_r.detach().to(torch.float64), torch.zeros((), dtype=torch.float64))
    if not torch.isfinite(r).all():
        raise ValueError("step_rewards must be finite where counted (mask them out otherwise)")
    o = outcomes.detach().to(torch.float64).unsqueeze(2).expand(B, G, K).reshape(B, G * K)
    w = keep.to(torch.float64)
    n = w.sum(1, keepdim=True)
    centred = (r - (r * w).sum(1, keepdim=True) / n.clamp(min=1)) * w
    if scale == "group":
        s = _spread(centred, w, 1, std, eps)
    elif scale == "batch":
        s = _spread((r - (r * w).sum() / w.sum().clamp(min=1)) * w, w, (0, 1), std, eps)
    else:
        s = torch.ones_like(n)
    top = r.masked_fill(~keep, -torch.inf).amax(1, keepdim=True)
    bottom = r.masked_fill(~keep, torch.inf).amin(1, keepdim=True)
    adv = torch.where(keep & (top != bottom) & (n >= 2), (r - o) / s, torch.zeros_like(r))
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.to(out_dtype).reshape(B, G, K)


def critical_steps(step_correct: torch.Tensor, step_mask: torch.Tensor, outcome_correct: torch.Tensor,
                   decisive: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The critical-step mask c, bool [N, K]: in a wrong completion (outcome_correct False) its
    first incorrect step (none when all its steps are correct), in a correct completion the
    steps `decisive` marks ([N, K]; None: none of them). Only steps in `step_mask` count."""
    _check_2d("step_correct", step_correct)
    for name, t in (("step_mask", step_mask), ("decisive", decisive)):
        if t is not None and t.shape != step_correct.shape:
            raise ValueError(f"{name} must have step_correct's shape {tuple(step_correct.shape)}, got {tuple(t.shape)}")
    if outcome_correct.shape != step_correct.shape[:1]:
        raise ValueError(f"outcome_correct must be [N] = {tuple(step_correct.shape[:1])}, got "
                         f"{tuple(outcome_correct.shape)}")
    here = step_mask.bool()
    wrong = here & ~step_correct.bool()
    first = wrong & (wrong.long().cumsum(1) == 1)
    right = outcome_correct.bool().unsqueeze(1)
    marked = here & decisive.bool() if decisive is not None else torch.zeros_like(here)
    return torch.where(right, marked, first)


def token_advantages(outcome_advantages: torch.Tensor, step_advantages: torch.Tensor, critical: torch.Tensor,
                     index: torch.Tensor, lam: float) -> torch.Tensor:
    """A [N, C] = A_out[:, None] + lam * c[i, k] * Ahat[i, k] at each token of step k = index[i, t]
    (tokens with index -1 get A_out). `outcome_advantages` [N], `step_advantages` and `critical`
    [N, K], `index` [N, C] (`step_index`). lam = 0 returns A_out on every token, exactly."""
    _check_2d("index", index)
    N = index.shape[0]
    if outcome_advantages.shape != (N,):
        raise ValueError(f"outcome_advantages must be [N] = ({N},), got {tuple(outcome_advantages.shape)}")
    if step_advantages.dim() != 2 or step_advantages.shape[0] != N or critical.shape != step_advantages.shape:
        raise ValueError(f"step_advantages and critical must be [N, K] with N = {N}, got "
                         f"{tuple(step_advantages.shape)} and {tuple(critical.shape)}")
    if not (isinstance(lam, (int, float)) and lam >= 0 and lam != float("inf")):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    K = step_advantages.shape[1]
    if index.numel() and int(index.max()) >= K:
        raise ValueError(f"index names step {int(index.max())} but step_advantages has K = {K} slots")
    base = outcome_advantages.unsqueeze(1).expand_as(index)
    if lam == 0 or K == 0:
        return base.clone()
    term = (lam * critical.to(step_advantages.dtype) * step_advantages).to(base.dtype)
    per_token = term.gather(1, index.clamp_min(0))
    return torch.where(index >= 0, base + per_token, base)


def srpo_advantages(outcome_rewards: torch.Tensor, step_rewards: torch.Tensor, step_mask: torch.Tensor,
                    critical: torch.Tensor, index: torch.Tensor, lam: float, baseline: str = "group",
                    std: str = "trl", scale: str = "group", eps: Optional[float] = None,
                    clip: Optional[float] = None) -> torch.Tensor:
    """Token advantages [N, C] (N = num_groups * G, prompt-major) of the module doc, from outcome
    rewards [num_groups, G], step rewards and their mask [num_groups, G, K], the critical mask
    [N, K] and the step index [N, C]. A_out is `group_advantages(outcome_rewards, std, scale, eps,
    clip)`, GRPO's; Ahat `step_advantages` with the same options (baseline "outcome" compares each
    step reward with its completion's outcome reward: both on one scale)."""
    B, G = outcome_rewards.shape
    a_out = group_advantages(outcome_rewards, std=std, scale=scale, eps=eps, clip=clip).reshape(-1)
    a_step = step_advantages(step_rewards, step_mask, outcome_rewards, baseline, std, scale, eps, clip)
    return token_advantages(a_out, a_step.reshape(B * G, -1), critical, index, lam)
