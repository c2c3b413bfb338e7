"""Gran-DPO (HALO, methods.md section 8): Diffusion-DPO's video term plus masked patch terms.

A pair (a, b) of clips for one condition is noised with the same timestep and noise; the trained
denoiser and the frozen reference predict the target (the noise) for both. With per-sample errors
e = mean (pred - target)^2 over the whole clip and per-patch errors e^k over patch k's region:

    L = L_video + lam * sum_k m_k * l_k / sum_k m_k            (per pair, then the mean over pairs)
    L_video = recis.rl.diffusion_dpo_loss(e_model(w), e_model(l), e_ref(w), e_ref(l), beta)
    l_k     = -log sigmoid(-0.5 * patch_beta * [(e^k_model(w_k) - e^k_ref(w_k)) - (e^k_model(l_k) - e^k_ref(l_k))])
    m_k     = 1[|R_p^a[k] - R_p^b[k]| >= delta]

The video winner w is the sample with the higher video reward, the patch winner w_k the one with
the higher patch reward R_p[k]; both may differ, which is the point: a winner's defective patch is
pushed the other way. A pair with no patch over delta (sum_k m_k = 0) has patch term 0.

Our choices, not the paper's ([I], each an option of `GranDPOConfig`):

- `patch_norm`: "mask" (the formula above: per pair over its masked patches), "count" (per pair
  over all K patches, so a pair with few decisive patches weighs less), "batch" (the mean over all
  masked patches of the batch);
- `patch_beta`: the patches' beta, beta when None (both errors are means, on the same scale);
- ties: a tie in rewards makes sample a the winner (for patches only reachable with delta = 0).

>>> grid = PatchGrid(frames=1, height=2, width=2)
>>> grid.count((2, 4, 4)), tuple(grid.masks((2, 4, 4)).shape)
(8, (8, 2, 4, 4))
>>> PatchGrid(1, 3, 3).count((2, 4, 4))
Traceback (most recent call last):
...
ValueError: patch grid (frames=1, height=3, width=3) does not divide the clip [F, H, W] = (2, 4, 4): height 4 % 3 != 0
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from recis.config_utils import bounded, check_types
from recis.rl import diffusion_dpo_loss
from recis.rl.config import check_choice
from recis.rl.diffusion import check_beta, check_error_vectors

__all__ = ["PatchGrid", "GranDPOConfig", "GranDPOTerms", "PATCH_NORMS", "clip_errors", "patch_errors",
           "patch_mask", "gran_dpo_terms", "gran_dpo_from_errors", "gran_dpo_loss"]

PATCH_NORMS = ("mask", "count", "batch")
_AXES = ("frames", "height", "width")


@dataclass(frozen=True)
class PatchGrid:
    """A patch's size in (frames, pixels, pixels). Patches tile the clip [F, H, W] without overlap,
    indexed k = (frame block, row block, column block) in row-major order."""

    frames: int
    height: int
    width: int

    def __post_init__(self):
        for name in _AXES:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PatchGrid.{name} must be an integer >= 1, got {v!r}")

    @classmethod
    def of(cls, value: Any, where: str = "grid") -> "PatchGrid":
        """A PatchGrid from itself, a [frames, height, width] list or a mapping of those keys."""
        if isinstance(value, PatchGrid):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(_AXES))
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown} (known: {list(_AXES)})")
            return cls(**value)
        if isinstance(value, (list, tuple)) and len(value) == 3:
            return cls(*value)
        raise TypeError(f"{where} must be [frames, height, width] (a patch's size), got {value!r}")

    @property
    def size(self) -> Tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    def blocks(self, shape: Sequence[int]) -> Tuple[int, int, int]:
        """Patches along frames, rows and columns of a clip [F, H, W]; an error when the grid does
        not divide it."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"a clip shape is [F, H, W], got {shape}")
        for name, n, p in zip(_AXES, shape, self.size):
            if n % p:
                raise ValueError(f"patch grid (frames={self.frames}, height={self.height}, width={self.width}) "
                                 f"does not divide the clip [F, H, W] = {shape}: {name} {n} % {p} != 0")
        return tuple(n // p for n, p in zip(shape, self.size))

    def count(self, shape: Sequence[int]) -> int:
        """K, the number of patches of a clip [F, H, W]."""
        nf, nh, nw = self.blocks(shape)
        return nf * nh * nw

    def masks(self, shape: Sequence[int]) -> torch.Tensor:
        """bool [K, F, H, W]: patch k's region (the regions partition the clip)."""
        nf, nh, nw = self.blocks(shape)
        f, h, w = self.size
        out = torch.zeros(nf * nh * nw, *shape, dtype=torch.bool)
        k = 0
        for i in range(nf):
            for j in range(nh):
                for m in range(nw):
                    out[k, i * f:(i + 1) * f, j * h:(j + 1) * h, m * w:(m + 1) * w] = True
                    k += 1
        return out


def _check_clips(named: Dict[str, torch.Tensor]) -> None:
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor [P, C, F, H, W] of clips, got {shape}")
        if t.shape != first.shape:
            raise ValueError(f"{name} must have the shape of {first_name} {tuple(first.shape)}, got {tuple(t.shape)}")


def clip_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[P]: mean over (C, F, H, W) of (pred - target)^2 (Diffusion-DPO's per-sample error)."""
    _check_clips({"pred": pred, "target": target})
    return (pred - target).pow(2).mean(dim=(1, 2, 3, 4))


def patch_errors(pred: torch.Tensor, target: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """[P, K]: mean over (C, patch k's region) of (pred - target)^2; pred, target [P, C, F, H, W]."""
    _check_clips({"pred": pred, "target": target})
    p, c, fr, h, w = pred.shape
    nf, nh, nw = grid.blocks((fr, h, w))
    sq = (pred - target).pow(2).reshape(p, c, nf, grid.frames, nh, grid.height, nw, grid.width)
    return sq.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(p, nf * nh * nw, -1).mean(dim=2)


def patch_mask(patch_reward_a: torch.Tensor, patch_reward_b: torch.Tensor, delta: float) -> torch.Tensor:
    """bool [P, K]: m_k = |R_p^a[k] - R_p^b[k]| >= delta."""
    return (patch_reward_a - patch_reward_b).abs() >= delta


@dataclass
class GranDPOConfig:
    """Gran-DPO's options. `beta`: the video term's (Diffusion-DPO's; 2500-5000 in the public SD
    recipes); `lam` >= 0: the patch terms' weight (0: exactly Diffusion-DPO); `delta` >= 0: the
    patch-reward gap a patch needs to count; `grid`: the patch size [frames, height, width];
    `patch_beta`, `patch_norm`: see the module doc ([I], ours)."""

    beta: float = bounded(2500.0, gt=0)
    lam: float = bounded(1.0, ge=0)
    delta: float = bounded(0.1, ge=0)
    grid: Any = field(default_factory=lambda: PatchGrid(1, 4, 4))
    patch_beta: Optional[float] = bounded(None, gt=0)
    patch_norm: str = "mask"

    def __post_init__(self):
        check_types(self, "GranDPOConfig")
        self.grid = PatchGrid.of(self.grid, "GranDPOConfig.grid")
        check_choice("GranDPOConfig.patch_norm", self.patch_norm, PATCH_NORMS)

    @property
    def effective_patch_beta(self) -> float:
        return self.beta if self.patch_beta is None else self.patch_beta


@dataclass
class GranDPOTerms:
    """The pieces of the loss: `video` [P] (the per-pair video losses), `video_loss` (their mean,
    computed by `recis.rl.diffusion_dpo_loss`), `patch` [P, K] (l_k, whatever the mask), `mask`
    bool [P, K], `video_a_wins` bool [P], `patch_a_wins` bool [P, K], and `patch_loss` (the
    normalised patch term, a scalar)."""

    video: torch.Tensor
    video_loss: torch.Tensor
    patch: torch.Tensor
    mask: torch.Tensor
    video_a_wins: torch.Tensor
    patch_a_wins: torch.Tensor
    patch_loss: torch.Tensor


def _check_rewards(reward_a, reward_b, patch_reward_a, patch_reward_b, p: int, k: int) -> None:
    for name, t, shape in (("reward_a", reward_a, (p,)), ("reward_b", reward_b, (p,)),
                           ("patch_reward_a", patch_reward_a, (p, k)), ("patch_reward_b", patch_reward_b, (p, k))):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape {shape} ({'[P, K]' if len(shape) == 2 else '[P]'}), "
                             f"got {got}")


def _select(a_wins: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a)


def gran_dpo_terms(video_errors: Sequence[torch.Tensor], patch_errs: Sequence[torch.Tensor],
                   reward_a: torch.Tensor, reward_b: torch.Tensor, patch_reward_a: torch.Tensor,
                   patch_reward_b: torch.Tensor, config: GranDPOConfig) -> Tuple[GranDPOTerms, Dict[str, float]]:
    """The terms from errors: `video_errors` = (model_a, model_b, ref_a, ref_b), each [P];
    `patch_errs` the same four, each [P, K]; rewards [P] and patch rewards [P, K]. The
    reference's errors are constants. Returns the terms and the video term's stats."""
    names = ("model_a", "model_b", "ref_a", "ref_b")
    if len(video_errors) != 4 or len(patch_errs) != 4:
        raise ValueError("video_errors and patch_errs each need 4 tensors: (model_a, model_b, ref_a, ref_b)")
    check_error_vectors(dict(zip(names, video_errors)))
    p = video_errors[0].shape[0]
    for name, t in zip(names, patch_errs):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != p:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"patch errors {name} must be a tensor [P={p}, K], got {got}")
        if t.shape != patch_errs[0].shape:
            raise ValueError(f"patch errors {name} must have the shape of model_a {tuple(patch_errs[0].shape)}, "
                             f"got {tuple(t.shape)}")
    k = patch_errs[0].shape[1]
    _check_rewards(reward_a, reward_b, patch_reward_a, patch_reward_b, p, k)
    check_beta(config.effective_patch_beta, "patch_beta")
    ma, mb, ra, rb = video_errors
    a_wins = reward_a >= reward_b                      # ties: sample a
    (mw, ml), (rw, rl) = _select(a_wins, ma, mb), _select(a_wins, ra, rb)
    video_loss, video_stats = diffusion_dpo_loss(mw, ml, rw, rl, config.beta)
    video = -F.logsigmoid(-0.5 * config.beta * ((mw - ml) - (rw.detach() - rl.detach())))
    pma, pmb, pra, prb = patch_errs
    pa_wins = patch_reward_a >= patch_reward_b         # ties: sample a
    (pw, pl), (qw, ql) = _select(pa_wins, pma, pmb), _select(pa_wins, pra.detach(), prb.detach())
    patch = -F.logsigmoid(-0.5 * config.effective_patch_beta * ((pw - qw) - (pl - ql)))
    mask = patch_mask(patch_reward_a, patch_reward_b, config.delta)
    masked = torch.where(mask, patch, torch.zeros_like(patch))   # m_k = 0: no value, no gradient
    m = mask.to(patch.dtype)
    if config.patch_norm == "mask":
        patch_loss = (masked.sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()
    elif config.patch_norm == "count":
        patch_loss = (masked.sum(dim=1) / k).mean()
    else:
        patch_loss = masked.sum() / m.sum().clamp(min=1)
    return GranDPOTerms(video, video_loss, patch, mask, a_wins, pa_wins, patch_loss), video_stats


def gran_dpo_from_errors(video_errors: Sequence[torch.Tensor], patch_errs: Sequence[torch.Tensor],
                         reward_a: torch.Tensor, reward_b: torch.Tensor, patch_reward_a: torch.Tensor,
                         patch_reward_b: torch.Tensor, config: GranDPOConfig
                         ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """L = L_video + lam * patch term, from errors (see `gran_dpo_terms`). With lam = 0 the loss
    is `diffusion_dpo_loss` of the video winners and losers, bit for bit. Stats: the video
    term's (`implicit_accuracy`, `margin`, `model_mse`, ...), `video_loss`, `patch_loss`,
    `patch_mask_share` (share of patches with m_k = 1), `patch_implicit_accuracy` (over the
    masked patches; 0 when none), `patch_winner_agreement` (share of masked patches whose winner
    is the video winner), `pairs_without_patches` (share of pairs with sum_k m_k = 0)."""
    terms, vstats = gran_dpo_terms(video_errors, patch_errs, reward_a, reward_b, patch_reward_a, patch_reward_b,
                                   config)
    video_loss = terms.video_loss
    loss = video_loss if config.lam == 0 else video_loss + config.lam * terms.patch_loss
    with torch.no_grad():
        mask = terms.mask
        n = int(mask.sum())
        pma, pmb, pra, prb = patch_errs
        pw, pl = _select(terms.patch_a_wins, pma, pmb)
        qw, ql = _select(terms.patch_a_wins, pra, prb)
        inside = -((pw - qw) - (pl - ql))
        agree = terms.patch_a_wins == terms.video_a_wins[:, None]
        stats = dict(vstats)
        stats.update({
            "video_loss": float(video_loss), "patch_loss": float(terms.patch_loss),
            "patch_mask_share": float(mask.float().mean()) if mask.numel() else 0.0,
            "patch_implicit_accuracy": float((inside > 0)[mask].float().mean()) if n else 0.0,
            "patch_winner_agreement": float(agree[mask].float().mean()) if n else 0.0,
            "pairs_without_patches": float((mask.sum(dim=1) == 0).float().mean()),
        })
    return loss, stats


def gran_dpo_loss(model_a: torch.Tensor, model_b: torch.Tensor, ref_a: torch.Tensor, ref_b: torch.Tensor,
                  target_a: torch.Tensor, target_b: torch.Tensor, reward_a: torch.Tensor, reward_b: torch.Tensor,
                  patch_reward_a: torch.Tensor, patch_reward_b: torch.Tensor, config: GranDPOConfig
                  ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Gran-DPO from denoiser outputs: `model_a` / `model_b` the trained denoiser's predictions for
    samples a and b, `ref_a` / `ref_b` the reference's, `target_a` / `target_b` what they regress on
    (the noise; the same tensor for both samples in the Diffusion-DPO recipe), all [P, C, F, H, W];
    `reward_a` / `reward_b` [P] video rewards; `patch_reward_a` / `patch_reward_b` [P, K] patch
    rewards over `config.grid`'s patches. Returns (loss, stats) as `gran_dpo_from_errors`."""
    _check_clips({"model_a": model_a, "model_b": model_b, "ref_a": ref_a, "ref_b": ref_b, "target_a": target_a,
                  "target_b": target_b})
    grid = config.grid
    grid.blocks(model_a.shape[2:])
    ref_a, ref_b = ref_a.detach(), ref_b.detach()
    video = (clip_errors(model_a, target_a), clip_errors(model_b, target_b), clip_errors(ref_a, target_a),
             clip_errors(ref_b, target_b))
    patches = (patch_errors(model_a, target_a, grid), patch_errors(model_b, target_b, grid),
               patch_errors(ref_a, target_a, grid), patch_errors(ref_b, target_b, grid))
    return gran_dpo_from_errors(video, patches, reward_a, reward_b, patch_reward_a, patch_reward_b, config)
