"""HALO's reward models: a video reward model and the patch reward model fine-tuned from it.

- `VideoRewardModel`: a small 3D conv net (conv trunk, mean- and max-pooled features, an MLP head)
  mapping a clip [B, 1, F, H, W] to a scalar reward [B]; `train_video_rm` regresses it on the
  teacher's video rewards (MSE; the targets are standardised inside the model, so it outputs
  reward units).
- `PatchRewardModel`: HALO distils patch judgments by *continued training of the video reward
  model*. Here: a copy of the video RM, fine-tuned on patch crops (`patch_crops`: each patch of
  the grid with `context` pixels/frames of its surroundings, replicate-padded at the border)
  against the teacher's patch rewards, while a drift penalty keeps its whole-video rewards where
  the original model put them:

      L = mean_k (R(crop_k) - r_teacher[k])^2 + mu * mean_ref (R(clip) - R_video(clip))^2

  on a reference batch of whole clips drawn each step [I: HALO only says the two reward
  distributions stay consistent; the penalty, mu and the crop context are ours].
- `reward_drift`: the drift MEASURED after fine-tuning between the two whole-video reward
  distributions on held-out clips: Wasserstein-1 (1-D, equal sizes: mean |sorted a - sorted b|),
  mean shift, std ratio, and W1 relative to the original rewards' std (`w1_rel`).
- `spearman`: rank correlation (average ranks for ties) to score the patch RM against the teacher.

    >>> m = VideoRewardModel(RewardModelConfig(width=4))
    >>> tuple(m(torch.zeros(2, 1, 4, 16, 16)).shape)
    (2,)
    >>> tuple(patch_crops(torch.zeros(2, 1, 4, 16, 16), (2, 4, 4), context=1).shape)
    (64, 1, 4, 6, 6)
    >>> reward_drift(torch.tensor([0., 1., 2.]), torch.tensor([1., 2., 3.]))["w1"]
    1.0
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from recis.config_utils import bounded, check_types
from recis_multimodal.halo.world import check_patch


@dataclass
class RewardModelConfig:
    """The reward net [I]: `width` channels, `depth` 3x3x3 conv layers."""

    width: int = bounded(16, ge=1)
    depth: int = bounded(2, ge=1)

    def __post_init__(self):
        check_types(self, "reward_model")


class VideoRewardModel(nn.Module):
    """clips [B, 1, F, H, W] -> rewards [B]; any clip size (crops too): the trunk is convolutional and
    the head reads mean- and max-pooled features."""

    def __init__(self, config: Optional[RewardModelConfig] = None):
        super().__init__()
        self.config = c = config or RewardModelConfig()
        layers, cin = [], 1
        for _ in range(c.depth):
            layers += [nn.Conv3d(cin, c.width, 3, padding=1), nn.SiLU()]
            cin = c.width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c.width, c.width), nn.SiLU(), nn.Linear(c.width, 1))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != 1:
            raise ValueError(f"a reward model reads clips [B, 1, F, H, W], got {tuple(video.shape)}")
        h = self.trunk(video.float()).flatten(2)
        z = self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))[:, 0]
        return z * self.target_std + self.target_mean


def patch_crops(video: torch.Tensor, patch: Tuple[int, int, int], context: int = 1) -> torch.Tensor:
    """[B, 1, F, H, W] -> [B * K, 1, pf + 2c, ph + 2c, pw + 2c]: each patch (clip-major, then
    (frame block, row, column)) with `context` = c frames/pixels around it, replicate-padded."""
    b, _, f, h, w = video.shape
    check_patch((f, h, w), patch, "reward patch")
    pf, ph, pw = patch
    x = F.pad(video, (context,) * 6, mode="replicate") if context else video
    x = x.unfold(2, pf + 2 * context, pf).unfold(3, ph + 2 * context, ph).unfold(4, pw + 2 * context, pw)
    x = x.permute(0, 2, 3, 4, 1, 5, 6, 7)  # [B, nF, nH, nW, 1, a, b, c]
    return x.reshape(-1, 1, pf + 2 * context, ph + 2 * context, pw + 2 * context)


class PatchRewardModel(nn.Module):
    """A video reward model that also scores patch crops: `forward`/`video_rewards` -> [B],
    `patch_rewards` -> [B, K] on the grid `patch`."""

    def __init__(self, model: VideoRewardModel, patch: Tuple[int, int, int], context: int = 1):
        super().__init__()
        self.model, self.patch, self.context = model, tuple(patch), context

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model(video)

    video_rewards = forward

    def patch_rewards(self, video: torch.Tensor) -> torch.Tensor:
        return self.model(patch_crops(video, self.patch, self.context)).reshape(video.shape[0], -1)


@dataclass
class VideoRMTrainConfig:
    """Training the video RM [I]: Adam, MSE on standardised teacher video rewards."""

    steps: int = bounded(300, ge=0)
    batch: int = bounded(64, ge=1)
    lr: float = bounded(2e-3, gt=0)
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        check_types(self, "video_rm")


@dataclass
class PatchRMConfig:
    """Fine-tuning the patch RM from the video RM [I]: `batch` clips per step (all their patch
    crops), `reference` whole clips per step for the drift penalty of weight `mu`."""

    steps: int = bounded(300, ge=0)
    batch: int = bounded(16, ge=1)
    reference: int = bounded(32, ge=1)
    lr: float = bounded(1e-3, gt=0)
    mu: float = bounded(3.0, ge=0)
    context: int = bounded(1, ge=0)
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        check_types(self, "patch_rm")


def _check_pair(video: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if video.dim() != 5 or target.shape[0] != video.shape[0]:
        raise ValueError(f"{what}: clips [N, 1, F, H, W] and targets with N rows, got {tuple(video.shape)} "
                         f"and {tuple(target.shape)}")


def train_video_rm(video: torch.Tensor, target: torch.Tensor, config: Optional[VideoRMTrainConfig] = None,
                   model_config: Optional[RewardModelConfig] = None) -> Tuple[VideoRewardModel, Dict[str, float]]:
    """Regresses a fresh `VideoRewardModel` on clips [N, 1, F, H, W] -> video rewards [N]."""
    cfg = config or VideoRMTrainConfig()
    _check_pair(video, target, "train_video_rm")
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = VideoRewardModel(model_config)
    model.target_mean.fill_(float(target.mean()))
    model.target_std.fill_(max(float(target.std()), 1e-6) if len(target) > 1 else 1.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        idx = torch.randint(len(video), (min(cfg.batch, len(video)),), generator=gen)
        loss = ((model(video[idx]) - target[idx]) / model.target_std).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, {"loss": loss.item()}


def finetune_patch_rm(video_rm: VideoRewardModel, video: torch.Tensor, patch_target: torch.Tensor,
                      patch: Tuple[int, int, int], config: Optional[PatchRMConfig] = None
                      ) -> Tuple[PatchRewardModel, Dict[str, float]]:
    """Fine-tunes a copy of `video_rm` on the patch crops of clips [N, 1, F, H, W] against the
    teacher's patch rewards [N, K], with the drift penalty on whole clips of `video` (module
    docstring). `video_rm` itself is left unchanged."""
    cfg = config or PatchRMConfig()
    _check_pair(video, patch_target, "finetune_patch_rm")
    k = check_patch(tuple(video.shape[2:]), patch, "reward patch")
    if patch_target.shape[1] != k:
        raise ValueError(f"finetune_patch_rm: patch targets have {patch_target.shape[1]} columns, the grid "
                         f"{tuple(patch)} cuts a clip {tuple(video.shape[2:])} into {k} patches")
    original = copy.deepcopy(video_rm).eval().requires_grad_(False)
    rm = PatchRewardModel(copy.deepcopy(video_rm).train(), patch, cfg.context)
    opt = torch.optim.Adam(rm.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = original.target_std
    fit = drift = torch.zeros(())
    for _ in range(cfg.steps):
        idx = torch.randint(len(video), (min(cfg.batch, len(video)),), generator=gen)
        fit = ((rm.patch_rewards(video[idx]) - patch_target[idx]) / scale).pow(2).mean()
        loss = fit
        if cfg.mu > 0:
            ref = video[torch.randint(len(video), (min(cfg.reference, len(video)),), generator=gen)]
            drift = ((rm(ref) - original(ref)) / scale).pow(2).mean()
            loss = fit + cfg.mu * drift
        opt.zero_grad()
        loss.backward()
        opt.step()
    rm.eval()
    return rm, {"patch_loss": fit.item(), "drift_penalty": drift.item()}


def wasserstein1(a: torch.Tensor, b: torch.Tensor) -> float:
    """1-D Wasserstein-1 distance between two equal-size samples: mean |sorted a - sorted b|."""
    a, b = a.flatten().double(), b.flatten().double()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"wasserstein1 needs two non-empty samples of one size, got {a.numel()} and {b.numel()}")
    return float((a.sort().values - b.sort().values).abs().mean())


def reward_drift(original: torch.Tensor, tuned: torch.Tensor) -> Dict[str, float]:
    """How far the fine-tuned model's whole-video rewards moved from the original's on the same
    clips: w1, w1_rel (w1 / std of the original), mean_shift, std_ratio."""
    w1 = wasserstein1(original, tuned)
    o, t = original.double(), tuned.double()
    std = float(o.std()) if o.numel() > 1 else 0.0
    return {"w1": w1, "w1_rel": w1 / std if std > 0 else float("inf"), "mean_shift": float(t.mean() - o.mean()),
            "std_ratio": float(t.std() / o.std()) if std > 0 else float("nan")}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n, ties sharing their average rank."""
    x = x.flatten().double()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    uniq, inverse = torch.unique(x, return_inverse=True)
    if len(uniq) < len(x):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equal-size samples (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"spearman needs two samples of one size, got {ra.numel()} and {rb.numel()}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def evaluate_patch_rm(patch_rm: PatchRewardModel, video_rm: VideoRewardModel, video: torch.Tensor,
                      patch_target: torch.Tensor) -> Dict[str, float]:
    """On held-out clips: the patch RM's Spearman with the teacher's patch rewards (over all
    patches), and the drift of its whole-video rewards from the video RM's (`reward_drift`)."""
    out = {"patch_spearman": spearman(patch_rm.patch_rewards(video), patch_target)}
    out.update(reward_drift(video_rm(video), patch_rm(video)))
    return out


