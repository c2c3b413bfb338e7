"""Options of the RL and preference objectives, and their vocabularies (the one home of each).

Every option is checked when the config is built; a bad value names it:

>>> GRPOConfig(loss_type="ppo")
Traceback (most recent call last):
...
ValueError: GRPOConfig.loss_type must be one of ('grpo', 'bnpo', 'dr_grpo', 'dapo'), got 'ppo'
>>> GRPOConfig(epsilon_low=-0.1)
Traceback (most recent call last):
...
ValueError: GRPOConfig.epsilon_low must be a finite number in [0, 1], got -0.1
>>> GRPOConfig(loss_type="dr_grpo")
Traceback (most recent call last):
...
ValueError: GRPOConfig.max_completion_length is required with loss_type 'dr_grpo' (its normalizer), got None
>>> GRPOConfig(epsilon_low=0.2, epsilon_high=0.28).epsilons
(0.2, 0.28)
>>> GRPOConfig(std="population").eps
1e-06
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from recis.config_utils import bounded, check_types

__all__ = ["LOSS_TYPES", "STD_CONVENTIONS", "SCALES", "DEFAULT_STD_EPS", "check_choice", "GRPOConfig",
           "DPOConfig", "DifficultyFilter", "PATH_KINDS", "DiversityFilter"]

# How the per-token loss is reduced to a scalar (recis.rl.policy.aggregate).
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
# How a group's spread is measured (recis.rl.advantages.group_advantages):
#   population: sqrt(mean((r - mean)^2) + eps)      DyKnow-RAG (eps inside the square root)
#   trl:        std_unbiased + eps, eps = 1e-4      TRL GRPOTrainer
#   roll:       std_unbiased + eps, eps = 1e-6      ROLL reward_norm (torch.std)
STD_CONVENTIONS = ("population", "trl", "roll")
# Which rewards the std is taken over: each group's own, the whole batch's, or none (no division).
SCALES = ("group", "batch", "none")
# The eps of each std convention when none is given. DyKnow-RAG does not print its eps; 1e-6 is ours.
DEFAULT_STD_EPS = {"population": 1e-6, "trl": 1e-4, "roll": 1e-6}
# What makes two rollouts' reasoning paths the same for the diversified filter: the same
# step-verdict pattern, or the same completion tokens.
PATH_KINDS = ("verdicts", "tokens")


def check_choice(where: str, value, choices: Sequence[str]) -> str:
    """`value` if it is one of `choices`, else a ValueError naming `where`.

    >>> check_choice("std", "sample", STD_CONVENTIONS)
    Traceback (most recent call last):
    ...
    ValueError: std must be one of ('population', 'trl', 'roll'), got 'sample'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where} must be one of {tuple(choices)}, got {value!r}")
    return value


