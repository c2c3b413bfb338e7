"""The TaoSR-AGRL stage of the generative judge (objective agrl; methods.md section 4): GRPO on
rule-aware shaped rewards with adaptive guided replay. Formulas and options:
`recis_relevance.agrl` (the reward, hints) and `recis.rl.replay` (the replay's generic parts).

One rollout (`AGRLJudge.rollout`), per training batch of B rows:

1. G completions per row from the current policy under the plain prompt x; each is parsed and
   gets its shaped reward R and its correctness (well formed with the gold grade).
2. Groups whose accuracy is <= agrl.tau_guide (`recis.rl.guide_mask`) get m = agrl.guided
   completions sampled from the guided prompt x + hint (the gold label and the gold step of the
   rule the group violated most, `agrl.violated_rule`), from the same seeded generator (guide
   hint), or are m copies of the teacher's gold completion (guide gold); they are scored like the
   others and replace the group's m lowest-reward completions
   (`recis.rl.worst_rollouts`, `recis.towers.generation.splice_rows`), now after the plain
   prompt x (`reprompt`).
3. Group-relative advantages of R (`recis.rl.group_advantages`, the grpo options), the old
   log-probs of every row under x (correction none) or, for the replacements, under x + hint
   (correction behavior, `recis.rl.replay_old_logprobs`), the reference's, and minibatches of
   the clipped GRPO loss (`GRPOJudge._grpo_step`): the loss trains the policy on x alone.

Hints exist only inside step 2: `prompts` (what evaluation and deployment decode) is the plain
prompt. Dynamic sampling is not an AGRL option (guided replay is its answer to all-wrong groups).
"""
from typing import List

import torch

from recis.rl import group_advantages, guide_mask, replay_old_logprobs, worst_rollouts
from recis.towers import RolloutPhase
from recis.towers.generation import Rollout, reprompt, sample_groups, splice_rows, token_logprobs
from recis.towers.lm_tokens import encode_prompts

from recis_relevance.agrl import guided_prompt, score_completions, violated_rule
from recis_relevance.judge_rl import GRPOJudge

__all__ = ["AGRLJudge"]


