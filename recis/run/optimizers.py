"""The optimizers of a job's `optim` section, by name (`recis.optim.registry`).

- `sparse`: the hash tables' optimizer, any registered sparse optimizer.
- `dense`: every dense parameter that no `params` rule takes (with a tower, per declared group,
  and `groups.<name>` options on top).
- `params`: rules, first match wins, each giving the parameters it takes (`match`: an fnmatch
  glob over `model.named_parameters()` names, where `*` also matches dots; or `group`: a tower's
  declared parameter group) its own dense optimizer. A rule's options apply to all its
  parameters (a group's declared lr / weight_decay and `optim.groups` apply under `dense` only).

A rule that takes no parameter is refused, naming it; so are unknown optimizer names (listing
the registered ones of that kind) and options an optimizer does not take (checked by name
before anything is built). With more than one dense optimizer the Trainer gets an
`OptimizerSet` whose checkpointed state holds each one's under its name: ``dense.<name>`` for
the `dense` one and ``params.<i>.<name>`` for rule i's.
"""
import fnmatch
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import nn

from recis.optim import OptimizerSet, load_optimizer
from recis.optim.hyper import check_options

__all__ = ["check_optim", "build_optimizer", "assign_parameters", "build_dense_optimizer", "build_sparse_optimizer"]

_SHOWN = 12  # parameter names listed in an error


def _check_spec(spec: Mapping[str, Any], kind: str, where: str) -> type:
    cls = load_optimizer(spec["name"], kind, where)
    check_options(where, {k: v for k, v in spec.items() if k != "name"}, getattr(cls, "rules", None), constructor=cls)
    return cls


def check_optim(optim) -> None:
    """Checks every optimizer of an OptimConfig, its name and its options by name
    (recis.optim.hyper), before anything is built."""
    _check_spec(optim.sparse, "sparse", "optim.sparse")
    dense = _check_spec(optim.dense, "dense", "optim.dense")
    for group, options in optim.groups.items():
        check_options(f"optim.groups.{group}", options, constructor=dense)
    for i, rule in enumerate(optim.params):
        _check_spec(rule.optimizer, "dense", f"optim.params[{i}].optimizer")


def build_optimizer(spec: Mapping[str, Any], kind: str, where: str, params):
    """The optimizer `spec` names ({name, options...}, a registered one of `kind`) over `params`;
    a constructor's error names `where`."""
    options = dict(spec)
    name = options.pop("name")
    cls = load_optimizer(name, kind, where)
    try:
        return cls(params, **options)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where} ({name}): {e}") from None


def build_sparse_optimizer(optim, model: nn.Module):
    """optim.sparse over the model's hash tables (None when it has none)."""
    from recis.nn import sparse_tables

    return build_optimizer(optim.sparse, "sparse", "optim.sparse", model) if sparse_tables(model) else None


def _anchors(model: nn.Module) -> set:
    from recis.nn import named_table_groups

    return {id(g.anchor) for _, g in named_table_groups(model)}


def _listing(names: List[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
    return f"{names[:_SHOWN]}{more}"


def assign_parameters(rules, model: nn.Module, model_name: str) -> Tuple[List[List[nn.Parameter]], set]:
    """The parameters each `optim.params` rule takes (first match wins) and the ids of all taken.
    Candidates: the trainable parameters of `model.named_parameters()` (hash-table anchors left out)."""
    from recis.towers import Tower

    anchors = _anchors(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in anchors]
    groups: Optional[Dict[str, set]] = None
    if isinstance(model, Tower):
        groups = {g.name: {id(p) for p in g.trainable if id(p) not in anchors} for g in model.param_groups()}
    owner: Dict[int, int] = {}
    taken: List[List[nn.Parameter]] = []
    for i, rule in enumerate(rules):
        where = f"optim.params[{i}] ({rule.describe()})"
        if rule.match is not None:
            matched = [p for n, p in named if fnmatch.fnmatchcase(n, rule.match)]
            if not matched:
                raise ValueError(f"{where} matches no trainable parameter of model {model_name!r}; its parameters: "
                                 f"{_listing([n for n, _ in named])}")
        else:
            if groups is None:
                raise ValueError(f"{where}: group rules are for towers; model {model_name!r} declares no parameter "
                                 f"groups (use match: a glob over its parameter names)")
            if rule.group not in groups:
                raise ValueError(f"{where}: {type(model).__name__} has no parameter group {rule.group!r} (its groups: "
                                 f"{sorted(groups)})")
            matched = [p for _, p in named if id(p) in groups[rule.group]]
            if not matched:
                raise ValueError(f"{where}: group {rule.group!r} of {type(model).__name__} has no trainable parameter")
        mine = [p for p in matched if id(p) not in owner]
        if not mine:
            earlier = sorted({owner[id(p)] for p in matched})
            raise ValueError(f"{where} takes no parameter: every parameter it matches is taken by an earlier rule "
                             f"({', '.join(f'optim.params[{j}]' for j in earlier)}; the first match wins)")
        owner.update((id(p), i) for p in mine)
        taken.append(mine)
    return taken, set(owner)


def _default_params(optim, model: nn.Module, model_name: str, taken: set):
    """optim.dense's share: a tower's optimizer groups (with optim.groups), else its parameters,
    less what the rules took."""
    from recis.towers import Tower

    if not isinstance(model, Tower):
        if optim.groups:
            raise ValueError(f"optim.groups is for towers; model {model_name!r} declares no parameter groups")
        return [p for p in model.parameters() if id(p) not in taken]
    group_of = {id(p): g.name for g in model.param_groups() for p in g.trainable}
    out = []
    for spec in model.optimizer_groups(overrides=optim.groups):
        name = group_of[id(spec["params"][0])]
        rest = [p for p in spec["params"] if id(p) not in taken]
        if rest:
            out.append(dict(spec, params=rest))
        elif name in optim.groups:
            raise ValueError(f"optim.groups.{name} sets options of optim.dense, but optim.params rules take every "
                             f"parameter of group {name!r}; give those options in the rule's optimizer")
    return out


def build_dense_optimizer(optim, model: nn.Module, model_name: str):
    """optim.dense (over what no rule takes) and one optimizer per optim.params rule: None when
    nothing trains, the optimizer when there is one, else an OptimizerSet (dense first, then the
    rules in order)."""
    taken_by_rule, taken = assign_parameters(optim.params, model, model_name)
    named = {}
    rest = _default_params(optim, model, model_name, taken)
    if rest:
        named[f"dense.{optim.dense['name']}"] = build_optimizer(optim.dense, "dense", "optim.dense", rest)
    for i, (rule, params) in enumerate(zip(optim.params, taken_by_rule)):
        named[f"params.{i}.{rule.optimizer['name']}"] = build_optimizer(
            rule.optimizer, "dense", f"optim.params[{i}].optimizer", params)
    if not named:
        return None
    if len(named) == 1:
        return next(iter(named.values()))
    return OptimizerSet(named)
