"""TaoSR-SHE's RL stage of the generative judge (objective she): GRPO with step-level credit (SRPO)
and the diversified filter (methods.md section 5; `recis_relevance.she` for the step rewards,
`recis_relevance.she_curriculum` for the stages).

A rollout samples G completions per training row from the current policy, as GRPO does, and
scores each one's outcome (1 for a well-formed completion with the gold grade, else 0). Then:

1. its steps are the token runs opened by the step separator (`recis.rl.step_index`; the label
   token and the end-of-sequence token close a step);
2. the diversified filter keeps a group iff ``she.low < accuracy < she.high`` and its
   completions follow at least ``she.min_paths`` distinct reasoning paths (step-verdict patterns
   or token sequences, ``she.paths``); dropped groups are replaced from the training data;
3. each kept step gets a reward in [0, 1]: the offline verifier's where it covers the step,
   else the step judge's (`recis_relevance.she.score_steps`);
4. the critical steps are the first incorrect step of a wrong completion and, in a correct one,
   the steps ``she.decisive`` names; the token advantages are
   ``A_out + she.lam * c * Ahat_step`` (`recis.rl.srpo_advantages`, GRPO's std options);
5. the loss is GRPO's clipped surrogate (with its KL) on those per-token advantages.

With ``she.lam = 0`` and the filter off (``she.filtering: false``) the stage is GRPO's.
"""
from typing import Dict, List

import torch

from recis.rl import (critical_steps, difficulty_mask, distinct_paths, diversity_mask, group_advantages, path_ids,
                      srpo_advantages, step_counts, step_index)
from recis.towers import RolloutPhase
from recis.towers.generation import Rollout, cat_rollouts

from recis_relevance.formats import STEP, tokens
from recis_relevance.judge_rl import GRPOJudge, collect_groups
from recis_relevance.rationale import step_references
from recis_relevance.she import LMStepJudge, ScriptedStepJudge, Verifier, score_steps

__all__ = ["SHEJudge"]


