"""DyKnow-RAG's dual-group GRPO (methods.md section 3; arXiv 2510.11122, eqs. 7-14), as pure
functions over tensors. The tower that samples and scores is `recis_relevance.judge_dyknow`.

Per query: n rollouts o0 under the no-context prompt p with returns R0, n rollouts o1 under the
with-context prompt p' with returns R1 (both [Q, n]).

    group g:   mu_g = mean R_g,   s_g = sqrt(mean (R_g - mu_g)^2 + eps),   A_g = (R_g - mu_g) / s_g
    union:     mu*, s* the same over all 2n returns,   At_i = (R0_i - mu*) / s*   (no-context only)
    scaling:   T(At) = alpha * At if At > 0 else beta * At
    posterior: beta = 4 sigmoid(4 gap),  alpha = 0.1 / beta,  gap = acc(o1) - acc(o0)
    inter-group (eq. 11, as printed: raw per-token probabilities of o0 RE-SCORED under p'):
               l_hat = (1/n) sum_i (1/|o0_i|) sum_t pi(o0_it | p', o0_i<t) * T(At_i)
    objective: J = l0 + l1 + l_hat - lambda_KL * KL,   the loss is -J

with l0 / l1 the clipped GRPO surrogates of each group on its own advantages (`recis.rl.grpo_loss`,
whose k3 KL term at `GRPOConfig.beta` is lambda_KL). Posterior scaling, at gap 0, gives beta 2 and
alpha 0.05; alpha * beta is always 0.1, beta lies in (4 sigmoid(-4), 4 sigmoid(4)):

>>> alpha, beta = posterior_scale(torch.tensor([-1.0, 0.0, 1.0]))
>>> [round(x, 4) for x in beta.tolist()], [round(x, 4) for x in (alpha * beta).tolist()]
([0.0719, 2.0, 3.9281], [0.1, 0.1, 0.1])

When every no-context rollout is wrong and every with-context one right, both groups are constant
(A0 = A1 = 0: vanilla dual-group GRPO learns nothing) while the union advantage is -1 and scaled by
beta(gap = 1):

>>> a0, a1, at = dual_group_advantages(torch.zeros(1, 4), torch.ones(1, 4), eps=0.0)
>>> a0.abs().sum().item(), a1.abs().sum().item(), at.tolist()
(0.0, 0.0, [[-1.0, -1.0, -1.0, -1.0]])

Ours, not the paper's ([I], each an option of `DyKnowConfig`): `eps` (1e-6; the paper does not
print it), `gap` "query" by default (the paper's eq. 13 says "within the current batch", its
abstract "per-query correctness gap"), `group1_prompt` "with_context" (eq. 10 prints p for l1;
the with-context group is sampled under p'), `inter_group` "printed" with the `ratio / sg(ratio)`
(REINFORCE) form and "off" as options, the return 1 for a well-formed completion with the gold
grade else 0 plus `format_weight` times "well formed", and `advantage_clip` (the paper clamps
advantages at +-2) applied to A0, A1 and At before scaling.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from recis.config_utils import bounded, check_types
from recis.rl import GRPOConfig, check_choice, group_advantages, grpo_loss

__all__ = ["GATINGS", "GAP_MODES", "INTER_GROUP_FORMS", "GROUP1_PROMPTS", "CONTEXT_DECISIONS", "FIXED_GATING",
           "HUMAN_GATING", "DyKnowConfig", "posterior_scale", "correctness_gap", "gate", "dual_group_advantages",
           "piecewise_scale", "inter_group_objective", "PolicyGroup", "dyknow_loss"]

#: how alpha and beta are set: from the correctness gap (DyKnow), fixed, or from the human label
GATINGS = ("posterior", "fixed", "human")
#: over what the correctness gap is taken: each query's 2n rollouts, or the whole rollout batch
GAP_MODES = ("query", "batch")
#: the inter-group term: raw probabilities (eq. 11 as printed), ratio / sg(ratio), or none
INTER_GROUP_FORMS = ("printed", "reinforce", "off")
#: the prompt l1 scores the with-context rollouts under
GROUP1_PROMPTS = ("with_context", "no_context")
#: the context decisions a task row records (human gating reads them)
CONTEXT_DECISIONS = ("adopt", "partial", "ignore")
#: the fixed-gating ablation's (alpha, beta)
FIXED_GATING = (2.0, 0.05)
#: the human-gating ablation's (alpha, beta) per context decision
HUMAN_GATING = {"adopt": (0.05, 2.0), "partial": (0.05, 2.0), "ignore": (2.0, 0.05)}


@dataclass
class DyKnowConfig:
    """Options of DyKnow-RAG's dual-group GRPO (the `dyknow:` section of a judge's model options;
    formulas in the module doc). `gating`: posterior (beta = 4 sigmoid(4 gap)) | fixed (alpha 2,
    beta 0.05) | human (from each row's context_decision: adopt / partial give alpha 0.05, beta 2;
    ignore alpha 2, beta 0.05). `gap`: query | batch. `inter_group`: printed | reinforce | off.
    `group1_prompt`: with_context | no_context (the prompt of l1; eq. 10 prints p). `eps`: inside
    the square root of every std. `format_weight`: the return adds this times "well formed" to the
    correctness 0/1 (0: correctness only)."""

    gating: str = "posterior"
    gap: str = "query"
    inter_group: str = "printed"
    group1_prompt: str = "with_context"
    eps: float = bounded(1e-6, ge=0)
    format_weight: float = bounded(0.0, ge=0)

    def __post_init__(self):
        check_types(self, "model.dyknow")
        check_choice("model.dyknow.gating", self.gating, GATINGS)
        check_choice("model.dyknow.gap", self.gap, GAP_MODES)
        check_choice("model.dyknow.inter_group", self.inter_group, INTER_GROUP_FORMS)
        check_choice("model.dyknow.group1_prompt", self.group1_prompt, GROUP1_PROMPTS)


def posterior_scale(gap: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) of eqs. 13-14: beta = 4 sigmoid(4 gap), alpha = 0.1 / beta (float64)."""
    g = torch.as_tensor(gap, dtype=torch.float64)
    beta = 4.0 * torch.sigmoid(4.0 * g)
    return 0.1 / beta, beta


