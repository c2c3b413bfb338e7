"""A DDPM noise schedule (Ho et al. 2020) with few steps, for the HALO tests, tower and example.

Linear betas from `beta_start` to `beta_end` over `steps` steps, t = 0 .. steps-1 (0: the least
noise). alpha_bar[t] = prod_{s <= t} (1 - beta_s); the forward process

    q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)

and ancestral sampling from x_{T-1} ~ N(0, I) with the posterior mean of q(x_{t-1} | x_t, x0_hat)
(x0_hat from the predicted noise, clipped to [-clip, clip] when `clip` is set) and the posterior
variance beta~_t = beta_t (1 - alpha_bar[t-1]) / (1 - alpha_bar[t]) (none at t = 0).

Our defaults [I]: 10 steps (methods.md's tiny setup), beta from 0.01 to 0.7 so that with so few
steps alpha_bar at the last step is about 0.006 (the sampler's N(0, I) start is nearly the
forward process's end); the 1000-step recipes' 1e-4 .. 0.02 would leave alpha_bar near 0.9.

>>> s = DDPMSchedule(steps=10)
>>> round(float(s.alphas_cumprod[-1]), 4)
0.0065
>>> x0 = torch.ones(2, 1, 2, 2, 2); noise = torch.zeros_like(x0)
>>> bool(torch.allclose(s.q_sample(x0, torch.tensor([0, 9]), noise)[1], s.alphas_cumprod[9].sqrt() * x0[1]))
True
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from recis.config_utils import bounded, check_types

__all__ = ["DDPMSchedule"]


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped [B, 1, ...] to broadcast over `like` [B, ...]."""
    v = values.to(like.device)[t.to(like.device)].to(like.dtype)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class DDPMSchedule:
    """The schedule (see the module doc). `clip`: the sampler clips its x0 estimate to
    [-clip, clip] (data scaled to [-1, 1]: 1.0); None: no clipping."""

    steps: int = bounded(10, ge=1)
    beta_start: float = bounded(0.01, gt=0, lt=1)
    beta_end: float = bounded(0.7, gt=0, lt=1)
    clip: Optional[float] = bounded(1.0, gt=0)

    def __post_init__(self):
        check_types(self, "DDPMSchedule")
        if self.beta_end < self.beta_start:
            raise ValueError(f"DDPMSchedule.beta_end ({self.beta_end}) must be >= beta_start ({self.beta_start})")
        betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        self.betas = betas.float()
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self.alphas = alphas.float()
        self.alphas_cumprod = ab.float()
        self.alphas_cumprod_prev = ab_prev.float()
        self.posterior_variance = (betas * (1.0 - ab_prev) / (1.0 - ab)).float()
        self.posterior_coef_x0 = (betas * ab_prev.sqrt() / (1.0 - ab)).float()
        self.posterior_coef_xt = ((1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab)).float()

    def check_t(self, t: torch.Tensor, name: str = "t") -> None:
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != torch.long:
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a long tensor [B] of timesteps, got {got}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.steps):
            raise ValueError(f"{name} must lie in [0, {self.steps - 1}] (DDPMSchedule.steps = {self.steps}), got "
                             f"values in [{int(t.min())}, {int(t.max())}]")

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) noise; x0, noise [B, ...], t [B]."""
        self.check_t(t)
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        if t.shape[0] != x0.shape[0]:
            raise ValueError(f"t has {t.shape[0]} timesteps for {x0.shape[0]} samples in x0")
        ab = _at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def draw(self, shape: Sequence[int], generator: torch.Generator, device=None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(t [B] uniform over the steps, noise of `shape` ~ N(0, I)), drawn on the CPU from
        `generator` (the same draws on any device), then moved to `device`."""
        t = torch.randint(0, self.steps, (int(shape[0]),), generator=generator)
        noise = torch.randn(tuple(shape), generator=generator)
        return t.to(device), noise.to(device)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 estimate from the predicted noise: (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
        ab = _at(self.alphas_cumprod, t, x_t)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    @torch.no_grad()
    def sample(self, model: Callable, shape: Sequence[int], cond: Optional[torch.Tensor],
               generator: torch.Generator, device=None) -> torch.Tensor:
        """Ancestral DDPM sampling: `model(x_t, t, cond) -> eps` (t a long tensor [B]); returns x0
        [shape]. All noise comes from `generator` on the CPU, so a seed gives the same samples.
        The model's train/eval mode is the caller's."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        shape = tuple(int(s) for s in shape)
        if cond is not None and cond.shape[0] != shape[0]:
            raise ValueError(f"cond has {cond.shape[0]} rows for {shape[0]} samples (shape {shape})")
        if device is None:
            device = cond.device if cond is not None else torch.device("cpu")
        x = torch.randn(shape, generator=generator).to(device)
        for step in range(self.steps - 1, -1, -1):
            t = torch.full((shape[0],), step, dtype=torch.long, device=device)
            eps = model(x, t, cond)
            x0 = self.predict_x0(x, t, eps)
            if self.clip is not None:
                x0 = x0.clamp(-self.clip, self.clip)
            mean = _at(self.posterior_coef_x0, t, x) * x0 + _at(self.posterior_coef_xt, t, x) * x
            if step > 0:
                z = torch.randn(shape, generator=generator).to(device)
                x = mean + math.sqrt(float(self.posterior_variance[step])) * z
            else:
                x = mean
        return x
