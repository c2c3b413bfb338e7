"""TaoSR-AGRL (methods.md section 4) on the MovieLens relevance task: rule-aware reward shaping
(RRS) and the pieces of adaptive guided replay (AGR) that know the task (hints, the violated rule).
The paper's full text was not available: its abstract states RRS and AGR, a summary a "hard gate";
every formula below is our reconstruction [I], each choice an option of `AGRLConfig`.

**Reward** of a completion o for a task row with gold grade y (`shaped_reward`):

    R = g * [w_y * r_label + sum_k w_k * r_step,k] + w_f * r_format

- r_format = 1 if o parses in the judge's format (`recis_relevance.formats.parse`), else 0; a
  malformed completion gets R = 0.
- r_label: `label_reward` "graded" = 1 - |y_hat - y| / 3, or "exact" = [y_hat == y].
- r_step,k, for each rule k the row checks (`recis_relevance.rationale.step_references`: genre,
  negation when the query excludes a genre, decade when it names one) = 1 if o has a step of rule k
  whose verdict is the gold verdict (`step_check` "verdict"), or that equals the gold step, words
  included ("exact"); a missing step scores 0, a step of a rule the row does not check is ignored.
- w_k = step_weight * rule_weights[k] / (sum of rule_weights over the row's rules) with
  `step_reduce` "mean" (every row's steps weigh step_weight in all), or step_weight *
  rule_weights[k] with "sum".
- g, the hard gate, is 0 iff the predicted grade exceeds the cap a hard rule puts on it. The cap of
  a set of verdicts over `hard_rules` is 1 if the genre or the negation verdict is "no" (the wanted
  genre missing, or the excluded genre present), else 2 if the decade verdict is "no", 3 if it is
  "near", else 4 (decade is a hard rule only when listed). `gate` "stated": the verdicts o states
  itself (o says the wanted genre is missing yet grades above 1); "gold": the row's gold verdicts;
  "either" (default): either one; "off": g = 1.

The maximum of R for a row is w_y + sum_k w_k + w_f (the gold completion gets it); a gated
completion gets w_f, whatever its label.

**Guided replay** (the tower `recis_relevance.judge_agrl.AGRLJudge`; generic parts in
`recis.rl.replay`): a group whose accuracy (the share of well-formed completions with the gold
grade) is <= tau_guide gets `guided` completions sampled from `guided_prompt` (the prompt plus one
line `hint: <L_y> <STEP> rule words verdict`: the gold label and the gold step of the rule the group
violated, `violated_rule`); they replace the group's lowest-reward completions and are trained
under the plain prompt. Deployment and evaluation prompts never carry a hint.

>>> row = {"genres": ["Comedy"], "year": 1995, "want_genre": "Comedy", "avoid_genre": None, "decade": 1990,
...        "label": 4}
>>> cfg = AGRLConfig()
>>> from recis_relevance.formats import parse
>>> shaped_reward(parse("post_cot", "<L4> <STEP> genre comedy present yes <STEP> decade 1990s year 1995 yes"),
...               row, cfg).reward
1.6
>>> shaped_reward(parse("post_cot", "<L4> <STEP> genre comedy missing no <STEP> decade 1990s year 1995 yes"),
...               row, cfg).reward   # the completion says the genre is missing, yet grades 4: gated
0.1
>>> AGRLConfig(rule_weights={"genre": 1.0, "color": 1.0})
Traceback (most recent call last):
...
ValueError: model.agrl.rule_weights: unknown rule(s) ['color'] (known: ['genre', 'negation', 'decade'])
"""
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

import torch

from recis.config_utils import bounded, check_types
from recis.rl import CORRECTIONS, check_choice

from recis_relevance.formats import GRADES, STEP, Parsed, label_token, parse
from recis_relevance.rationale import RULES, VERDICTS, rationale, step_references
from recis_relevance.task import row_value

__all__ = ["LABEL_REWARDS", "GATES", "STEP_CHECKS", "STEP_REDUCES", "GUIDES", "HINT_FIELD", "AGRLConfig", "Shaped",
           "label_reward", "grade_cap", "hard_gate", "step_weights", "shaped_reward", "score_completions",
           "violated_rule", "hint_text", "guided_prompt"]

#: r_label: graded by tier distance (1 - |y_hat - y| / 3), or exact match
LABEL_REWARDS = ("graded", "exact")
#: which verdicts the hard gate reads: the completion's own, the row's gold ones, either, or none
GATES = ("either", "stated", "gold", "off")
#: a step is right when its verdict is the gold verdict, or when it is the gold step word for word
STEP_CHECKS = ("verdict", "exact")
#: how the rule weights of a row's steps are normalized: to step_weight in all ("mean"), or not
STEP_REDUCES = ("mean", "sum")
#: what a guided rollout is: sampled from the hinted prompt, or the teacher's gold completion
GUIDES = ("hint", "gold")
#: the field name of the hint line of a guided prompt (never in a deployment prompt)
HINT_FIELD = "hint"
#: the cap a hard rule's verdict puts on the grade
_CAPS = {"genre": {"no": 1}, "negation": {"no": 1}, "decade": {"no": 2, "near": 3}}


