"""HALO's artifact world: short clips of real Fashion-MNIST items, seeded local artifacts, a teacher.

A clip is one Fashion-MNIST image (`recis.datasets.fashion_mnist.arrays`) moving over `frames`
frames of `size` x `size` pixels: translating along a straight line, or zooming in or out about a
fixed centre (`motion`), rendered with bilinear sampling so the motion is smooth, in [0, 1].
Some clips (`clip_rate`) get artifacts in some of their spatio-temporal patches (`patch`, a
(frames, pixels, pixels) block; each patch of such a clip independently with `patch_rate`):

- blotch: one frame of the patch blends a Gaussian blob of a contrasting value into the patch;
- tear: one frame of the patch has a horizontal strip displaced sideways (a torn scan line);
- flicker: the patch's intensity toggles up and down from frame to frame.

The planted labels (`Clips.artifacts`, `Clips.kinds`) are kept for evaluation only. The teacher
(`Teacher`) never sees them: it scores patches of any clip, generated ones included, by a
measured, reference-free artifact energy (`artifact_energy`):

    E_k = mean over patch k of (x[f-1] - 2 x[f] + x[f+1])^2              (temporal: natural motion
                                                                         is smooth in time)
        + spatial_weight * mean over the patch's frames of
          relu(hf_k[f] - median over all frames of hf_k)                 (spatial high-frequency
                                                                         excess of one frame)

where hf_k[f] = mean over the patch's pixels of frame f of the squared 4-neighbour Laplacian.
The temporal map at the first and last frame repeats its neighbour's value. `Teacher.calibrate`
sets the defect threshold to a quantile (`quantile`, 0.99) of clean clips' patch energies;
patch reward = -log1p(E / threshold) (`squash: log1p`, else -E / threshold), video reward = mean
of the patch rewards, defect = E > threshold. Every choice here (motion ranges, artifact
shapes and strengths, the energy terms, the squash) is ours [I], not the paper's: HALO's patch
labels come from GPT-4o on generated videos.

    >>> import numpy as np
    >>> images = np.zeros((3, 28, 28), np.uint8); images[:, 6:22, 8:20] = 200
    >>> world = ArtifactWorld(images, np.arange(3), WorldConfig(frames=4, size=16, seed=1))
    >>> clips = world.sample(5)
    >>> tuple(clips.video.shape), tuple(clips.artifacts.shape)
    ((5, 1, 4, 16, 16), (5, 32))
    >>> bool(torch.equal(clips.video, world.sample(5).video))       # a clip depends only on (seed, index)
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recis.config_utils import bounded, check_types

MOTIONS = ("translate", "zoom", "mixed")
KINDS = ("blotch", "tear", "flicker")  # Clips.kinds codes 1, 2, 3 (0: no artifact)
SQUASHES = ("log1p", "none")


def check_patch(clip_shape: Tuple[int, int, int], patch: Tuple[int, int, int], where: str = "patch") -> int:
    """The number of (frames, pixels, pixels) patches `patch` cuts the clip [F, H, W] into; raises
    naming the patch and the clip shape when it does not divide it.

    >>> check_patch((4, 16, 16), (2, 4, 4))
    32
    >>> check_patch((4, 16, 16), (3, 4, 4))
    Traceback (most recent call last):
    ...
    ValueError: patch (3, 4, 4) (frames, height, width) does not divide the clip [F, H, W] = (4, 16, 16): frames 4 % 3 != 0
    """
    names = ("frames", "height", "width")
    for n, p, d in zip(names, patch, clip_shape):
        if p < 1 or d % p:
            raise ValueError(f"{where} {tuple(patch)} (frames, height, width) does not divide the clip "
                             f"[F, H, W] = {tuple(clip_shape)}: {n} {d} % {p} != 0")
    return (clip_shape[0] // patch[0]) * (clip_shape[1] // patch[1]) * (clip_shape[2] // patch[2])


def patch_mean(maps: torch.Tensor, patch: Tuple[int, int, int]) -> torch.Tensor:
    """[B, F, H, W] -> [B, K]: the mean of each patch, patches in (frame block, row, column) order."""
    b, f, h, w = maps.shape
    check_patch((f, h, w), patch)
    pf, ph, pw = patch
    x = maps.reshape(b, f // pf, pf, h // ph, ph, w // pw, pw)
    return x.mean(dim=(2, 4, 6)).reshape(b, -1)


@dataclass
class WorldConfig:
    """The artifact world [I]. `patch`: the (frames, pixels, pixels) block artifacts are planted in
    and the teacher scores (Gran-DPO's patch grid should match it)."""

    frames: int = bounded(4, ge=3, le=16)
    size: int = bounded(16, ge=8, le=128)
    patch: Tuple[int, int, int] = bounded((2, 4, 4), ge=1)
    motion: str = "mixed"
    item_scale: float = bounded(0.8, gt=0, le=2)     # the item's side / the frame's side at zoom 1
    max_travel: float = bounded(1.5, ge=0)           # translation: pixels travelled over the clip
    zoom: Tuple[float, float] = bounded((0.8, 1.15), gt=0)  # zoom: start/end scale drawn in this range
    clip_rate: float = bounded(0.5, ge=0, le=1)      # share of clips with artifacts
    patch_rate: float = bounded(0.15, ge=0, le=1)    # per patch, in a clip with artifacts
    kinds: Tuple[str, ...] = KINDS
    strength: Tuple[float, float] = bounded((0.4, 0.8), gt=0, le=1)  # artifact amplitude range
    seed: int = bounded(0, ge=0)

    def __post_init__(self):
        check_types(self, "world")
        self.patch, self.zoom = tuple(self.patch), tuple(self.zoom)
        self.kinds, self.strength = tuple(self.kinds), tuple(self.strength)
        if len(self.patch) != 3:
            raise ValueError(f"world.patch must be (frames, height, width), got {self.patch}")
        check_patch((self.frames, self.size, self.size), self.patch, "world.patch")
        if self.motion not in MOTIONS:
            raise ValueError(f"world.motion must be one of {MOTIONS}, got {self.motion!r}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"world.kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if "flicker" in self.kinds and self.patch[0] < 2:
            raise ValueError(f"world.kinds has flicker, which needs world.patch[0] >= 2 frames, got {self.patch}")
        for name, pair in (("zoom", self.zoom), ("strength", self.strength)):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"world.{name} must be a [low, high] range, got {pair}")

    @property
    def clip_shape(self) -> Tuple[int, int, int]:
        return (self.frames, self.size, self.size)

    @property
    def num_patches(self) -> int:
        return check_patch(self.clip_shape, self.patch)


@dataclass
class Clips:
    """A batch of world clips. `video` [N, 1, F, H, W] float32 in [0, 1] (with artifacts), `clean`
    the same clips without them, `cond` [N] int64 (the item's class), `item` [N] (row in the
    source arrays), `artifacts` bool [N, K] (planted, for evaluation only), `kinds` int8 [N, K]
    (0 none, 1 blotch, 2 tear, 3 flicker)."""

    video: torch.Tensor
    clean: torch.Tensor
    cond: torch.Tensor
    item: torch.Tensor
    artifacts: torch.Tensor
    kinds: torch.Tensor

    def __len__(self) -> int:
        return self.video.shape[0]


def render(images: torch.Tensor, centres: torch.Tensor, scales: torch.Tensor, size: int) -> torch.Tensor:
    """Frames of images [N, h, w] in [0, 1]: frame f of clip n shows image n centred at
    centres[n, f] (x, y in [-1, 1] frame coordinates) with side scales[n, f] (a share of the
    frame's side), bilinear, zero outside. -> [N, F, size, size]."""
    base = images[:, None]
    if base.shape[-1] > 2 * size:  # pre-shrink with antialiasing so the sampling does not alias
        base = F.interpolate(base, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    n, f = scales.shape
    theta = torch.zeros(n * f, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scales.reshape(-1)
    theta[:, :, 2] = -centres.reshape(-1, 2) / scales.reshape(-1, 1)
    grid = F.affine_grid(theta, (n * f, 1, size, size), align_corners=False)
    base = base.repeat_interleave(f, dim=0)
    out = F.grid_sample(base, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(n, f, size, size).clamp(0, 1)


def _motion(cfg: WorldConfig, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(centres [F, 2], scales [F]) of one clip, linear in the frame index."""
    t = torch.linspace(0, 1, cfg.frames)
    kind = cfg.motion if cfg.motion != "mixed" else ("translate", "zoom")[int(rng.integers(2))]
    if kind == "translate":
        travel = 2 * cfg.max_travel / cfg.size  # pixels -> [-1, 1] units
        angle = rng.uniform(0, 2 * math.pi)
        step = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float32) * travel
        start = torch.tensor(rng.uniform(-0.1, 0.1, 2), dtype=torch.float32) - step / 2
        centres = start[None] + t[:, None] * step[None]
        scales = torch.full((cfg.frames,), cfg.item_scale * float(rng.uniform(*cfg.zoom)))
    else:
        z0, z1 = rng.uniform(*cfg.zoom, size=2)
        centres = torch.tensor(rng.uniform(-0.1, 0.1, 2), dtype=torch.float32)[None].expand(cfg.frames, 2)
        scales = cfg.item_scale * (float(z0) + t * float(z1 - z0))
    return centres.contiguous(), scales.float()


def plant(clip: torch.Tensor, kind: str, where: Tuple[int, int, int], cfg: WorldConfig,
          rng: np.random.Generator) -> None:
    """Plants one artifact of `kind` in clip [F, H, W] (in place), in the patch at block index
    `where` = (frame block, row, column) of `cfg.patch`."""
    pf, ph, pw = cfg.patch
    f0, r0, c0 = where[0] * pf, where[1] * ph, where[2] * pw
    a = float(rng.uniform(*cfg.strength))
    block = clip[f0:f0 + pf, r0:r0 + ph, c0:c0 + pw]
    if kind == "blotch":
        f = int(rng.integers(pf))
        yy, xx = torch.meshgrid(torch.arange(ph, dtype=torch.float32), torch.arange(pw, dtype=torch.float32), indexing="ij")
        cy, cx = rng.uniform(0.25 * ph, 0.75 * ph - 1), rng.uniform(0.25 * pw, 0.75 * pw - 1)
        sigma = max(ph, pw) / 4
        g = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        target = 1.0 if float(block[f].mean()) < 0.5 else 0.0  # a contrasting value
        block[f] = block[f] + (target - block[f]) * a * g
    elif kind == "tear":
        f = int(rng.integers(pf))
        rows = max(1, ph // 2)
        r = int(rng.integers(ph - rows + 1))
        shift = int(rng.choice([-1, 1])) * int(rng.integers(2, max(3, pw // 2 + 2)))
        frame = clip[f0 + f]
        strip = torch.roll(frame[r0 + r:r0 + r + rows], shifts=shift, dims=1)[:, c0:c0 + pw].clone()
        if float((strip - block[f, r:r + rows]).abs().mean()) < 0.05:  # displacing uniform rows shows nothing:
            strip = block[f, r:r + rows] + (1.0 - 2.0 * block[f, r:r + rows]) * a  # a torn line of contrast
        block[f, r:r + rows] = strip
    elif kind == "flicker":
        phase = int(rng.integers(2))
        sign = 1.0 if float(block.mean()) < 0.5 else -1.0  # brighten dark patches, darken light ones
        for f in range(pf):
            block[f] = block[f] + sign * a * ((f + phase) % 2)
    else:
        raise ValueError(f"unknown artifact kind {kind!r} (known: {KINDS})")
    block.clamp_(0, 1)


class ArtifactWorld:
    """Clips of `images` (uint8 [N, h, w], e.g. Fashion-MNIST's 28x28) with class `labels` [N].
    Clip i depends only on (config.seed, stream, i): `sample(n, start)` returns clips start..start+n-1.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: Optional[WorldConfig] = None):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, h, w], got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {labels.shape}")
        self.config = config or WorldConfig()
        self.images = torch.from_numpy(images.astype(np.float32) / 255.0)
        self.labels = torch.from_numpy(labels.astype(np.int64))

    @classmethod
    def fashion_mnist(cls, split: str = "train", config: Optional[WorldConfig] = None, **load) -> "ArtifactWorld":
        """A world over Fashion-MNIST's `split` (train|valid|test; `load` goes to `arrays`)."""
        from recis.datasets.fashion_mnist import arrays

        return cls(*arrays(split, **load), config=config)

    def grid_shape(self) -> Tuple[int, int, int]:
        c = self.config
        return (c.frames // c.patch[0], c.size // c.patch[1], c.size // c.patch[2])

    def sample(self, n: int, start: int = 0, *, stream: int = 0, cond: Optional[int] = None,
               artifacts: Optional[bool] = None, variant: int = 0) -> Clips:
        """Clips start..start+n-1 of `stream` (independent streams per seed: e.g. 0 train, 1 held out).
        `cond` keeps to items of one class; `artifacts` False/True forces clean/corrupted clips;
        `variant` redraws the artifacts only (the same items and motion: the same `clean` clips)."""
        c, k = self.config, self.config.num_patches
        pool = torch.arange(len(self.labels)) if cond is None else torch.nonzero(self.labels == cond)[:, 0]
        if len(pool) == 0:
            raise ValueError(f"no item of class {cond} in this world's images")
        video = torch.empty(n, 1, *c.clip_shape)
        clean = torch.empty_like(video)
        marks = torch.zeros(n, k, dtype=torch.bool)
        kinds = torch.zeros(n, k, dtype=torch.int8)
        items = torch.empty(n, dtype=torch.int64)
        gf, gh, gw = self.grid_shape()
        if variant < 0:
            raise ValueError(f"variant must be >= 0, got {variant}")
        keys = [[c.seed, stream, 0 if cond is None else 1 + cond, i] for i in range(start, start + n)]
        rngs = [np.random.default_rng(key) for key in keys]  # the item and its motion
        for row, rng in enumerate(rngs):
            items[row] = int(pool[int(rng.integers(len(pool)))])
        motion = [_motion(c, rng) for rng in rngs]
        if n:
            clean[:, 0] = render(self.images[items], torch.stack([m[0] for m in motion]),
                                 torch.stack([m[1] for m in motion]), c.size)
        video.copy_(clean)
        for row, key in enumerate(keys):
            rng = np.random.default_rng(key + [1 + variant])  # its artifacts
            corrupt = rng.random() < c.clip_rate if artifacts is None else artifacts
            if not corrupt:
                continue
            hit = rng.random(k) < c.patch_rate
            if not hit.any():
                hit[int(rng.integers(k))] = True
            for p in np.flatnonzero(hit):
                kind = int(rng.integers(len(c.kinds)))
                plant(video[row, 0], c.kinds[kind], (p // (gh * gw), (p // gw) % gh, p % gw), c, rng)
                marks[row, p] = True
                kinds[row, p] = KINDS.index(c.kinds[kind]) + 1
        return Clips(video, clean, self.labels[items], items, marks, kinds)


# ---- the teacher ---------------------------------------------------------------------------------

_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def temporal_energy(video: torch.Tensor) -> torch.Tensor:
    """[B, F, H, W] -> [B, F, H, W]: (x[f-1] - 2 x[f] + x[f+1])^2, the ends repeating their neighbour."""
    if video.shape[1] < 3:
        raise ValueError(f"the teacher's temporal energy needs >= 3 frames, got a clip of {video.shape[1]}")
    d2 = (video[:, :-2] - 2 * video[:, 1:-1] + video[:, 2:]) ** 2
    return torch.cat([d2[:, :1], d2, d2[:, -1:]], dim=1)


def laplacian_energy(video: torch.Tensor) -> torch.Tensor:
    """[B, F, H, W] -> [B, F, H, W]: the squared 4-neighbour Laplacian of each frame (edges replicated)."""
    b, f, h, w = video.shape
    x = F.pad(video.reshape(b * f, 1, h, w), (1, 1, 1, 1), mode="replicate")
    return (F.conv2d(x, _LAPLACE.to(video)[None, None]) ** 2).reshape(b, f, h, w)


def artifact_energy(video: torch.Tensor, patch: Tuple[int, int, int], spatial_weight: float = 0.25) -> torch.Tensor:
    """The teacher's per-patch artifact energy (module docstring) of clips [B, 1, F, H, W] or
    [B, F, H, W] -> [B, K], K patches in (frame block, row, column) order. Reads pixels only."""
    if video.dim() == 5:
        if video.shape[1] != 1:
            raise ValueError(f"the teacher scores single-channel clips [B, 1, F, H, W], got {tuple(video.shape)}")
        video = video[:, 0]
    if video.dim() != 4:
        raise ValueError(f"clips must be [B, 1, F, H, W] or [B, F, H, W], got {tuple(video.shape)}")
    video = video.float()
    b, f, h, w = video.shape
    check_patch((f, h, w), patch, "teacher patch")
    energy = patch_mean(temporal_energy(video), patch)
    if spatial_weight:
        pf, ph, pw = patch
        hf = patch_mean(laplacian_energy(video), (1, ph, pw)).reshape(b, f, -1)   # [B, F, cells]
        excess = (hf - hf.median(dim=1, keepdim=True).values).clamp_min(0)
        excess = excess.reshape(b, f // pf, pf, -1).mean(dim=2).reshape(b, -1)   # [B, K]
        energy = energy + spatial_weight * excess
    return energy


@dataclass
class TeacherConfig:
    """The scripted teacher [I]: energy terms, calibration quantile, reward squash."""

    spatial_weight: float = bounded(0.25, ge=0)
    quantile: float = bounded(0.99, gt=0, lt=1)
    squash: str = "log1p"

    def __post_init__(self):
        check_types(self, "teacher")
        if self.squash not in SQUASHES:
            raise ValueError(f"teacher.squash must be one of {SQUASHES}, got {self.squash!r}")


class Teacher:
    """Reference-free patch scores. `calibrate(clean)` once on clean clips; then `patch_rewards`,
    `video_rewards` and `defects` score any clips [B, 1, F, H, W] (world or generated)."""

    def __init__(self, patch: Tuple[int, int, int], config: Optional[TeacherConfig] = None,
                 threshold: Optional[float] = None):
        self.patch = tuple(patch)
        self.config = config or TeacherConfig()
        self.threshold = threshold

    def energy(self, video: torch.Tensor) -> torch.Tensor:
        return artifact_energy(video, self.patch, self.config.spatial_weight)

    def calibrate(self, clean: torch.Tensor) -> float:
        """Sets the defect threshold to the `quantile` of the patch energies of clean clips."""
        e = self.energy(clean).flatten().double()
        self.threshold = max(float(torch.quantile(e, self.config.quantile)), 1e-12)
        return self.threshold

    def _scale(self) -> float:
        if self.threshold is None:
            raise RuntimeError("the teacher is not calibrated: call Teacher.calibrate(clean clips) first")
        return self.threshold

    def patch_rewards(self, video: torch.Tensor) -> torch.Tensor:
        """[B, K]: -log1p(E / threshold) (or -E / threshold with squash 'none')."""
        z = self.energy(video) / self._scale()
        return -torch.log1p(z) if self.config.squash == "log1p" else -z

    def video_rewards(self, video: torch.Tensor) -> torch.Tensor:
        """[B]: the mean of the patch rewards."""
        return self.patch_rewards(video).mean(dim=1)

    def defects(self, video: torch.Tensor) -> torch.Tensor:
        """bool [B, K]: patch energy above the calibrated threshold."""
        return self.energy(video) > self._scale()
