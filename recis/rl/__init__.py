"""recis.rl: RL and preference objectives for generative towers, as pure functions over tensors.

- `group_advantages`: group-relative advantages with the std conventions of DyKnow-RAG
  ("population"), TRL ("trl") and ROLL ("roll").
- `importance_ratio`, `clipped_objective`, `k3_kl`, `aggregate`, `grpo_loss`: the GRPO family
  (asymmetric clipping, optional two-sided cap, loss types grpo / bnpo / dr_grpo / dapo).
- `dpo_loss`: sigmoid DPO with optional label smoothing.
- `diffusion_dpo_loss`: Diffusion-DPO on per-sample denoising errors (diffusion towers).
- `difficulty_mask`: dynamic sampling's keep-mask over groups.
- `label_confidence`, `confidence_pool`, `ConfidenceFilter`: label-token confidence and the
  confidence pool filter (DyKnow-RAG's RL pool).
- `guide_mask`, `worst_rollouts`, `replay_old_logprobs`: guided replay (AGRL's AGR): which groups
  get guided rollouts, which rollouts they replace, the old log-probs of their ratios.
- `step_index`, `step_advantages`, `critical_steps`, `token_advantages`, `srpo_advantages`:
  process rewards: steps of a completion and step-level token advantages (TaoSR-SHE's SRPO).
- `path_ids`, `distinct_paths`, `diversity_mask`: the diversified filter (difficulty window and
  a minimum number of distinct reasoning paths per group).
- `GRPOConfig`, `DPOConfig`, `DifficultyFilter`, `DiversityFilter`: their options, checked by name.

Formulas and defaults: docs/rl.md.
"""
from recis.rl.advantages import group_advantages
from recis.rl.config import (DEFAULT_STD_EPS, LOSS_TYPES, SCALES, STD_CONVENTIONS, DifficultyFilter, DPOConfig,
                             GRPOConfig, check_choice)
from recis.rl.confidence import ConfidenceFilter, confidence_pool, label_confidence
from recis.rl.config import PATH_KINDS, DiversityFilter
from recis.rl.diffusion import diffusion_dpo_loss
from recis.rl.filters import difficulty_mask
from recis.rl.filters import distinct_paths, diversity_mask, path_ids
from recis.rl.policy import aggregate, clipped_objective, grpo_loss, importance_ratio, k3_kl
from recis.rl.preference import dpo_loss
from recis.rl.replay import CORRECTIONS, guide_mask, replay_old_logprobs, worst_rollouts
from recis.rl.steps import (STEP_BASELINES, critical_steps, srpo_advantages, step_advantages, step_counts, step_index,
                            step_slots, token_advantages)

__all__ = ["group_advantages", "importance_ratio", "clipped_objective", "k3_kl", "aggregate", "grpo_loss",
           "dpo_loss", "diffusion_dpo_loss", "difficulty_mask", "GRPOConfig", "DPOConfig", "DifficultyFilter", "LOSS_TYPES",
           "STD_CONVENTIONS", "SCALES", "DEFAULT_STD_EPS", "check_choice"]
__all__ += ["label_confidence", "confidence_pool", "ConfidenceFilter"]
__all__ += ["guide_mask", "worst_rollouts", "replay_old_logprobs", "CORRECTIONS"]
__all__ += ["STEP_BASELINES", "step_index", "step_counts", "step_slots", "step_advantages", "critical_steps",
            "token_advantages", "srpo_advantages", "PATH_KINDS", "DiversityFilter", "path_ids", "distinct_paths",
            "diversity_mask"]
