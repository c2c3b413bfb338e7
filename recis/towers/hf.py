"""Hugging Face transformers encoders and tokenizers for towers (transformers is imported lazily).

An encoder spec is a local path / hub name (pretrained weights), or a dict
``{"config": {"model_type": "bert", ...}, "seed": 0}`` for a randomly initialised model (tests).
A tokenizer spec is a path / name, or ``{"vocab": [...]}`` for a WordPiece tokenizer over a word list.
A hub name is downloaded from the Hugging Face hub (unless `HF_HUB_OFFLINE=1`). A spec spelled as
an explicit path (``/abs``, ``./rel``, ``../rel``, ``~/rel``) is a local directory, never a hub
name: a missing one is a FileNotFoundError naming it, before transformers looks anything up.

Pretrained weights are read from safetensors only (`use_safetensors=True`: a directory or hub
repository with only pickle weights such as `pytorch_model.bin` is refused, never unpickled),
and code shipped with a model or tokenizer (`auto_map` in its config) is never run
(`trust_remote_code=False`, so transformers does not ask either). See docs/security.md.

>>> enc, source = load_encoder({"config": {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
...                                        "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 20}})
>>> type(enc).__name__, source
('BertModel', 'random:bert:1:8:seed0')
>>> tok = load_tokenizer({"vocab": ["red", "shoes"]})
>>> tok("red shoes", "blue")["input_ids"]
[2, 5, 6, 3, 1, 3]
"""
import os
from typing import Any, Dict, Tuple, Union

import torch

__all__ = ["load_encoder", "load_tokenizer", "pool", "SPECIAL_TOKENS", "from_pretrained", "from_config_spec"]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_PATH_PREFIXES = ("/", "./", "../", "~/")


def _check_local(spec: str, what: str) -> None:
    """A spec spelled as a path must be an existing directory (it is never looked up on the hub).

    >>> _check_local("/no/such/model", "lm")
    Traceback (most recent call last):
    ...
    FileNotFoundError: lm '/no/such/model': no such directory (a spec spelled as a path is never a hub name)
    """
    if spec.startswith(_PATH_PREFIXES) and not os.path.isdir(os.path.expanduser(spec)):
        raise FileNotFoundError(f"{what} {spec!r}: no such directory (a spec spelled as a path is never a hub name)")


def load_encoder(spec: Union[str, Dict[str, Any]]) -> Tuple[torch.nn.Module, str]:
    """(a transformers AutoModel, a string naming its weights for checkpoints' base reference)."""
    from transformers import AutoModel

    if isinstance(spec, str):
        return from_pretrained(AutoModel, spec, "encoder"), spec
    return from_config_spec(AutoModel, spec, "encoder")


def from_pretrained(auto_class, spec: str, what: str, **kwargs):
    """`auto_class.from_pretrained(spec)` with safetensors weights only and no remote code; a
    FileNotFoundError naming `what` and `spec` when that fails (no weights, pickle weights only, ...)."""
    _check_local(spec, what)
    try:
        return auto_class.from_pretrained(spec, use_safetensors=True, trust_remote_code=False, **kwargs)
    except OSError as e:
        raise FileNotFoundError(f"{what} {spec!r}: cannot load pretrained safetensors weights ({e}); recis "
                                "never loads pickle weights (pytorch_model.bin, *.pt)") from None


def from_config_spec(auto_class, spec: Dict[str, Any], what: str) -> Tuple[torch.nn.Module, str]:
    """A randomly initialised `auto_class.from_config(...)` model from `{config: {model_type: ...,
    ...}, seed: N}` (the global RNG is left untouched) and its source string
    `random:<model_type>:<layers>:<hidden>:seed<N>`. Errors name `what` and the culprit: an unknown
    spec key, a missing or unknown model_type, a config key the model type does not have."""
    from transformers import AutoConfig

    if not isinstance(spec, dict) or "config" not in spec:
        raise TypeError(f"{what} must be a path / hub name or {{config: {{model_type: ..., ...}}, seed: N}}, "
                        f"got {spec!r}")
    unknown = sorted(set(spec) - {"config", "seed"})
    if unknown:
        raise ValueError(f"{what} spec: unknown key(s) {unknown} (known: ['config', 'seed'])")
    if not isinstance(spec["config"], dict):
        raise TypeError(f"{what}.config must be a mapping of transformers config options, got {spec['config']!r}")
    cfg = dict(spec["config"])
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{what}.config needs a model_type (e.g. bert, llama)")
    try:
        config_class = AutoConfig.for_model(model_type).__class__
    except ValueError:
        raise ValueError(f"{what}.config.model_type {model_type!r} is not a transformers model type") from None
    try:
        known = set(config_class().to_dict()) | set(config_class.attribute_map)
    except Exception:  # a composite config without defaults (encoder-decoder, ...): transformers checks it
        known = set(cfg)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{what}.config: unknown key(s) {unknown} for model_type {model_type!r} (not options of "
                         f"{config_class.__name__})")
    seed = int(spec.get("seed", 0))
    config = AutoConfig.for_model(model_type, **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = auto_class.from_config(config)
        except ValueError as e:
            raise ValueError(f"{what}.config.model_type {model_type!r}: no {auto_class.__name__} class ({e})") from None
    # convolutional configs (ConvNeXt, ResNet) have depths / hidden_sizes instead of the transformer sizes
    layers = getattr(config, "num_hidden_layers", None) or sum(getattr(config, "depths", None) or ()) or "?"
    hidden = getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or ["?"])[-1]
    return model, f"random:{model_type}:{layers}:{hidden}:seed{seed}"


def load_tokenizer(spec: Union[str, Dict[str, Any]], lowercase: bool = True):
    """A fast tokenizer: `AutoTokenizer.from_pretrained(spec)`, or WordPiece over `{"vocab": words}`
    (the special tokens come first)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(spec, str):
        _check_local(spec, "tokenizer")
        try:
            return AutoTokenizer.from_pretrained(spec, trust_remote_code=False)
        except OSError as e:
            raise FileNotFoundError(f"tokenizer {spec!r}: cannot load ({e})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("vocab"), list):
        raise TypeError(f"tokenizer must be a path / hub name or {{vocab: [words]}}, got {spec!r}")
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    words = [w for w in dict.fromkeys(SPECIAL_TOKENS + [str(w) for w in spec["vocab"]])]
    tok = Tokenizer(WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = words.index("[CLS]"), words.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                 ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "cls") -> torch.Tensor:
    """[N, T, H] token states -> [N, H]: the first token ('cls') or the masked mean ('mean')."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {how!r}")
