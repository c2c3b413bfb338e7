"""Zero-initialised, gated layer-wise adapters into a frozen causal LM, in task banks (PUMGPT's
"Layer-wise Adapters").

On every r-th decoder layer l (l = r-1, 2r-1, ...: the last layer of each block of r) the layer's
output hidden states h_l become

    h_l <- h_l + tanh(g_l) * CrossAttn(norm(h_l), A_l(v))

where v are the K visual tokens ``[B, K, H]`` from the projector, A_l(v) a layer-specific linear map
giving the attention's keys and values (the "layer-specific prefix key/values" of the spec), and g_l a
gate initialised to `gate_init` (0: at init the LM's outputs are untouched, bit for bit).

- [I] ours: where the adapter sits (after the decoder layer, on its output), LayerNorm on h and on v,
  adapter width (`dim`, default the LM's hidden size), heads, the gate's shape (a scalar, or
  per-channel with `per_channel_gate`), and which layers (every r-th).
- Installed with forward hooks on the LM's decoder layers, found generically (`decoder_layers`).
  The hooks do nothing unless visual tokens are set on the bank (`AdapterBank.visual(v)`, a context
  manager that clears them on exit, also on exceptions), so the bare LM keeps giving its own
  text-only outputs. Adapters compute in their own dtype (float32 by default) and add their output
  in the LM's dtype.
- Task banks: `add_task(name)` creates a fresh adapter set and makes it current; every earlier
  task's adapters are frozen (requires_grad False, grads dropped), so training a later task leaves
  them bit-identical. `set_task(name)` picks which task's adapters run.

>>> from recis.towers.causal_lm import load_causal_lm
>>> lm, _ = load_causal_lm({"config": {"model_type": "llama", "vocab_size": 16, "hidden_size": 16,
...     "intermediate_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2}, "seed": 0})
>>> bank = AdapterBank(lm, every=2, heads=2)
>>> bank.add_task("caption"); bank.layers, bank.task
([1, 3], 'caption')
>>> ids = torch.tensor([[1, 2, 3]])
>>> with bank.visual(torch.randn(1, 4, 16)):
...     gated = lm(ids).logits
>>> torch.equal(gated, lm(ids).logits)  # gates at zero: the LM's own logits
True
"""
import contextlib
import functools
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GatedCrossAttentionAdapter", "AdapterBank", "decoder_layers", "lm_hidden_size"]

# Where the decoder layers of common transformers causal LMs live, tried in order before a generic search.
_LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "transformer.layers", "gpt_neox.layers",
                "transformer.blocks", "model.transformer.h", "layers", "h")