def correctness_gap(correct0: torch.Tensor, correct1: torch.Tensor, mode: str = "query") -> torch.Tensor:
    """acc(with context) - acc(without) [Q] from correctness [Q, n] of each group: per query, or
    the batch's accuracies broadcast to every query (float64)."""
    check_choice("model.dyknow.gap", mode, GAP_MODES)
    c0, c1 = (torch.as_tensor(c).detach().to(torch.float64) for c in (correct0, correct1))
    if c0.dim() != 2 or c0.shape != c1.shape:
        raise ValueError(f"correct0 and correct1 must be [num_queries, n] of one shape, got {tuple(c0.shape)} "
                         f"and {tuple(c1.shape)}")
    if mode == "query":
        return c1.mean(1) - c0.mean(1)
    return (c1.mean() - c0.mean()).expand(c0.shape[0]).clone()


def gate(cfg: DyKnowConfig, gap: Optional[torch.Tensor] = None,
         decisions: Optional[Sequence[str]] = None, num_queries: Optional[int] = None
         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(alpha [Q], beta [Q]) of each query by `cfg.gating`: posterior needs `gap` [Q], human the
    rows' `decisions`, fixed only the number of queries."""
    if cfg.gating == "posterior":
        if gap is None:
            raise ValueError("model.dyknow.gating 'posterior' needs the correctness gap")
        return posterior_scale(gap)
    if cfg.gating == "human":
        if decisions is None:
            raise ValueError("model.dyknow.gating 'human' needs each row's context_decision")
        bad = sorted({d for d in decisions if d not in HUMAN_GATING}, key=repr)
        if bad:
            raise ValueError(f"model.dyknow.gating 'human': context_decision must be one of {CONTEXT_DECISIONS}, "
                             f"got {bad[:3]}")
        pairs = torch.tensor([HUMAN_GATING[d] for d in decisions], dtype=torch.float64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]
    q = num_queries if num_queries is not None else (len(gap) if gap is not None else len(decisions))
    return torch.full((q,), FIXED_GATING[0], dtype=torch.float64), torch.full((q,), FIXED_GATING[1],
                                                                               dtype=torch.float64)


def dual_group_advantages(r0: torch.Tensor, r1: torch.Tensor, eps: float = 1e-6, clip: Optional[float] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A0, A1, At), each [Q, n]: each group normalized on its own and the no-context returns
    against the union of both groups (population std, eps inside the root; clipped to +-clip)."""
    if r0.dim() != 2 or r0.shape != r1.shape:
        raise ValueError(f"r0 and r1 must be [num_queries, n] of one shape, got {tuple(r0.shape)} and "
                         f"{tuple(r1.shape)}")
    n = r0.shape[1]
    a0 = group_advantages(r0, std="population", eps=eps, clip=clip)
    a1 = group_advantages(r1, std="population", eps=eps, clip=clip)
    union = group_advantages(torch.cat([r0, r1], 1), std="population", eps=eps, clip=clip)[:, :n]
    return a0, a1, union


def piecewise_scale(at: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """T(At) = alpha * At where At > 0, beta * At elsewhere; alpha, beta [Q] broadcast over n."""
    a, b = (torch.as_tensor(x, dtype=at.dtype, device=at.device) for x in (alpha, beta))
    if at.dim() == 2:
        a, b = a.reshape(-1, 1), b.reshape(-1, 1)
    return torch.where(at > 0, a * at, b * at)


def inter_group_objective(logp: torch.Tensor, mask: torch.Tensor, scaled: torch.Tensor,
                          form: str = "printed") -> torch.Tensor:
    """l_hat (to MAXIMIZE) from the no-context completions' per-token log-probs under p' (`logp`,
    `mask` [N, C]) and their scaled advantages T(At) [N]: the mean over completions of the token
    mean of w_t * T, where w_t = pi_t (printed: the raw probability) or pi_t / sg(pi_t) (reinforce:
    value 1, gradient d log pi_t); 0 with form off."""
    check_choice("model.dyknow.inter_group", form, INTER_GROUP_FORMS)
    if logp.dim() != 2 or mask.shape != logp.shape or scaled.shape != logp.shape[:1]:
        raise ValueError(f"logp and mask must be [N, C] and scaled [N], got {tuple(logp.shape)}, "
                         f"{tuple(mask.shape)}, {tuple(scaled.shape)}")
    if form == "off":
        return logp.sum() * 0.0
    w = torch.exp(logp) if form == "printed" else torch.exp(logp - logp.detach())
    m = mask.to(logp.dtype)
    per_seq = (w * m).sum(-1) / m.sum(-1).clamp(min=1)
    return (per_seq * scaled.detach().to(logp.dtype)).mean()


@dataclass
class PolicyGroup:
    """One group's GRPO inputs: per-token log-probs of its completions under the current, the
    sampling and (optionally) the reference policy, its completion mask ([N, C]), advantages [N]
    and the token count for dapo aggregation."""

    logp: torch.Tensor
    old_logp: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    ref_logp: Optional[torch.Tensor] = None
    num_items: Optional[float] = None


def dyknow_loss(no_context: PolicyGroup, with_context: PolicyGroup, rescored_logp: torch.Tensor,
                rescored_mask: torch.Tensor, scaled: torch.Tensor, grpo: GRPOConfig, cfg: DyKnowConfig
                ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """-J (to MINIMIZE) = grpo_loss(no_context) + grpo_loss(with_context) - l_hat, each GRPO loss
    with its k3 KL at grpo.beta; `rescored_*` are the no-context completions under p', `scaled`
    their T(At) [N]. Stats: loss_no_context, loss_with_context, inter_group (l_hat), and each
    group's GRPO stats prefixed no_context_ / with_context_."""
    if not isinstance(cfg, DyKnowConfig):
        raise TypeError(f"cfg must be a DyKnowConfig, got {type(cfg).__name__}")
    stats: Dict[str, float] = {}
    losses = []
    for name, g in (("no_context", no_context), ("with_context", with_context)):
        loss, s = grpo_loss(g.logp, g.old_logp, g.advantages, g.mask, grpo, ref_logp=g.ref_logp,
                            num_items=g.num_items)
        losses.append(loss)
        stats[f"loss_{name}"] = float(loss.detach())
        stats.update({f"{name}_{k}": v for k, v in s.items()})
    inter = inter_group_objective(rescored_logp, rescored_mask, scaled, cfg.inter_group)
    stats["inter_group"] = float(inter.detach())
    return losses[0] + losses[1] - inter, stats