def _rule_names(where: str, names, what: str = "rule(s)") -> None:
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ValueError(f"{where}: unknown {what} {unknown} (known: {list(RULES)})")


@dataclass
class AGRLConfig:
    """Options of TaoSR-AGRL (YAML: ``model: {objective: agrl, agrl: {...}}``). Every one is our
    choice [I] (the paper's values were not available). See the module doc for the formulas.

    Reward: `label_reward` graded | exact; `label_weight` w_y; `step_weight` (the steps' total
    weight under step_reduce "mean"); `rule_weights` (relative weight per rule; a rule left out
    weighs 1); `step_reduce` mean | sum; `step_check` verdict | exact; `format_weight` w_f; `gate`
    either | stated | gold | off; `hard_rules` (the rules the gate reads).

    Guided replay: `replay` (off: rule-aware rewards only); `tau_guide` (a group whose accuracy is
    <= it gets guided rollouts); `guided` (m, the guided rollouts per such group, <= the group
    size); `guide` hint (sampled from the prompt plus the hint) | gold (m copies of the teacher's
    gold completion: what a policy that follows the hint perfectly would write; for a small model
    trained from scratch, which has never seen a hint); `correction` none (old log-probs under the plain prompt: the standard clip only) |
    behavior (old log-probs under the hinted prompt that generated them: the importance ratio
    pi(o | x) / pi_old(o | x + hint), clipped by the same clip)."""

    label_reward: str = "graded"
    label_weight: float = bounded(1.0, ge=0)
    step_weight: float = bounded(0.5, ge=0)
    rule_weights: Dict[str, float] = bounded(default_factory=dict, ge=0)
    step_reduce: str = "mean"
    step_check: str = "verdict"
    format_weight: float = bounded(0.1, ge=0)
    gate: str = "either"
    hard_rules: Tuple[str, ...] = ("genre", "negation")
    replay: bool = True
    tau_guide: float = bounded(0.25, ge=0, le=1)
    guided: int = bounded(2, ge=1)
    guide: str = "hint"
    correction: str = "none"

    def __post_init__(self):
        where = "model.agrl"
        if isinstance(self.hard_rules, list):
            self.hard_rules = tuple(self.hard_rules)
        check_types(self, where)
        check_choice(f"{where}.label_reward", self.label_reward, LABEL_REWARDS)
        check_choice(f"{where}.step_reduce", self.step_reduce, STEP_REDUCES)
        check_choice(f"{where}.step_check", self.step_check, STEP_CHECKS)
        check_choice(f"{where}.gate", self.gate, GATES)
        check_choice(f"{where}.guide", self.guide, GUIDES)
        check_choice(f"{where}.correction", self.correction, CORRECTIONS)
        if self.guide == "gold" and self.correction == "behavior":
            raise ValueError(f"{where}.correction 'behavior' needs guide 'hint' (a gold completion was not sampled "
                             "from a policy, so it has no behavior log-probs)")
        _rule_names(f"{where}.rule_weights", list(self.rule_weights))
        _rule_names(f"{where}.hard_rules", list(self.hard_rules))
        if len(set(self.hard_rules)) != len(self.hard_rules):
            raise ValueError(f"{where}.hard_rules lists a rule twice: {list(self.hard_rules)}")

    def weight(self, rule: str) -> float:
        return float(self.rule_weights.get(rule, 1.0))


class Shaped(NamedTuple):
    """One completion's reward and its parts: R, r_label, the weighted step sum sum_k w_k r_step,k,
    r_format, the gate g, and whether it is correct (well formed with the gold grade)."""

    reward: float
    label: float
    steps: float
    format: float
    gate: int
    correct: bool


def label_reward(predicted: int, gold: int, mode: str = "graded") -> float:
    """r_label: 1 - |predicted - gold| / 3 ("graded") or [predicted == gold] ("exact").

    >>> [label_reward(p, 4) for p in (4, 3, 2, 1)]
    [1.0, 0.6666666666666667, 0.33333333333333337, 0.0]
    """
    check_choice("label_reward", mode, LABEL_REWARDS)
    if mode == "exact":
        return float(predicted == gold)
    return 1.0 - abs(int(predicted) - int(gold)) / (GRADES[-1] - GRADES[0])


def grade_cap(verdicts: Mapping[str, str], hard_rules: Sequence[str]) -> int:
    """The highest grade the verdicts of the hard rules allow (see the module doc).

    >>> grade_cap({"genre": "yes", "decade": "near"}, ("genre", "negation")), \
grade_cap({"genre": "yes", "decade": "near"}, ("genre", "decade"))
    (4, 3)
    """
    caps = [_CAPS[r].get(verdicts.get(r), GRADES[-1]) for r in hard_rules]
    return min(caps, default=GRADES[-1])


