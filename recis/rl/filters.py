"""Which groups of rollouts carry a learning signal: difficulty-based dynamic sampling, and the
diversified filter that also asks for varied reasoning paths.

A group whose completions all score the same has zero group-relative advantage, so no policy
gradient. ROLL's difficulty_mask (reused by DyKnow-RAG with [0.01, 0.9] and by TaoSR1, which
drops a group when its accuracy is <= low or >= high) keeps a group iff

    low < mean(scores of the group) < high

>>> difficulty_mask(torch.tensor([[0., 0., 0.], [1., 0., 0.], [1., 1., 1.]]), low=0.0, high=1.0)
tensor([False,  True, False])

TaoSR-SHE's diversified filter keeps a group iff it passes the difficulty window AND its
completions follow at least `min_paths` distinct reasoning paths (`path_ids` numbers the distinct
rows of any per-completion encoding: the step-verdict pattern, or the token sequence), so that
groups whose rollouts reason alike, whose advantages push one path, are dropped:

>>> paths = path_ids(torch.tensor([[1, 2], [1, 2], [1, 3], [1, 2]]), torch.ones(4, 2, dtype=torch.bool))
>>> paths.tolist()
[0, 0, 1, 0]
>>> diversity_mask(torch.tensor([[1., 0.], [1., 0.]]), paths.view(2, 2), low=0.0, high=1.0, min_paths=2)
tensor([False,  True])
"""
import math

import torch

__all__ = ["difficulty_mask", "path_ids", "distinct_paths", "diversity_mask"]


def _check_groups(name: str, t) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a tensor [num_groups, group_size], got {shape}")


def difficulty_mask(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Bool [num_groups]: low < mean_g(scores[i, g]) < high for scores [num_groups, G] (a mean on
    a boundary is dropped; the mean is taken in float64, so a boundary such as 1/3 or 0.25 given
    as a Python float compares as written). See `recis.rl.DifficultyFilter` for the options."""
    _check_groups("scores", scores)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"difficulty_mask needs finite low < high, got low={low}, high={high}")
    mean = scores.detach().to(torch.float64).mean(dim=1)
    return (mean > low) & (mean < high)


def path_ids(paths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Long [N]: an id per row of `paths` [N, L] read where `mask` is set (the masked-out entries
    do not count), equal ids exactly for equal rows (same length, same values), numbered in order
    of first appearance."""
    if not isinstance(paths, torch.Tensor) or paths.dim() != 2:
        raise ValueError(f"paths must be a tensor [N, L], got {getattr(paths, 'shape', type(paths).__name__)}")
    if mask.shape != paths.shape:
        raise ValueError(f"mask must have paths' shape {tuple(paths.shape)}, got {tuple(mask.shape)}")
    seen = {}
    out = [seen.setdefault(tuple(v for v, m in zip(row, keep) if m), len(seen))
           for row, keep in zip(paths.tolist(), mask.bool().tolist())]
    return torch.tensor(out, dtype=torch.long, device=paths.device)


def distinct_paths(ids: torch.Tensor) -> torch.Tensor:
    """Long [num_groups]: how many distinct path ids each group [num_groups, G] holds."""
    _check_groups("ids", ids)
    if ids.shape[1] == 0:
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
    s = ids.sort(1).values
    return 1 + (s[:, 1:] != s[:, :-1]).long().sum(1)


def diversity_mask(scores: torch.Tensor, ids: torch.Tensor, low: float, high: float, min_paths: int) -> torch.Tensor:
    """Bool [num_groups]: `difficulty_mask(scores, low, high)` and at least `min_paths` distinct
    path ids in the group (`ids` [num_groups, G], e.g. `path_ids(...).view(num_groups, G)`).
    See `recis.rl.DiversityFilter` for the options."""
    _check_groups("ids", ids)
    if ids.shape != scores.shape:
        raise ValueError(f"ids must have scores' shape {tuple(scores.shape)}, got {tuple(ids.shape)}")
    if isinstance(min_paths, bool) or not isinstance(min_paths, int) or min_paths < 1:
        raise ValueError(f"min_paths must be an integer >= 1, got {min_paths!r}")
    return difficulty_mask(scores, low, high) & (distinct_paths(ids) >= min_paths)
