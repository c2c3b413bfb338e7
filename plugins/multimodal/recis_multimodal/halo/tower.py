"""HALOTower (entry point `halo`): a class-conditioned video diffusion model trained from a job.

Objectives (`model.objective`, options in `recis_multimodal.halo.config.HALOConfig`):

- ``sft``: pre-training, the denoising loss mean (eps_theta(x_t, t, cond) - eps)^2 on clips
  (features `video`, `cond`);
- ``diffusion_dpo``: Diffusion-DPO (`recis.rl.diffusion_dpo_loss`) on pairs (`video_a`, `video_b`,
  `reward_a`, `reward_b`, `cond`): the video with the higher reward is the winner;
- ``gran_dpo``: Gran-DPO (`recis_multimodal.halo.gran_dpo`), with `patch_reward_a` / `patch_reward_b`.

Videos and patch rewards are `tensor` features (`batch.tensors`), rewards and cond `dense` (or
`tensor`) features. Both samples of a pair are noised with the same timestep and noise, drawn
from the tower's `noise` generator (`generators()`, saved with checkpoints: a resumed job draws
what the uninterrupted one draws). The preference objectives keep a reference denoiser: a frozen
copy of the starting weights (checkpoint.init_from's, else the seeded initial weights), declared
`frozen`, so a checkpoint stores its SHA-256, not its weights, and a resume checks it.

Per-example numbers (`TowerOutput.values`, for the core `tower` metric and the training logs):
on pairs `implicit_accuracy` (1 when the model's winner-minus-loser error is below the
reference's), `dpo_loss` (the pair's Diffusion-DPO term) and `denoise_mse` (the model's error,
mean of both samples); on clips `denoise_mse`. Evaluation draws its noise from (eval_seed, batch
index), so every evaluation, of any model, sees the same noise; with an `evaluator`, it also
scores clips sampled for each row's cond (e.g. `video_reward`, `patch_defect_rate`).
`TowerOutput.stats`: the objective's other terms (`recis.rl.diffusion_dpo_loss`'s margin,
model_mse, ref_mse, ...; Gran-DPO's video_loss, patch_loss, patch_mask_share,
patch_implicit_accuracy, ...). The tower has no binary logit (`has_logits = False`).
"""
import copy
import importlib
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn.functional as F

from recis.rl import diffusion_dpo_loss
from recis.towers import FeatureInfo, Tower, TowerOutput

from recis_multimodal.halo.config import HALOConfig
from recis_multimodal.halo.denoiser import Denoiser3D
from recis_multimodal.halo.gran_dpo import clip_errors, gran_dpo_loss

__all__ = ["HALOTower", "load_evaluator"]

SEEDED_SOURCE = "the seeded initial weights (model.seed)"
INIT_FROM_SOURCE = "the weights of checkpoint.init_from"


def load_evaluator(spec: str, options: Dict[str, Any]) -> Callable:
    """The scorer of `model.evaluator` ("module:function" called with `options`)."""
    module, _, name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.evaluator {spec!r}: cannot load it ({e})") from None
    scorer = factory(**options)
    if not callable(scorer):
        raise TypeError(f"model.evaluator {spec!r} returned {type(scorer).__name__}, not a scorer "
                        "(clips, cond) -> {name: [B] tensor}")
    return scorer