def _get_path(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM: ``model.layers`` (Llama, Mistral, Qwen, ...), ``transformer.h``
    (GPT-2), ``gpt_neox.layers``, ``model.decoder.layers`` (OPT), or else the only ModuleList whose
    length is the config's num_hidden_layers. A ValueError naming the model class otherwise."""
    for path in _LAYER_PATHS:
        found = _get_path(lm, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    config = getattr(lm, "config", None)
    n = getattr(config, "num_hidden_layers", None) if config is not None else None
    if n:
        lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
        if len(lists) == 1:
            return lists[0]
    raise ValueError(f"cannot find the decoder layers of {type(lm).__name__} (looked for "
                     f"{', '.join(_LAYER_PATHS)} and a ModuleList of config.num_hidden_layers layers); "
                     f"PUMGPT needs a transformers causal LM")


def lm_hidden_size(lm: nn.Module) -> int:
    """The LM's hidden size: its input embeddings' width (else config.hidden_size)."""
    get = getattr(lm, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "embedding_dim", None):
        return int(emb.embedding_dim)
    size = getattr(getattr(lm, "config", None), "hidden_size", None)
    if size is None:
        raise ValueError(f"cannot tell the hidden size of {type(lm).__name__} (no input embeddings, no config.hidden_size)")
    return int(size)


class GatedCrossAttentionAdapter(nn.Module):
    """One layer's adapter: ``tanh(g) * W_o MHA(W_q LN(h), A(LN(v)))`` with ``A(v) -> (keys, values)``.

    h ``[B, T, hidden]``, v ``[B, K, hidden]`` -> ``[B, T, hidden]``. `dim` is the attention width
    (must be divisible by `heads`); the gate is a scalar or, with `per_channel_gate`, one per hidden
    channel, initialised to `gate_init`."""

    def __init__(self, hidden: int, dim: int, heads: int, gate_init: float = 0.0, per_channel_gate: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"adapter_heads={heads} must divide the adapter width adapter_dim={dim}")
        self.hidden, self.dim, self.heads = hidden, dim, heads
        self.norm_h = nn.LayerNorm(hidden)
        self.norm_v = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, dim)
        self.kv = nn.Linear(hidden, 2 * dim)  # A_l: the layer-specific keys and values of the visual tokens
        self.o = nn.Linear(dim, hidden)
        self.gate = nn.Parameter(torch.full((hidden,) if per_channel_gate else (), float(gate_init)))

    def forward(self, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        k_count = v.shape[1]
        nh, hd = self.heads, self.dim // self.heads
        q = self.q(self.norm_h(h)).view(b, t, nh, hd).transpose(1, 2)
        k, val = self.kv(self.norm_v(v)).view(v.shape[0], k_count, 2, nh, hd).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(b, t, self.dim)
        return torch.tanh(self.gate) * self.o(a)


class AdapterBank(nn.Module):
    """Per-task sets of gated cross-attention adapters on every `every`-th decoder layer of `lm`,
    installed as forward hooks (the LM is not copied: it is referenced, not registered as a submodule).

    `dim` None: the LM's hidden size. `layers` lists the adapted decoder-layer indices."""

    def __init__(self, lm: nn.Module, every: int = 1, heads: int = 4, dim: Optional[int] = None,
                 gate_init: float = 0.0, per_channel_gate: bool = False):
        super().__init__()
        layers = decoder_layers(lm)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"adapter_every must be an integer >= 1, got {every!r}")
        if every > len(layers):
            raise ValueError(f"adapter_every={every} exceeds the {len(layers)} decoder layers of {type(lm).__name__}: "
                             f"no layer would get an adapter")
        self.hidden = lm_hidden_size(lm)
        self.dim = self.hidden if dim is None else int(dim)
        if self.dim % heads:
            raise ValueError(f"adapter_heads={heads} must divide the adapter width {self.dim} "
                             f"(adapter_dim, or the LM's hidden size when adapter_dim is None)")
        self.heads, self.gate_init, self.per_channel_gate = heads, float(gate_init), bool(per_channel_gate)
        self.layers: List[int] = [i for i in range(len(layers)) if (i + 1) % every == 0]
        self.tasks = nn.ModuleDict()
        self.task: Optional[str] = None
        self._visual: Optional[torch.Tensor] = None
        self._handles = [layers[i].register_forward_hook(functools.partial(self._hook, i)) for i in self.layers]

    # -- tasks ---------------------------------------------------------------------------------
    def add_task(self, name: str, device=None, dtype=None) -> None:
        """A fresh adapter set for task `name`, made current; earlier tasks' adapters are frozen.
        The new adapters go on `device`/`dtype` (default: those of the existing adapters, else CPU float32)."""
        self.check_new_task(name)
        for old in self.tasks.values():
            for p in old.parameters():
                p.requires_grad_(False)
                p.grad = None
        ref = next(iter(self.parameters()), None)
        adapters = nn.ModuleDict({str(i): GatedCrossAttentionAdapter(self.hidden, self.dim, self.heads, self.gate_init,
                                                                     self.per_channel_gate) for i in self.layers})
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else None)
        adapters.to(device=device, dtype=dtype)
        self.tasks[name] = adapters
        self.task = name

    def check_new_task(self, name: str) -> None:
        """A ValueError if `name` cannot name a new task (not a non-empty string without '.', or taken)."""
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task name must be a non-empty string without '.', got {name!r}")
        if name in self.tasks:
            raise ValueError(f"task {name!r} already has adapters (known tasks: {list(self.tasks)})")

    def set_task(self, name: str) -> None:
        """Run task `name`'s adapters (a ValueError naming it and the known tasks if it has none)."""
        self.task = self._known(name)

    def _known(self, name: Optional[str]) -> str:
        name = self.task if name is None else name
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r} (known tasks: {list(self.tasks)}; add_task creates one)")
        return name

    def task_parameters(self, name: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """{parameter name: tensor} of a task's adapters (default: the current task)."""
        return dict(self.tasks[self._known(name)].named_parameters())

    def gates(self, name: Optional[str] = None) -> Dict[int, torch.Tensor]:
        """{decoder layer: gate parameter} of a task (default: the current task)."""
        name = self._known(name)
        return {i: self.tasks[name][str(i)].gate for i in self.layers}

    # -- running -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def visual(self, tokens: torch.Tensor) -> Iterator[None]:
        """Within the block, the LM's adapted layers read these visual tokens ``[B, K, hidden]``
        (a hidden-state batch that is a multiple of B, as in grouped sampling, repeats each row)."""
        if self.task is None:
            raise RuntimeError("PUMGPT has no adapter task yet: call add_task(name) first")
        if tokens.dim() != 3 or tokens.shape[-1] != self.hidden:
            raise ValueError(f"visual tokens must be [B, K, {self.hidden}], got {tuple(tokens.shape)}")
        if self._visual is not None:
            raise RuntimeError("visual tokens are already set on this adapter bank (nested forward)")
        self._visual = tokens
        try:
            yield
        finally:
            self._visual = None

    def _hook(self, index: int, module: nn.Module, args, output):
        v = self._visual
        if v is None:
            return None
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[0] != v.shape[0]:
            if h.shape[0] % v.shape[0]:
                raise ValueError(f"decoder layer {index}: hidden-state batch {h.shape[0]} is not a multiple of the "
                                 f"visual-token batch {v.shape[0]}")
            v = v.repeat_interleave(h.shape[0] // v.shape[0], dim=0)
        adapter = self.tasks[self.task][str(index)]
        dtype = adapter.gate.dtype
        h = h + adapter(h.to(dtype), v.to(dtype)).to(h.dtype)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    def remove_hooks(self) -> None:
        """Detach the adapters from the LM (the LM then runs as it was)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
