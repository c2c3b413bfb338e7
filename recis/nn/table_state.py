"""state_dict support shared by the modules that own table groups (keys: recis.nn.state_keys)."""
from typing import Dict, Iterable, List

import torch

from recis.nn.hash_table import TableGroup
from recis.nn.state_keys import GROUP_STATE_KEYS, SLOT_KIND, STATE_KEYS, group_head, table_head, table_key
from recis.vocabulary import OPTIM_KINDS, optimizer_of_code


def save_groups(groups: Iterable[TableGroup], destination: Dict, prefix: str) -> None:
    """Writes every logical table as `{prefix}{table}.{ids,rows,slots,counts,last_seen}` plus
    per-group `{prefix}{first table}._group.{step,sketch,slot_kind}`; all values are tensors."""
    for group in groups:
        for table in group.tables:
            for key, value in table.export().items():
                destination[table_key(prefix, table.name, key)] = value
        head = group_head(prefix, group.tables[0].name)
        for key, value in group.group_state().items():
            destination[head + key] = value
        code = OPTIM_KINDS[group.slot_kind] if group.slot_kind else -1
        destination[head + SLOT_KIND] = torch.tensor(code, dtype=torch.int64)


def load_groups(groups: Iterable[TableGroup], state_dict: Dict, prefix: str, strict: bool,
                missing_keys: List[str], unexpected_keys: List[str], error_msgs: List[str]) -> None:
    for group in groups:
        head = group_head(prefix, group.tables[0].name)
        # Keys under a table's prefix that no table or group field reads: unexpected, not ignored.
        known = {head + k for k in GROUP_STATE_KEYS + (SLOT_KIND,)}
        known.update(table_key(prefix, t.name, k) for t in group.tables for k in STATE_KEYS)
        heads = tuple(table_head(prefix, t.name) for t in group.tables)
        unexpected_keys.extend(k for k in state_dict if k.startswith(heads) and k not in known)
        kind_key = head + SLOT_KIND
        if kind_key in state_dict:
            code = int(state_dict[kind_key])
            saved_kind = optimizer_of_code(code).name if code >= 0 else None
            _adopt_slot_layout(group, saved_kind, state_dict, prefix)
        group.load_group_state({k[len(head):]: v for k, v in state_dict.items()
                                if k in known and k.startswith(head) and k != kind_key})
        for table in group.tables:
            keys = {k: table_key(prefix, table.name, k) for k in STATE_KEYS}
            absent = [full for full in keys.values() if full not in state_dict]
            if absent:
                missing_keys.extend(absent)
                continue
            try:
                table.clear()
                table.load({k: state_dict[full] for k, full in keys.items()})
            except (ValueError, TypeError, KeyError, RuntimeError) as e:
                error_msgs.append(f"table {table.name!r}: {e}")


def _adopt_slot_layout(group: TableGroup, saved_kind, state_dict: Dict, prefix: str) -> None:
    """A fresh module (no optimizer yet) takes the saved slot layout, so the optimizer that is
    created afterwards finds its state; an attached optimizer of another kind is an error."""
    if saved_kind is None or saved_kind == group.slot_kind:
        return
    if group.slot_kind is not None:
        raise ValueError(f"tables {group.names}: the state was saved with a {saved_kind} optimizer, but a "
                         f"{group.slot_kind} optimizer is attached")
    group.reserve_slots(saved_kind, state_dict[table_key(prefix, group.tables[0].name, "slots")].shape[1])


def move_groups(groups: Iterable[TableGroup], fn) -> None:
    """Moves the groups to where nn.Module._apply's `fn` sends tensors (.to(device), .cuda(),
    .cpu()); dtype casts leave them alone (tables store float32)."""
    for group in groups:
        target = fn(torch.empty(0, device=group.device)).device
        if target != group.device:
            group.to(target)


def groups_repr(groups: Iterable[TableGroup]) -> str:
    return ", ".join(f"{'+'.join(g.names)}(dim={g.embedding_dim}, live={len(g)})" for g in groups)
