"""A small class-conditioned 3D-conv denoiser that predicts the noise of a DDPM step.

x_t [B, C, F, H, W] -> Conv3d(C, width) -> + timestep embedding + class embedding -> SiLU ->
(layers - 2) x [Conv3d(width, width) -> SiLU] -> Conv3d(width, C) = eps. All kernels 3x3x3 with
padding 1, so any clip size works and the output has the input's shape. Sizes are ours [I]
(methods.md's tiny setup: "a 2-layer 3D conv"; the default has 3 layers).

>>> net = Denoiser3D(channels=1, width=8, num_classes=10, steps=10)
>>> x = torch.randn(2, 1, 4, 16, 16)
>>> tuple(net(x, torch.tensor([0, 9]), torch.tensor([3, 7])).shape)
(2, 1, 4, 16, 16)
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["Denoiser3D"]


def _positive(name: str, value, low: int = 1, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Denoiser3D.{name} must be an integer {rng}, got {value!r}")
    return value


class Denoiser3D(nn.Module):
    """eps_theta(x_t, t, cond) (see the module doc). `layers`: the number of Conv3d layers (2-4)."""

    def __init__(self, channels: int = 1, width: int = 16, num_classes: int = 10, steps: int = 10, layers: int = 3):
        super().__init__()
        self.channels = _positive("channels", channels)
        self.width = _positive("width", width)
        self.num_classes = _positive("num_classes", num_classes)
        self.steps = _positive("steps", steps)
        _positive("layers", layers, 2, 4)
        self.conv_in = nn.Conv3d(channels, width, 3, padding=1)
        self.time = nn.Embedding(steps, width)
        self.label = nn.Embedding(num_classes, width)
        self.hidden = nn.ModuleList(nn.Conv3d(width, width, 3, padding=1) for _ in range(layers - 2))
        self.conv_out = nn.Conv3d(width, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x_t.dim() != 5 or x_t.shape[1] != self.channels:
            raise ValueError(f"x_t must be [B, C={self.channels}, F, H, W], got {tuple(x_t.shape)}")
        b = x_t.shape[0]
        for name, v, n in (("t", t, self.steps), ("cond", cond, self.num_classes)):
            if v is None and name == "cond":
                continue
            if not isinstance(v, torch.Tensor) or v.shape != (b,) or v.dtype != torch.long:
                got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name} must be a long tensor [B={b}], got {got}")
            if b and (int(v.min()) < 0 or int(v.max()) >= n):
                raise ValueError(f"{name} must lie in [0, {n - 1}], got values in [{int(v.min())}, {int(v.max())}]")
        emb = self.time(t)
        if cond is not None:
            emb = emb + self.label(cond)
        h = self.act(self.conv_in(x_t) + emb[:, :, None, None, None])
        for conv in self.hidden:
            h = self.act(conv(h))
        return self.conv_out(h)
