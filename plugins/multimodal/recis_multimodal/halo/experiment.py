"""HALO's artifact experiment, end to end (examples/halo_artifacts.py, benchmarks/halo.py).

1. The artifact world over Fashion-MNIST (`world.py`), its teacher calibrated on clean clips.
2. The video reward model, regressed on the teacher's video rewards; the patch reward model,
   fine-tuned from it on patch crops with the drift penalty (and, for the report, the same
   fine-tuning with mu = 0); both measured on held-out clips (`rewards.evaluate_patch_rm`).
3. The denoiser pre-trained by a recis job (`model: {name: halo, objective: sft}`) on world clips.
   The pre-training world is artifact-heavy (`clip_rate`, `patch_rate`) [I], so the pre-trained
   denoiser generates local artifacts for the post-training to remove.
4. Pairs (`pairs.py`, source `world` [I]) scored by the reward models, written as Parquet.
5. Diffusion-DPO and Gran-DPO jobs (`objective: diffusion_dpo` / `gran_dpo`) from the same
   pre-trained checkpoint (`checkpoint.init_from`), same pairs, steps, batch, lr, beta, noise.
6. Clips sampled from each of the three denoisers with the same generator (per class,
   `eval_per_class` each), scored by the teacher (patch-defect rate: share of patches whose
   energy is over the calibrated threshold; mean video reward) and the video RM. `content`: the
   samples' mean pixel over the pre-trained denoiser's: artifact energy alone rewards a blank
   clip, so a post-trained model that removes artifacts by removing the item shows here.

Streams of the world (per seed): 0 RM training, 1 RM held-out, 2 pre-training clips,
3 pairs, 9 the teacher's clean calibration clips. Everything is seeded by `seed`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from recis.config_utils import bounded, check_types

from recis_multimodal.halo import pairs as pairs_mod
from recis_multimodal.halo.rewards import (PatchRMConfig, RewardModelConfig, VideoRMTrainConfig, evaluate_patch_rm,
                                           finetune_patch_rm, save_scorers, spearman, train_video_rm)
from recis_multimodal.halo.world import ArtifactWorld, Teacher, TeacherConfig, WorldConfig

MODELS = ("pretrained", "diffusion_dpo", "gran_dpo")


@dataclass
class ExperimentConfig:
    """Sizes and settings of one run (defaults: a few minutes on 2 CPU cores). [I] all ours."""

    seed: int = bounded(0, ge=0)
    split: str = "train"                      # the Fashion-MNIST split the world's items come from
    frames: int = bounded(4, ge=3)
    size: int = bounded(16, ge=8)
    patch: Tuple[int, int, int] = bounded((2, 4, 4), ge=1)
    clip_rate: float = bounded(1.0, ge=0, le=1)
    patch_rate: float = bounded(0.25, ge=0, le=1)
    # reward models
    rm_clips: int = bounded(2000, ge=2)
    rm_heldout: int = bounded(400, ge=2)
    rm_width: int = bounded(16, ge=1)
    rm_steps: int = bounded(300, ge=0)
    patch_rm_steps: int = bounded(300, ge=0)
    mu: float = bounded(3.0, ge=0)
    compare_mu0: bool = True                  # also fine-tune with mu = 0 to report its drift
    # denoiser pre-training (sft job)
    width: int = bounded(16, ge=1)
    layers: int = bounded(3, ge=2, le=4)
    sft_clips: int = bounded(3000, ge=1)
    sft_steps: int = bounded(800, ge=1)
    sft_lr: float = bounded(2e-3, gt=0)
    sft_batch: int = bounded(32, ge=1)
    # preference stages
    pairs_per_class: int = bounded(200, ge=1)
    shared_content: bool = True
    dpo_steps: int = bounded(300, ge=1)
    dpo_batch: int = bounded(16, ge=1)
    dpo_lr: float = bounded(1e-6, gt=0)
    beta: float = bounded(1000.0, gt=0)       # Diffusion-DPO's (and Gran-DPO's unless gran_beta)
    gran_beta: Optional[float] = bounded(None, gt=0)
    gran_lr: Optional[float] = bounded(None, gt=0)  # Gran-DPO's lr (None: dpo_lr)
    lam: float = bounded(1.0, ge=0)
    delta: float = bounded(0.3, ge=0)
    # evaluation
    eval_per_class: int = bounded(40, ge=1)
    eval_seed: int = bounded(0, ge=0)
    threads: int = bounded(1, ge=1)

    def __post_init__(self):
        check_types(self, "experiment")
        self.patch = tuple(self.patch)
        self.world_config()  # checks the patch grid against the clip now

    def world_config(self, **over) -> WorldConfig:
        return WorldConfig(frames=self.frames, size=self.size, patch=self.patch, clip_rate=self.clip_rate,
                           patch_rate=self.patch_rate, seed=self.seed, **over)

    @property
    def pixels(self) -> int:
        return self.frames * self.size * self.size


def _job(workdir: Path, name: str, cfg: ExperimentConfig, objective: str, data: str, steps: int, lr: float,
         batch: int, init_from: Optional[str] = None):
    from recis.run import Job, RunConfig

    k = cfg.world_config().num_patches
    features = pairs_mod.clip_features(cfg.pixels) if objective == "sft" else pairs_mod.pair_features(cfg.pixels, k)
    model = {"name": "halo", "objective": objective, "clip": [cfg.frames, cfg.size, cfg.size], "num_classes": 10,
             "width": cfg.width, "layers": cfg.layers, "seed": cfg.seed, "noise_seed": cfg.seed}
    if objective == "diffusion_dpo":
        model["dpo"] = {"beta": cfg.beta}
    elif objective == "gran_dpo":
        model["dpo"] = {"beta": cfg.beta, "lam": cfg.lam, "delta": cfg.delta, "grid": list(cfg.patch)}
    run = RunConfig.from_dict({
        "data": {"train": data, "batch_size": batch, "shuffle_buffer": 4 * batch, "seed": cfg.seed, "prefetch": 0},
        "features": {"features": features},
        "model": model,
        "metrics": {"tower": {}},
        "optim": {"dense": {"name": "adam", "lr": lr}},
        "trainer": {"epochs": 1000, "max_steps": steps, "progress": False, "seed": cfg.seed, "log_every": steps},
        "checkpoint": {"dir": str(workdir / name), "every": steps, "keep_last": 1,
                       "init_from": None if init_from is None else str(workdir / init_from)},
    }, str(workdir))
    return Job(run)


def sample_and_score(tower, teacher: Teacher, video_rm, cfg: ExperimentConfig) -> Dict[str, float]:
    """Clips from `tower.generate` (eval_per_class per class, generator seeded with eval_seed):
    the teacher's patch-defect rate and mean video reward, the video RM's mean reward and the
    clips' mean pixel (`Experiment` turns it into `content`)."""
    cond = torch.arange(10).repeat(cfg.eval_per_class)
    clips = tower.generate(cond, torch.Generator().manual_seed(cfg.eval_seed))
    with torch.no_grad():
        return {"patch_defect_rate": float(teacher.defects(clips).float().mean()),
                "teacher_video_reward": float(teacher.video_rewards(clips).mean()),
                "video_rm_reward": float(video_rm(clips).mean()),
                "mean_pixel": float(clips.mean())}


