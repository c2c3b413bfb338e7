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
step. The tables copy out only those rows (HashTable.export(since=S)). Ids that disappear
(eviction, `erase`) are the parent's ids the table no longer finds: the manager keeps the sorted
ids of its last checkpoint (8 bytes per live id) and stores the gone ones as `removed_ids`, with
`live_count` as a check (checkpoints before this stored every live id, `live_ids`; both load).

Each table's rows are stored in placement order with a row index (recis.checkpoint.placement),
so that loading ranks read only the rows they will own.
"""
import contextlib
import functools
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from recis.checkpoint import placement
from recis.checkpoint.errors import CheckpointCorruptError, CheckpointError, IncompatibleCheckpointError
from recis.nn import TableGroup, named_table_groups
from recis.nn.hash_table import split_eviction
from recis.nn.state_keys import GROUP_SUFFIX, STATE_KEYS

ROW_FIELDS = STATE_KEYS
LIVE_IDS = "live_ids"        # incremental checkpoints before removed_ids: every live id of the table
REMOVED_IDS = "removed_ids"  # incremental: the parent's ids that are gone
LIVE_COUNT = "live_count"    # incremental: the table's live ids (a check on the chain)
STATS = ("inserts", "evictions", "not_admitted")
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


def slot_width(group: TableGroup) -> int:
    """The optimizer slots per row of `group` (the shape of an export of no rows)."""
    return int(group.tables[0].export(since=2**32 - 1)["slots"].shape[1])


def configs_of(entries: List[GroupEntry]) -> Dict[str, dict]:
    return {e.key: e.config(slot_width(e.group)) for e in entries}


def check_quiescent(entries: List[GroupEntry]) -> None:
    """Refuses to save while gradients wait for an optimizer step: they are not part of the
    state, and rows they would change later could be missed by an incremental save."""
    busy = {e.key: e.pending_rows() for e in entries if e.pending_rows()}
    if busy:
        raise CheckpointError(f"tables {sorted(busy)} hold pending sparse gradients of {busy} rows (between backward "
                              "and optimizer.step(), e.g. mid gradient accumulation); save after optimizer.step() "
                              "or zero_grad()")


@contextlib.contextmanager
def exporting_since(entries: List[GroupEntry], since: Dict[str, int]):
    """Within the block, the tables' state_dict entries hold only the rows touched since the
    step `since[group key]` (HashTable.export(since=...): the table copies out just those rows),
    so that an incremental save never exports a whole table."""
    patched = []
    try:
        for e in entries:
            for t in e.group.tables:
                t.export = functools.partial(type(t).export, t, since=since[e.key])
                patched.append(t)
        yield
    finally:
        for t in patched:
            t.__dict__.pop("export", None)


def check_steps(entries: List[GroupEntry], since: Dict[str, int]) -> None:
    for e in entries:
        if e.group.step < since[e.key]:
            raise CheckpointError(f"table group {e.key!r}: its step went back from {since[e.key]} to {e.group.step} "
                                  "since the last checkpoint; save a full checkpoint")


def delta(sparse: Dict, entries: List[GroupEntry], snapshots: Dict[str, torch.Tensor]) -> Dict:
    """Completes the incremental form of `sparse` (whose tables hold the rows touched since the
    parent, see exporting_since): per table the ids of the parent (`snapshots`: sorted) that are
    gone since (`removed_ids`) and the number of live ids (`live_count`)."""
    out = dict(sparse)
    for e in entries:
        for table, key in zip(e.group.tables, e.table_keys):
            if f"{key}.ids" not in sparse:
                continue
            before = snapshots[key]
            gone = table.find(before) < 0 if before.numel() else torch.zeros(0, dtype=torch.bool)
            out[f"{key}.{REMOVED_IDS}"] = before[gone.to(before.device)].cpu()
            out[f"{key}.{LIVE_COUNT}"] = torch.tensor(len(table), dtype=torch.int64)
    return out


def snapshots_after(sparse: Dict, entries: List[GroupEntry], parent: Optional[Dict[str, torch.Tensor]]) -> Dict:
    """The sorted live ids of each table after saving `sparse` (all rows of a full save; for an
    incremental one, the parent's ids minus those removed plus those touched)."""
    out = {}
    for e in entries:
        for key in e.table_keys:
            if f"{key}.ids" not in sparse:
                continue
            ids = sparse[f"{key}.ids"].cpu()
            if parent is not None:
                before = parent[key]
                removed = sparse[f"{key}.{REMOVED_IDS}"]
                kept = before[~torch.isin(before, removed)] if removed.numel() else before
                pos = torch.searchsorted(kept, ids).clamp_(max=max(kept.numel() - 1, 0))
                known = kept[pos] == ids if kept.numel() else torch.zeros_like(ids, dtype=torch.bool)
                ids = torch.cat([kept, ids[~known]])
            out[key] = torch.sort(ids).values
    return out


def arranged(sparse: Dict, entries: List[GroupEntry]) -> Dict:
    """`sparse` with each table's rows in placement order plus its row index (see placement)."""
    out = dict(sparse)
    for e in entries:
        for key, seed in zip(e.table_keys, e.group.config["seeds"]):
            if f"{key}.ids" not in sparse:
                continue
            fields = {f: sparse[f"{key}.{f}"] for f in STATE_KEYS if f"{key}.{f}" in sparse}
            fields, index = placement.arrange({f: v.cpu() for f, v in fields.items()}, int(seed))
            out.update({f"{key}.{f}": v for f, v in fields.items()})
            out[f"{key}.{placement.INDEX}"] = index
    return out


def apply_delta(state: Dict, inc: Dict, configs: Dict[str, dict], where: str, filtered: bool = False) -> Dict:
    """`state` (full sparse state) moved forward by the incremental `inc`: rows removed since
    (`removed_ids`; checkpoints before it listed every live id, `live_ids`) go, touched rows are
    replaced. `filtered`: both hold only the rows this rank keeps (the live count is not checked)."""
    out = {k: v for k, v in inc.items() if GROUP_SUFFIX in k}
    for cfg in configs.values():
        for key in cfg["tables"]:
            try:
                ids, changed = state[f"{key}.ids"], inc[f"{key}.ids"]
            except KeyError as e:
                raise CheckpointCorruptError(f"{where}: table {key!r} lacks {e} in the chain") from None
            removed, live = inc.get(f"{key}.{REMOVED_IDS}"), inc.get(f"{key}.{LIVE_IDS}")
            if removed is not None:
                keep = ~(torch.isin(ids, removed) | torch.isin(ids, changed))
            elif live is not None:
                keep = torch.isin(ids, live) & ~torch.isin(ids, changed)
            else:
                raise CheckpointCorruptError(f"{where}: table {key!r} lists neither its removed nor its live ids")
            for k in STATE_KEYS:
                out[f"{key}.{k}"] = torch.cat([state[f"{key}.{k}"][keep], inc[f"{key}.{k}"]])
            count = out[f"{key}.ids"].numel()
            want = live.numel() if live is not None else (
                None if filtered or f"{key}.{LIVE_COUNT}" not in inc else int(inc[f"{key}.{LIVE_COUNT}"].sum()))
            if want is not None and count != want:
                raise CheckpointCorruptError(
                    f"{where}: table {key!r} lists {want} live ids but the chain has rows for {count} of them; the "
                    "chain is inconsistent")
    return out


def strip_layout(sparse: Dict) -> Dict:
    """The state_dict entries of a sparse state read from a checkpoint (without the row indexes
    and the incremental id lists)."""
    suffixes = tuple(f".{k}" for k in (placement.INDEX, LIVE_IDS, REMOVED_IDS, LIVE_COUNT))
    return {k: v for k, v in sparse.items() if GROUP_SUFFIX in k or not k.endswith(suffixes)}


def table_stats(entries: List[GroupEntry]) -> Dict[str, Dict[str, int]]:
    """The counters of each table group's stats() that a checkpoint restores."""
    out = {}
    for e in entries:
        stats = e.group.stats()
        out[e.key] = {k: int(stats[k]) for k in STATS}
    return out


def load_table_stats(entries: List[GroupEntry], saved: List[Dict[str, Dict[str, int]]]) -> None:
    """Sets each group's counters to the sum of `saved` (one dict per saving rank this rank
    takes over; an empty list sets them to zero). Groups the checkpoint has no counters for
    (it was written before they were saved) keep theirs."""
    for e in entries:
        parts = [s[e.key] for s in saved if e.key in s]
        if saved and not parts:
            continue
        e.group.load_stats({k: sum(int(p.get(k, 0)) for p in parts) for k in STATS})


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