def hard_gate(parsed: Parsed, references: Mapping[str, str], cfg: AGRLConfig) -> int:
    """g: 0 when the completion's grade exceeds the cap of the verdicts the gate reads, else 1
    (1 for a malformed completion, whose reward is 0 anyway)."""
    if parsed.malformed or cfg.gate == "off":
        return 1
    stated = {s.rule: s.verdict for s in parsed.steps}
    over_stated = parsed.grade > grade_cap(stated, cfg.hard_rules)
    over_gold = parsed.grade > grade_cap(references, cfg.hard_rules)
    fired = {"stated": over_stated, "gold": over_gold, "either": over_stated or over_gold}[cfg.gate]
    return 0 if fired else 1


def step_weights(references: Mapping[str, str], cfg: AGRLConfig) -> Dict[str, float]:
    """w_k for each rule the row checks (see the module doc)."""
    raw = {r: cfg.weight(r) for r in references}
    total = sum(raw.values())
    if cfg.step_reduce == "sum":
        return {r: cfg.step_weight * w for r, w in raw.items()}
    return {r: cfg.step_weight * w / total if total > 0 else 0.0 for r, w in raw.items()}


def shaped_reward(parsed: Parsed, row: Mapping, cfg: AGRLConfig) -> Shaped:
    """R and its parts for a parsed completion of a task row (columns genres, year, want_genre,
    avoid_genre, decade, label)."""
    gold = int(row_value(row, "label"))
    if parsed.malformed:
        return Shaped(0.0, 0.0, 0.0, 0.0, 1, False)
    references = step_references(row)
    stated = {s.rule: s for s in parsed.steps}
    if cfg.step_check == "exact":
        gold_steps = {s.rule: s for s in rationale(row)}
        right = {r: stated.get(r) == gold_steps[r] for r in references}
    else:
        right = {r: r in stated and stated[r].verdict == v for r, v in references.items()}
    steps = sum(w * float(right[r]) for r, w in step_weights(references, cfg).items())
    r_label = label_reward(parsed.grade, gold, cfg.label_reward)
    g = hard_gate(parsed, references, cfg)
    total = g * (cfg.label_weight * r_label + steps) + cfg.format_weight * 1.0
    return Shaped(float(total), r_label, float(steps), 1.0, g, parsed.grade == gold)


def score_completions(fmt: str, texts: Sequence[str], rows: Sequence[Mapping], cfg: AGRLConfig):
    """(rewards float32 [N], correct float32 [N], the Shaped of each, the Parsed of each) of N
    completions, completion i answering rows[i]."""
    if len(texts) != len(rows):
        raise ValueError(f"{len(texts)} completions but {len(rows)} rows")
    parsed = [parse(fmt, t) for t in texts]
    shaped = [shaped_reward(p, r, cfg) for p, r in zip(parsed, rows)]
    rewards = torch.tensor([s.reward for s in shaped], dtype=torch.float32)
    correct = torch.tensor([float(s.correct) for s in shaped], dtype=torch.float32)
    return rewards, correct, shaped, parsed


def _decisive_first(references: Mapping[str, str]) -> List[str]:
    """The row's rules, the first one whose gold verdict is not its best first (the rule that sets
    the gold grade below 4), then the others in step order."""
    rules = list(references)
    decisive = [r for r in rules if references[r] != VERDICTS[r][0]][:1]
    return decisive + [r for r in rules if r not in decisive]


def violated_rule(parsed: Sequence[Parsed], row: Mapping) -> str:
    """The rule a group of completions for a row got wrong most often: per rule the row checks,
    the completions that do not state its gold verdict (a malformed one, or one without that step,
    counts as wrong); ties go to the rule that sets the gold grade, then step order [I].

    >>> row = {"genres": ["Comedy"], "year": 1988, "want_genre": "Comedy", "avoid_genre": None, "decade": 1990,
    ...        "label": 3}
    >>> violated_rule([parse("label_only", "<L4>")] * 2, row)   # no steps stated: the decisive rule
    'decade'
    """
    references = step_references(row)
    wrong = {r: 0 for r in references}
    for p in parsed:
        stated = {s.rule: s.verdict for s in p.steps}
        for r, v in references.items():
            wrong[r] += stated.get(r) != v
    order = _decisive_first(references)
    return max(order, key=lambda r: (wrong[r], -order.index(r)))


def hint_text(row: Mapping, rule: str) -> str:
    """The hint line of a row: the gold label token and the gold step of `rule`.

    >>> hint_text({"genres": ["Comedy"], "year": 1988, "want_genre": "Comedy", "avoid_genre": None,
    ...            "decade": 1990, "label": 3}, "decade")
    'hint: <L3> <STEP> decade 1990s year 1988 near'
    """
    steps = {s.rule: s for s in rationale(row)}
    if rule not in steps:
        raise ValueError(f"rule {rule!r} is not checked on this row (its rules: {list(steps)})")
    s = steps[rule]
    return f"{HINT_FIELD}: {label_token(int(row_value(row, 'label')))} " + " ".join((STEP, s.rule) + s.words +
                                                                                   (s.verdict,))


def guided_prompt(prompt: str, row: Mapping, rule: str) -> str:
    """The guided prompt: the prompt, then the hint line (`hint_text`)."""
    return f"{prompt}\n{hint_text(row, rule)}"
