"""Tower: the mount point for dense towers (text encoders, cross-encoders, ...) on the recis stack.

A tower is an `nn.Module` that maps the feature engine's `Batch` (sparse KJT, dense, labels,
pass-through text columns in `extras`) to a `TowerOutput` (logits for the metrics, a loss, and
whatever else it explains itself with). It declares its parameter groups:

- ``dense``: trained by the dense optimizer, with its own LR / weight decay if given;
- ``frozen``: never trained, not saved in checkpoints (a reference to the base model is saved);
- ``adapter``: a frozen base module whose adapter parameters (e.g. LoRA, see `recis.towers.lora`)
  are the only ones trained and saved.

Hash tables (`recis.nn.EmbeddingCollection`) inside a tower go to the shared sparse optimizer.

>>> import torch
>>> class Scale(Tower):
...     def __init__(self):
...         super().__init__()
...         self.base, self.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
...         self.declare("base", self.base, "frozen", source="toy-base")
...         self.declare("head", self.head, "dense", lr=0.1)
...     def forward(self, batch):
...         logits = self.head(self.base(batch.dense)).squeeze(1)
...         return TowerOutput(logits)
>>> t = Scale()
>>> [(g.name, g.kind, len(g.trainable)) for g in t.param_groups()]
[('base', 'frozen', 0), ('head', 'dense', 2)]
>>> [g["lr"] for g in t.optimizer_groups(lr=0.001)]
[0.1]
>>> sorted(t.state_dict())            # frozen weights are referenced, not saved
['_extra_state', 'head.bias', 'head.weight']
"""
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from recis.optim.hyper import check_options

__all__ = ["TowerOutput", "RolloutPhase", "ParamGroup", "FeatureInfo", "Tower", "BaseModelMismatchError", "KINDS"]

KINDS = ("dense", "frozen", "adapter")
DEFAULT_GROUP = "default"


class BaseModelMismatchError(ValueError):
    """A checkpoint was saved on top of other frozen base weights than the tower has now."""


@dataclass
class TowerOutput:
    """What a tower returns. `logits` [B]: sigmoid gives the probability the metrics (AUC,
    logloss, ...) and `Trainer.predict` use; None for a tower without a binary logit (a
    diffusion model; its class sets `has_logits = False`), which then returns its `loss`.
    `loss`: the training loss (None: the Trainer's `loss_fn(logits, labels)`). `targets` [B]:
    the binary targets of those metrics (None: the batch labels). `outputs`: anything else
    (per-entity scores, grade probabilities, ...). `stats`: training statistics (name -> number,
    e.g. KL, clip fraction) that the Trainer averages over its log window and logs. `predicted`
    [B]: the predicted class label values that multi-class metrics (recis.metrics.ConfusionMatrix)
    compare with the batch labels. `values`: per-example numbers (name -> [B] tensor, e.g. a
    patch-defect indicator or a reward) that the `tower` metric (recis.metrics.TowerValues)
    averages over an evaluation and the Trainer logs (their batch means) while training.

    >>> out = TowerOutput(loss=torch.tensor(0.5), values={"reward": torch.tensor([1.0, 0.0])})
    >>> out.logits is None, sorted(out.values)
    (True, ['reward'])
    """

    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    outputs: Dict[str, Any] = field(default_factory=dict)
    stats: Dict[str, float] = field(default_factory=dict)
    predicted: Optional[torch.Tensor] = None
    values: Dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class RolloutPhase:
    """What `Tower.rollout` returns for one training batch: the `minibatches` that the Trainer
    passes to `forward` (in train mode; each returns a TowerOutput with a loss) for
    `inner_steps` passes, one backward and optimizer step per minibatch (with
    `grad_accum_steps`), and `stats` of the phase (mean reward, dropped groups, ...) that reach
    the logs. No minibatches: nothing to train on for this batch (its stats are still logged).

    >>> RolloutPhase([{"x": 1}], inner_steps=2, stats={"reward_mean": 0.5}).inner_steps
    2
    >>> RolloutPhase([], inner_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: RolloutPhase.inner_steps must be an integer >= 1, got 0
    """

    minibatches: List[Any]
    inner_steps: int = 1
    stats: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise ValueError(f"RolloutPhase.inner_steps must be an integer >= 1, got {self.inner_steps!r}")
        if not isinstance(self.minibatches, (list, tuple)):
            raise TypeError(f"RolloutPhase.minibatches must be a list of minibatches, got "
                            f"{type(self.minibatches).__name__}")
        self.minibatches = list(self.minibatches)
        if not isinstance(self.stats, Mapping):
            raise TypeError(f"RolloutPhase.stats must be a mapping name -> number, got {type(self.stats).__name__}")


