"""LoRA adapters for any module with nn.Linear layers (e.g. a transformers encoder).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> x = torch.randn(3, 4)
>>> before = net(x)
>>> apply_lora(net, targets=["0"], rank=2)
['0']
>>> torch.allclose(net(x), before)        # B starts at zero: the adapted model starts unchanged
True
>>> sorted(n for n, _ in net.named_parameters() if "lora" in n)
['0.lora_A', '0.lora_B']
>>> with adapters_disabled(net):          # the base model alone (e.g. a reference policy)
...     net[0].enabled
False
>>> net[0].enabled
True
"""
import contextlib
import math
from typing import Iterator, List, Sequence

import torch
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "adapters_disabled"]


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) * x A^T B^T`, with A ~ Kaiming-uniform and B = 0; just `base(x)`
    while `enabled` is False (see `adapters_disabled`; the flag is not part of the state dict)."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.scaling = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base(x)
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling


def apply_lora(module: nn.Module, targets: Sequence[str] = ("query", "value"), rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> List[str]:
    """Wraps every nn.Linear of `module` whose name ends with one of `targets` in a LoRALinear;
    returns the wrapped names. Raises if nothing matches (a typo in `targets`)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)
             and any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        linear = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ValueError(f"apply_lora: no nn.Linear named like {list(targets)} (linear layers: {linear} ...)")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block every LoRALinear of `module` computes its base layer alone; each one's
    previous `enabled` flag is restored on exit, also when the block raises. ValueError when
    `module` has no LoRA adapters (so a reference policy cannot silently equal the policy)."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError(f"adapters_disabled: {type(module).__name__} has no LoRA adapters (apply_lora first)")
    before = [m.enabled for m in layers]
    try:
        for m in layers:
            m.enabled = False
        yield module
    finally:
        for m, flag in zip(layers, before):
            m.enabled = flag
