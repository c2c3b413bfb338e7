"""TrainerConfig: every knob of the training loop, validated on construction."""
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from recis.config_utils import check_types, from_mapping


@dataclass
class TrainerConfig:
    """`max_steps` counts optimizer steps (after `grad_accum_steps` micro-batches each); `epochs`
    passes over the training data (the data may also repeat itself). `log_dir` receives the CSV and
    TensorBoard logs and the training-curve PNG. `on_nonfinite="raise"` stops at a NaN/Inf loss
    (with the step number) before anything is updated or saved; `"skip"` drops that batch and counts it."""

    epochs: int = 1
    max_steps: Optional[int] = None
    grad_accum_steps: int = 1
    bf16: bool = False
    clip_grad_norm: Optional[float] = None
    log_every: int = 50
    eval_every: Optional[int] = None
    checkpoint_every: Optional[int] = None
    log_dir: Optional[str] = None
    tensorboard: bool = True
    progress: bool = True
    on_nonfinite: str = "raise"
    group_key: Optional[str] = None
    seed: Optional[int] = None

    def __post_init__(self):
        check_types(self, "trainer")
        for name in ("epochs", "grad_accum_steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainerConfig.{name} must be an int >= 1, got {value!r}")
        for name in ("max_steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"TrainerConfig.{name} must be None or an int >= 1, got {value!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"TrainerConfig.clip_grad_norm must be None or > 0, got {self.clip_grad_norm!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"TrainerConfig.on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "trainer") -> "TrainerConfig":
        """Builds a config from a mapping, naming any unknown or mistyped key."""
        return from_mapping(cls, values, where)
