"""STREAM (methods notes §12): rules for entity types distilled from a prompt-based expert.

Seeds come from an expert that labels candidate spans under two prompt templates (kept only where
both agree with confidence >= kappa); then each iteration proposes rules (SurfaceForm, Prefix,
Suffix, PreNgram, PostNgram) from the instance pool, scores them by precision on the pool x log
coverage, adds the top k per type, labels the corpus with all rules, trains a span classifier on
those weak labels, and adds the classifier's predictions that agree with the rules (confidence >=
kappa') to the pool, until the pool grows by less than 1 %.
"""
from recis_online.stream.config import NONE, RULE_TYPES, ClassifierConfig, RuleConfig, SpanConfig, StreamConfig
from recis_online.stream.experts import (PromptConfig, PromptExpert, ScriptedExpert, consistent_seeds,
                                         load_prompt_expert)
from recis_online.stream.learner import STREAM, StreamResult, tag
from recis_online.stream.rules import Rule, rule_score
from recis_online.stream.spans import candidate_spans, split_sentences, tokenize

__all__ = ["NONE", "RULE_TYPES", "ClassifierConfig", "RuleConfig", "SpanConfig", "StreamConfig", "PromptConfig",
           "PromptExpert", "ScriptedExpert", "consistent_seeds", "load_prompt_expert", "STREAM", "StreamResult",
           "tag", "Rule", "rule_score", "candidate_spans", "split_sentences", "tokenize"]
