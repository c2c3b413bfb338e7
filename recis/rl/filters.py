"""Difficulty-based dynamic sampling: which groups of rollouts carry a learning signal.

A group whose completions all score the same has zero group-relative advantage, so no policy
gradient. ROLL's difficulty_mask (reused by DyKnow-RAG with [0.01, 0.9] and by TaoSR1, which
drops a group when its accuracy is <= low or >= high) keeps a group iff

    low < mean(scores of the group) < high

>>> difficulty_mask(torch.tensor([[0., 0., 0.], [1., 0., 0.], [1., 1., 1.]]), low=0.0, high=1.0)
tensor([False,  True, False])
"""
import math

import torch

__all__ = ["difficulty_mask"]


def difficulty_mask(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Bool [num_groups]: low < mean_g(scores[i, g]) < high for scores [num_groups, G] (a mean on
    a boundary is dropped; the mean is taken in float64, so a boundary such as 1/3 or 0.25 given
    as a Python float compares as written). See `recis.rl.DifficultyFilter` for the options."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor [num_groups, group_size], got {shape}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"difficulty_mask needs finite low < high, got low={low}, high={high}")
    mean = scores.detach().to(torch.float64).mean(dim=1)
    return (mean > low) & (mean < high)