@dataclass
class GRPOConfig:
    """Clipped-surrogate policy optimization over groups of sampled completions (GRPO and its
    DAPO / Dr. GRPO / BNPO reductions). Per token, minimized:

        loss_t = -min(rho_t * A, clip(rho_t, 1 - epsilon_low, 1 + epsilon_high) * A) + beta * KL_t

    with rho_t = exp(logp_t - old_logp_t) capped at `delta` when set (two-sided clipping) and
    KL_t the k3 estimator against the reference policy; reduced over tokens by `loss_type`.
    Advantages are group-relative: (r - mean_group) / spread by the `std` convention, over `scale`,
    then clipped to +-`advantage_clip`.

    Defaults are the GRPO paper's loss ("grpo" aggregation) with TRL's advantage; TRL's own
    defaults differ (loss_type "dapo", beta 0). `std_eps` None takes the convention's eps
    (DEFAULT_STD_EPS). `max_completion_length` is the normalizer of "dr_grpo" (required there).
    `inner_steps` is mu, the optimizer steps per rollout batch against one frozen old policy.
    """

    epsilon_low: float = bounded(0.2, ge=0, le=1)
    epsilon_high: Optional[float] = bounded(None, ge=0)  # None: epsilon_low
    beta: float = bounded(0.0, ge=0)
    loss_type: str = "grpo"
    std: str = "trl"
    std_eps: Optional[float] = bounded(None, ge=0)
    scale: str = "group"
    advantage_clip: Optional[float] = bounded(None, gt=0)
    max_completion_length: Optional[int] = bounded(None, ge=1)
    inner_steps: int = bounded(1, ge=1)
    delta: Optional[float] = bounded(None, gt=1)

    def __post_init__(self):
        where = type(self).__name__
        check_types(self, where)
        check_choice(f"{where}.loss_type", self.loss_type, LOSS_TYPES)
        check_choice(f"{where}.std", self.std, STD_CONVENTIONS)
        check_choice(f"{where}.scale", self.scale, SCALES)
        if self.loss_type == "dr_grpo" and self.max_completion_length is None:
            raise ValueError(f"{where}.max_completion_length is required with loss_type 'dr_grpo' "
                             f"(its normalizer), got None")
        if self.delta is not None and not self.delta > 1 + self.epsilons[1]:
            raise ValueError(f"{where}.delta must exceed 1 + epsilon_high = {1 + self.epsilons[1]} "
                             f"(it caps the ratio above the clip range), got {self.delta}")

    @property
    def epsilons(self) -> Tuple[float, float]:
        """(epsilon_low, epsilon_high), epsilon_high defaulting to epsilon_low."""
        high = self.epsilon_low if self.epsilon_high is None else self.epsilon_high
        return float(self.epsilon_low), float(high)

    @property
    def eps(self) -> float:
        """The advantage eps: `std_eps`, or the std convention's default."""
        return float(DEFAULT_STD_EPS[self.std] if self.std_eps is None else self.std_eps)


@dataclass
class DPOConfig:
    """Sigmoid DPO on sequence log-prob sums, with optional label smoothing (conservative DPO):

        loss = -(1 - label_smoothing) * log sigmoid(beta * D) - label_smoothing * log sigmoid(-beta * D)
        D = (logp(y_w) - ref(y_w)) - (logp(y_l) - ref(y_l))

    label_smoothing is the assumed probability that a pair's preference is flipped; at 0.5 the
    loss no longer prefers either side, so it must stay below 0.5.
    """

    beta: float = bounded(0.1, gt=0)
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)

    def __post_init__(self):
        check_types(self, type(self).__name__)


@dataclass
class DifficultyFilter:
    """Difficulty-based dynamic sampling (ROLL's difficulty_mask, TaoSR1): keep a group iff
    low < mean(group scores) < high, scores being accuracies in [0, 1]. The defaults drop the
    all-wrong and all-correct groups of binary rewards (those have zero advantage); DyKnow-RAG
    used [0.01, 0.9].

    >>> DifficultyFilter(low=0.9, high=0.1)
    Traceback (most recent call last):
    ...
    ValueError: DifficultyFilter needs low < high, got low=0.9, high=0.1
    """

    low: float = bounded(0.0, ge=0, le=1)
    high: float = bounded(1.0, ge=0, le=1)

    def __post_init__(self):
        where = type(self).__name__
        check_types(self, where)
        if not self.low < self.high:
            raise ValueError(f"{where} needs low < high, got low={self.low}, high={self.high}")


@dataclass
class DiversityFilter(DifficultyFilter):
    """TaoSR-SHE's diversified filter: the difficulty window (low < mean(group scores) < high)
    and at least `min_paths` distinct reasoning paths among a group's rollouts, a path being
    (`paths`, PATH_KINDS) a rollout's step-verdict pattern or its completion tokens. The default
    min_paths 2 drops only groups whose rollouts all reason alike (ours; the paper's d is not
    public).

    >>> DiversityFilter(min_paths=0)
    Traceback (most recent call last):
    ...
    ValueError: DiversityFilter.min_paths must be an integer >= 1, got 0
    """

    min_paths: int = bounded(2, ge=1)
    paths: str = "verdicts"

    def __post_init__(self):
        super().__post_init__()
        check_choice(f"{type(self).__name__}.paths", self.paths, PATH_KINDS)
