"""Per-token log-probs and entropies of a causal LM, and seeded grouped sampling (G completions
per prompt) with a KV cache.

Batches follow the layout of `recis.towers.lm_tokens`: prompts LEFT-padded, completions after
them and right-padded. Position ids always come from the attention mask (``cumsum - 1``), so a
row's log-probs do not depend on how much padding the batch gives it.

>>> from recis.towers.causal_lm import load_causal_lm
>>> model, _ = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}, "seed": 0})
>>> prompts = torch.tensor([[0, 2, 5], [2, 7, 8]]); mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
>>> r = sample_groups(model, prompts, mask, group_size=3, max_new_tokens=4, eos_token_id=3, pad_token_id=0,
...                   generator=torch.Generator().manual_seed(0))
>>> r.completion_ids.shape, r.prompt_index.tolist(), r.input_ids.shape
(torch.Size([6, 4]), [0, 0, 0, 1, 1, 1], torch.Size([6, 7]))
>>> again = token_logprobs(model, r.input_ids, r.attention_mask, r.full_completion_mask)[:, 3:]
>>> bool(torch.allclose(again, r.logprobs, atol=1e-5))
True
"""
import inspect
from dataclasses import dataclass, fields
from typing import Dict, Optional, Sequence

import torch

__all__ = ["position_ids", "token_logprobs", "token_entropy", "Rollout", "sample_groups", "cat_rollouts", "reprompt",
           "splice_rows"]

_KEEPS_LOGITS: Dict[type, bool] = {}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: the first real token of every row is at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _takes_logits_to_keep(model) -> bool:
    kind = type(model)
    if kind not in _KEEPS_LOGITS:
        try:
            _KEEPS_LOGITS[kind] = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            _KEEPS_LOGITS[kind] = False
    return _KEEPS_LOGITS[kind]


def _check_temperature(temperature: float, allow_zero: bool = False) -> float:
    t = float(temperature)
    if not (t > 0 or (allow_zero and t == 0)) or t != t or t == float("inf"):
        raise ValueError(f"temperature must be a finite number {'>= 0' if allow_zero else '> 0'}, got {temperature!r}")
    return t


def _scored_logits(model, input_ids, attention_mask, completion_mask, temperature):
    """(tempered float logits [B, T - s, V] predicting tokens s.., targets [B, T - s], valid [B, T - s], s)."""
    temperature = _check_temperature(temperature)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must "
                         "be the same [B, T] shape")
    if completion_mask is not None and completion_mask.shape != input_ids.shape:
        raise ValueError(f"completion_mask {tuple(completion_mask.shape)} must have input_ids' shape "
                         f"{tuple(input_ids.shape)}")
    T = input_ids.shape[1]
    if completion_mask is None:
        valid = torch.zeros_like(attention_mask, dtype=torch.bool)
        valid[:, 1:] = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    else:
        valid = completion_mask.bool().clone()
        valid[:, 0] = False
    columns = valid.any(0).nonzero()
    start = int(columns[0]) if len(columns) else T  # the first column with a scored token (>= 1)
    if start >= T:
        return None, None, None, T
    keep = T - start + 1  # logits at positions start-1 .. T-1; the last one predicts nothing
    kwargs = {"logits_to_keep": keep} if _takes_logits_to_keep(model) else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False, **kwargs)
    logits = out.logits[:, -keep:-1].float() / temperature
    return logits, input_ids[:, start:], valid[:, start:], start


