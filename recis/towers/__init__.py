"""recis.towers: the mount point for dense towers (text encoders, cross-encoders, ...) that train on
the recis data, feature and optimizer stack; plugins register theirs in the entry-point group
`recis.towers` (see docs/towers.md)."""
from recis.towers.base import (KINDS, BaseModelMismatchError, FeatureInfo, ParamGroup, RolloutPhase, Tower,
                               TowerOutput, is_adapter_parameter)
from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer
from recis.towers.generation import Rollout, sample_groups, token_entropy, token_logprobs
from recis.towers.hub import InvalidModelSpecError, resolve_model
from recis.towers.lm_tokens import encode_completions, encode_prompts, word_tokenizer
from recis.towers.lora import LoRALinear, adapters_disabled, apply_lora
from recis.towers.reference import ReferencePolicy
from recis.towers.registry import (GROUP, TowerNotFoundError, available_towers, load_tower, register_tower,
                                   unregister_tower)
from recis.towers.text import MissingTextColumnError, list_column, text_column, tokenize

__all__ = ["Tower", "TowerOutput", "RolloutPhase", "ParamGroup", "FeatureInfo", "KINDS", "BaseModelMismatchError",
           "is_adapter_parameter", "LoRALinear", "apply_lora", "adapters_disabled", "GROUP", "TowerNotFoundError",
           "available_towers", "load_tower", "register_tower", "unregister_tower", "MissingTextColumnError",
           "text_column", "list_column", "tokenize", "resolve_model", "InvalidModelSpecError", "load_causal_lm",
           "load_lm_tokenizer", "word_tokenizer", "encode_prompts", "encode_completions", "token_logprobs",
           "token_entropy", "Rollout", "sample_groups", "ReferencePolicy"]
