"""PUMGPT (arXiv 2308.09568 v1): a frozen causal LM that reads K visual tokens through zero-initialised,
gated layer-wise adapters, one adapter set per task; and the text-only baseline.

    logits = LM(input_ids, attention_mask)  with  h_l <- h_l + tanh(g_l) CrossAttn(norm(h_l), A_l(P(E(x))))

E: the frozen vision encoder (`vision.VisionEncoder`), P: the projector to K tokens (`vision.Projector`),
A_l: the adapters (`adapters.AdapterBank`). Only the projector and the current task's adapters train
(and the vision encoder with `vision_trainable`); the LM is frozen (requires_grad False, eval mode).
The projector trains with the first task only: `add_task` freezes it, and every earlier task's
adapters, so a later task leaves them bit-identical. Position ids come from the attention mask
(``cumsum - 1``, `recis.towers.generation.position_ids`), so left padding gives each row the logits
it has alone.

With every gate at zero, ``PUMGPT(...)(pixels, ids, mask)`` equals
``lm(ids, mask, position_ids=position_ids(mask)).logits`` exactly (without padding: ``lm(ids, mask).logits``).

>>> from recis.towers.causal_lm import load_causal_lm
>>> lm, _ = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}, "seed": 0})
>>> vision = build_vision({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
...     "intermediate_size": 32, "image_size": 16, "patch_size": 4, "num_channels": 1, "seed": 0})
>>> m = PUMGPT(lm, vision, PUMGPTConfig(num_visual_tokens=4, adapter_heads=2, projector_heads=2))
>>> m.add_task("category")
>>> ids, mask = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long)
>>> logits = m(torch.rand(1, 1, 28, 28), ids, mask)
>>> logits.shape, torch.equal(logits, lm(ids, mask).logits), m.visual_tokens(torch.rand(1, 1, 64, 64)).shape
(torch.Size([1, 3, 16]), True, torch.Size([1, 4, 16]))
>>> PUMGPTConfig(adapter_every=0)
Traceback (most recent call last):
...
ValueError: PUMGPTConfig.adapter_every must be an integer >= 1, got 0
"""
import contextlib
import copy
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from recis.config_utils import bounded, check_types

from .adapters import AdapterBank, decoder_layers, lm_hidden_size
from .frozen import FrozenLMModule, check_inputs, freeze_lm, parameter_share, run_lm
from .prefix import PrefixLM
from .vision import Projector, VisionEncoder, build_vision

__all__ = ["PUMGPTConfig", "PUMGPT", "PrefixLM", "TextOnlyLM", "build_vision", "freeze_lm", "check_inputs",
           "parameter_share"]


@dataclass
class PUMGPTConfig:
    """PUMGPT's options; each is [I] (ours: the paper gives none of these numbers).

    - num_visual_tokens: K, the projector's learned queries (the paper: "fewer visual tokens").
    - adapter_every: r; decoder layers r-1, 2r-1, ... get an adapter (1: every layer).
    - adapter_heads / adapter_dim: the adapters' cross-attention heads and width (None: the LM's hidden size).
    - gate_init: g_l at init (0: the LM's outputs are untouched at init); per_channel_gate: one gate per
      hidden channel instead of a scalar.
    - projector_heads: heads of the projector's attention over the patch features (must divide the
      vision width); projector_dim: the projector MLP's hidden width (None: the LM's hidden size).
    - vision_trainable: train the vision encoder too (with the first task; frozen by add_task after).
    """

    num_visual_tokens: int = bounded(8, ge=1)
    adapter_every: int = bounded(1, ge=1)
    adapter_heads: int = bounded(4, ge=1)
    adapter_dim: Optional[int] = bounded(None, ge=1)
    gate_init: float = bounded(0.0)
    per_channel_gate: bool = False
    projector_heads: int = bounded(4, ge=1)
    projector_dim: Optional[int] = bounded(None, ge=1)
    vision_trainable: bool = False

    def __post_init__(self):
        check_types(self, "PUMGPTConfig")
        if self.adapter_dim is not None and self.adapter_dim % self.adapter_heads:
            raise ValueError(f"PUMGPTConfig.adapter_dim={self.adapter_dim} must be a multiple of "
                             f"PUMGPTConfig.adapter_heads={self.adapter_heads}")


