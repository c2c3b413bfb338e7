"""The state-dict keys of hash tables, in one place.

Every logical table saves `{prefix}{table}.{field}` for each field of `STATE_KEYS`; every table
group saves `{prefix}{first table}._group.{field}` for `GROUP_STATE_KEYS` and `SLOT_KIND` (the
code of the optimizer whose slots the rows hold, recis.vocabulary.OPTIM_KINDS, or -1).

>>> table_key("ec.", "user", "ids"), group_key("ec.", "user", "step")
('ec.user.ids', 'ec.user._group.step')
"""
__all__ = ["STATE_KEYS", "GROUP_STATE_KEYS", "SLOT_KIND", "GROUP_SUFFIX", "table_head", "table_key", "group_head",
           "group_key"]

STATE_KEYS = ("ids", "rows", "slots", "counts", "last_seen")  # per logical table (export / load)
GROUP_STATE_KEYS = ("step", "optimizer_step", "sketch")       # per group (group_state / load_group_state)
SLOT_KIND = "slot_kind"  # the group key save_groups adds to the group's own state
GROUP_SUFFIX = "._group."  # between a group's first table and its fields


def table_head(prefix: str, table: str) -> str:
    """What every key of `table` starts with."""
    return f"{prefix}{table}."


def table_key(prefix: str, table: str, field: str) -> str:
    return table_head(prefix, table) + field


def group_head(prefix: str, first_table: str) -> str:
    """What every key of the group whose first table is `first_table` starts with."""
    return f"{prefix}{first_table}{GROUP_SUFFIX}"


def group_key(prefix: str, first_table: str, field: str) -> str:
    return group_head(prefix, first_table) + field
