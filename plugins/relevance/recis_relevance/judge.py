"""A generative relevance judge: a causal LM reads a (query, item) prompt and writes the grade
token (and a rationale) of `recis_relevance.formats`. This module holds what every stage shares:
building the policy and its tokenizer, the prompts and gold completions of a batch, supervised
CoT fine-tuning (the `sft` objective) and deployment decoding. The preference and RL stages
(`dpo`, `grpo`) are in `recis_relevance.judge_rl`; `JudgeTower.from_features` builds the class of
the configured objective, so one YAML name (``model: {name: relevance_judge, objective: ...}``)
serves every stage, and each stage loads the previous one's weights (checkpoint.init_from).

Deployment (TaoSR1's post-CoT): the label is the first completion token, so label-only decoding
runs the prompt once and reads the four label tokens' probabilities p there (no rationale is
generated); the grade is argmax p or CumPT's tier with one threshold tau
(`recis_relevance.cumpt`), and Σ k p_k is the ranking score.
"""
import functools
import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from recis.towers import FeatureInfo, Tower, TowerOutput, apply_lora, resolve_model
from recis.towers.causal_lm import load_causal_lm, load_lm_tokenizer
from recis.towers.generation import position_ids, sample_groups, token_logprobs
from recis.towers.lm_tokens import encode_completions, encode_prompts, pad_token_id, word_tokenizer
from recis.towers.text import column

from recis_relevance.cumpt import cumpt_tier, label_probs, ranking_score
from recis_relevance.formats import (CONTEXT_FORMATS, GRADES, LABEL_TOKENS, RESERVED_TOKENS, TOKEN_TEXT,
                                     gold_completion, parse)
from recis_relevance.judge_config import JudgeConfig
from recis_relevance.prompts import catalogue_vocabulary, prompt_of
from recis_relevance.retrieval import CONTEXT_COLUMNS

__all__ = ["JudgeTower", "ROW_COLUMNS", "CONTEXT_COLUMNS", "movielens_tokenizer", "context_columns_needed"]

#: the pass-through columns a judge reads: the prompt's fields, and the query parts the teacher's
#: rationale checks (recis_relevance.rationale)
ROW_COLUMNS = ("query", "title", "year", "genres", "want_genre", "avoid_genre", "decade")
PROMPT_COLUMNS = ROW_COLUMNS[:4]


def context_columns_needed(cfg: JudgeConfig) -> List[str]:
    """The retrieval test bed's pass-through columns a judge config reads: `chunk` for the
    with-context prompt (and objective dyknow, which samples under both prompts),
    `context_decision` for a context format's gold completion (and DyKnow's human gating). (A row
    carries every CONTEXT_COLUMNS column its batch has.)"""
    need = ["chunk"] if cfg.prompt == "with_context" or cfg.objective == "dyknow" else []
    human = cfg.objective == "dyknow" and cfg.dyknow.gating == "human"
    return need + (["context_decision"] if cfg.format in CONTEXT_FORMATS or human else [])


@functools.lru_cache(maxsize=1)
def movielens_tokenizer():
    """The word tokenizer over the MovieLens catalogue's vocabulary (every prompt and gold
    completion any task of the catalogue can hold) and the formats' reserved tokens."""
    from recis_relevance.task import movielens_items

    return word_tokenizer(catalogue_vocabulary(movielens_items()), RESERVED_TOKENS)


def _tokenizer(cfg: JudgeConfig, policy):
    if cfg.tokenizer == "movielens":
        return movielens_tokenizer()
    if cfg.tokenizer is None:
        if not isinstance(policy, str):
            raise ValueError("model.tokenizer: a policy built from a config has no tokenizer of its own; give "
                             "tokenizer: movielens or a {words, reserved} spec")
        return load_lm_tokenizer(policy)
    spec = cfg.tokenizer
    return load_lm_tokenizer(resolve_model(spec, needed=()) if isinstance(spec, str) else spec)


