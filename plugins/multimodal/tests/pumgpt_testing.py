"""Tiny models for the PUMGPT tests: a random Llama (vocab 64, hidden 32, 4 heads, 2 kv heads) and a
random one-channel ViT (hidden 32, 4x4 patches), built from configs (no downloads)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pytest  # noqa: E402
import torch  # noqa: E402
from recis.towers.causal_lm import load_causal_lm  # noqa: E402

from recis_multimodal.pumgpt.model import PUMGPT, PUMGPTConfig, build_vision  # noqa: E402

VOCAB = 64
LLAMA = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
VIT = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
       "intermediate_size": 64, "image_size": 32, "patch_size": 4, "num_channels": 1}


def tiny_lm(layers: int = 2, seed: int = 0):
    return load_causal_lm({"config": dict(LLAMA, num_hidden_layers=layers), "seed": seed})[0]


def tiny_vision(seed: int = 0, **overrides):
    return build_vision(dict(VIT, seed=seed, **overrides))


def tiny_pumgpt(layers: int = 2, task: str = "category", seed: int = 0, **config) -> PUMGPT:
    torch.manual_seed(seed)
    options = dict(num_visual_tokens=4)
    options.update(config)
    m = PUMGPT(tiny_lm(layers, seed), tiny_vision(seed), PUMGPTConfig(**options))
    if task:
        m.add_task(task)
    return m


def batch(b: int = 3, t: int = 6, size: int = 28, seed: int = 0):
    """(pixels [b, 1, size, size], input_ids [b, t], attention_mask all ones)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, size, size, generator=g), torch.randint(0, VOCAB, (b, t), generator=g),
            torch.ones(b, t, dtype=torch.long))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