def _padded(values: Optional[torch.Tensor], valid, start: int, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
    if values is None:
        return out
    return torch.cat([out[:, :start], torch.where(valid, values, torch.zeros_like(values))], 1)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: Optional[torch.Tensor] = None, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] float32: ``log softmax(logits_{t-1} / temperature)[x_t]``, the log-probability of
    each token given the ones before it. 0 at position 0, and where `completion_mask` is 0 (without
    a completion mask: wherever the token or its predecessor is padding). Differentiable; only the
    logits from the first scored column on are computed (`logits_to_keep`)."""
    logits, targets, valid, start = _scored_logits(model, input_ids, attention_mask, completion_mask, temperature)
    if logits is None:
        return _padded(None, None, start, input_ids)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return _padded(picked, valid, start, input_ids)


def token_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  completion_mask: Optional[torch.Tensor] = None, temperature: float = 1.0) -> torch.Tensor:
    """[B, T] float32: the entropy ``-sum_v p_v log p_v`` of the tempered next-token distribution
    that predicts each token; zeros where `token_logprobs` has them. The mean over the completion
    tokens is the usual training statistic (call it under `torch.no_grad()` for that)."""
    logits, _, valid, start = _scored_logits(model, input_ids, attention_mask, completion_mask, temperature)
    if logits is None:
        return _padded(None, None, start, input_ids)
    logp = logits.log_softmax(-1)
    return _padded(-(logp.exp() * logp).sum(-1), valid, start, input_ids)


@dataclass
class Rollout:
    """Sampled completions, prompt-major: rows ``i*G .. i*G+G-1`` are prompt i's group.

    prompt_ids / prompt_mask [N, P] (left-padded, as given), completion_ids / completion_mask
    [N, C] (mask 1 up to and including the eos or stop token; pad and 0 after it; C is the longest
    completion, at most max_new_tokens), logprobs [N, C] float32 (the sampling policy's log-prob of
    each sampled token under the distribution actually sampled from, 0 where the mask is 0),
    prompt_index [N] (the source prompt's row), group_size G."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    prompt_index: torch.Tensor
    group_size: int

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        """[N, P + C]: prompt then completion (the `encode_completions` layout)."""
        return torch.cat([self.prompt_ids, self.completion_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.long(), self.completion_mask.long()], 1)

    @property
    def full_completion_mask(self) -> torch.Tensor:
        """[N, P + C]: the completion mask over `input_ids` (what `token_logprobs` takes)."""
        return torch.cat([torch.zeros_like(self.prompt_mask, dtype=torch.long), self.completion_mask.long()], 1)

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.long().sum(1)

    def index_select(self, rows) -> "Rollout":
        """The rows `rows` (indices or a bool mask) of every per-row tensor; group_size is kept, and
        prompt_index still names each row's source prompt."""
        rows = torch.as_tensor(rows, device=self.completion_ids.device)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return Rollout(**{f.name: getattr(self, f.name).index_select(0, rows.long())
                          if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name)
                          for f in fields(self)})

    def to(self, device) -> "Rollout":
        return Rollout(**{f.name: getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                          else getattr(self, f.name) for f in fields(self)})


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator):
    """(token [N], its log-prob [N]) from float logits [N, V]."""
    if temperature == 0:
        token = logits.argmax(-1)
        return token, logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(1)
    scaled = logits / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, -1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))  # ties with the k-th value stay in
    logp = scaled.log_softmax(-1)
    token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
    return token, logp.gather(-1, token[:, None]).squeeze(1)


def _check_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
    if prompt_ids.dim() != 2 or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must be "
                         "the same [B, P] shape")
    if prompt_ids.shape[1] == 0:
        raise ValueError("sample_groups: the prompts are empty (P = 0)")
    m = prompt_mask.bool()
    bad = (~m[:, -1] | (m[:, :-1] & ~m[:, 1:]).any(1)).nonzero()
    if len(bad):
        raise ValueError(f"sample_groups: prompt row {int(bad[0])} is not left-padded with at least one token "
                         f"(mask {prompt_mask[int(bad[0])].tolist()}); build prompts with encode_prompts")


