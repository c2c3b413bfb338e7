"""The sparse side of a checkpoint: which state_dict entries are hash tables, their configs,
incremental deltas and how a chain of deltas is merged.

A module that owns hash tables writes, per logical table, `{key}.{ids,rows,slots,counts,
last_seen}` (key = module prefix + table name) and per table group `{first key}._group.*`.

Incremental deltas: a training lookup first advances its group's step, then sets `last_seen`
of every row it finds or inserts to that step; the optimizer update of those rows follows
later (in `step()`, or in backward with fused optimizers) without moving the step. So rows
changed after a save at group step S are exactly those with `last_seen >= S` (not `> S`: a
save between a forward and its optimizer update leaves rows with `last_seen == S` that change
afterwards). Explicit inserts (`find_or_insert`, without a training step) also stamp the current
step. Ids that disappear (eviction, `erase`) are caught by storing the full list of live ids.
"""
from dataclasses import asdict
from typing import Dict, List, Tuple

import torch
from torch import nn

from recis.checkpoint.errors import CheckpointCorruptError, CheckpointError, IncompatibleCheckpointError
from recis.nn import TableGroup, named_table_groups
from recis.nn.hash_table import split_eviction
from recis.nn.state_keys import GROUP_SUFFIX, STATE_KEYS

LIVE_IDS = "live_ids"
# Config fields that must match for the saved rows to fit at all; the others (seeds,
# initializer, eviction, ...) change how training continues and are checked when strict.
SHAPE_FIELDS = ("tables", "embedding_dim", "sketch")


class GroupEntry:
    """A table group of a model with the state_dict prefix of the module that owns it."""

    def __init__(self, prefix: str, group: TableGroup):
        self.prefix, self.group = prefix, group
        self.table_keys = [prefix + t.name for t in group.tables]
        self.key = self.table_keys[0]

    def owns(self, state_key: str) -> bool:
        return state_key.startswith(self.key + GROUP_SUFFIX) or any(state_key.startswith(k + ".")
                                                                     for k in self.table_keys)

    def pending_rows(self) -> int:
        return self.group.pending_rows()

    def config(self, slot_width: int) -> dict:
        """The group's table config as JSON (what a checkpoint must be compatible with)."""
        g = self.group
        cfg = g.config
        ttl, lfu = split_eviction(cfg["eviction"])
        adm = g.admission
        kind, *params = g.initializer.spec(g.embedding_dim)
        return {
            "tables": self.table_keys, "seeds": [int(s) for s in cfg["seeds"]], "embedding_dim": g.embedding_dim,
            "initializer": [kind, *map(float, params)],
            "admission": asdict(adm) if adm is not None else None,
            "sketch": [adm.sketch_width, adm.sketch_depth] if adm is not None and adm.min_count > 1 else None,
            "eviction": {"ttl": asdict(ttl) if ttl else None, "lfu": asdict(lfu) if lfu else None},
            "capacity": g.capacity, "missing": g.missing, "slot_kind": g.slot_kind, "slot_width": int(slot_width),
        }


def table_groups(model: nn.Module) -> List[GroupEntry]:
    """Every table group of `model`, once per state_dict prefix it is saved under."""
    return [GroupEntry(prefix, g) for prefix, g in named_table_groups(model, remove_duplicate=False)]


def split_state(state: Dict, entries: List[GroupEntry]) -> Tuple[Dict, Dict]:
    """(sparse entries, everything else) of a model state_dict."""
    sparse, dense = {}, {}
    for k, v in state.items():
        (sparse if any(e.owns(k) for e in entries) else dense)[k] = v
    return sparse, dense


def configs_of(entries: List[GroupEntry], sparse: Dict) -> Dict[str, dict]:
    return {e.key: e.config(sparse[f"{e.key}.slots"].shape[1]) for e in entries}