@dataclass(frozen=True)
class FeatureInfo:
    """The feature engine's outputs by kind: what `Tower.from_features` may build on."""

    sparse: Sequence[str] = ()
    dense: Sequence[str] = ()
    passthrough: Sequence[str] = ()
    labels: Sequence[str] = ()
    tensors: Sequence[str] = ()  # image and tensor features (batch.tensors), in spec order

    @classmethod
    def of_engine(cls, engine) -> "FeatureInfo":
        by = {k: [s.name for s in engine.specs if s.kind == k] for k in ("sparse", "dense", "passthrough", "label")}
        tensors = tuple(s.name for s in engine.specs if s.kind in ("image", "tensor"))
        return cls(tuple(by["sparse"]), tuple(by["dense"]), tuple(by["passthrough"]), tuple(by["label"]), tensors)


@dataclass
class ParamGroup:
    """A declared group: `trainable` parameters go to the dense optimizer (with `lr` /
    `weight_decay` when set); `frozen` ones are neither trained nor saved."""

    name: str
    kind: str
    trainable: List[nn.Parameter]
    frozen: List[nn.Parameter]
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    source: Optional[str] = None


def is_adapter_parameter(name: str) -> bool:
    """Adapter parameters are named `...lora_A...` / `...lora_B...` or sit in an `adapter` module."""
    parts = name.split(".")
    return any(p.startswith("lora_") or p == "adapter" for p in parts)


