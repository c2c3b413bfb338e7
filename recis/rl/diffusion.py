"""Diffusion-DPO on per-sample denoising errors (Wallace et al., the reference training code's loss).

For P preference pairs (w: preferred sample, l: the other, noised with the same timestep and the
same noise), each argument is a [P] tensor of per-sample mean squared denoising errors
e = mean over (C, [F,] H, W) of (pred - target)^2, under the trained model or the frozen reference:

    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    loss   = mean over pairs of  -log sigmoid(inside)

A lower denoising error stands for a higher likelihood, so the loss falls when the model denoises
the winner better (relative to the reference) than the loser. At model = reference, inside = 0 and
the loss is log 2 whatever beta:

>>> e = torch.tensor([0.3, 0.7])
>>> loss, stats = diffusion_dpo_loss(e, e.flip(0), e, e.flip(0), beta=2500.0)
>>> round(float(loss), 6) == round(math.log(2), 6), stats["implicit_accuracy"]
(True, 0.0)
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["diffusion_dpo_loss", "check_error_vectors"]


def check_error_vectors(named: Dict[str, torch.Tensor], what: str = "per-sample mean squared denoising errors"
                        ) -> None:
    """Each value a float tensor [P] of the first one's shape; an error names the argument."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [num_pairs] of {what}, got {shape}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}, got {tuple(t.shape)}")


def check_beta(beta, name: str = "beta") -> None:
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {beta!r}")


def diffusion_dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
                       beta: float) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The Diffusion-DPO loss of the module doc over P pairs; the reference's errors are constants
    (detached). Stats (floats, means over the pairs): `implicit_accuracy` (the fraction with
    inside > 0, i.e. the model's winner-minus-loser error below the reference's), `margin` (mean
    inside, the implicit reward margin), `model_diff` / `ref_diff` (mean e(w) - e(l)), `model_mse`
    / `ref_mse` (mean error over both samples: watch the model's against the reference's).

    >>> w = torch.tensor([0.2], requires_grad=True)
    >>> loss, _ = diffusion_dpo_loss(w, torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.5]), beta=1.0)
    >>> loss.backward(); bool(w.grad > 0)   # lowering the winner's error lowers the loss
    True
    """
    check_error_vectors({"model_w": model_w, "model_l": model_l, "ref_w": ref_w, "ref_l": ref_l})
    if model_w.numel() == 0:
        raise ValueError("model_w has no pairs (shape (0,)): the mean over pairs is undefined")
    check_beta(beta)
    ref_w, ref_l = ref_w.detach(), ref_l.detach()
    model_diff = model_w - model_l
    ref_diff = ref_w - ref_l
    inside = -0.5 * beta * (model_diff - ref_diff)
    loss = -F.logsigmoid(inside).mean()
    with torch.no_grad():
        stats = {"implicit_accuracy": float((inside > 0).float().mean()), "margin": float(inside.mean()),
                 "model_diff": float(model_diff.mean()), "ref_diff": float(ref_diff.mean()),
                 "model_mse": float(0.5 * (model_w.mean() + model_l.mean())),
                 "ref_mse": float(0.5 * (ref_w.mean() + ref_l.mean()))}
    return loss, stats
