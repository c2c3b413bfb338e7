"""TrainerConfig: every knob of the training loop, validated on construction."""
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from recis.config_utils import bounded, check_types, from_mapping


@dataclass
class TrainerConfig:
    """`max_steps` counts optimizer steps (after `grad_accum_steps` micro-batches each); `epochs`
    passes over the training data (the data may also repeat itself). `log_dir` receives the CSV and
    TensorBoard logs and the training-curve PNG. `progress`: a tqdm bar on a terminal; in a log
    (stdout or stderr not a terminal, or under torchrun) a plain line every `progress_every` steps
    (default: `log_every`) instead of carriage-return updates. `on_nonfinite="raise"` stops at a NaN/Inf loss
    (with the step number) before anything is updated or saved; `"skip"` drops that batch and counts it.
    `checkpoint_every_minutes`: also save a checkpoint once this many minutes have passed since
    the last one (or since fit started), whichever of it and `checkpoint_every` comes first.
    `prequential`: score every training batch before the update on it (recis.train.prequential:
    cumulative and windowed logloss / AUC over tumbling windows of `prequential_window`
    examples); `prequential_cumulative_auc=False` drops the cumulative AUC, whose memory grows
    with the examples seen."""

    epochs: int = bounded(1, ge=1)
    max_steps: Optional[int] = bounded(None, ge=1)
    grad_accum_steps: int = bounded(1, ge=1)
    bf16: bool = False
    clip_grad_norm: Optional[float] = bounded(None, gt=0)
    log_every: int = bounded(50, ge=1)
    eval_every: Optional[int] = bounded(None, ge=1)
    checkpoint_every: Optional[int] = bounded(None, ge=1)
    checkpoint_every_minutes: Optional[float] = bounded(None, gt=0)
    log_dir: Optional[str] = None
    tensorboard: bool = True
    progress: bool = True
    progress_every: Optional[int] = bounded(None, ge=1)
    on_nonfinite: str = "raise"
    group_key: Optional[str] = None
    seed: Optional[int] = bounded(None, ge=0, lt=1 << 64)
    prequential: bool = False
    prequential_window: int = bounded(10000, ge=1)
    prequential_cumulative_auc: bool = True

    def __post_init__(self):
        check_types(self, "trainer")
        if self.on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"TrainerConfig.on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "trainer") -> "TrainerConfig":
        """Builds a config from a mapping, naming any unknown or mistyped key."""
        return from_mapping(cls, values, where)
