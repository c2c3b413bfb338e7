"""torchrec's EmbeddingBagCollection interface for a recis EmbeddingCollection.

torchrec's model classes (DLRM, DLRM_DCN, DLRM_Projection, SimpleDeepFMNN, ...) read their
collection's `embedding_bag_configs()` when they are built and call it on a KeyedJaggedTensor in
forward. `EmbeddingCollection` answers with configs derived here from its TableConfigs:

- `name`, `embedding_dim`, `feature_names`: the TableConfig's.
- `pooling`: SUM or MEAN from the combiner (unpooled tables have no EmbeddingBagConfig).
- `data_type`: from the row dtype (FP32).
- `num_embeddings`: the most rows the table holds: its capacity (`TableConfig.capacity` or
  `LFUEviction.capacity`), else `UNBOUNDED_NUM_EMBEDDINGS`, the largest int64, a sentinel for a
  table bounded by neither a vocabulary nor a capacity. Either way its ids are any int64 (not
  indices below num_embeddings) and `use_virtual_table` is True: rows exist once ids arrive.
- `init_fn`: fills a dense weight from the law of the table's initializer (`Initializer.init_`),
  with `weight_init_min` / `weight_init_max` its bounds when the law is uniform.

The configs come in the collection's output order (its table groups in order, each group's
tables in config order), so the keys of its KeyedTensor are the configs' feature names in
order, as for an EmbeddingBagCollection; that is the TableConfig order unless tables of
different configs (dim, combiner, initializer, admission, ...) interleave.

>>> from recis.nn import EmbeddingCollection, TableConfig, Uniform
>>> ec = EmbeddingCollection([TableConfig("user", 8, ["user_id"], initializer=Uniform(-0.1, 0.1)),
...                           TableConfig("item", 8, ["item_id"], combiner="mean", capacity=1000)])
>>> [(c.name, c.feature_names, c.pooling.name, c.num_embeddings == UNBOUNDED_NUM_EMBEDDINGS)
...  for c in ec.embedding_bag_configs()]
[('user', ['user_id'], 'SUM', True), ('item', ['item_id'], 'MEAN', False)]
>>> ec.embedding_bag_configs()[0].weight_init_max, ec.embedding_bag_configs()[1].num_embeddings
(0.1, 1000)
"""
from typing import List

UNBOUNDED_NUM_EMBEDDINGS = 2**63 - 1


def embedding_bag_config(table):
    """torchrec's EmbeddingBagConfig describing the recis TableConfig `table` (a pooled table)."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType, dtype_to_data_type

    if table.combiner is None:
        raise ValueError(f"table {table.name!r} is unpooled (combiner=None); torchrec's EmbeddingBagConfig "
                         "describes pooled tables (combiner 'sum' or 'mean')")
    capacity = table.effective_capacity
    kind, low, high, _ = table.initializer.spec(table.embedding_dim)
    bounds = (low, high) if kind == "uniform" else (None, None)
    return EmbeddingBagConfig(
        num_embeddings=capacity if capacity is not None else UNBOUNDED_NUM_EMBEDDINGS,
        embedding_dim=table.embedding_dim, name=table.name, data_type=dtype_to_data_type(table.dtype),
        feature_names=list(table.feature_names), weight_init_min=bounds[0], weight_init_max=bounds[1],
        init_fn=table.initializer.init_, use_virtual_table=True, pooling=PoolingType(table.combiner.upper()))


def embedding_bag_configs(collection) -> List:
    """The EmbeddingBagConfigs of an EmbeddingCollection (or its sharded form) in output order."""
    if collection.output != "keyed":
        raise ValueError(f"{type(collection).__name__}(output={collection.output!r}) returns a dict; torchrec's "
                         "EmbeddingBagCollection interface (embedding_bag_configs, a KeyedTensor out) needs "
                         "output='keyed'")
    by_name = {c.name: c for c in collection.configs}
    return [embedding_bag_config(by_name[name]) for group in collection.groups for name in group.names]
