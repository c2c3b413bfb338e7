"""The preference and RL stages of the generative judge: pass@N DPO and GRPO with difficulty-based
dynamic sampling (TaoSR1, methods.md section 6). Both train through the Trainer's rollout step
(`recis.towers.Tower.rollout`): a rollout samples and scores without gradients in eval mode, and
returns minibatches for the inner optimizer steps.

- `DPOJudge` (objective dpo): each rollout samples N = sampling.group_size completions per
  training row from the reference policy (the stage's starting weights: the SFT model), so pairs
  are those of the SFT model as in offline pass@N sampling, drawn anew per epoch [I]; mixed groups
  give (correct, wrong) pairs, all-wrong groups (gold rationale, a wrong sample), all-correct none
  (`recis_relevance.pairs`); the loss is sigmoid DPO (`recis.rl.dpo_loss`) on sequence log-probs.
- `GRPOJudge` (objective grpo): G completions per row from the current policy, reward 1 for a
  well-formed completion with the gold grade else 0 (`recis_relevance.formats`), group-relative
  advantages (`recis.rl.group_advantages`), old-policy log-probs computed once per rollout, the
  clipped surrogate with an optional k3 KL to the reference (`recis.rl.grpo_loss`), `grpo.inner_steps`
  passes over the minibatches. With `dynamic_sampling`, groups whose accuracy is <= low or >= high
  are dropped and the batch is refilled from the training data (at most max_refills batches).
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from recis.rl import difficulty_mask, dpo_loss, group_advantages, grpo_loss
from recis.towers import RolloutPhase, TowerOutput
from recis.towers.generation import Rollout, cat_rollouts, sample_groups, token_entropy, token_logprobs
from recis.towers.lm_tokens import encode_prompts
from recis.towers.lora import adapters_disabled
from recis.towers.reference import ReferencePolicy

from recis_relevance.formats import score
from recis_relevance.judge import JudgeTower
from recis_relevance.pairs import build_pairs, group_from_completions

__all__ = ["GroupMinibatch", "PairMinibatch", "DPOJudge", "GRPOJudge"]


@dataclass
class GroupMinibatch:
    """GRPO rows: sequences, their completion mask over the sequence, old-policy and reference
    per-token log-probs, per-row advantages, and the rollout's completion-token count."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: Optional[torch.Tensor]
    advantages: torch.Tensor
    num_items: float

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class PairMinibatch:
    """DPO pairs: encoded chosen and rejected completions and their reference sequence log-probs."""

    chosen: Dict[str, torch.Tensor]
    rejected: Dict[str, torch.Tensor]
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    def __len__(self) -> int:
        return self.ref_chosen.shape[0]


def _chunks(n: int, size: Optional[int]) -> List[slice]:
    """Slices of `size` rows (None: one slice of all) over n rows; none when n is 0."""
    size = max(n, 1) if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _RolloutJudge(JudgeTower):
    """What both stages share: the sampling generator (saved with checkpoints) and the reference."""

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.reference: Optional[ReferencePolicy] = None
        if self.needs_reference():
            self.reference = ReferencePolicy(self.model, self.cfg.reference)

    def needs_reference(self) -> bool:
        return True

    def generators(self) -> Dict[str, torch.Generator]:
        return {"sampling": self.generator}

    def on_weights_loaded(self) -> None:
        if self.reference is not None:
            self.reference.reset()  # the stage's starting weights are the reference

    def sample(self, prompts: Sequence[str], module=None) -> Rollout:
        s = self.cfg.sampling
        enc = encode_prompts(self.tokenizer, prompts, self.cfg.max_prompt_length)
        return sample_groups(module or self.model, enc["input_ids"].to(self.device),
                             enc["attention_mask"].to(self.device), s.group_size, s.max_new_tokens,
                             temperature=s.temperature, top_k=s.top_k, generator=self.generator,
                             eos_token_id=self.eos_id, pad_token_id=self.pad_id)

    def forward(self, batch) -> TowerOutput:
        if isinstance(batch, GroupMinibatch):
            return self._grpo_step(batch)
        if isinstance(batch, PairMinibatch):
            return self._dpo_step(batch)
        return super().forward(batch)  # eval decoding (and SFT on a plain batch)

    def _grpo_step(self, mb: GroupMinibatch) -> TowerOutput:
        raise TypeError(f"{type(self).__name__} does not train on GRPO minibatches")

    def _dpo_step(self, mb: PairMinibatch) -> TowerOutput:
        raise TypeError(f"{type(self).__name__} does not train on DPO pairs")


