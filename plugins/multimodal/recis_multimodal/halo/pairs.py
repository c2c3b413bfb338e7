"""Preference pairs for the HALO tower, as Parquet (the contract `HALOTower` reads).

For each condition (a Fashion-MNIST class) we take pairs of clips (a, b) and score them: video
rewards from the video reward model, patch rewards from the patch reward model on the patch
grid. Where the clips come from is ours to choose [I] (`source`):

- ``world``: both clips from the artifact world (offline preference data, as Diffusion-DPO trains
  on a preference dataset): clip a from one stream, clip b from another, same class;
- ``policy``: both clips sampled from the reference denoiser (on-policy, as HALO labels the
  generated videos of the model it post-trains): any `sampler(cond, generator)`.

Columns (`pair_schema`): `cond` int64, `video_a` / `video_b` fixed-size list<float32>[F*H*W]
(pixels in [0, 1], one channel), `reward_a` / `reward_b` float32, `patch_reward_a` /
`patch_reward_b` fixed-size list<float32>[K]. Pre-training clips (`clip_table`): `video`, `cond`.

    >>> pair_schema(1024, 32).names
    ['cond', 'video_a', 'video_b', 'reward_a', 'reward_b', 'patch_reward_a', 'patch_reward_b']
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recis_multimodal.halo.rewards import PatchRewardModel, VideoRewardModel
from recis_multimodal.halo.world import ArtifactWorld

SOURCES = ("world", "policy")


def pair_schema(pixels: int, patches: int) -> pa.Schema:
    """The pairs Parquet's schema for clips of `pixels` = F*H*W numbers and K = `patches`."""
    video, patch = pa.list_(pa.float32(), pixels), pa.list_(pa.float32(), patches)
    return pa.schema([("cond", pa.int64()), ("video_a", video), ("video_b", video), ("reward_a", pa.float32()),
                      ("reward_b", pa.float32()), ("patch_reward_a", patch), ("patch_reward_b", patch)])


def _fixed_list(x: torch.Tensor) -> pa.Array:
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float32).numpy()
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def clip_table(video: torch.Tensor, cond: torch.Tensor) -> pa.Table:
    """Pre-training clips: `video` fixed-size list<float32>[F*H*W] (from [N, 1, F, H, W]), `cond` int64."""
    if video.dim() != 5 or video.shape[1] != 1 or cond.shape != (video.shape[0],):
        raise ValueError(f"clip_table: clips [N, 1, F, H, W] and cond [N], got {tuple(video.shape)} and "
                         f"{tuple(cond.shape)}")
    return pa.table({"video": _fixed_list(video), "cond": pa.array(cond.numpy().astype(np.int64))})


def world_pairs(world: ArtifactWorld, per_class: int, classes: Sequence[int], stream: int = 3,
                shared_content: bool = True) -> Dict[str, torch.Tensor]:
    """`per_class` pairs per class from the world's `stream`. `shared_content` [I]: a and b are the
    same item moving the same way with independently drawn artifacts (`variant` 0 and 1), so the
    preferences are about artifacts only; else b is another clip of the class (`stream + 1`).
    -> {cond [P], video_a, video_b [P, 1, F, H, W]}."""
    conds, va, vb = [], [], []
    for c in classes:
        a = world.sample(per_class, stream=stream, cond=int(c))
        b = (world.sample(per_class, stream=stream, cond=int(c), variant=1) if shared_content
             else world.sample(per_class, stream=stream + 1, cond=int(c)))
        conds.append(torch.full((per_class,), int(c), dtype=torch.int64))
        va.append(a.video)
        vb.append(b.video)
    return {"cond": torch.cat(conds), "video_a": torch.cat(va), "video_b": torch.cat(vb)}


def policy_pairs(sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor], per_class: int,
                 classes: Sequence[int], seed: int) -> Dict[str, torch.Tensor]:
    """`per_class` pairs per class sampled by `sampler(cond [B], generator) -> clips [B, 1, F, H, W]`
    in [0, 1] (e.g. `HALOTower.generate` of the reference denoiser)."""
    cond = torch.tensor([int(c) for c in classes for _ in range(per_class)], dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    return {"cond": cond, "video_a": sampler(cond, g).float(), "video_b": sampler(cond, g).float()}


@torch.no_grad()
def score_pairs(pairs: Dict[str, torch.Tensor], video_rm: VideoRewardModel, patch_rm: PatchRewardModel,
                batch: int = 256) -> Dict[str, torch.Tensor]:
    """Adds `reward_a` / `reward_b` (video RM) and `patch_reward_a` / `patch_reward_b` (patch RM)."""
    out = dict(pairs)
    for side in ("a", "b"):
        v = pairs[f"video_{side}"]
        out[f"reward_{side}"] = torch.cat([video_rm(v[i:i + batch]) for i in range(0, len(v), batch)])
        out[f"patch_reward_{side}"] = torch.cat([patch_rm.patch_rewards(v[i:i + batch])
                                                 for i in range(0, len(v), batch)])
    return out


def pairs_table(pairs: Dict[str, torch.Tensor]) -> pa.Table:
    """The scored pairs as a table of `pair_schema` (checked)."""
    va, vb = pairs["video_a"], pairs["video_b"]
    if va.dim() != 5 or va.shape[1] != 1 or va.shape != vb.shape:
        raise ValueError(f"pairs: video_a and video_b must be single-channel clips [P, 1, F, H, W] of one shape, "
                         f"got {tuple(va.shape)} and {tuple(vb.shape)}")
    p, k = va.shape[0], pairs["patch_reward_a"].shape[-1]
    for name in ("cond", "reward_a", "reward_b"):
        if tuple(pairs[name].shape) != (p,):
            raise ValueError(f"pairs: {name} must be [P={p}], got {tuple(pairs[name].shape)}")
    for name in ("patch_reward_a", "patch_reward_b"):
        if tuple(pairs[name].shape) != (p, k):
            raise ValueError(f"pairs: {name} must be [P={p}, K={k}], got {tuple(pairs[name].shape)}")
    table = pa.table({
        "cond": pa.array(pairs["cond"].numpy().astype(np.int64)),
        "video_a": _fixed_list(va), "video_b": _fixed_list(vb),
        "reward_a": pa.array(pairs["reward_a"].detach().float().numpy()),
        "reward_b": pa.array(pairs["reward_b"].detach().float().numpy()),
        "patch_reward_a": _fixed_list(pairs["patch_reward_a"]), "patch_reward_b": _fixed_list(pairs["patch_reward_b"]),
    })
    return table.cast(pair_schema(int(va[0].numel()), k))


def pair_features(pixels: int, patches: int) -> list:
    """The job features that read `pair_schema` (videos and patch rewards: tensor; rewards, cond: dense)."""
    return ([{"name": c, "kind": "tensor", "column": c, "shape": [pixels]} for c in ("video_a", "video_b")]
            + [{"name": c, "kind": "tensor", "column": c, "shape": [patches]} for c in ("patch_reward_a", "patch_reward_b")]
            + [{"name": c, "kind": "dense", "column": c} for c in ("reward_a", "reward_b", "cond")])


def clip_features(pixels: int) -> list:
    """The job features that read `clip_table`."""
    return [{"name": "video", "kind": "tensor", "column": "video", "shape": [pixels]},
            {"name": "cond", "kind": "dense", "column": "cond"}]


def write_parquet(table: pa.Table, path, row_group: Optional[int] = None) -> None:
    pq.write_table(table, str(path), row_group_size=row_group)
