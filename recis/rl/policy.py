"""The clipped policy-gradient objective of GRPO and its reductions, per token and per batch.

Shapes: N completions of up to C tokens; `logp`, `old_logp`, `ref_logp` and `mask` are [N, C]
(log-probs of the sampled tokens under the current, the sampling ("old") and the reference
policy; mask 1 on completion tokens). Advantages are [N] (one per completion, broadcast over its
tokens) or [N, C] (one per token: step-level credit such as SHE's).

    rho_t  = exp(logp_t - old_logp_t)                                       importance_ratio
    surr_t = min(min(rho_t, delta) * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)
                                                                            clipped_objective
    KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (>= 0; k3)          k3_kl
    loss_t = -surr_t + beta * KL_t                                          grpo_loss
    loss   = aggregate(loss_t, mask, loss_type)                             aggregate

A token whose ratio has left the clip range in the direction its advantage pushes it
(rho > 1 + eps_high with A > 0, rho < 1 - eps_low with A < 0) contributes a constant, so it
gets no policy gradient:

>>> logp = torch.tensor([[0.5, 0.0]], requires_grad=True)
>>> surr = clipped_objective(importance_ratio(logp, torch.zeros(1, 2)), torch.tensor([1.0]), 0.2, 0.2)
>>> surr.sum().backward()
>>> logp.grad
tensor([[0., 1.]])
"""
from typing import Dict, Optional, Tuple

import torch

from recis.rl.config import LOSS_TYPES, GRPOConfig, check_choice

__all__ = ["importance_ratio", "clipped_objective", "k3_kl", "aggregate", "grpo_loss"]