def sample_groups(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, group_size: int, max_new_tokens: int,
                  *, temperature: float = 1.0, top_k: int = 0, generator: torch.Generator, eos_token_id: int,
                  pad_token_id: int, stop_token_ids: Sequence[int] = ()) -> Rollout:
    """G = `group_size` completions of each LEFT-padded prompt, up to `max_new_tokens` tokens each.

    Each prompt is run once; its KV cache is repeated for its group and extended token by token.
    Tokens are drawn with ``torch.multinomial(softmax(logits / temperature), generator=generator)``
    (the generator lives on the model's device; the same seed gives the same rollout); with
    ``top_k > 0`` only the k largest tempered logits (and ties with the k-th) are kept;
    ``temperature == 0`` is greedy (argmax, no random draw) and its logprobs are under T = 1. A row
    stops after `eos_token_id` or any of `stop_token_ids` (that token has mask 1); later positions
    are `pad_token_id` with mask 0 and logprob 0. Runs under `torch.no_grad()` in whatever mode
    the model is in (callers sample in eval mode)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0: no top-k), got {top_k!r}")
    temperature = _check_temperature(temperature, allow_zero=True)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"sample_groups needs a torch.Generator (generator=...), got {generator!r}")
    if generator.device.type != prompt_ids.device.type:
        raise ValueError(f"generator is on {generator.device} but the prompts are on {prompt_ids.device}")
    _check_prompts(prompt_ids, prompt_mask)
    G, device = group_size, prompt_ids.device
    stop = torch.tensor(sorted({int(eos_token_id), *(int(t) for t in stop_token_ids)}), device=device)
    with torch.no_grad():
        mask = prompt_mask.long()
        kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
        out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                    **kwargs)
        cache = out.past_key_values
        if G > 1:
            cache.batch_repeat_interleave(G)
        logits = out.logits[:, -1].float().repeat_interleave(G, 0)
        mask = mask.repeat_interleave(G, 0)
        next_position = mask.sum(1, keepdim=True)
        done = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
        tokens, logps, alive_masks = [], [], []
        for step in range(max_new_tokens):
            token, logp = _pick(logits, temperature, top_k, generator)
            alive = ~done
            token = torch.where(alive, token, torch.full_like(token, pad_token_id))
            tokens.append(token)
            logps.append(torch.where(alive, logp, torch.zeros_like(logp)))
            alive_masks.append(alive.long())
            done = done | torch.isin(token, stop)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, alive.long()[:, None]], 1)
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                        past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            next_position = next_position + 1
    return Rollout(prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                   completion_ids=torch.stack(tokens, 1), completion_mask=torch.stack(alive_masks, 1),
                   logprobs=torch.stack(logps, 1),
                   prompt_index=torch.arange(prompt_ids.shape[0], device=device).repeat_interleave(G), group_size=G)


def _pad_to(r: Rollout, prompt_width: int, completion_width: int, pad_token_id: int) -> Rollout:
    """r with its prompts left-padded to `prompt_width` and its completions right-padded to
    `completion_width` (masks 0 and logprobs 0 on the padding)."""
    P, C = prompt_width - r.prompt_ids.shape[1], completion_width - r.completion_ids.shape[1]
    if P < 0 or C < 0:
        raise ValueError(f"cannot pad a rollout of widths {r.prompt_ids.shape[1]}, {r.completion_ids.shape[1]} to "
                         f"{prompt_width}, {completion_width}")
    pad = torch.nn.functional.pad
    return Rollout(prompt_ids=pad(r.prompt_ids, (P, 0), value=pad_token_id), prompt_mask=pad(r.prompt_mask, (P, 0)),
                   completion_ids=pad(r.completion_ids, (0, C), value=pad_token_id),
                   completion_mask=pad(r.completion_mask, (0, C)), logprobs=pad(r.logprobs, (0, C)),
                   prompt_index=r.prompt_index, group_size=r.group_size)


def cat_rollouts(parts: Sequence[Rollout], pad_token_id: int) -> Rollout:
    """One rollout of `parts`, in order: prompts left-padded and completions right-padded to the
    widest part's, prompt_index continued across the parts (each part's prompts after the ones
    before). The parts share one group_size.

    >>> a = Rollout(torch.tensor([[5]]), torch.ones(1, 1, dtype=torch.long), torch.tensor([[7]]),
    ...             torch.ones(1, 1, dtype=torch.long), torch.zeros(1, 1), torch.tensor([0]), 1)
    >>> b = Rollout(torch.tensor([[4, 6]]), torch.ones(1, 2, dtype=torch.long), torch.tensor([[9, 3]]),
    ...             torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2), torch.tensor([0]), 1)
    >>> r = cat_rollouts([a, b], pad_token_id=0)
    >>> r.input_ids.tolist(), r.prompt_index.tolist()
    ([[0, 5, 7, 0], [4, 6, 9, 3]], [0, 1])
    """
    if not parts:
        raise ValueError("cat_rollouts: no rollouts to concatenate")
    sizes = {p.group_size for p in parts}
    if len(sizes) != 1:
        raise ValueError(f"cat_rollouts: the rollouts have different group sizes {sorted(sizes)}")
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    C = max(p.completion_ids.shape[1] for p in parts)
    padded = [_pad_to(p, P, C, pad_token_id) for p in parts]
    offset, index = 0, []
    for p in parts:
        index.append(p.prompt_index + offset)
        offset += int(p.prompt_index.max()) + 1 if len(p) else 0
    return Rollout(**{f: torch.cat([getattr(p, f) for p in padded])
                      for f in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs")},
                   prompt_index=torch.cat(index), group_size=parts[0].group_size)


def reprompt(r: Rollout, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Rollout:
    """The completions of `r` after other prompts: `prompt_ids` / `prompt_mask` [N, P'] (left-padded,
    one per row of r) replace r's, so that `input_ids` / `token_logprobs` score the same completions
    under the new prompts (e.g. completions sampled from a hinted prompt, trained under the plain
    one). `logprobs` stay those of the sampling (under the prompts they were drawn from).

    >>> r = Rollout(torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long), torch.tensor([[7, 3]]),
    ...             torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2), torch.tensor([0]), 1)
    >>> reprompt(r, torch.tensor([[0, 0, 5]]), torch.tensor([[0, 0, 1]])).input_ids.tolist()
    [[0, 0, 5, 7, 3]]
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != len(r) or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must be "
                         f"[N, P] with N = {len(r)} (one prompt per completion)")
    _check_prompts(prompt_ids, prompt_mask)
    return Rollout(prompt_ids=prompt_ids.to(r.prompt_ids.device), prompt_mask=prompt_mask.to(r.prompt_mask.device),
                   completion_ids=r.completion_ids, completion_mask=r.completion_mask, logprobs=r.logprobs,
                   prompt_index=r.prompt_index, group_size=r.group_size)


