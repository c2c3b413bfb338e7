"""The prefix-token baseline (LLaVA-style): the projector's K visual tokens go in front of the text as
input embeddings of the frozen LM; no adapters. Only the projector trains (and the vision encoder with
`vision_trainable`).

Each row's sequence is ``[pads..., K visual tokens, its text tokens]``: the rows' pads move to the
front (a stable sort on the extended attention mask, so left- and right-padded batches both work),
position ids come from the extended mask (``cumsum - 1``), and the logits are put back in the
text's order and returned for the text positions only, ``[B, T, V]`` (float32), with the meaning of
an LM's logits: position t predicts token t + 1.

`PrefixLM.matching(lm, vision, trainable=N, num_visual_tokens=K)` picks the projector MLP's hidden
width so the baseline's trainable-parameter count equals N (within `tolerance`, default 2%); the
target and the count reached are in ``.matched``. [I] ours: the MLP's width as the sizing knob (the
attention of the queries over the patches runs at the vision width).

>>> from recis.towers.causal_lm import load_causal_lm
>>> from recis_multimodal.pumgpt.vision import build_vision
>>> lm, _ = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}, "seed": 0})
>>> vision = build_vision({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
...     "intermediate_size": 32, "image_size": 16, "patch_size": 4, "num_channels": 1, "seed": 0})
>>> p = PrefixLM.matching(lm, vision, trainable=5000, num_visual_tokens=4, projector_heads=2)
>>> p.matched["achieved"], p(torch.rand(2, 1, 28, 28), torch.tensor([[0, 1, 2], [3, 4, 5]])).shape
(4995, torch.Size([2, 3, 16]))
"""
import logging
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from recis.towers.generation import position_ids

from .adapters import lm_hidden_size
from .frozen import FrozenLMModule, check_inputs, freeze_lm, parameter_share
from .vision import Projector, VisionEncoder, projector_parameter_count

__all__ = ["PrefixLM"]

log = logging.getLogger(__name__)


class PrefixLM(FrozenLMModule):
    """``forward(pixel_values, input_ids, attention_mask) -> [B, T, V]`` text-position logits of the
    frozen `lm` reading K visual prefix tokens. `projector_dim`: the projector MLP's hidden width
    (None: the LM's hidden size)."""

    def __init__(self, lm: nn.Module, vision: nn.Module, num_visual_tokens: int = 8,
                 projector_dim: Optional[int] = None, projector_heads: int = 4, vision_trainable: bool = False):
        super().__init__()
        self.lm = freeze_lm(lm)
        if not isinstance(vision, VisionEncoder):
            vision = VisionEncoder(vision)
        vision.set_trainable(vision_trainable)
        self.vision = vision
        self.hidden = lm_hidden_size(lm)
        self.num_visual_tokens = num_visual_tokens
        self.projector = Projector(vision.dim, self.hidden, num_visual_tokens, projector_heads, projector_dim)
        ref = next(lm.parameters(), None)
        if ref is not None:
            self.projector.to(ref.device)
        self.matched: Dict[str, Any] = {}

    @classmethod
    def matching(cls, lm: nn.Module, vision: nn.Module, trainable: int, num_visual_tokens: int = 8,
                 projector_heads: int = 4, vision_trainable: bool = False, tolerance: float = 0.02) -> "PrefixLM":
        """A PrefixLM whose trainable-parameter count is `trainable` within `tolerance` (relative),
        reached by the projector MLP's hidden width; a ValueError naming the target otherwise."""
        if not isinstance(trainable, int) or isinstance(trainable, bool) or trainable < 1:
            raise ValueError(f"PrefixLM.matching: trainable must be a parameter count >= 1, got {trainable!r}")
        if not isinstance(vision, VisionEncoder):
            vision = VisionEncoder(vision)
        out = lm_hidden_size(lm)
        extra = sum(p.numel() for p in vision.model.parameters()) if vision_trainable else 0
        base = projector_parameter_count(vision.dim, out, num_visual_tokens, 0) + extra
        per_unit = vision.dim + 1 + out  # one more MLP hidden unit: a row of fc1, its bias, a column of fc2
        width = max(1, round((trainable - base) / per_unit))
        achieved = base + width * per_unit
        if abs(achieved - trainable) > tolerance * trainable:
            raise ValueError(f"PrefixLM.matching: cannot reach {trainable} trainable parameters within "
                             f"{tolerance:.0%} (closest: {achieved} with projector MLP width {width}; the projector "
                             f"with K={num_visual_tokens} needs at least {base + per_unit})")
        model = cls(lm, vision, num_visual_tokens, width, projector_heads, vision_trainable)
        got = model.trainable_share()[0]
        model.matched = {"target": trainable, "achieved": got, "projector_dim": width,
                         "relative_error": (got - trainable) / trainable}
        log.info("PrefixLM sized to %d trainable parameters (target %d, projector MLP width %d)", got, trainable, width)
        return model

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, K, lm_hidden]`` prefix embeddings (K whatever the image size)."""
        return self.projector(self.vision(pixel_values))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        attention_mask = check_inputs(input_ids, attention_mask, pixel_values)
        b, t = input_ids.shape
        k = self.num_visual_tokens
        text = self.lm.get_input_embeddings()(input_ids)
        prefix = self.visual_tokens(pixel_values).to(text.dtype)
        embeds = torch.cat([prefix, text], dim=1)
        mask = torch.cat([attention_mask.new_ones(b, k), attention_mask], dim=1)
        order = torch.argsort(mask.ne(0).to(torch.int8), dim=1, stable=True)  # pads first, real tokens in order
        embeds = embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
        mask = mask.gather(1, order)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask),
                         use_cache=False).logits
        back = torch.argsort(order, dim=1)
        logits = logits.gather(1, back[:, k:].unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        return logits.float()

    def trainable_share(self) -> Tuple[int, int, float]:
        """(trainable parameters, all parameters incl. the frozen LM and vision encoder, share)."""
        return parameter_share(self)