class SHEJudge(GRPOJudge):
    """GRPO with SRPO's step-level token advantages and the diversified filter (module docstring)."""

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        she = self.cfg.she
        if she is None:
            raise ValueError("model.she is required with objective she")
        self.verifier = Verifier.from_config(she)
        if she.judge == "scripted":
            self.step_judge = ScriptedStepJudge(she.judge_error, she.judge_seed)
        else:  # a plain attribute, not a submodule: never trained, never saved
            self.step_judge = LMStepJudge.from_config(she, max_prompt_length=2 * self.cfg.max_prompt_length)
        step_id = self.tokenizer.convert_tokens_to_ids(STEP)
        if step_id is None or self.tokenizer.convert_ids_to_tokens(step_id) != STEP:
            raise ValueError(f"model.tokenizer: the step separator {STEP!r} is not one token")
        self.step_id = int(step_id)
        self.stop_ids = tuple(self.label_ids) + (int(self.eos_id),)

    def generators(self) -> Dict[str, torch.Generator]:
        g = dict(super().generators())
        if isinstance(self.step_judge, ScriptedStepJudge):
            g["she_judge"] = self.step_judge.generator
        return g

    # ---- steps -------------------------------------------------------------------------------
    def step_words(self, r: Rollout) -> List[List[List[str]]]:
        """The words of each step of each completion (after its separator), from the token
        segmentation."""
        index = step_index(r.completion_ids, r.completion_mask, self.step_id, self.stop_ids)
        out = []
        for ids, idx in zip(r.completion_ids.tolist(), index.tolist()):
            steps: List[List[int]] = []
            for t, k in zip(ids, idx):
                if k < 0:
                    continue
                if k == len(steps):
                    steps.append([])  # the separator opens step k; its own token is not a word
                else:
                    steps[k].append(t)
            out.append([list(tokens(self.tokenizer.decode(s, skip_special_tokens=True))) for s in steps])
        return out

    def path_ids(self, r: Rollout, words: List[List[List[str]]]) -> torch.Tensor:
        """[N] reasoning-path ids: equal step-verdict patterns (rule and verdict of each step, a
        malformed step its own symbol) or equal completion tokens (she.paths)."""
        if self.cfg.she.paths == "tokens":
            return path_ids(r.completion_ids, r.completion_mask.bool())
        codes: Dict[tuple, int] = {}
        patterns = [[codes.setdefault((s[0], s[-1]) if s else ("",), len(codes)) for s in ws] for ws in words]
        K = max((len(p) for p in patterns), default=0)
        grid = torch.tensor([p + [-1] * (K - len(p)) for p in patterns], dtype=torch.long).view(len(patterns), K)
        return path_ids(grid, grid >= 0)

    # ---- rollout -----------------------------------------------------------------------------
    def rollout(self, batch, refill) -> RolloutPhase:
        cfg, she = self.cfg, self.cfg.she
        rows = self.rows(batch)
        want = len(rows)
        n = {"sampled": 0, "malformed": 0, "reward": 0.0, "groups": 0, "paths": 0, "difficulty": 0, "diversity": 0}

        def sample(rows):
            r, rewards, bad = self._sample_scored(rows)
            G = r.group_size
            words = self.step_words(r)
            paths = self.path_ids(r, words).view(len(rows), G).to(rewards.device)
            n["sampled"] += rewards.numel()
            n["malformed"] += bad
            n["reward"] += float(rewards.sum())
            n["groups"] += len(rows)
            n["paths"] += int(distinct_paths(paths).sum())
            if she.filtering:
                hard = difficulty_mask(rewards, she.low, she.high)
                keep = diversity_mask(rewards, paths, she.low, she.high, she.min_paths)
                n["difficulty"] += int((~hard).sum())
                n["diversity"] += int((hard & ~keep).sum())
            else:
                keep = torch.ones(len(rows), dtype=torch.bool, device=rewards.device)
            part = (r.index_select(keep.repeat_interleave(G)), rewards[keep],
                    [row for row, k in zip(rows, keep.tolist()) if k],
                    [w for i, w in enumerate(words) if keep[i // G]])
            return part, int(keep.sum())

        kept, refills = collect_groups(rows, want, sample, refill, self.rows,
                                       she.max_refills if she.filtering else None)
        dropped = n["difficulty"] + n["diversity"]
        stats = {"reward_mean": n["reward"] / max(n["sampled"], 1),
                 "malformed_fraction": n["malformed"] / max(n["sampled"], 1),
                 "dropped_groups": float(dropped), "dropped_fraction": dropped / max(n["groups"], 1),
                 "dropped_low_diversity": float(n["diversity"]), "refills": float(refills),
                 "distinct_paths": n["paths"] / max(n["groups"], 1)}
        if not kept:
            stats["kept_groups"] = 0.0
            return RolloutPhase([], inner_steps=cfg.grpo.inner_steps, stats=stats)
        rewards = torch.cat([p[1] for p in kept])[:want]
        B, G = rewards.shape
        ro = cat_rollouts([p[0] for p in kept], self.pad_id).index_select(torch.arange(B * G))
        kept_rows = [row for p in kept for row in p[2]][:B]
        kept_words = [w for p in kept for w in p[3]][:B * G]
        adv, step_stats = self.advantages(ro, rewards, kept_rows, kept_words)
        stats.update(step_stats)
        stats.update({"kept_groups": float(B), "kept_reward_std": float(rewards.std(1, unbiased=False).mean())})
        return self.group_phase(ro, adv, stats)

    def advantages(self, ro: Rollout, rewards: torch.Tensor, rows, words):
        """Token advantages [N, P + C] over the rollout's sequences (the prompt's columns carry
        the outcome advantage; the completion mask leaves them out of the loss) and step stats."""
        she, grpo = self.cfg.she, self.cfg.grpo
        B, G = rewards.shape
        N = B * G
        per = [rows[i // G] for i in range(N)]
        if isinstance(self.step_judge, LMStepJudge):
            self.step_judge.to(self.device)  # follows the policy (it is not a submodule)
        scores = score_steps(per, words, self.verifier, self.step_judge)
        index = step_index(ro.completion_ids, ro.completion_mask, self.step_id, self.stop_ids)
        counts = step_counts(index).tolist()
        assert counts == [len(w) for w in scores.rewards], "step segmentation changed between sampling and scoring"
        K = max(counts, default=0)
        dev = rewards.device
        step_r = torch.zeros(N, K, dtype=torch.float32)
        here = torch.zeros(N, K, dtype=torch.bool)
        decisive = torch.zeros(N, K, dtype=torch.bool)
        for i, (rs, src) in enumerate(zip(scores.rewards, scores.sources)):
            for k, (x, s) in enumerate(zip(rs, src)):
                step_r[i, k], here[i, k] = x, True
                decisive[i, k] = {"verified": s == "verifier", "flagged": s == "verifier" and x < 0.5,
                                  "all": True, "none": False}[she.decisive]
        right = rewards.reshape(-1).cpu() > 0.5
        correct = step_r > 0.5
        critical = critical_steps(correct, here, right, decisive)
        adv = srpo_advantages(rewards.cpu(), step_r.view(B, G, K), here.view(B, G, K), critical, index.cpu(),
                              lam=she.lam, baseline=she.baseline, std=grpo.std, scale=grpo.scale, eps=grpo.std_eps,
                              clip=grpo.advantage_clip)
        a_out = group_advantages(rewards.cpu(), std=grpo.std, scale=grpo.scale, eps=grpo.std_eps,
                                 clip=grpo.advantage_clip).reshape(N, 1)
        P = ro.prompt_ids.shape[1]
        full = torch.cat([a_out.expand(N, P), adv], 1).to(dev)
        counts_by = scores.counts()
        steps = max(sum(counts_by.values()), 1)
        judged = [(per[i], v, x) for i in range(N) for v, s, x in zip(scores.verdicts[i], scores.sources[i],
                                                                          scores.rewards[i]) if s == "judge"]
        agree = sum(float((step_references(row).get(v[0]) == v[1]) == (x > 0.5)) for row, v, x in judged)
        m = ro.completion_mask.bool().cpu()
        base = a_out.expand_as(adv)
        stats = {"steps_per_completion": sum(counts) / max(N, 1), "verifier_share": counts_by["verifier"] / steps,
                 "malformed_step_share": counts_by["malformed"] / steps,
                 "step_reward_mean": float(step_r[here].mean()) if bool(here.any()) else 0.0,
                 "critical_share": float(critical[here].float().mean()) if bool(here.any()) else 0.0,
                 "judge_accuracy": agree / len(judged) if judged else 1.0,
                 "step_term_abs": float((adv - base).abs()[m].mean()) if bool(m.any()) else 0.0}
        return full, stats
