"""Group-relative advantages: each completion's reward against the others sampled for its prompt.

For rewards r of shape [num_groups, G] (group i = the G completions of prompt i):

    A = clip((r - mean_group(r)) / s, -c, c)

where s is the spread named by `std` (STD_CONVENTIONS) taken over `scale` (SCALES):

    population   s = sqrt(mean((r - m)^2) + eps)          eps inside the root (DyKnow-RAG)
    trl          s = sqrt(sum((r - m)^2) / (n - 1)) + eps   unbiased std, default eps 1e-4 (TRL)
    roll         s = sqrt(sum((r - m)^2) / (n - 1)) + eps   unbiased std, default eps 1e-6 (ROLL)

with m and n the mean and count of the rewards s is taken over: the group's own (scale "group")
or the whole batch's (scale "batch"; the centring stays per group, as TRL does); scale "none"
divides by nothing (Dr. GRPO). A group whose rewards are all equal gets exactly 0, whatever the
convention. `.reshape(-1)` of the result is prompt-major, the row order of grouped sampling.

>>> group_advantages(torch.tensor([[1., 0., 0., 1.], [1., 1., 1., 1.]]), std="population", eps=0.0)
tensor([[ 1., -1., -1.,  1.],
        [ 0.,  0.,  0.,  0.]])
"""
from typing import Optional

import torch

from recis.rl.config import DEFAULT_STD_EPS, SCALES, STD_CONVENTIONS, check_choice

__all__ = ["group_advantages"]


def _spread(centred: torch.Tensor, mask: torch.Tensor, dim, std: str, eps: float) -> torch.Tensor:
    """The std of `centred` (already minus its mean) over `dim`, counting only `mask`."""
    n = mask.sum(dim=dim, keepdim=True)
    ss = (centred.square() * mask).sum(dim=dim, keepdim=True)
    if std == "population":
        s = torch.sqrt(ss / n.clamp(min=1) + eps)
    else:
        s = torch.sqrt(ss / (n - 1).clamp(min=1)) + eps
    return torch.where(s > 0, s, torch.ones_like(s))  # s == 0 (eps 0) only where every centred value is 0


def group_advantages(rewards: torch.Tensor, std: str = "trl", scale: str = "group", eps: Optional[float] = None,
                     clip: Optional[float] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A = clip((r - mean_group) / s, -clip, clip) for rewards [num_groups, G] (see the module doc
    for s). `eps` None takes the convention's default (DEFAULT_STD_EPS: population 1e-6 (ours;
    DyKnow-RAG does not print its eps), trl 1e-4, roll 1e-6). `mask` [num_groups, G] (bool) marks
    the rewards that count: the others are left out of every statistic and get advantage 0 (a
    completion that could not be scored; a step slot a shorter rollout does not have); a group
    with fewer than two counted rewards has advantages 0 (nothing to compare). Computed in
    float64, returned in the rewards' floating dtype (float32 for integer or bool rewards); no
    gradient flows to the rewards."""
    check_choice("std", std, STD_CONVENTIONS)
    check_choice("scale", scale, SCALES)
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2:
        shape = tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a tensor [num_groups, group_size], got {shape}")
    if eps is None:
        eps = DEFAULT_STD_EPS[std]
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r = rewards.detach().to(torch.float64)
    if mask is None:
        keep = torch.ones_like(r, dtype=torch.bool)
    else:
        if mask.shape != rewards.shape:
            raise ValueError(f"mask must have the rewards' shape {tuple(rewards.shape)}, got {tuple(mask.shape)}")
        keep = mask.to(device=r.device, dtype=torch.bool)
    if not torch.isfinite(r[keep]).all():
        i, j = torch.nonzero(keep & ~torch.isfinite(r))[0].tolist()
        raise ValueError(f"rewards must be finite where counted (mask them out otherwise); "
                         f"rewards[{i}, {j}] = {r[i, j].item()}")
    w = keep.to(torch.float64)
    r = torch.where(keep, r, torch.zeros_like(r))
    n = w.sum(dim=1, keepdim=True)
    centred = (r - (r * w).sum(dim=1, keepdim=True) / n.clamp(min=1)) * w
    # exactly 0 for a group of equal rewards (a float mean of equal values may differ in the last bit)
    top = r.masked_fill(~keep, -torch.inf).amax(dim=1, keepdim=True)
    bottom = r.masked_fill(~keep, torch.inf).amin(dim=1, keepdim=True)
    centred = torch.where(top == bottom, torch.zeros_like(centred), centred)
    if scale == "group":
        advantages = centred / _spread(centred, w, 1, std, eps)
    elif scale == "batch":
        total = w.sum()
        around = (r - (r * w).sum() / total.clamp(min=1)) * w
        advantages = centred / _spread(around, w, (0, 1), std, eps)
    else:
        advantages = centred
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.to(out_dtype)
