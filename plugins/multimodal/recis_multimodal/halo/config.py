"""The HALO tower's options (the `model:` section of a job), checked when built; a bad value names
its key.

>>> cfg = HALOConfig.from_options({"objective": "gran_dpo", "dpo": {"beta": 500.0, "lam": 0.5, "grid": [2, 4, 4]}})
>>> cfg.gran.lam, cfg.gran.grid.size, cfg.ddpm.steps
(0.5, (2, 4, 4), 10)
>>> HALOConfig.from_options({"objective": "ppo"})
Traceback (most recent call last):
...
ValueError: model.objective must be one of ('sft', 'diffusion_dpo', 'gran_dpo'), got 'ppo'
>>> HALOConfig.from_options({"objective": "diffusion_dpo", "dpo": {"lam": 1.0}})
Traceback (most recent call last):
...
ValueError: model.dpo.lam applies to objective gran_dpo only (objective is 'diffusion_dpo')
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from recis.config_utils import bounded, check_types, from_mapping
from recis.rl.config import check_choice

from recis_multimodal.halo.ddpm import DDPMSchedule
from recis_multimodal.halo.gran_dpo import GranDPOConfig

__all__ = ["HALOConfig", "OBJECTIVES", "ROLES", "PAIR_ROLES", "GRAN_ROLES"]

OBJECTIVES = ("sft", "diffusion_dpo", "gran_dpo")
#: What the tower reads, by role; `inputs` maps a role to the feature that holds it (default: the role's name).
ROLES = ("video", "video_a", "video_b", "reward_a", "reward_b", "patch_reward_a", "patch_reward_b", "cond")
PAIR_ROLES = ("video_a", "video_b", "reward_a", "reward_b", "cond")
GRAN_ROLES = PAIR_ROLES + ("patch_reward_a", "patch_reward_b")
_GRAN_ONLY = ("lam", "delta", "grid", "patch_beta", "patch_norm")


@dataclass
class HALOConfig:
    """- `objective`: sft (the denoising loss on clips: `video` + `cond`), diffusion_dpo (pairs:
      `video_a`, `video_b`, `reward_a`, `reward_b`, `cond`) or gran_dpo (pairs and
      `patch_reward_a`, `patch_reward_b`).
    - `clip`: [F, H, W] of a clip, `channels`; a video feature holds C*F*H*W numbers per row
      (any shape of that size), pixels in [0, 1] (the model sees 2 * pixel - 1).
    - `num_classes`, `width`, `layers`: the denoiser (`Denoiser3D`); `seed`: its initial weights.
    - `schedule`: `DDPMSchedule` options (steps, beta_start, beta_end, clip), built as `.ddpm`.
    - `dpo`: `GranDPOConfig` options (beta; with gran_dpo also lam, delta, grid, patch_beta,
      patch_norm), built as `.gran`.
    - `inputs`: role -> feature name, for features named otherwise than the roles.
    - `noise_seed`: the generator of training timesteps and noise (saved with checkpoints).
    - `eval_seed`: evaluation noise and samples; evaluation batch i draws from (eval_seed, i), so
      every evaluation (and every model evaluated) sees the same noise.
    - `evaluator`: "module:function", called once as function(**evaluator_options); it returns a
      scorer(clips [B, C, F, H, W] in [0, 1], cond [B] long) -> {name: [B] float tensor} that
      scores clips the tower samples for each evaluation row's cond (e.g. video_reward,
      patch_defect_rate from the artifact world's reward models); the names become TowerOutput.values.
    """

    objective: str = "sft"
    clip: List[int] = field(default_factory=lambda: [4, 16, 16])
    channels: int = bounded(1, ge=1)
    num_classes: int = bounded(10, ge=1)
    width: int = bounded(16, ge=1)
    layers: int = bounded(3, ge=2, le=4)
    seed: int = bounded(0, ge=0, lt=1 << 63)
    noise_seed: int = bounded(0, ge=0, lt=1 << 63)
    eval_seed: int = bounded(0, ge=0, lt=1 << 62)
    schedule: Dict[str, Any] = field(default_factory=dict)
    dpo: Dict[str, Any] = field(default_factory=dict)
    inputs: Dict[str, str] = field(default_factory=dict)
    evaluator: Optional[str] = None
    evaluator_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_types(self, "model")
        check_choice("model.objective", self.objective, OBJECTIVES)
        if len(self.clip) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.clip):
            raise ValueError(f"model.clip must be [F, H, W] (3 integers >= 1), got {self.clip!r}")
        self.ddpm = from_mapping(DDPMSchedule, self.schedule, "model.schedule")
        if self.objective != "gran_dpo":
            given = [k for k in _GRAN_ONLY if k in self.dpo]
            if given:
                raise ValueError(f"model.dpo.{given[0]} applies to objective gran_dpo only (objective is "
                                 f"{self.objective!r})")
        if self.objective == "sft" and self.dpo:
            raise ValueError(f"model.dpo applies to objectives diffusion_dpo and gran_dpo (objective is 'sft'), got "
                             f"{sorted(self.dpo)}")
        dpo = dict(self.dpo)
        if "grid" in dpo:
            from recis_multimodal.halo.gran_dpo import PatchGrid

            dpo["grid"] = PatchGrid.of(dpo["grid"], "model.dpo.grid")
        self.gran = from_mapping(GranDPOConfig, dpo, "model.dpo")
        if self.objective == "gran_dpo":
            self.gran.grid.blocks(tuple(self.clip))  # a grid that does not divide the clip: named now
        unknown = sorted(set(self.inputs) - set(ROLES))
        if unknown:
            raise ValueError(f"model.inputs: unknown role(s) {unknown} (roles: {list(ROLES)})")
        if self.evaluator is not None and (":" not in self.evaluator or self.evaluator.count(":") != 1):
            raise ValueError(f"model.evaluator must be 'module:function', got {self.evaluator!r}")
        if self.evaluator_options and self.evaluator is None:
            raise ValueError("model.evaluator_options are given but model.evaluator is not set")

    @classmethod
    def from_options(cls, options: Optional[Mapping[str, Any]]) -> "HALOConfig":
        return from_mapping(cls, options, "model")

    def feature(self, role: str) -> str:
        """The feature that holds `role`."""
        return self.inputs.get(role, role)

    def roles(self) -> tuple:
        """The roles the objective trains on."""
        return {"sft": ("video", "cond"), "diffusion_dpo": PAIR_ROLES, "gran_dpo": GRAN_ROLES}[self.objective]