def splice_rows(base: Rollout, rows: torch.Tensor, donor: Rollout, pad_token_id: int) -> Rollout:
    """`base` with its rows `rows` ([k] distinct indices) replaced by the k rows of `donor`, in order
    (prompts, completions, masks and logprobs; both padded to the wider prompt and completion
    widths). prompt_index and group_size stay base's: a donor row takes the place, and the group,
    of the row it replaces.

    >>> base = Rollout(torch.tensor([[5], [6]]), torch.ones(2, 1, dtype=torch.long), torch.tensor([[7], [8]]),
    ...                torch.ones(2, 1, dtype=torch.long), torch.zeros(2, 1), torch.tensor([0, 0]), 2)
    >>> donor = Rollout(torch.tensor([[6]]), torch.ones(1, 1, dtype=torch.long), torch.tensor([[9, 3]]),
    ...                 torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2), torch.tensor([0]), 1)
    >>> splice_rows(base, torch.tensor([1]), donor, pad_token_id=0).input_ids.tolist()
    [[5, 7, 0], [6, 9, 3]]
    """
    rows = torch.as_tensor(rows, device=base.completion_ids.device).long().reshape(-1)
    if rows.numel() != len(donor):
        raise ValueError(f"splice_rows: {rows.numel()} rows to replace but the donor has {len(donor)}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(base) or rows.unique().numel() != rows.numel()):
        raise ValueError(f"splice_rows: rows must be distinct indices in [0, {len(base)}), got {rows.tolist()}")
    P = max(base.prompt_ids.shape[1], donor.prompt_ids.shape[1])
    C = max(base.completion_ids.shape[1], donor.completion_ids.shape[1])
    out, donor = _pad_to(base, P, C, pad_token_id), _pad_to(donor, P, C, pad_token_id)
    values = {}
    for f in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "logprobs"):
        t = getattr(out, f).clone()
        t[rows] = getattr(donor, f).to(t.dtype)
        values[f] = t
    return Rollout(**values, prompt_index=base.prompt_index, group_size=base.group_size)