class AGRLJudge(GRPOJudge):
    """TaoSR-AGRL (see the module docstring)."""

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        G, m = self.cfg.sampling.group_size, self.cfg.agrl.guided
        if m > G:
            raise ValueError(f"model.agrl.guided ({m}) exceeds model.sampling.group_size ({G}): guided rollouts "
                             "replace rollouts of the group")
        #: replay counts of this process's rollouts (not checkpointed): rollouts, groups,
        #: guided_groups, guided_rows, guided_correct
        self.totals = {k: 0 for k in ("rollouts", "groups", "guided_groups", "guided_rows", "guided_correct")}

    def _score(self, texts: List[str], rows):
        return score_completions(self.cfg.format, texts, rows, self.cfg.agrl)

    def guided_rollouts(self, rows, prompts, parsed, fire: torch.Tensor) -> Rollout:
        """m guided completions for each firing group, in group order: sampled from the guided
        prompts (guide hint), or the gold completion m times after the plain prompt (guide gold)."""
        G, m = self.cfg.sampling.group_size, self.cfg.agrl.guided
        groups = fire.nonzero().squeeze(1).tolist()
        if self.cfg.agrl.guide == "gold":
            plain = [prompts[i] for i in groups for _ in range(m)]
            gold = self.gold([rows[i] for i in groups for _ in range(m)])
            enc = self.encode(plain, gold)
            P = encode_prompts(self.tokenizer, plain, self.cfg.max_prompt_length)["input_ids"].shape[1]
            completion = enc["input_ids"][:, P:]
            return Rollout(enc["input_ids"][:, :P], enc["attention_mask"][:, :P], completion,
                           enc["completion_mask"][:, P:], torch.zeros(completion.shape, device=completion.device),
                           torch.tensor(groups, device=completion.device).repeat_interleave(m), m)
        hinted = [guided_prompt(prompts[i], rows[i], violated_rule(parsed[i * G:(i + 1) * G], rows[i]))
                  for i in groups]
        s = self.cfg.sampling
        enc = encode_prompts(self.tokenizer, hinted, self.cfg.max_prompt_length)
        donor = sample_groups(self.model, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), m,
                              s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, generator=self.generator,
                              eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        return donor

    def rollout(self, batch, refill) -> RolloutPhase:
        cfg, agrl = self.cfg, self.cfg.agrl
        rows = self.rows(batch)
        prompts = self.prompts(rows)
        r = self.sample(prompts)
        B, G, m = len(rows), r.group_size, agrl.guided
        texts = self.decode(r.completion_ids, r.completion_mask)
        flat_rewards, flat_correct, shaped, parsed = self._score(texts, [rows[i // G] for i in range(B * G)])
        rewards, correct = flat_rewards.view(B, G).clone(), flat_correct.view(B, G).clone()
        stats = {"reward_mean": float(flat_rewards.mean()), "accuracy": float(flat_correct.mean()),
                 "malformed_fraction": sum(p.malformed for p in parsed) / len(parsed),
                 "gated_fraction": sum(s.gate == 0 for s in shaped) / len(shaped),
                 "step_reward_mean": sum(s.steps for s in shaped) / len(shaped)}
        fire = guide_mask(correct, agrl.tau_guide) if agrl.replay else torch.zeros(B, dtype=torch.bool)
        guided = torch.zeros(B * G, dtype=torch.bool)
        behavior_rows, targets = None, None
        if bool(fire.any()):
            donor = self.guided_rollouts(rows, prompts, parsed, fire)
            groups = fire.nonzero().squeeze(1)
            donor_rows = [rows[int(groups[j // m])] for j in range(len(donor))]
            d_rewards, d_correct, _, _ = self._score(self.decode(donor.completion_ids, donor.completion_mask),
                                                     donor_rows)
            targets = (groups[:, None] * G + worst_rollouts(rewards, fire, m)).reshape(-1)
            # the guided completions after the plain prompt of the row they replace
            unguided = reprompt(donor, r.prompt_ids[targets], r.prompt_mask[targets])
            behavior_rows = donor
            r = splice_rows(r, targets, unguided, self.pad_id)
            rewards.view(-1)[targets] = d_rewards
            correct.view(-1)[targets] = d_correct
            guided[targets] = True
            stats.update({"guided_accuracy": float(d_correct.mean()), "guided_reward_mean": float(d_rewards.mean())})
        self.totals["rollouts"] += 1
        self.totals["groups"] += B
        self.totals["guided_groups"] += int(fire.sum())
        self.totals["guided_rows"] += int(guided.sum())
        self.totals["guided_correct"] += int(correct.view(-1)[guided].sum())
        stats.update({"guided_groups": float(fire.sum()), "guided_fraction": float(fire.float().mean()),
                      "replay_accuracy": float(correct.mean())})
        adv = group_advantages(rewards, std=cfg.grpo.std, scale=cfg.grpo.scale, eps=cfg.grpo.std_eps,
                               clip=cfg.grpo.advantage_clip).reshape(-1)
        stats["reward_std"] = float(rewards.std(1, unbiased=False).mean())
        rewrite = None
        if behavior_rows is not None and agrl.correction == "behavior":
            def rewrite(old):
                # the replacements' tokens under the hinted prompt that generated them, in x's layout
                d = behavior_rows
                under_hint = token_logprobs(self.model, d.input_ids, d.attention_mask, d.full_completion_mask,
                                            cfg.sampling.temperature)
                behavior = old.clone()
                P, C = r.prompt_ids.shape[1], d.completion_ids.shape[1]
                behavior[targets.to(old.device), P:P + C] = under_hint[:, d.prompt_ids.shape[1]:]
                return replay_old_logprobs(old, behavior, guided.to(old.device), "behavior")
        return self.group_phase(r, adv, stats, rewrite)