# ---- a saved set of scorers: the tower's `evaluator` -----------------------------------------------

def save_scorers(path, teacher, video_rm: VideoRewardModel, patch_rm: Optional[PatchRewardModel] = None) -> None:
    """Saves the calibrated teacher (patch, options, threshold), the video RM and the patch RM."""
    from dataclasses import asdict

    if teacher.threshold is None:
        raise ValueError("save_scorers: the teacher is not calibrated (Teacher.calibrate first)")
    state = {"teacher": {"patch": list(teacher.patch), "config": asdict(teacher.config), "threshold": teacher.threshold},
             "video_rm": {"config": asdict(video_rm.config), "state": video_rm.state_dict()}}
    if patch_rm is not None:
        state["patch_rm"] = {"config": asdict(patch_rm.model.config), "state": patch_rm.model.state_dict(),
                             "patch": list(patch_rm.patch), "context": patch_rm.context}
    torch.save(state, str(path))


def load_scorers(path):
    """(teacher, video RM, patch RM or None) saved by `save_scorers`."""
    from recis_multimodal.halo.world import Teacher, TeacherConfig

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    t = state["teacher"]
    teacher = Teacher(tuple(t["patch"]), TeacherConfig(**t["config"]), threshold=t["threshold"])
    video_rm = VideoRewardModel(RewardModelConfig(**state["video_rm"]["config"]))
    video_rm.load_state_dict(state["video_rm"]["state"])
    patch_rm = None
    if "patch_rm" in state:
        p = state["patch_rm"]
        model = VideoRewardModel(RewardModelConfig(**p["config"]))
        model.load_state_dict(p["state"])
        patch_rm = PatchRewardModel(model, tuple(p["patch"]), p["context"]).eval()
    return teacher, video_rm.eval(), patch_rm


def artifact_scorer(path: str):
    """The HALO tower's `evaluator` (model.evaluator: recis_multimodal.halo.rewards:artifact_scorer,
    evaluator_options: {path: ...}): scores sampled clips [B, 1, F, H, W] in [0, 1] with
    `patch_defect_rate` (share of the teacher's defective patches), `teacher_video_reward` and
    `video_reward` (the video RM)."""
    teacher, video_rm, _ = load_scorers(path)

    @torch.no_grad()
    def score(clips: torch.Tensor, cond: torch.Tensor) -> Dict[str, torch.Tensor]:
        clips = clips.detach().float().cpu()
        return {"patch_defect_rate": teacher.defects(clips).float().mean(dim=1),
                "teacher_video_reward": teacher.video_rewards(clips), "video_reward": video_rm(clips)}

    return score