class PUMGPT(FrozenLMModule):
    """The LVLM: ``forward(pixel_values [B, C, H, W], input_ids [B, T], attention_mask [B, T]) -> logits
    [B, T, V]`` (float32). `lm`: a `transformers` causal LM (frozen here, in place); `vision`: a
    `VisionEncoder` (or a transformers vision model, wrapped)."""

    def __init__(self, lm: nn.Module, vision: nn.Module, config: Optional[PUMGPTConfig] = None):
        super().__init__()
        config = PUMGPTConfig() if config is None else config
        if not isinstance(config, PUMGPTConfig):
            raise TypeError(f"config must be a PUMGPTConfig, got {type(config).__name__}")
        self.config = config
        decoder_layers(lm)  # an LM whose decoder layers cannot be found is named before anything else
        self.lm = freeze_lm(lm)
        if not isinstance(vision, VisionEncoder):
            vision = VisionEncoder(vision)
        vision.set_trainable(config.vision_trainable)
        self.vision = vision
        self.hidden = lm_hidden_size(lm)
        self.projector = Projector(vision.dim, self.hidden, config.num_visual_tokens, config.projector_heads,
                                   config.projector_dim)
        self.adapters = AdapterBank(lm, every=config.adapter_every, heads=config.adapter_heads, dim=config.adapter_dim,
                                    gate_init=config.gate_init, per_channel_gate=config.per_channel_gate)
        ref = next(lm.parameters(), None)
        if ref is not None:
            self.projector.to(ref.device)

    # -- tasks ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> list:
        return list(self.adapters.tasks)

    @property
    def task(self) -> Optional[str]:
        return self.adapters.task

    def add_task(self, name: str) -> None:
        """Adapters for task `name` (made current). From the second task on, the projector (and a
        trainable vision encoder) and every earlier task's adapters are frozen."""
        self.adapters.check_new_task(name)  # before anything is frozen
        if len(self.adapters.tasks) > 0:
            for p in self.projector.parameters():
                p.requires_grad_(False)
                p.grad = None
            self.vision.set_trainable(False)
        self.adapters.add_task(name, device=self.projector.queries.device)

    def set_task(self, name: str) -> None:
        """Run task `name`'s adapters (a ValueError naming it and the known tasks if unknown)."""
        self.adapters.set_task(name)

    # -- running -------------------------------------------------------------------------------
    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, K, lm_hidden]`` visual tokens of images ``[B, C, H, W]`` (K whatever the image size)."""
        return self.projector(self.vision(pixel_values))

    @contextlib.contextmanager
    def visual_context(self, pixel_values: torch.Tensor) -> Iterator[torch.Tensor]:
        """Within the block, calls of the bare LM (e.g. `recis.towers.generation.sample_groups(m.lm, ...)`,
        `lm.generate`) see these images through the current task's adapters; yields the visual tokens."""
        tokens = self.visual_tokens(pixel_values)
        with self.adapters.visual(tokens):
            yield tokens

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        attention_mask = check_inputs(input_ids, attention_mask, pixel_values)
        if getattr(self.lm, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
            # a recomputed layer would run its hook outside the visual context, without the adapter
            raise ValueError(f"PUMGPT: gradient checkpointing is on in the frozen LM {type(self.lm).__name__}; "
                             f"its adapter hooks need the visual tokens at recompute time: disable it")
        with self.visual_context(pixel_values):
            return run_lm(self.lm, input_ids, attention_mask)

    def trainable_share(self) -> Tuple[int, int, float]:
        """(trainable parameters, all parameters incl. the frozen LM and vision encoder, share)."""
        return parameter_share(self)

    def parameter_groups(self) -> Dict[str, Tuple[nn.Module, bool]]:
        """{group: (module, trains now)}: ``lm``, ``vision``, ``projector`` and ``adapters.<task>`` for each
        task, disjoint and covering every parameter: what a tower declares (a group that does not train
        now is frozen: declaring it trainable would undo `add_task`'s freeze)."""
        groups = {"lm": (self.lm, False), "vision": (self.vision, self.vision.trainable),
                  "projector": (self.projector, any(p.requires_grad for p in self.projector.parameters()))}
        for name, adapters in self.adapters.tasks.items():
            groups[f"adapters.{name}"] = (adapters, any(p.requires_grad for p in adapters.parameters()))
        return groups


class TextOnlyLM(FrozenLMModule):
    """The text-only baseline: same forward signature, ignores `pixel_values`.

    `trainable=False` (the default): the given LM, frozen in place. `trainable=True` [I]: a deep copy
    of the LM is fine-tuned whole (the strongest text-only baseline: whatever the text alone can
    teach), leaving the given LM (possibly shared with PUMGPT) untouched."""

    def __init__(self, lm: nn.Module, trainable: bool = False):
        super().__init__()
        self._lm_frozen = not trainable
        if trainable:
            lm = copy.deepcopy(lm)
            for p in lm.parameters():
                p.requires_grad_(True)
            self.lm = lm
        else:
            self.lm = freeze_lm(lm)

    def forward(self, pixel_values: Optional[torch.Tensor], input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        attention_mask = check_inputs(input_ids, attention_mask)
        return run_lm(self.lm, input_ids, attention_mask)

    def trainable_share(self) -> Tuple[int, int, float]:
        return parameter_share(self)

