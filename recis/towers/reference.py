"""A frozen reference policy for KL penalties and DPO: per-token log-probs of a causal LM's
starting weights.

Two modes:

- ``"copy"``: a frozen deep copy of the policy, taken at construction and again on `reset()`
  (call it when a stage's starting weights are loaded). The copy is held outside the module
  tree: a tower that keeps a ReferencePolicy saves, trains and counts only its policy's
  parameters. It follows the policy's device (moved on first use after the policy moved).
- ``"adapters_disabled"``: the policy itself with its LoRA adapters switched off
  (`recis.towers.lora.adapters_disabled`): the frozen base model, at no extra memory. It needs
  LoRA adapters.

Both evaluate in eval mode (no dropout) under `torch.no_grad()`; the policy's own train/eval
flags are restored afterwards.

>>> import torch
>>> from recis.towers.causal_lm import load_causal_lm
>>> policy, _ = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}, "seed": 0})
>>> holder = torch.nn.Module(); holder.policy = policy; holder.reference = ReferencePolicy(policy)
>>> sorted(holder.state_dict()) == sorted("policy." + k for k in policy.state_dict())
True
>>> ids = torch.tensor([[2, 5, 6, 7]]); mask = torch.ones_like(ids)
>>> bool(torch.equal(holder.reference.logprobs(ids, mask, mask), token_logprobs(policy, ids, mask, mask)))
True
"""
import copy
from typing import Optional

import torch
from torch import nn

from recis.towers.generation import token_logprobs
from recis.towers.lora import LoRALinear, adapters_disabled

__all__ = ["ReferencePolicy", "REFERENCE_MODES"]

REFERENCE_MODES = ("copy", "adapters_disabled")


def _device(module: nn.Module) -> Optional[torch.device]:
    for p in module.parameters():
        return p.device
    return None


class ReferencePolicy:
    """The reference log-probs of `model` (see the module docstring for the modes). Deliberately
    not an nn.Module, so neither it nor its copy is ever registered as a submodule."""

    def __init__(self, model: nn.Module, mode: str = "copy"):
        if mode not in REFERENCE_MODES:
            raise ValueError(f"reference mode must be one of {list(REFERENCE_MODES)}, got {mode!r}")
        if mode == "adapters_disabled" and not any(isinstance(m, LoRALinear) for m in model.modules()):
            raise ValueError(f"reference mode 'adapters_disabled' needs LoRA adapters on the policy "
                             f"({type(model).__name__} has none; apply_lora first or use mode 'copy')")
        self.policy, self.mode = model, mode
        self._copy: Optional[nn.Module] = None
        self.reset()

    def reset(self) -> None:
        """Copy mode: re-copies the policy's current weights (the new starting point). Adapters
        mode: nothing to do (the base weights are the policy's own, frozen ones)."""
        if self.mode != "copy":
            return
        self._copy = None  # free the old copy before taking the new one
        frozen = copy.deepcopy(self.policy)
        for p in frozen.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._copy = frozen.eval()

    @property
    def module(self) -> nn.Module:
        """The module that computes the reference (the copy, or the policy itself)."""
        return self._copy if self.mode == "copy" else self.policy

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 completion_mask: Optional[torch.Tensor] = None, temperature: float = 1.0) -> torch.Tensor:
        """`recis.towers.generation.token_logprobs` of the reference, without gradients."""
        with torch.no_grad():
            if self.mode == "copy":
                device = _device(self.policy)
                if device is not None and _device(self._copy) != device:
                    self._copy.to(device)
                return token_logprobs(self._copy, input_ids, attention_mask, completion_mask, temperature)
            modes = [(m, m.training) for m in self.policy.modules()]
            try:
                self.policy.eval()
                with adapters_disabled(self.policy):
                    return token_logprobs(self.policy, input_ids, attention_mask, completion_mask, temperature)
            finally:
                for m, training in modes:
                    m.training = training

    __call__ = logprobs
