"""DyKnow-RAG's dual-group GRPO stage of the generative judge (objective ``dyknow``; methods.md
section 3, formulas in `recis_relevance.dyknow`).

Per training row (a task row of the retrieval test bed: it carries its retrieved `chunk`, and its
`context_decision` for human gating), the rollout:

1. samples n = sampling.group_size completions o0 under the no-context prompt p and n completions
   o1 under the with-context prompt p' (`recis_relevance.prompts.context_prompts`), from the
   current policy, with the judge's one sampling generator (saved in checkpoints);
2. scores both: the return is 1 for a well-formed completion with the gold grade, else 0, plus
   `dyknow.format_weight` times "well formed" [I]; correctness (the 0/1 part) gives the accuracy
   gap of posterior gating;
3. normalizes each group on its own (A0, A1) and the no-context returns against the union of both
   (At), scales At piecewise by alpha / beta of the configured gating (T);
4. takes the per-token log-probs of the sampling policy for o0 under p and o1 under p' (or under p
   with `dyknow.group1_prompt: no_context`, eq. 10 as printed) and, when grpo.beta > 0, of the
   reference; the no-context completions are also laid under p' for the inter-group term, which
   is re-scored by the current policy at every inner step.

With `dynamic_sampling`, a row whose accuracy over its 2n rollouts is <= low or >= high is dropped
and the batch refilled from the training data (at most max_refills batches) [I: the paper's
difficulty filter [0.01, 0.9] does not say over which rollouts]. Minibatches hold whole rows:
`minibatch_size` counts the rollout rows of each group (at least one training row per minibatch).

SFT with the structured rationale under the with-context prompt is the `sft` objective with
``format: post_cot_context, prompt: with_context``; the optional DPO warm start the `dpo` objective
under the same prompt (pairs: chosen agrees with the gold grade, rejected disagrees, duplicates
counted once: `recis_relevance.pairs`). Evaluation decodes under `model.prompt` (with_context for
the paper's deployment; no_context for its inference ablation).
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from recis.rl import difficulty_mask
from recis.towers import RolloutPhase, TowerOutput
from recis.towers.generation import Rollout, cat_rollouts, token_entropy, token_logprobs

from recis_relevance.dyknow import (PolicyGroup, correctness_gap, dual_group_advantages, dyknow_loss, gate,
                                    piecewise_scale)
from recis_relevance.formats import score
from recis_relevance.judge_rl import GroupMinibatch, GRPOJudge, _chunks, collect_groups

__all__ = ["DualGroupMinibatch", "DyKnowJudge", "rescored"]


@dataclass
class DualGroupMinibatch:
    """One inner step's rows of a DyKnow rollout: the no-context group (o0 under p), the
    with-context group (o1 under p'), the no-context completions laid under p' (ids, attention and
    completion mask over the sequence) and their scaled union advantages T(At) [N]."""

    no_context: GroupMinibatch
    with_context: GroupMinibatch
    rescored_ids: torch.Tensor
    rescored_attention: torch.Tensor
    rescored_mask: torch.Tensor
    scaled: torch.Tensor

    def __len__(self) -> int:
        return len(self.no_context)


def rescored(completions: Rollout, prompts: Rollout) -> Rollout:
    """The completions of `completions` after the prompts of `prompts` (row for row: both
    prompt-major over the same queries and group size), e.g. the no-context rollouts under the
    with-context prompt p'."""
    if len(completions) != len(prompts) or completions.group_size != prompts.group_size:
        raise ValueError(f"rescored needs rollouts of the same rows: {len(completions)} x {completions.group_size} "
                         f"vs {len(prompts)} x {prompts.group_size}")
    return Rollout(prompt_ids=prompts.prompt_ids, prompt_mask=prompts.prompt_mask,
                   completion_ids=completions.completion_ids, completion_mask=completions.completion_mask,
                   logprobs=completions.logprobs, prompt_index=completions.prompt_index,
                   group_size=completions.group_size)


class DyKnowJudge(GRPOJudge):
    """Dual-group GRPO with the inter-group term (see the module docstring)."""

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        if self.cfg.dyknow is None:
            raise ValueError("model.dyknow is required with objective dyknow (give at least `dyknow: {}`)")

    # ---- prompts --------------------------------------------------------------------------
    @staticmethod
    def dual_prompts(rows: Sequence[dict]) -> Tuple[List[str], List[str]]:
        """(no-context prompts, with-context prompts) of the rows."""
        from recis_relevance.prompts import context_prompts

        missing = [i for i, r in enumerate(rows) if r.get("chunk") is None]
        if missing:
            raise ValueError(f"objective dyknow needs each row's retrieved chunk (pass-through column 'chunk'; a task "
                             f"built with a retriever); rows {missing[:5]} have none")
        pairs = [context_prompts(r) for r in rows]
        return [p for p, _ in pairs], [q for _, q in pairs]

    # ---- rollout --------------------------------------------------------------------------
    def _returns(self, rollout: Rollout, rows) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """(returns, correctness) [Q, n] of a rollout's completions, and the malformed count."""
        texts = self.decode(rollout.completion_ids, rollout.completion_mask)
        n = rollout.group_size
        scored = score(self.cfg.format, texts, [rows[i // n]["label"] for i in range(len(texts))])
        correct = scored.rewards.view(len(rows), n)
        formed = torch.tensor([0.0 if p.malformed else 1.0 for p in scored.parsed]).view(len(rows), n)
        returns = correct + self.cfg.dyknow.format_weight * formed
        return returns.to(self.device), correct.to(self.device), scored.malformed

    def _sample_dual(self, rows):
        no_ctx, with_ctx = self.dual_prompts(rows)
        r0 = self.sample(no_ctx)
        r1 = self.sample(with_ctx)
        ret0, c0, bad0 = self._returns(r0, rows)
        ret1, c1, bad1 = self._returns(r1, rows)
        return r0, r1, ret0, ret1, c0, c1, bad0 + bad1

    def rollout(self, batch, refill) -> RolloutPhase:
        cfg, ds = self.cfg, self.cfg.dynamic_sampling
        rows = self.rows(batch)
        want = len(rows)
        n = {"sampled": 0, "malformed": 0, "groups": 0, "dropped": 0, "reward_no_context": 0.0,
             "reward_with_context": 0.0}

        def sample(rows):
            r0, r1, ret0, ret1, c0, c1, bad = self._sample_dual(rows)
            n["sampled"] += ret0.numel() + ret1.numel()
            n["malformed"] += bad
            n["groups"] += len(rows)
            n["reward_no_context"] += float(ret0.sum())
            n["reward_with_context"] += float(ret1.sum())
            keep = difficulty_mask(torch.cat([c0, c1], 1), ds.low, ds.high) if ds is not None else \
                torch.ones(len(rows), dtype=torch.bool, device=ret0.device)
            n["dropped"] += int((~keep).sum())
            per_row = keep.repeat_interleave(r0.group_size)
            part = {"r0": r0.index_select(per_row), "r1": r1.index_select(per_row), "ret0": ret0[keep],
                    "ret1": ret1[keep], "c0": c0[keep], "c1": c1[keep],
                    "rows": [r for r, k in zip(rows, keep.tolist()) if k]}
            return part, int(keep.sum())

        parts, refills = collect_groups(rows, want, sample, refill, self.rows, None if ds is None else ds.max_refills)
        half = max(n["sampled"] // 2, 1)
        stats = {"reward_no_context": n["reward_no_context"] / half,
                 "reward_with_context": n["reward_with_context"] / half,
                 "malformed_fraction": n["malformed"] / max(n["sampled"], 1), "dropped_groups": float(n["dropped"]),
                 "dropped_fraction": n["dropped"] / max(n["groups"], 1), "refills": float(refills)}
        if not parts:
            stats["kept_groups"] = 0.0
            return RolloutPhase([], inner_steps=cfg.grpo.inner_steps, stats=stats)
        kept = {k: [p[k] for p in parts] for k in ("r0", "r1", "ret0", "ret1", "c0", "c1")}
        kept["rows"] = [r for p in parts for r in p["rows"]]
        return self._phase(kept, want, stats)

    def _phase(self, kept, want: int, stats: Dict[str, float]) -> RolloutPhase:
        cfg, dk = self.cfg, self.cfg.dyknow
        rows = kept["rows"][:want]
        Q = len(rows)
        n = kept["r0"][0].group_size
        first = torch.arange(Q * n)
        r0 = cat_rollouts(kept["r0"], self.pad_id).index_select(first)
        r1 = cat_rollouts(kept["r1"], self.pad_id).index_select(first)
        ret0, ret1 = torch.cat(kept["ret0"])[:Q], torch.cat(kept["ret1"])[:Q]
        c0, c1 = torch.cat(kept["c0"])[:Q], torch.cat(kept["c1"])[:Q]
        a0, a1, at = dual_group_advantages(ret0, ret1, dk.eps, cfg.grpo.advantage_clip)
        gap = correctness_gap(c0, c1, dk.gap)
        decisions = [r.get("context_decision") for r in rows] if dk.gating == "human" else None
        alpha, beta = gate(dk, gap, decisions, num_queries=Q)
        scaled = piecewise_scale(at.double(), alpha, beta).float().reshape(-1).to(self.device)
        g1 = r1 if dk.group1_prompt == "with_context" else rescored(r1, r0)
        under_p1 = rescored(r0, r1)
        T = cfg.sampling.temperature
        groups = []
        for ro, adv in ((r0, a0), (g1, a1)):
            ids, att, cmask = ro.input_ids, ro.attention_mask, ro.full_completion_mask
            old = token_logprobs(self.model, ids, att, cmask, T)
            ref = self.reference.logprobs(ids, att, cmask, T) if self.reference is not None else None
            groups.append((ids, att, cmask, old, ref, adv.reshape(-1).to(self.device), float(cmask.sum())))
        ent = token_entropy(self.model, r1.input_ids, r1.attention_mask, r1.full_completion_mask, T)
        m1 = r1.full_completion_mask
        stats.update({"kept_groups": float(Q), "acc_no_context": float(c0.mean()), "acc_with_context": float(c1.mean()),
                      "gap_mean": float(gap.mean()), "alpha_mean": float(alpha.mean()), "beta_mean": float(beta.mean()),
                      "union_advantage_mean": float(at.mean()), "scaled_mean": float(scaled.mean()),
                      "completion_length": float(torch.cat([r0.completion_lengths, r1.completion_lengths]).float()
                                                 .mean()),
                      "entropy": float((ent * m1).sum() / m1.sum().clamp_min(1))})
        rows_per_step = None if cfg.minibatch_size is None else max(1, cfg.minibatch_size // n) * n
        minibatches = []
        for s in _chunks(Q * n, rows_per_step):
            parts = [GroupMinibatch(ids[s], att[s], cm[s], old[s], None if ref is None else ref[s], adv[s], tokens)
                     for ids, att, cm, old, ref, adv, tokens in groups]
            minibatches.append(DualGroupMinibatch(parts[0], parts[1], under_p1.input_ids[s],
                                                  under_p1.attention_mask[s], under_p1.full_completion_mask[s],
                                                  scaled[s]))
        return RolloutPhase(minibatches, inner_steps=cfg.grpo.inner_steps, stats=stats)

    # ---- inner step -------------------------------------------------------------------------
    def forward(self, batch) -> TowerOutput:
        if isinstance(batch, DualGroupMinibatch):
            return self._dyknow_step(batch)
        return super().forward(batch)

    def _grpo_step(self, mb: GroupMinibatch) -> TowerOutput:
        raise TypeError("DyKnowJudge trains on dual-group minibatches (DualGroupMinibatch), not GRPO minibatches")

    def _policy_group(self, g: GroupMinibatch) -> PolicyGroup:
        logp = token_logprobs(self.model, g.input_ids, g.attention_mask, g.completion_mask,
                              self.cfg.sampling.temperature)
        return PolicyGroup(logp, g.old_logprobs, g.completion_mask, g.advantages, g.ref_logprobs, g.num_items)

    def _dyknow_step(self, mb: DualGroupMinibatch) -> TowerOutput:
        g0, g1 = self._policy_group(mb.no_context), self._policy_group(mb.with_context)
        if self.cfg.dyknow.inter_group == "off":
            logp_re = torch.zeros(mb.rescored_ids.shape, device=g0.logp.device)
        else:
            logp_re = token_logprobs(self.model, mb.rescored_ids, mb.rescored_attention, mb.rescored_mask,
                                     self.cfg.sampling.temperature)
        loss, stats = dyknow_loss(g0, g1, logp_re, mb.rescored_mask, mb.scaled, self.cfg.grpo, self.cfg.dyknow)
        return TowerOutput(torch.zeros(len(mb), device=loss.device), loss, stats=dict(stats))
