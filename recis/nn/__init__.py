"""recis.nn: hash embedding tables and the modules built on them."""
from typing import List, Tuple

from torch import nn

from recis.nn.embedding_collection import EmbeddingCollection
from recis.nn.hash_embedding import HashEmbedding
from recis.nn.hash_table import HashTable, TableGroup
from recis.nn.initializers import (Constant, Initializer, KaimingNormal, KaimingUniform, Normal, TruncatedNormal,
                                   Uniform, XavierNormal, XavierUniform, Zeros)
from recis.nn.policies import FrequencyAdmission, LFUEviction, TTLEviction
from recis.nn.table_config import TableConfig


def named_table_groups(model: nn.Module, remove_duplicate: bool = True) -> List[Tuple[str, TableGroup]]:
    """(state_dict prefix of the owning module, group) for every table group of `model`, in module order."""
    out = []
    for name, module in model.named_modules(remove_duplicate=remove_duplicate):
        prefix = f"{name}." if name else ""
        if isinstance(module, EmbeddingCollection):
            out.extend((prefix, g) for g in module.groups)
        elif isinstance(module, HashEmbedding):
            out.append((prefix, module.group))
    return out


def sparse_tables(model: nn.Module) -> List[HashTable]:
    """Every hash table of `model`, in module order; give them to a recis.optim optimizer."""
    seen, tables = set(), []
    for _, group in named_table_groups(model):
        if id(group) not in seen:
            seen.add(id(group))
            tables.extend(group.tables)
    return tables


__all__ = [
    "EmbeddingCollection", "TableConfig", "HashEmbedding", "HashTable", "TableGroup", "sparse_tables",
    "named_table_groups",
    "FrequencyAdmission", "TTLEviction", "LFUEviction", "Initializer", "Constant", "Zeros", "Uniform", "Normal",
    "TruncatedNormal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal",
]
