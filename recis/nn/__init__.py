"""recis.nn: hash embedding tables and the modules built on them."""
from typing import List

from torch import nn

from recis.nn.embedding_collection import EmbeddingCollection, TableConfig
from recis.nn.hash_embedding import HashEmbedding
from recis.nn.hash_table import HashTable, TableGroup
from recis.nn.initializers import (Constant, Initializer, KaimingNormal, KaimingUniform, Normal, TruncatedNormal,
                                   Uniform, XavierNormal, XavierUniform, Zeros)
from recis.nn.policies import FrequencyAdmission, LFUEviction, TTLEviction


def sparse_tables(model: nn.Module) -> List[HashTable]:
    """Every hash table of `model`, in module order; give them to a recis.optim optimizer."""
    seen, tables = set(), []
    for module in model.modules():
        groups = getattr(module, "groups", None) if isinstance(module, EmbeddingCollection) else None
        if isinstance(module, HashEmbedding):
            groups = [module.group]
        for group in groups or []:
            if id(group) not in seen:
                seen.add(id(group))
                tables.extend(group.tables)
    return tables


__all__ = [
    "EmbeddingCollection", "TableConfig", "HashEmbedding", "HashTable", "TableGroup", "sparse_tables",
    "FrequencyAdmission", "TTLEviction", "LFUEviction", "Initializer", "Constant", "Zeros", "Uniform", "Normal",
    "TruncatedNormal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal",
]