def _eos_id(model, tokenizer, pretrained: bool) -> Optional[int]:
    """The token a completion ends with: a pretrained model's generation-config eos (SmolLM2's
    GGUF tokenizer names another token its eos), else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if pretrained else None
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return int(eos) if eos is not None else tokenizer.eos_token_id


class JudgeTower(Tower):
    """The judge with the `sft` objective (and the base of the dpo / grpo stages).

    Training batches are rows of the relevance task (`recis_relevance.task.build_task`; the
    pass-through columns ROW_COLUMNS and the grade label); SFT minimizes the mean negative
    log-likelihood of the teacher's completion tokens (`gold_completion` in `format`). In eval
    mode the tower decodes (`eval_decoding`) and returns the grade as `predicted`, the NLL of the
    gold grade under the label probabilities as the loss, and P(grade >= relevant_grade) as the
    metrics' probability."""

    def __init__(self, config: Optional[JudgeConfig] = None, **options):
        super().__init__()
        cfg = config if config is not None else JudgeConfig.from_options(options)
        self.cfg = cfg
        policy = resolve_model(cfg.policy, needed=()) if isinstance(cfg.policy, str) else cfg.policy
        self.tokenizer = _tokenizer(cfg, policy)
        if isinstance(policy, dict):  # a model trained from scratch: its vocabulary is the tokenizer's
            policy = {**policy, "config": {"vocab_size": len(self.tokenizer), **policy.get("config", {})}}
        self.model, source = load_causal_lm(policy)
        self._add_reserved_tokens()
        self.label_ids = self._label_ids()
        self.eos_id = _eos_id(self.model, self.tokenizer, pretrained=isinstance(policy, str))
        if self.eos_id is None:
            raise ValueError(f"model.tokenizer {type(self.tokenizer).__name__} has no eos token (completions end at it)")
        self.pad_id = pad_token_id(self.tokenizer)
        if cfg.lora is not None:
            lora = dict(cfg.lora)
            apply_lora(self.model, targets=lora.pop("targets", ["q_proj", "v_proj"]), **lora)
            self.declare("policy", self.model, "adapter", source=source)
        else:
            self.declare("policy", self.model, "dense", source=source)
        self.generator = torch.Generator().manual_seed(cfg.sampling.seed)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "JudgeTower":
        cfg = JudgeConfig.from_options(args)
        want = list(ROW_COLUMNS) + context_columns_needed(cfg)
        missing = [c for c in want if c not in features.passthrough]
        if missing:
            raise ValueError(f"relevance_judge reads the pass-through columns {want}; the features lack "
                             f"{missing} (add {{name: ..., kind: passthrough, column: ...}} for each; the retrieval "
                             "test bed's columns come from a task built with a retriever: build_task(context=...))")
        from recis_relevance.judge_agrl import AGRLJudge
        from recis_relevance.judge_dyknow import DyKnowJudge
        from recis_relevance.judge_rl import DPOJudge, GRPOJudge
        from recis_relevance.judge_she import SHEJudge

        return {"sft": JudgeTower, "dpo": DPOJudge, "grpo": GRPOJudge, "dyknow": DyKnowJudge,
                "agrl": AGRLJudge, "she": SHEJudge}[cfg.objective](cfg)

    # ---- tokens ---------------------------------------------------------------------------
    def _add_reserved_tokens(self) -> None:
        """A pretrained tokenizer learns the formats' reserved tokens as added tokens, and the
        model's embeddings grow to hold them. Each new row starts as the mean embedding of the
        text the token stands for (`formats.TOKEN_TEXT`: "<L3>" starts as "3"), so a LoRA-adapted
        frozen base, which cannot move those rows, can still tell the labels apart and learns to
        write them like the digits it knows [I]; the same rows in every stage."""
        have = self.tokenizer.get_vocab()
        new = [t for t in RESERVED_TOKENS if t not in have]
        meaning = {t: self.tokenizer(TOKEN_TEXT[t], add_special_tokens=False)["input_ids"] for t in new}
        if new:
            self.tokenizer.add_tokens(new)
        size = self.model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > size:
            if not new:
                raise ValueError(f"the tokenizer has {len(self.tokenizer)} tokens but the policy's vocab_size is {size}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        rows = [(self.tokenizer.convert_tokens_to_ids(t), ids) for t, ids in meaning.items() if ids]
        with torch.no_grad():
            for embeddings in (self.model.get_input_embeddings(), self.model.get_output_embeddings()):
                for row, ids in rows if embeddings is not None else ():
                    embeddings.weight[row] = embeddings.weight[ids].mean(0)

    def _label_ids(self) -> List[int]:
        ids = self.tokenizer.convert_tokens_to_ids(list(LABEL_TOKENS))
        for token, i in zip(LABEL_TOKENS, ids):
            if i is None or i == self.tokenizer.unk_token_id or self.tokenizer.convert_ids_to_tokens(i) != token:
                raise ValueError(f"label token {token!r} is not a single token of the tokenizer")
        return list(ids)

    # ---- batches --------------------------------------------------------------------------
    @staticmethod
    def rows(batch) -> List[Dict[str, Any]]:
        """The task rows of a feature-engine batch (ROW_COLUMNS, the CONTEXT_COLUMNS the batch
        has, and the grade `label`)."""
        extras = getattr(batch, "extras", None) or {}
        cols = {c: column(batch, c) for c in ROW_COLUMNS + tuple(c for c in CONTEXT_COLUMNS if c in extras)}
        labels = getattr(batch, "labels", None)
        if labels is None or isinstance(labels, dict):
            raise ValueError("relevance_judge needs one grade label column (1..4)")
        grades = [int(round(float(x))) for x in labels]
        bad = [g for g in grades if g not in GRADES]
        if bad:
            raise ValueError(f"relevance_judge: labels must be grades {list(GRADES)}, found {sorted(set(bad))[:5]}")
        return [{**{c: v[i] for c, v in cols.items()}, "label": grades[i]} for i in range(len(grades))]

    def prompts(self, rows: Sequence[Mapping]) -> List[str]:
        """The prompt of each row that `model.prompt` picks (full, no_context or with_context)."""
        return [prompt_of(self.cfg.prompt, r) for r in rows]

    def gold(self, rows: Sequence[Mapping]) -> List[str]:
        return [gold_completion(self.cfg.format, r) for r in rows]

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> Dict[str, torch.Tensor]:
        enc = encode_completions(self.tokenizer, prompts, completions, self.cfg.max_prompt_length,
                                 self.cfg.max_completion_length, eos_token_id=self.eos_id)
        return {k: v.to(self.device) for k, v in enc.items()}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def sequence_logprobs(self, enc: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Σ over completion tokens of the policy's log-probs ([N]; with gradients)."""
        return token_logprobs(self.model, enc["input_ids"], enc["attention_mask"], enc["completion_mask"]).sum(-1)

    # ---- forward --------------------------------------------------------------------------
    def forward(self, batch) -> TowerOutput:
        rows = self.rows(batch)
        if not self.training:
            return self.judge(rows)
        enc = self.encode(self.prompts(rows), self.gold(rows))
        logp = token_logprobs(self.model, enc["input_ids"], enc["attention_mask"], enc["completion_mask"])
        tokens = enc["completion_mask"].sum()
        loss = -logp.sum() / tokens.clamp_min(1)
        return TowerOutput(torch.zeros(len(rows), device=loss.device), loss,
                           stats={"sft_nll": float(loss.detach()), "completion_tokens": float(tokens) / len(rows)})

    # ---- deployment -----------------------------------------------------------------------
    def label_probabilities(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 4] softmax over the four label tokens at the first completion position (one pass over
        the prompts; no token is generated)."""
        enc = encode_prompts(self.tokenizer, prompts, self.cfg.max_prompt_length)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), **kwargs).logits
        return label_probs(logits[:, -1].float(), self.label_ids)

    def decide(self, p: torch.Tensor) -> torch.Tensor:
        """Grades [B] (1..4) from label probabilities: argmax, or CumPT's tier at tau."""
        if self.cfg.decision == "cumpt":
            return cumpt_tier(p, self.cfg.tau)
        return p.argmax(-1) + GRADES[0]

    def generate(self, prompts: Sequence[str]) -> List[str]:
        """Greedy completions (decoded text, eos and padding dropped) of the prompts."""
        enc = encode_prompts(self.tokenizer, prompts, self.cfg.max_prompt_length)
        r = sample_groups(self.model, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), 1,
                          self.cfg.sampling.max_new_tokens, temperature=0.0, generator=self.generator,
                          eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        return self.decode(r.completion_ids, r.completion_mask)

    def decode(self, ids: torch.Tensor, mask: torch.Tensor) -> List[str]:
        out = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            keep = [t for t, on in zip(row, m) if on and t != self.eos_id]
            out.append(self.tokenizer.decode(keep, skip_special_tokens=True))
        return out

    @torch.no_grad()
    def judge(self, rows: Sequence[Mapping]) -> TowerOutput:
        """Deployment decoding of task rows (see the module docstring)."""
        prompts = self.prompts(rows)
        gold = torch.tensor([r["label"] for r in rows], device=self.device)
        if self.cfg.eval_decoding == "label":
            p = self.label_probabilities(prompts)
            grade = self.decide(p)
        else:
            texts = self.generate(prompts)
            parsed = [parse(self.cfg.format, t) for t in texts]
            grade = torch.tensor([q.grade or 0 for q in parsed], device=self.device)  # 0: malformed
            p = torch.nn.functional.one_hot((grade - GRADES[0]).clamp_min(0), len(GRADES)).float()
            p[grade == 0] = 1.0 / len(GRADES)
        rel = self.cfg.relevant_grade - GRADES[0]
        up = p[:, rel:].sum(-1).clamp(1e-6, 1 - 1e-6)
        nll = -p.gather(1, (gold - GRADES[0]).long()[:, None]).clamp_min(1e-7).log().mean()
        return TowerOutput(torch.log(up) - torch.log1p(-up), nll, targets=(gold >= self.cfg.relevant_grade).float(),
                           predicted=grade.float(),
                           outputs={"grade": grade, "grade_probs": p, "score": ranking_score(p)})