class Experiment:
    """`prepare()` (world, teacher, reward models, pre-trained denoiser, pairs), then
    `post_train(objective, ...)` any number of times from the same pre-trained checkpoint."""

    def __init__(self, cfg: ExperimentConfig, workdir, log: Callable[[str], Any] = print):
        self.cfg, self.workdir, self.log = cfg, Path(workdir), log
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.out: Dict[str, Any] = {"config": asdict(cfg)}
        self.results: Dict[str, Dict[str, float]] = {}

    def _say(self, text: str) -> None:
        self.log(f"[{time.time() - self.t0:.0f}s] {text}")

    def prepare(self) -> "Experiment":
        cfg, out = self.cfg, self.out
        world = ArtifactWorld.fashion_mnist(cfg.split, cfg.world_config())
        teacher = Teacher(cfg.patch, TeacherConfig())
        teacher.calibrate(world.sample(500, stream=9, artifacts=False).video)
        train, held = world.sample(cfg.rm_clips, stream=0), world.sample(cfg.rm_heldout, stream=1)
        out["teacher"] = {"threshold": teacher.threshold,
                          "world_defect_rate": float(teacher.defects(held.video).float().mean()),
                          "clean_defect_rate": float(teacher.defects(held.clean).float().mean())}
        self._say(f"world: {cfg.split} split, teacher threshold {teacher.threshold:.4f}, defect rate "
                  f"{out['teacher']['world_defect_rate']:.3f} (world clips), {out['teacher']['clean_defect_rate']:.3f} "
                  f"(their clean versions)")
        video_rm, _ = train_video_rm(train.video, teacher.video_rewards(train.video),
                                     VideoRMTrainConfig(steps=cfg.rm_steps, seed=cfg.seed),
                                     RewardModelConfig(width=cfg.rm_width))
        target, held_target = teacher.patch_rewards(train.video), teacher.patch_rewards(held.video)
        rms = {}
        for mu in ((cfg.mu, 0.0) if cfg.compare_mu0 and cfg.mu != 0 else (cfg.mu,)):
            rm, _ = finetune_patch_rm(video_rm, train.video, target, cfg.patch,
                                      PatchRMConfig(steps=cfg.patch_rm_steps, mu=mu, seed=cfg.seed))
            rms[mu] = rm
            out[f"patch_rm_mu{mu:g}"] = evaluate_patch_rm(rm, video_rm, held.video, held_target)
        patch_rm = rms[cfg.mu]
        with torch.no_grad():
            out["video_rm_spearman"] = spearman(video_rm(held.video), teacher.video_rewards(held.video))
        save_scorers(self.workdir / "scorers.pt", teacher, video_rm, patch_rm)
        r = out[f"patch_rm_mu{cfg.mu:g}"]
        self._say(f"video RM: Spearman {out['video_rm_spearman']:.3f} with the teacher (held-out clips); patch RM "
                  f"(mu={cfg.mu:g}): patch Spearman {r['patch_spearman']:.3f}, whole-video drift W1 {r['w1']:.4f} "
                  f"({r['w1_rel']:.3f} std), mean shift {r['mean_shift']:+.4f}, std ratio {r['std_ratio']:.3f}"
                  + (f"; mu=0: patch Spearman {out['patch_rm_mu0']['patch_spearman']:.3f}, drift "
                     f"{out['patch_rm_mu0']['w1_rel']:.3f} std" if "patch_rm_mu0" in out and cfg.mu != 0 else ""))
        clips = world.sample(cfg.sft_clips, stream=2)
        pairs_mod.write_parquet(pairs_mod.clip_table(clips.video, clips.cond), self.workdir / "clips.parquet")
        sft = _job(self.workdir, "sft", cfg, "sft", "clips.parquet", cfg.sft_steps, cfg.sft_lr, cfg.sft_batch)
        sft.train()
        self._say(f"pre-trained the denoiser ({cfg.sft_steps} steps on {cfg.sft_clips} clips)")
        scored = pairs_mod.score_pairs(pairs_mod.world_pairs(world, cfg.pairs_per_class, range(10), stream=3,
                                                             shared_content=cfg.shared_content), video_rm, patch_rm)
        pairs_mod.write_parquet(pairs_mod.pairs_table(scored), self.workdir / "pairs.parquet")
        self.gaps = (scored["patch_reward_a"] - scored["patch_reward_b"]).abs()
        out["pairs"] = {"count": len(scored["cond"])}
        self.teacher, self.video_rm = teacher, video_rm
        self.results["pretrained"] = pre = sample_and_score(sft.model, teacher, video_rm, cfg)
        pre["content"] = 1.0
        return self

    def post_train(self, objective: str, name: Optional[str] = None, **over) -> Dict[str, float]:
        """A Diffusion-DPO or Gran-DPO job from the pre-trained checkpoint; `over` replaces any of
        beta, lam, delta, dpo_lr, dpo_steps. Returns (and records under `name`) the scores."""
        cfg = dataclasses.replace(self.cfg, **over) if over else self.cfg
        if objective == "gran_dpo":  # its own beta / lr where set
            cfg = dataclasses.replace(cfg, beta=cfg.gran_beta or cfg.beta, dpo_lr=cfg.gran_lr or cfg.dpo_lr)
        name = name or objective
        job = _job(self.workdir, name, cfg, objective, "pairs.parquet", cfg.dpo_steps, cfg.dpo_lr, cfg.dpo_batch,
                   init_from="sft")
        job.train()
        res = sample_and_score(job.model, self.teacher, self.video_rm, cfg)
        res["content"] = res["mean_pixel"] / self.results["pretrained"]["mean_pixel"]
        if objective == "gran_dpo":
            res["patch_mask_share"] = float((self.gaps >= cfg.delta).float().mean())
        self.results[name] = res
        self._say(f"{name}: {cfg.dpo_steps} steps on {self.out['pairs']['count']} pairs "
                  f"(beta {cfg.beta:g}, lr {cfg.dpo_lr:g}" + (f", lam {cfg.lam:g}, delta {cfg.delta:g}"
                                                              if objective == "gran_dpo" else "") + ")")
        return res


def run(cfg: ExperimentConfig, workdir, log: Callable[[str], Any] = print) -> Dict[str, Any]:
    """The whole experiment in `workdir` (created): pre-trained, Diffusion-DPO, Gran-DPO."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        exp = Experiment(cfg, workdir, log).prepare()
        for objective in ("diffusion_dpo", "gran_dpo"):
            exp.post_train(objective)
        exp.out["models"] = exp.results
        exp.out["seconds"] = time.time() - exp.t0
        return exp.out
    finally:
        torch.set_num_threads(threads)


def table(results: Dict[str, Dict[str, float]]) -> str:
    """A markdown table of one run's models."""
    rows = ["| model | patch-defect rate (teacher) | mean video reward (teacher) | mean video reward (video RM) | content |",
            "|---|---|---|---|---|"]
    for m in MODELS:
        r = results[m]
        rows.append(f"| {m} | {r['patch_defect_rate']:.4f} | {r['teacher_video_reward']:.4f} | "
                    f"{r['video_rm_reward']:.4f} | {r['content']:.3f} |")
    return "\n".join(rows)