def _same_shape(reference_name: str, reference: torch.Tensor, **others) -> None:
    for name, t in others.items():
        if t is not None and tuple(t.shape) != tuple(reference.shape):
            raise ValueError(f"{name} must have the shape of {reference_name} {tuple(reference.shape)}, "
                             f"got {tuple(t.shape)}")


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Advantages [N] -> [N, 1] (broadcast over tokens); [N, C] as they are."""
    n, c = like.shape
    if advantages.dim() == 1 and advantages.shape[0] == n:
        return advantages.unsqueeze(1)
    if advantages.dim() == 2 and advantages.shape[0] == n and advantages.shape[1] in (1, c):
        return advantages
    raise ValueError(f"advantages must be [N] or [N, C] with N, C = {n}, {c}, got {tuple(advantages.shape)}")


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """rho = exp(logp - old_logp), per token. `old_logp` is the sampling policy's, fixed for the
    mu inner steps of a rollout (pass `logp.detach()` for a single on-policy step: rho = 1 with
    gradient rho * d logp)."""
    _same_shape("logp", logp, old_logp=old_logp)
    return torch.exp(logp - old_logp.detach())


def clipped_objective(ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float,
                      delta: Optional[float] = None) -> torch.Tensor:
    """The per-token surrogate to MAXIMIZE (TRL's order of operations):

        surr = min(min(rho, delta) * A, clip(rho, 1 - epsilon_low, 1 + epsilon_high) * A)

    (`delta` None: no cap). `ratio` [N, C]; `advantages` [N] or [N, C]. Returns [N, C]."""
    if ratio.dim() != 2:
        raise ValueError(f"ratio must be [N, C], got {tuple(ratio.shape)}")
    if not (epsilon_low >= 0 and epsilon_high >= 0):
        raise ValueError(f"epsilon_low and epsilon_high must be >= 0, got {epsilon_low}, {epsilon_high}")
    a = _per_token(advantages, ratio).detach().to(ratio.dtype)
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    if delta is not None:
        ratio = ratio.clamp(max=delta)
    return torch.minimum(ratio * a, clipped * a)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) on tokens sampled from pi:

        KL_t = exp(ref_logp - logp) - (ref_logp - logp) - 1

    >= 0 (e^x >= 1 + x), 0 exactly where logp == ref_logp; unbiased for KL(pi || pi_ref) in
    expectation over pi. The reference is not differentiated. Computed as expm1(d) - d with
    d = ref_logp - logp: the same value, but never negative in floating point, where
    exp(d) - d - 1 rounds below 0 for many small |d| (float32: a quarter of |d| < 1e-5).

    >>> k3_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    _same_shape("logp", logp, ref_logp=ref_logp)
    d = ref_logp.detach() - logp
    return torch.expm1(d) - d


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str,
              max_completion_length: Optional[int] = None, num_items: Optional[float] = None) -> torch.Tensor:
    """Reduces a per-token loss [N, C] over the tokens where `mask` is 1 (L_i = sum_t m_it * l_it):

        grpo     mean_i (L_i / max(sum_t m_it, 1))         token mean per sequence, then mean over N
        bnpo     sum_i L_i / max(sum_it m_it, 1)            token mean over the batch
        dr_grpo  sum_i L_i / (N * max_completion_length)    a constant normalizer (Dr. GRPO)
        dapo     sum_i L_i / num_items                      token mean over the whole generation batch

    `num_items` (dapo) is the number of completion tokens of the whole generation batch, so that
    the losses of its minibatches (and ranks) add up to one token mean, as TRL does (when data
    parallelism averages gradients over ranks, pass the global count / world size); it defaults
    to this batch's own count, where dapo equals bnpo."""
    check_choice("loss_type", loss_type, LOSS_TYPES)
    if per_token.dim() != 2:
        raise ValueError(f"per_token must be [N, C], got {tuple(per_token.shape)}")
    _same_shape("per_token", per_token, mask=mask)
    m = mask.to(per_token.dtype)
    total = per_token * m
    if loss_type == "grpo":
        return (total.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type == "bnpo":
        return total.sum() / m.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        if max_completion_length is None or not max_completion_length >= 1:
            raise ValueError(f"max_completion_length must be an integer >= 1 with loss_type 'dr_grpo', "
                             f"got {max_completion_length!r}")
        return total.sum() / (per_token.shape[0] * max_completion_length)
    if num_items is None:
        return total.sum() / m.sum().clamp(min=1)
    if not num_items > 0:
        raise ValueError(f"num_items must be > 0, got {num_items}")
    return total.sum() / num_items


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> float:
    return float((x * m).sum() / m.sum().clamp(min=1))


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              cfg: GRPOConfig, ref_logp: Optional[torch.Tensor] = None,
              num_items: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The GRPO loss to MINIMIZE and its statistics:

        loss = aggregate(-clipped_objective(rho, A, eps_low, eps_high, delta) + beta * k3_kl(logp, ref), mask)

    with rho = exp(logp - old_logp) and the options of `cfg` (epsilons, delta, beta, loss_type,
    max_completion_length). `advantages` [N] or [N, C]; `ref_logp` is required when beta > 0 (and
    only reported otherwise); `num_items` see `aggregate`. Stats (floats, masked token means):
    policy_loss (the aggregated surrogate term), kl (when ref_logp is given), ratio_mean,
    clip_low (rho < 1 - eps_low with A < 0), clip_high (rho > 1 + eps_high with A > 0) and
    clip_fraction (either)."""
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, C], got {tuple(logp.shape)}")
    _same_shape("logp", logp, old_logp=old_logp, mask=mask, ref_logp=ref_logp)
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError(f"ref_logp is required with a KL term (GRPOConfig.beta = {cfg.beta})")
    eps_low, eps_high = cfg.epsilons
    ratio = importance_ratio(logp, old_logp)
    policy = -clipped_objective(ratio, advantages, eps_low, eps_high, cfg.delta)
    per_token = policy
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        if cfg.beta > 0:
            per_token = policy + cfg.beta * kl
    loss = aggregate(per_token, mask, cfg.loss_type, cfg.max_completion_length, num_items)
    with torch.no_grad():
        m = mask.to(logp.dtype)
        a = _per_token(advantages, logp).detach()
        low = ((ratio < 1 - eps_low) & (a < 0)).to(logp.dtype)
        high = ((ratio > 1 + eps_high) & (a > 0)).to(logp.dtype)
        stats = {"policy_loss": float(aggregate(policy, mask, cfg.loss_type, cfg.max_completion_length, num_items)),
                 "ratio_mean": _masked_mean(ratio, m), "clip_low": _masked_mean(low, m),
                 "clip_high": _masked_mean(high, m), "clip_fraction": _masked_mean(torch.maximum(low, high), m)}
        if kl is not None:
            stats["kl"] = _masked_mean(kl, m)
    return loss, stats