class DPOJudge(_RolloutJudge):
    """pass@N DPO (see the module docstring)."""

    def rollout(self, batch, refill) -> RolloutPhase:
        rows = self.rows(batch)
        prompts, gold = self.prompts(rows), self.gold(rows)
        if self.reference.mode == "copy":
            r = self.sample(prompts, self.reference.module)
        else:
            with adapters_disabled(self.model):
                r = self.sample(prompts)
        texts = self.decode(r.completion_ids, r.completion_mask)
        G = r.group_size
        groups = [group_from_completions(self.cfg.format, prompts[i], gold[i], rows[i]["label"],
                                         texts[i * G:(i + 1) * G]) for i in range(len(rows))]
        pairs, counts = build_pairs(groups, self.cfg.pairs)
        scored = score(self.cfg.format, texts, [rows[i // G]["label"] for i in range(len(texts))])
        stats = {"reward_mean": float(scored.rewards.mean()), "malformed_fraction": scored.malformed / len(texts),
                 **{f"groups_{k}": float(counts[k]) for k in ("mixed", "all_wrong", "all_correct")},
                 "pairs": float(counts["pairs"]), "completion_length": float(r.completion_lengths.float().mean())}
        minibatches = []
        for part in _chunks(len(pairs), self.cfg.minibatch_size):
            chunk = pairs[part]
            chosen = self.encode([p.prompt for p in chunk], [p.chosen for p in chunk])
            rejected = self.encode([p.prompt for p in chunk], [p.rejected for p in chunk])
            ref_c = self.reference.logprobs(chosen["input_ids"], chosen["attention_mask"], chosen["completion_mask"])
            ref_r = self.reference.logprobs(rejected["input_ids"], rejected["attention_mask"],
                                            rejected["completion_mask"])
            minibatches.append(PairMinibatch(chosen, rejected, ref_c.sum(-1), ref_r.sum(-1)))
        return RolloutPhase(minibatches, inner_steps=1, stats=stats)

    def _dpo_step(self, mb: PairMinibatch) -> TowerOutput:
        loss, stats = dpo_loss(self.sequence_logprobs(mb.chosen), self.sequence_logprobs(mb.rejected),
                               mb.ref_chosen, mb.ref_rejected, self.cfg.dpo.beta, self.cfg.dpo.label_smoothing)
        return TowerOutput(torch.zeros(len(mb), device=loss.device), loss,
                           stats={f"dpo_{k}": float(v) for k, v in stats.items()})


class GRPOJudge(_RolloutJudge):
    """GRPO with optional difficulty-based dynamic sampling (see the module docstring)."""

    def needs_reference(self) -> bool:
        return self.cfg.grpo.beta > 0

    def _sample_scored(self, rows):
        prompts = self.prompts(rows)
        r = self.sample(prompts)
        texts = self.decode(r.completion_ids, r.completion_mask)
        G = r.group_size
        scored = score(self.cfg.format, texts, [rows[i // G]["label"] for i in range(len(texts))])
        return r, scored.rewards.view(len(rows), G).to(self.device), scored.malformed

    def rollout(self, batch, refill) -> RolloutPhase:
        cfg, ds = self.cfg, self.cfg.dynamic_sampling
        rows = self.rows(batch)
        want = len(rows)
        n = {"sampled": 0, "malformed": 0, "reward": 0.0, "groups": 0, "dropped": 0}

        def sample(rows):
            r, rewards, bad = self._sample_scored(rows)
            n["sampled"] += rewards.numel()
            n["malformed"] += bad
            n["reward"] += float(rewards.sum())
            n["groups"] += rewards.shape[0]
            keep = difficulty_mask(rewards, ds.low, ds.high) if ds is not None else \
                torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)
            n["dropped"] += int((~keep).sum())
            return (r.index_select(keep.repeat_interleave(r.group_size)), rewards[keep]), int(keep.sum())

        kept, refills = collect_groups(rows, want, sample, refill, self.rows,
                                       None if ds is None else ds.max_refills)
        stats = {"reward_mean": n["reward"] / max(n["sampled"], 1),
                 "malformed_fraction": n["malformed"] / max(n["sampled"], 1),
                 "dropped_groups": float(n["dropped"]), "dropped_fraction": n["dropped"] / max(n["groups"], 1),
                 "refills": float(refills)}
        if not kept:
            stats["kept_groups"] = 0.0
            return RolloutPhase([], inner_steps=cfg.grpo.inner_steps, stats=stats)
        rewards = torch.cat([w for _, w in kept])[:want]
        ro = cat_rollouts([r for r, _ in kept], self.pad_id).index_select(
            torch.arange(rewards.shape[0] * kept[0][0].group_size))
        adv = group_advantages(rewards, std=cfg.grpo.std, scale=cfg.grpo.scale, eps=cfg.grpo.std_eps,
                               clip=cfg.grpo.advantage_clip).reshape(-1)
        stats.update({"kept_groups": float(rewards.shape[0]),
                      "kept_reward_std": float(rewards.std(1, unbiased=False).mean())})
        return self.group_phase(ro, adv, stats)

    def group_phase(self, ro: Rollout, adv: torch.Tensor, stats: Dict[str, float],
                    old_logprobs: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> RolloutPhase:
        """The rollout phase of sequences `ro` with advantages `adv` (per row [N], or per token
        [N, P + C]): the old-policy log-probs (`old_logprobs` may rewrite them), the reference's,
        the completion length and entropy in `stats`, and minibatches of `cfg.minibatch_size` rows."""
        cfg = self.cfg
        ids, att, cmask = ro.input_ids, ro.attention_mask, ro.full_completion_mask
        T = cfg.sampling.temperature
        old = token_logprobs(self.model, ids, att, cmask, T)
        if old_logprobs is not None:
            old = old_logprobs(old)
        ref = self.reference.logprobs(ids, att, cmask, T) if self.reference is not None else None
        ent = token_entropy(self.model, ids, att, cmask, T)
        tokens = cmask.sum()
        stats.update({"completion_length": float(ro.completion_lengths.float().mean()),
                      "entropy": float((ent * cmask).sum() / tokens.clamp_min(1))})
        adv = adv.to(self.device)
        minibatches = [GroupMinibatch(ids[s], att[s], cmask[s], old[s], None if ref is None else ref[s], adv[s],
                                      float(tokens)) for s in _chunks(ids.shape[0], cfg.minibatch_size)]
        return RolloutPhase(minibatches, inner_steps=cfg.grpo.inner_steps, stats=stats)

    def _grpo_step(self, mb: GroupMinibatch) -> TowerOutput:
        logp = token_logprobs(self.model, mb.input_ids, mb.attention_mask, mb.completion_mask,
                              self.cfg.sampling.temperature)
        loss, stats = grpo_loss(logp, mb.old_logprobs, mb.advantages, mb.completion_mask, self.cfg.grpo,
                                ref_logp=mb.ref_logprobs, num_items=mb.num_items)
        return TowerOutput(torch.zeros(len(mb), device=loss.device), loss, stats=dict(stats))


def collect_groups(rows, want: int, sample: Callable[[Any], Tuple[Any, int]], refill: Callable[[], Any],
                   rows_of: Callable[[Any], Any], max_refills: Optional[int]) -> Tuple[List[Any], int]:
    """The sample-filter-refill loop of the group stages: `sample(rows)` samples and scores the
    rows' groups and returns (what it keeps, how many groups that is); while fewer than `want`
    groups are kept, the batch is refilled from the training data (`refill()`, None when it is
    exhausted; `rows_of` reads its rows), at most `max_refills` times (None: no filtering, one
    round). Returns (the kept parts of the rounds that kept any, refills)."""
    parts: List[Any] = []
    have, refills = 0, 0
    while True:
        part, n = sample(rows)
        if n:
            parts.append(part)
            have += n
        if max_refills is None or have >= want or refills >= max_refills:
            return parts, refills
        more = refill()
        if more is None:
            return parts, refills
        rows, refills = rows_of(more), refills + 1
