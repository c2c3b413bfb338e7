"""Helpers for modules built around a frozen causal LM (PUMGPT, the prefix and text-only baselines):
freezing, input checks, the trainable-parameter share, and the LM call with position ids from the
attention mask (``cumsum - 1``, so left padding gives each row the logits it has alone).

>>> m = FrozenLMModule(); m.lm = freeze_lm(torch.nn.Linear(4, 2)); m.head = torch.nn.Linear(2, 1)
>>> parameter_share(m.train())[:2], m.lm.training
((3, 13), False)
"""
from typing import Optional, Tuple

import torch
from torch import nn

from recis.towers.generation import position_ids

__all__ = ["freeze_lm", "check_inputs", "parameter_share", "run_lm", "FrozenLMModule"]


def freeze_lm(lm: nn.Module) -> nn.Module:
    """requires_grad False (grads dropped) and eval mode on every parameter of `lm`; returns it."""
    for p in lm.parameters():
        p.requires_grad_(False)
        p.grad = None
    return lm.eval()


def check_inputs(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                 pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Checks the shapes of a batch; returns the attention mask (all ones when None)."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a [B, T] tensor, got "
                         f"{tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}")
    if pixel_values is not None and (not torch.is_tensor(pixel_values) or pixel_values.shape[0] != input_ids.shape[0]):
        got = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values {got} must hold one image per row of input_ids (batch {input_ids.shape[0]})")
    return attention_mask


def parameter_share(module: nn.Module) -> Tuple[int, int, float]:
    """(trainable parameter count, total parameter count, trainable / total); shared tensors count once."""
    seen, trainable, total = set(), 0, 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total, trainable / max(total, 1)


def run_lm(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """``lm``'s logits ``[B, T, V]`` as float32, position ids from the attention mask, no KV cache."""
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
             use_cache=False)
    return out.logits.float()


class FrozenLMModule(nn.Module):
    """A module whose `lm` stays in eval mode whatever train() says (unless `_lm_frozen` is False);
    a `VisionEncoder` keeps itself in eval mode when frozen."""

    _lm_frozen = True

    def train(self, mode: bool = True):
        super().train(mode)
        if self._lm_frozen:
            self.lm.eval()
        return self
