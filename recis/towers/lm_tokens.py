"""Tokenization for causal LMs: a word-level tokenizer with reserved tokens, and prompt / prompt +
completion batches with left padding and a completion mask.

`word_tokenizer(words, reserved)` numbers its vocabulary as ``<pad>=0 <unk>=1 <bos>=2 <eos>=3``,
then the reserved tokens in the order given, then the words. Text is matched in this order:

1. reserved and special tokens, anywhere in the raw text (before lowercasing), even glued to a
   word or punctuation: ``"<L3>because"`` is ``<L3>``, ``because``, and ``"x<L3>y"`` is ``x``,
   ``<L3>``, ``y``. Matching is case-sensitive: ``"<l3>"`` is not ``<L3>`` (it is lowercased and
   split into ``<``, ``l3``, ``>`` like any other text);
2. the rest is lowercased (``lowercase=True``) and split on whitespace and on each punctuation
   character (``"red,shoes."`` is ``red``, ``,``, ``shoes``, ``.``);
3. a piece that is not in the vocabulary becomes ``<unk>`` (id 1); nothing is split further.

Encoding a text prepends ``<bos>`` (as Llama tokenizers do), so an empty prompt is one token;
`decode` joins tokens with single spaces (``skip_special_tokens=True`` drops ``<pad> <unk> <bos>
<eos>`` but keeps the reserved tokens, which are ordinary added tokens).

>>> tok = word_tokenizer(["red", "shoes", "because", ","], reserved=["<L1>", "<L3>"])
>>> tok.convert_ids_to_tokens(list(range(len(tok))))
['<pad>', '<unk>', '<bos>', '<eos>', '<L1>', '<L3>', 'red', 'shoes', 'because', ',']
>>> tok("<L3>because Red, boots")["input_ids"]
[2, 5, 8, 6, 9, 1]
>>> tok.decode([5, 8, 6, 3], skip_special_tokens=True)
'<L3> because red'
>>> enc = encode_completions(tok, ["red", "shoes red"], ["<L1>", "<L3> because"], 4, 4)
>>> enc["input_ids"].tolist()
[[0, 2, 6, 4, 3, 0], [2, 7, 6, 5, 8, 3]]
>>> enc["completion_mask"].tolist()
[[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
"""
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["PAD", "UNK", "BOS", "EOS", "SPECIAL_TOKENS", "word_tokenizer", "pad_token_id", "encode_prompts",
           "encode_completions"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: the special tokens of `word_tokenizer`, in id order (0..3).
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def word_tokenizer(words: Sequence[str], reserved: Sequence[str] = (), lowercase: bool = True):
    """A `PreTrainedTokenizerFast` over a fixed word list (WordLevel model; see the module docstring
    for the ids and the matching rules). Duplicate words are kept once; a word that the
    pre-tokenizer would split (``"sci-fi"``, ``"a b"``) could never be produced and is refused, as
    are empty, duplicate or special reserved tokens and words that repeat a reserved token."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    reserved = [str(t) for t in reserved]
    for t in reserved:
        if not t or t != t.strip() or any(c.isspace() for c in t):
            raise ValueError(f"word_tokenizer: reserved token {t!r} must be non-empty without whitespace")
        if t in SPECIAL_TOKENS:
            raise ValueError(f"word_tokenizer: reserved token {t!r} is one of the special tokens "
                             f"{list(SPECIAL_TOKENS)}")
    dups = sorted({t for t in reserved if reserved.count(t) > 1})
    if dups:
        raise ValueError(f"word_tokenizer: reserved token(s) {dups} given more than once")
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + reserved)}
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"word_tokenizer: words must be strings, got {w!r}")
        word = w.lower() if lowercase else w
        if word in vocab:
            if word in SPECIAL_TOKENS or word in reserved:
                raise ValueError(f"word_tokenizer: word {w!r} is a special or reserved token")
            continue
        pieces = [p for p, _ in pre.pre_tokenize_str(word)]
        if pieces != [word]:
            raise ValueError(f"word_tokenizer: word {w!r} would be split into {pieces} before lookup, so it could "
                             "never be produced; list its pieces instead")
        vocab[word] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    # Added tokens are matched on the raw text before normalization and splitting; the ids are
    # the ones already in `vocab`.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in reserved])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS,
                                   eos_token=EOS, padding_side="left", truncation_side="left",
                                   clean_up_tokenization_spaces=False)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id (padding is masked out, so any id does)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token to pad with")


def _ids(tokenizer, texts: Sequence[str], special: bool, what: str) -> List[List[int]]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{what} must be a list of strings, got {texts!r:.200}")
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def _check_length(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _left_padded(rows: List[List[int]], width: int, pad: int):
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def encode_prompts(tokenizer, prompts: Sequence[str], max_length: int) -> Dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` [B, P], int64, LEFT-padded with `pad_token_id(tokenizer)`;
    P is the longest prompt after truncation (at most `max_length`). Prompts are encoded with the
    tokenizer's own special tokens (a BOS for `word_tokenizer` and Llama tokenizers); an over-long
    prompt keeps its last `max_length` tokens (truncated from the left, so its BOS goes first)."""
    _check_length("max_length", max_length)
    rows = [r[-max_length:] for r in _ids(tokenizer, prompts, True, "prompts")]
    ids, mask = _left_padded(rows, max((len(r) for r in rows), default=0), pad_token_id(tokenizer))
    return {"input_ids": ids, "attention_mask": mask}


def encode_completions(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_prompt_length: int,
                       max_completion_length: int, add_eos: bool = True,
                       eos_token_id: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask`, `completion_mask` [B, P + C] (int64). Row layout:
    ``[left pad][prompt][completion (+eos)][right pad]``: the prompt part is P wide and left-padded
    exactly as `encode_prompts` does; the completion part is C wide (the longest completion, at
    most `max_completion_length`) and right-padded. Completions are encoded without special tokens
    and get the eos token appended (`add_eos`); an over-long completion keeps its first
    `max_completion_length` tokens, so the eos is cut first (a completion that did not stop).
    `completion_mask` is 1 exactly on the completion tokens (eos included). `eos_token_id`
    overrides the tokenizer's eos (SmolLM2's GGUF tokenizer names ``<|im_start|>`` its eos while
    the model's generation config stops at ``<|im_end|>``)."""
    _check_length("max_completion_length", max_completion_length)
    if len(prompts) != len(completions):
        raise ValueError(f"encode_completions: {len(prompts)} prompts but {len(completions)} completions")
    prompt = encode_prompts(tokenizer, prompts, max_prompt_length)
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is None:
        raise ValueError(f"encode_completions: add_eos=True but tokenizer {type(tokenizer).__name__} has no eos token")
    rows = [(r + [eos] if add_eos else r)[:max_completion_length]
            for r in _ids(tokenizer, completions, False, "completions")]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
    return {"input_ids": torch.cat([prompt["input_ids"], ids], 1),
            "attention_mask": torch.cat([prompt["attention_mask"], mask], 1),
            "completion_mask": torch.cat([torch.zeros_like(prompt["attention_mask"]), mask], 1)}