class HALOTower(Tower):
    """See the module docstring."""

    has_logits = False

    def __init__(self, config: Optional[HALOConfig] = None, **options):
        super().__init__()
        cfg = config if config is not None else HALOConfig.from_options(options)
        self.cfg = cfg
        self.schedule = cfg.ddpm
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.denoiser = Denoiser3D(cfg.channels, cfg.width, cfg.num_classes, self.schedule.steps, cfg.layers)
        self.declare("denoiser", self.denoiser, "dense")
        self.reference: Optional[Denoiser3D] = None
        if cfg.objective != "sft":
            self.reference = copy.deepcopy(self.denoiser)
            self.declare("reference", self.reference, "frozen", source=SEEDED_SOURCE)
        self.generator = torch.Generator().manual_seed(cfg.noise_seed)
        self._scorer = load_evaluator(cfg.evaluator, cfg.evaluator_options) if cfg.evaluator else None
        self._eval_batches = 0

    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "HALOTower":
        cfg = HALOConfig.from_options(args)
        have = set(features.tensors) | set(features.dense)
        missing = [cfg.feature(r) for r in cfg.roles() if cfg.feature(r) not in have]
        if missing:
            raise ValueError(f"halo (objective {cfg.objective}) reads the features {[cfg.feature(r) for r in cfg.roles()]}"
                             f"; the features lack {missing} (videos and patch rewards: kind tensor; rewards and cond: "
                             f"kind dense or tensor; tensor features: {list(features.tensors)}, dense: "
                             f"{list(features.dense)})")
        return cls(cfg)

    # ---- state ---------------------------------------------------------------------------------
    def generators(self) -> Dict[str, torch.Generator]:
        return {"noise": self.generator}

    def on_weights_loaded(self) -> None:
        if self.reference is not None:  # the loaded weights are the new reference
            with torch.no_grad():
                for p, q in zip(self.reference.parameters(), self.denoiser.parameters()):
                    p.copy_(q)
            self._declared["reference"]["source"] = INIT_FROM_SOURCE
            self._fingerprint_cache = None

    def set_extra_state(self, state: Any) -> None:
        """As Tower's, except that the reference may be missing from the checkpoint (init_from a
        pre-training (sft) checkpoint, whose weights become the reference) or present in it while
        this tower has none (an sft stage from a preference checkpoint): the reference is a copy
        of the starting weights, not weights of their own. A resumed preference job still checks
        its reference against the checkpoint's."""
        if isinstance(state, dict) and isinstance(state.get("base"), dict):
            base = dict(state["base"])
            if self.reference is None:
                base.pop("reference", None)
            elif "reference" not in base:
                base["reference"] = self.base_reference()["reference"]
            state = {**state, "base": base}
        super().set_extra_state(state)

    def train(self, mode: bool = True):
        if not mode:
            self._eval_batches = 0  # every evaluation draws the same noise
        return super().train(mode)

    # ---- inputs ----------------------------------------------------------------------------------
    def _get(self, batch, role: str) -> torch.Tensor:
        name = self.cfg.feature(role)
        tensors = getattr(batch, "tensors", None) or {}
        if name in tensors:
            return tensors[name]
        names = list(getattr(batch, "dense_names", None) or [])
        if name in names:
            return batch.dense[:, names.index(name)]
        raise KeyError(f"halo: the batch has no feature {name!r} ({role}); tensor features {sorted(tensors)}, "
                       f"dense {names}")

    def _has(self, batch, role: str) -> bool:
        name = self.cfg.feature(role)
        return name in (getattr(batch, "tensors", None) or {}) or name in (getattr(batch, "dense_names", None) or [])

    def _video(self, batch, role: str) -> torch.Tensor:
        """[B, C, F, H, W] in the model's range (2 * pixel - 1)."""
        v = self._get(batch, role)
        shape = (self.cfg.channels, *self.cfg.clip)
        need, have = shape[0] * shape[1] * shape[2] * shape[3], int(torch.Size(v.shape[1:]).numel())
        if have != need:
            raise ValueError(f"halo: feature {self.cfg.feature(role)!r} ({role}) has {have} numbers per row "
                             f"(shape {tuple(v.shape[1:])}); model.channels x model.clip {list(shape)} needs {need}")
        return v.reshape(v.shape[0], *shape).float() * 2.0 - 1.0

    def _vector(self, batch, role: str) -> torch.Tensor:
        v = self._get(batch, role).float()
        return v.reshape(v.shape[0]) if v.dim() > 1 and v[0].numel() == 1 else v

    def _cond(self, batch) -> torch.Tensor:
        c = self._vector(batch, "cond")
        if c.dim() != 1 or not torch.equal(c, c.round()) or (c.numel() and (c.min() < 0 or c.max() >= self.cfg.num_classes)):
            raise ValueError(f"halo: feature {self.cfg.feature('cond')!r} (cond) must hold one class index in "
                             f"[0, {self.cfg.num_classes - 1}] per row (model.num_classes = {self.cfg.num_classes})")
        return c.long()

    def _patch_rewards(self, batch, role: str) -> torch.Tensor:
        v = self._get(batch, role).float()
        return v.reshape(v.shape[0], -1)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # ---- forward ---------------------------------------------------------------------------------
    def _eval_generator(self, eval_batch: int, purpose: int) -> torch.Generator:
        """The generator of evaluation batch `eval_batch` (purpose 0: noise, 1: samples)."""
        return torch.Generator().manual_seed((self.cfg.eval_seed * 1_000_003 + 2 * eval_batch + purpose) % (1 << 63))

    def _noise(self, shape, eval_batch: Optional[int]):
        g = self.generator if eval_batch is None else self._eval_generator(eval_batch, 0)
        return self.schedule.draw(shape, g, self.device)

    def forward(self, batch) -> TowerOutput:
        eval_batch = None
        if not self.training:
            eval_batch = self._eval_batches
            self._eval_batches += 1
        pairs = all(self._has(batch, r) for r in ("video_a", "video_b", "reward_a", "reward_b", "cond"))
        if self.cfg.objective == "sft" or not pairs:
            out = self._sft(batch, eval_batch)
        else:
            out = self._preference(batch, eval_batch)
        if eval_batch is not None and self._scorer is not None:
            out.values.update(self._score(self._cond(batch), eval_batch))
        return out

    def _sft(self, batch, eval_batch) -> TowerOutput:
        if self.cfg.objective != "sft" and self.training:
            raise KeyError(f"halo (objective {self.cfg.objective}): the training batch lacks the pair features "
                           f"{[self.cfg.feature(r) for r in self.cfg.roles()]}")
        x0, cond = self._video(batch, "video"), self._cond(batch)
        t, noise = self._noise(x0.shape, eval_batch)
        pred = self.denoiser(self.schedule.q_sample(x0, t, noise), t, cond)
        per = clip_errors(pred, noise)
        return TowerOutput(None, loss=per.mean(), values={"denoise_mse": per.detach().float()})

    def _preference(self, batch, eval_batch) -> TowerOutput:
        cfg = self.cfg
        xa, xb, cond = self._video(batch, "video_a"), self._video(batch, "video_b"), self._cond(batch)
        ra, rb = self._vector(batch, "reward_a"), self._vector(batch, "reward_b")
        t, noise = self._noise(xa.shape, eval_batch)  # one timestep and one noise per pair, both samples
        x_t = torch.cat([self.schedule.q_sample(xa, t, noise), self.schedule.q_sample(xb, t, noise)])
        tt, cc = torch.cat([t, t]), torch.cat([cond, cond])
        model_a, model_b = self.denoiser(x_t, tt, cc).chunk(2)
        with torch.no_grad():
            self.reference.eval()
            ref_a, ref_b = self.reference(x_t, tt, cc).chunk(2)
        if cfg.objective == "gran_dpo":
            pa, pb = self._patch_rewards(batch, "patch_reward_a"), self._patch_rewards(batch, "patch_reward_b")
            loss, stats = gran_dpo_loss(model_a, model_b, ref_a, ref_b, noise, noise, ra, rb, pa, pb, cfg.gran)
        else:
            e = [clip_errors(x, noise) for x in (model_a, model_b, ref_a, ref_b)]
            a_wins = ra >= rb  # ties: sample a (as Gran-DPO's)
            w = [torch.where(a_wins, e[0], e[1]), torch.where(a_wins, e[1], e[0]),
                 torch.where(a_wins, e[2], e[3]), torch.where(a_wins, e[3], e[2])]
            loss, stats = diffusion_dpo_loss(*w, beta=cfg.gran.beta)
        with torch.no_grad():
            e = [clip_errors(x, noise) for x in (model_a, model_b, ref_a, ref_b)]
            sign = torch.where(ra >= rb, 1.0, -1.0).to(e[0])
            inside = -0.5 * cfg.gran.beta * sign * ((e[0] - e[1]) - (e[2] - e[3]))
            values = {"implicit_accuracy": (inside > 0).float(), "dpo_loss": -F.logsigmoid(inside).float(),
                      "denoise_mse": (0.5 * (e[0] + e[1])).float()}
        stats = {k: v for k, v in stats.items() if k not in values}  # per-example numbers go in values
        return TowerOutput(None, loss=loss, stats=stats, values=values)

    # ---- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Clips [B, C, F, H, W] in [0, 1] sampled by the DDPM sampler for classes `cond` [B]."""
        shape = (cond.shape[0], self.cfg.channels, *self.cfg.clip)
        was = self.denoiser.training
        self.denoiser.eval()
        try:
            x = self.schedule.sample(self.denoiser, shape, cond.to(self.device), generator, self.device)
        finally:
            self.denoiser.train(was)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def _score(self, cond: torch.Tensor, eval_batch: int) -> Dict[str, torch.Tensor]:
        clips = self.generate(cond, self._eval_generator(eval_batch, 1))
        scores = self._scorer(clips, cond)
        if not isinstance(scores, dict):
            raise TypeError(f"model.evaluator {self.cfg.evaluator!r} returned {type(scores).__name__}, not a dict "
                            "name -> [B] tensor")
        out = {}
        for name, v in scores.items():
            v = torch.as_tensor(v).float().reshape(-1)
            if v.shape[0] != cond.shape[0]:
                raise ValueError(f"model.evaluator {self.cfg.evaluator!r}: {name!r} has {v.shape[0]} values for "
                                 f"{cond.shape[0]} clips")
            out[name] = v
        return out