def check_quiescent(entries: List[GroupEntry]) -> None:
    """Refuses to save while gradients wait for an optimizer step: they are not part of the
    state, and rows they would change later could be missed by an incremental save."""
    busy = {e.key: e.pending_rows() for e in entries if e.pending_rows()}
    if busy:
        raise CheckpointError(f"tables {sorted(busy)} hold pending sparse gradients of {busy} rows (between backward "
                              "and optimizer.step(), e.g. mid gradient accumulation); save after optimizer.step() "
                              "or zero_grad()")


def delta(sparse: Dict, entries: List[GroupEntry], since: Dict[str, int]) -> Dict:
    """The incremental form of `sparse`: per table the rows with last_seen >= since[group]
    plus every live id; group state in full."""
    out = {k: v for k, v in sparse.items() if GROUP_SUFFIX in k}
    for e in entries:
        step = e.group.step
        if step < since[e.key]:
            raise CheckpointError(f"table group {e.key!r}: its step went back from {since[e.key]} to {step} since "
                                  "the last checkpoint; save a full checkpoint")
        for key in e.table_keys:
            mask = sparse[f"{key}.last_seen"] >= since[e.key]
            for k in STATE_KEYS:
                out[f"{key}.{k}"] = sparse[f"{key}.{k}"][mask]
            out[f"{key}.{LIVE_IDS}"] = sparse[f"{key}.ids"]
    return out


def apply_delta(state: Dict, inc: Dict, configs: Dict[str, dict], where: str) -> Dict:
    """`state` (full sparse state) moved forward by the incremental `inc`."""
    out = {k: v for k, v in inc.items() if GROUP_SUFFIX in k}
    for cfg in configs.values():
        for key in cfg["tables"]:
            try:
                ids, live, changed = state[f"{key}.ids"], inc[f"{key}.{LIVE_IDS}"], inc[f"{key}.ids"]
            except KeyError as e:
                raise CheckpointCorruptError(f"{where}: table {key!r} lacks {e} in the chain") from None
            keep = torch.isin(ids, live) & ~torch.isin(ids, changed)
            for k in STATE_KEYS:
                out[f"{key}.{k}"] = torch.cat([state[f"{key}.{k}"][keep], inc[f"{key}.{k}"]])
            if out[f"{key}.ids"].numel() != live.numel():
                raise CheckpointCorruptError(
                    f"{where}: table {key!r} lists {live.numel()} live ids but the chain has rows for "
                    f"{out[f'{key}.ids'].numel()} of them; the chain is inconsistent")
    return out


def check_compatible(saved: Dict[str, dict], entries: List[GroupEntry], where: str, strict: bool) -> None:
    """Raises IncompatibleCheckpointError listing every difference, with both values."""
    model = {e.key: e for e in entries}
    problems = []
    saved_tables = {k for c in saved.values() for k in c["tables"]}
    model_tables = {k for e in entries for k in e.table_keys}
    if saved_tables - model_tables:
        problems.append(f"tables {sorted(saved_tables - model_tables)} are in the checkpoint but not in the model")
    if model_tables - saved_tables:
        problems.append(f"tables {sorted(model_tables - saved_tables)} are in the model but not in the checkpoint")
    for key, cfg in saved.items():
        entry = model.get(key)
        if entry is None:
            continue
        mine = entry.config(cfg["slot_width"])
        fields = [f for f in cfg if f not in ("slot_kind", "slot_width")]
        for field in fields if strict else SHAPE_FIELDS:
            if cfg.get(field) != mine.get(field):
                problems.append(f"table {key!r}: {field} is {cfg.get(field)!r} in the checkpoint but "
                                f"{mine.get(field)!r} in the model")
        attached = entry.group.slot_kind
        if attached is not None and cfg["slot_kind"] is not None and attached != cfg["slot_kind"]:
            problems.append(f"table {key!r}: optimizer slots were saved for {cfg['slot_kind']!r} but the model's "
                            f"tables use {attached!r}")
    if problems:
        raise IncompatibleCheckpointError(f"{where} does not fit the model:\n  " + "\n  ".join(problems))