class Tower(nn.Module):
    """Base class of plugin towers: subclasses build modules, `declare` their groups and define
    `forward(batch) -> TowerOutput`. Undeclared trainable parameters form the group 'default'.

    `has_logits = False` (class attribute) marks a tower whose outputs have no binary logit (a
    diffusion model): a job then evaluates it with the `tower` metric (its `TowerOutput.values`)
    by default, refuses the binary metrics (auc, logloss, calibration, gauc), and
    `Trainer.predict` refuses it."""

    #: False: TowerOutput.logits is None (no binary metrics, no Trainer.predict).
    has_logits: bool = True

    def __init__(self):
        super().__init__()
        self._declared: Dict[str, dict] = {}
        self._fingerprint_cache: Optional[tuple] = None
        self.register_state_dict_post_hook(_drop_frozen)
        self.register_load_state_dict_post_hook(_allow_missing_frozen)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_features(cls, features: FeatureInfo, **args) -> "Tower":
        """How `recis train` builds the tower from the model section of a config (the feature
        engine's outputs come in `features`). Default: `cls(**args)`."""
        return cls(**args)

    def declare(self, name: str, params: Union[nn.Module, Iterable[nn.Parameter]], kind: str = "dense",
                lr: Optional[float] = None, weight_decay: Optional[float] = None,
                source: Optional[str] = None) -> None:
        """Declares a parameter group. `params`: a submodule of this tower or its parameters.
        frozen / adapter groups get requires_grad=False on what does not train; `source` names
        the base weights (a path or hub name) for the checkpoint's reference."""
        if kind not in KINDS:
            raise ValueError(f"group {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if name in self._declared or name == DEFAULT_GROUP:
            raise ValueError(f"group {name!r} is declared twice (or uses the reserved name {DEFAULT_GROUP!r})")
        check_options(f"group {name!r}", {k: v for k, v in (("lr", lr), ("weight_decay", weight_decay))
                                           if v is not None})
        if isinstance(params, nn.Module):
            named = list(params.named_parameters())
        else:
            named = [(str(i), p) for i, p in enumerate(params)]
        if not named:
            raise ValueError(f"group {name!r} has no parameters")
        if kind == "adapter" and not isinstance(params, nn.Module):
            raise TypeError(f"adapter group {name!r} needs the module that holds the adapters")
        ids = {id(p) for _, p in named}
        for other, d in self._declared.items():
            if ids & {id(p) for p in d["params"]}:
                raise ValueError(f"group {name!r} shares parameters with group {other!r}")
        trainable, frozen = [], []
        for pname, p in named:
            train = kind == "dense" or (kind == "adapter" and is_adapter_parameter(pname))
            p.requires_grad_(train)
            (trainable if train else frozen).append(p)
        if kind == "adapter" and not trainable:
            raise ValueError(f"adapter group {name!r} holds no adapter parameters (lora_* / adapter.*): apply "
                             "recis.towers.lora.apply_lora first")
        self._declared[name] = {"kind": kind, "params": [p for _, p in named], "trainable": trainable,
                                "frozen": frozen, "lr": lr, "weight_decay": weight_decay, "source": source}
        self._fingerprint_cache = None

    # ---- rollout training (RL): see recis.train and docs/towers.md -------------------------
    def rollout(self, batch, refill: Callable[[], Any]) -> Optional[RolloutPhase]:
        """A tower that overrides this trains by rollouts: the Trainer calls it on every
        training batch in eval mode without gradients (sample, score, old-policy log-probs)
        and trains on the returned `RolloutPhase`. `refill()` returns the next training batch
        (or None at the end of the data), e.g. to replace groups that dynamic sampling dropped;
        bound how often you call it. The base class has no rollout phase (returns None)."""
        return None

    def generators(self) -> Dict[str, torch.Generator]:
        """The tower's own random generators (e.g. for sampling), by name: the Trainer saves
        and restores their states with its checkpoints, so a resumed run draws the same."""
        return {}

    def on_weights_loaded(self) -> None:
        """Called after a stage's starting weights were loaded (checkpoint.init_from), e.g. for
        a reference policy to copy them. Default: nothing."""

    # ---- groups ------------------------------------------------------------------------
    def param_groups(self) -> List[ParamGroup]:
        """The declared groups, then 'default' (undeclared parameters that train), if any."""
        out, seen = [], set()
        for name, d in self._declared.items():
            out.append(ParamGroup(name, d["kind"], list(d["trainable"]), list(d["frozen"]), d["lr"],
                                  d["weight_decay"], d["source"]))
            seen.update(id(p) for p in d["params"])
        rest = [p for p in self.parameters() if id(p) not in seen and p.requires_grad]
        if rest:
            out.append(ParamGroup(DEFAULT_GROUP, "dense", rest, []))
        return out

    def optimizer_groups(self, lr: Optional[float] = None,
                         overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> List[dict]:
        """torch.optim param groups of the trainable parameters: each group's own lr /
        weight_decay (a declared one, or `overrides[name]`, which wins), else the optimizer's.
        Hash-table anchors are left out (they belong to the sparse optimizer)."""
        groups = self.param_groups()
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - {g.name for g in groups})
        if unknown:
            raise ValueError(f"optim.groups names {unknown}, not groups of {type(self).__name__} "
                             f"(its groups: {[g.name for g in groups]})")
        anchors = _table_anchors(self)
        out = []
        for g in groups:
            params = [p for p in g.trainable if id(p) not in anchors]
            if not params:
                continue
            spec: Dict[str, Any] = {"params": params}
            for key, value in (("lr", g.lr), ("weight_decay", g.weight_decay)):
                if value is not None:
                    spec[key] = value
            for key, value in overrides.get(g.name, {}).items():
                if key not in ("lr", "weight_decay", "betas", "momentum", "eps"):
                    raise ValueError(f"optim.groups.{g.name}: unknown option {key!r}")
                spec[key] = value
            if lr is not None:
                spec.setdefault("lr", lr)
            out.append(spec)
        return out

    # ---- checkpoints: trainable tensors plus a reference to frozen base weights -----------
    def frozen_parameter_names(self) -> List[str]:
        frozen = {id(p) for d in self._declared.values() for p in d["frozen"]}
        return [n for n, p in self.named_parameters(remove_duplicate=False) if id(p) in frozen]

    def base_reference(self) -> Dict[str, Any]:
        """What the checkpoint records instead of the frozen weights: per group its source and
        the SHA-256 of its frozen tensors."""
        frozen = set(self.frozen_parameter_names())
        key = tuple((n, p.data_ptr(), p._version) for n, p in self.named_parameters() if n in frozen)
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            ref = {}
            for name, d in self._declared.items():
                if not d["frozen"]:
                    continue
                h = hashlib.sha256()
                for p in d["frozen"]:
                    t = p.detach().cpu().contiguous()
                    h.update(str((tuple(t.shape), str(t.dtype))).encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                ref[name] = {"source": d["source"], "sha256": h.hexdigest(), "tensors": len(d["frozen"])}
            self._fingerprint_cache = (key, ref)
        return self._fingerprint_cache[1]

    def get_extra_state(self) -> Dict[str, Any]:
        return {"base": self.base_reference()}

    def set_extra_state(self, state: Any) -> None:
        saved = (state or {}).get("base", {}) if isinstance(state, dict) else {}
        now = self.base_reference()
        for name, ref in saved.items():
            have = now.get(name)
            if have is None:
                raise BaseModelMismatchError(f"the checkpoint has frozen base weights for group {name!r}, which "
                                             f"{type(self).__name__} does not freeze (its frozen groups: {sorted(now)})")
            if have["sha256"] != ref["sha256"]:
                raise BaseModelMismatchError(
                    f"group {name!r}: the checkpoint was trained on base weights {ref['source']!r} "
                    f"(sha256 {ref['sha256'][:12]}...), the tower has {have['source']!r} (sha256 "
                    f"{have['sha256'][:12]}...); load the same base model")
        missing = sorted(set(now) - set(saved))
        if missing:
            raise BaseModelMismatchError(f"groups {missing} are frozen in the tower but were trained in the checkpoint")


def _table_anchors(module: nn.Module) -> set:
    from recis.nn import named_table_groups

    return {id(g.anchor) for _, g in named_table_groups(module)}


def _drop_frozen(module: Tower, state: Dict, prefix: str, local_metadata) -> None:
    for name in module.frozen_parameter_names():
        state.pop(prefix + name, None)


def _allow_missing_frozen(module: Tower, incompatible) -> None:
    frozen = set(module.frozen_parameter_names())
    # load_state_dict reports keys relative to the root module; this tower may sit anywhere in it
    keep = [k for k in incompatible.missing_keys if not any(k == f or k.endswith("." + f) for f in frozen)]
    incompatible.missing_keys[:] = keep
