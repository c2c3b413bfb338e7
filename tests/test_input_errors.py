"""Bad inputs and bad configurations fail loudly, with messages that name the problem, and
leave the tables as they were."""
import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recis.nn import EmbeddingCollection, HashEmbedding, LFUEviction, TableConfig, TableGroup, sparse_tables
from recis.optim import SparseAdam, SparseSGD

VALUES = torch.tensor([1, 2, 3], dtype=torch.int64)
OFFSETS = torch.tensor([0, 1, 3], dtype=torch.int64)


def _assert_untouched(emb):
    assert len(emb.table) == 0, "a rejected batch must not insert ids"
    assert emb.group.step == 0, "a rejected batch must not advance the table's step"


# --------------------------------------------------------------------------- id dtypes

@pytest.mark.parametrize("dtype,name", [
    (torch.float32, "float32"), (torch.float64, "float64"), (torch.int16, "int16"), (torch.int8, "int8"),
    (torch.uint8, "uint8"), (torch.bool, "bool"),
])
@pytest.mark.parametrize("training", [True, False])
def test_non_integer_or_narrow_ids_raise_type_error(dtype, name, training):
    emb = HashEmbedding(4).train(training)
    with pytest.raises(TypeError, match=name):
        emb(VALUES.to(dtype), OFFSETS)
    _assert_untouched(emb)


@pytest.mark.parametrize("method", ["find", "find_or_insert", "erase", "lookup"])
@pytest.mark.parametrize("dtype,name", [(torch.float32, "float32"), (torch.int16, "int16")])
def test_table_methods_reject_bad_id_dtypes(method, dtype, name):
    emb = HashEmbedding(4)
    with pytest.raises(TypeError, match=name):
        getattr(emb.table, method)(VALUES.to(dtype))
    assert len(emb.table) == 0


def test_raw_op_rejects_float_ids():
    emb = HashEmbedding(4)
    with pytest.raises(TypeError, match="Float"):
        torch.ops.recis.find(emb.group.handle, 0, VALUES.float())


def test_int32_ids_are_accepted_and_mean_the_same_ids():
    a, b = HashEmbedding(4, seed=1), HashEmbedding(4, seed=1)
    out32 = a(VALUES.int(), OFFSETS)
    out64 = b(VALUES, OFFSETS)
    assert torch.equal(out32, out64)
    assert sorted(a.table.export()["ids"].tolist()) == [1, 2, 3]


def test_offsets_dtype():
    emb = HashEmbedding(4)
    with pytest.raises(TypeError, match="int32"):
        emb(VALUES, OFFSETS.int())
    with pytest.raises(TypeError, match="float32"):
        emb(VALUES, OFFSETS.float())
    _assert_untouched(emb)


def test_per_sample_weights_dtype_and_shape():
    emb = HashEmbedding(4)
    with pytest.raises(TypeError, match="float64"):
        emb(VALUES, OFFSETS, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        emb(VALUES, OFFSETS, torch.ones(2))
    _assert_untouched(emb)


def test_values_must_be_1d():
    emb = HashEmbedding(4)
    with pytest.raises(ValueError):
        emb(VALUES.reshape(3, 1), OFFSETS)
    _assert_untouched(emb)


# --------------------------------------------------------------------------- offsets

@pytest.mark.parametrize("offsets,what", [
    ([0, 2, 1, 3], "non-decreasing"),
    ([0, 3, 0, 3], "non-decreasing"),
    ([0, -1, 3], "non-decreasing"),
    ([0, 1, 2], "last offset"),
    ([0, 1, 4], "last offset"),
    ([1, 2, 3], "start at 0"),
    ([-1, 0, 3], "start at 0"),
], ids=["not-monotone", "not-monotone-2", "negative", "last-short", "last-long", "first-1", "first-neg"])
@pytest.mark.parametrize("combiner", ["sum", "mean", None])
@pytest.mark.parametrize("training", [True, False])
def test_bad_offsets_raise_value_error(offsets, what, combiner, training):
    emb = HashEmbedding(4, combiner=combiner).train(training)
    with pytest.raises(ValueError, match=what):
        emb(VALUES, torch.tensor(offsets, dtype=torch.int64))
    _assert_untouched(emb)


def test_empty_offsets_raise_value_error():
    emb = HashEmbedding(4)
    with pytest.raises(ValueError):
        emb(VALUES, torch.empty(0, dtype=torch.int64))
    _assert_untouched(emb)


def test_bad_offsets_in_a_keyed_jagged_tensor():
    ec = EmbeddingCollection([TableConfig("t", 4, ["f", "g"])])
    kjt = KeyedJaggedTensor(keys=["f", "g"], values=torch.tensor([1, 2, 3, 4]),
                            offsets=torch.tensor([0, 2, 1, 3, 4]))
    with pytest.raises(ValueError, match="non-decreasing"):
        ec(kjt)
    assert len(ec.tables()["t"]) == 0


# --------------------------------------------------------------------------- devices

@pytest.mark.parametrize("which", ["values", "offsets", "per_sample_weights"])
def test_wrong_device_is_reported(which):
    emb = HashEmbedding(4)
    args = {"values": VALUES, "offsets": OFFSETS, "per_sample_weights": torch.ones(3)}
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError) as info:
        emb(args["values"], args["offsets"], args["per_sample_weights"])
    msg = str(info.value)
    assert "meta" in msg and "cpu" in msg, msg
    assert which in msg, msg
    _assert_untouched(emb)


def test_wrong_device_in_embedding_collection():
    ec = EmbeddingCollection([TableConfig("t", 4, ["f"])])
    kjt = KeyedJaggedTensor(keys=["f"], values=VALUES.to("meta"), offsets=OFFSETS.to("meta"))
    with pytest.raises(RuntimeError, match="meta"):
        ec(kjt)
    assert len(ec.tables()["t"]) == 0


# --------------------------------------------------------------------------- configs

@pytest.mark.parametrize("combiner", ["max", "SUM", "", 0])
def test_bad_combiner(combiner):
    with pytest.raises(ValueError, match="combiner"):
        HashEmbedding(4, combiner=combiner)
    with pytest.raises(ValueError, match="combiner"):
        TableConfig("t", 4, combiner=combiner)


@pytest.mark.parametrize("dim", [0, -1, -8])
def test_non_positive_dim(dim):
    with pytest.raises(ValueError, match="embedding_dim"):
        HashEmbedding(dim)
    with pytest.raises(ValueError, match="embedding_dim"):
        TableConfig("t", dim)


def test_non_int_dim():
    with pytest.raises(TypeError, match=r"embedding_dim must be an integer >= 1, got float \(4.0\)"):
        HashEmbedding(4.0)
    with pytest.raises(TypeError, match="embedding_dim must be an integer"):
        TableConfig("t", 4.5)


@pytest.mark.parametrize("init", ["glorot", "Uniform", "", "xavier"])
def test_unknown_initializer_name(init):
    with pytest.raises(ValueError, match="initializer"):
        HashEmbedding(4, initializer=init)
    with pytest.raises(ValueError, match="initializer"):
        TableConfig("t", 4, initializer=init)


def test_known_initializer_names_work():
    for name in ["zeros", "uniform", "normal", "truncated_normal", "xavier_uniform", "kaiming_normal"]:
        emb = HashEmbedding(4, initializer=name)
        assert emb(VALUES, OFFSETS).shape == (2, 4)


def test_bad_missing_mode():
    with pytest.raises(ValueError, match="missing"):
        HashEmbedding(4, missing="random")
    with pytest.raises(ValueError, match="missing"):
        TableConfig("t", 4, missing="random")


_BAD_NUMBERS = [  # (argument, bad value, error type): never rounded, parsed or wrapped around
    ("embedding_dim", True, TypeError), ("embedding_dim", 4.0, TypeError), ("embedding_dim", 0, ValueError),
    ("seed", 1.5, TypeError), ("seed", "7", TypeError), ("seed", True, TypeError), ("seed", 2**64, ValueError),
    ("seed", -(2**63) - 1, ValueError),
    ("capacity", 10.5, TypeError), ("capacity", "10", TypeError), ("capacity", True, TypeError),
    ("capacity", 0, ValueError), ("capacity", 2**63, ValueError),
]


def _table_args(arg, value):
    kw = {"embedding_dim": 4, "seed": 3, "capacity": None}
    kw[arg] = value
    return kw


@pytest.mark.parametrize("arg,value,err", _BAD_NUMBERS)
def test_table_numbers_are_checked_naming_the_argument_and_table(arg, value, err):
    kw = _table_args(arg, value)
    makers = {
        "HashEmbedding": lambda: HashEmbedding(kw["embedding_dim"], seed=kw["seed"], capacity=kw["capacity"],
                                               name="clicks"),
        "TableConfig": lambda: TableConfig("clicks", kw["embedding_dim"], seed=kw["seed"], capacity=kw["capacity"]),
        "TableGroup": lambda: TableGroup(kw["embedding_dim"], ["clicks"], [kw["seed"]], capacity=kw["capacity"]),
    }
    for what, make in makers.items():
        with pytest.raises(err) as info:
            make()
        msg = str(info.value)
        assert "'clicks'" in msg and arg in msg, (what, msg)


def test_capacity_and_lfu_capacity_must_agree():
    with pytest.raises(ValueError, match="table 'clicks': capacity=3 disagrees with LFUEviction"):
        HashEmbedding(4, name="clicks", capacity=3, eviction=LFUEviction(capacity=4))
    with pytest.raises(ValueError, match="table 'clicks': capacity=3 disagrees with LFUEviction"):
        TableConfig("clicks", 4, capacity=3, eviction=LFUEviction(capacity=4))


def test_table_names_and_seeds_are_lists_that_match():
    with pytest.raises(TypeError, match="names must be a list"):
        TableGroup(4, "abc", [1, 2, 3])           # a string is not three names
    with pytest.raises(ValueError, match="duplicate table names"):
        TableGroup(4, ["a", "a"], [1, 2])
    with pytest.raises(ValueError, match="without '.'"):
        HashEmbedding(4, name="a.b")
    with pytest.raises(ValueError, match="one seed per table name"):
        TableGroup(4, ["a", "b"], [1])
    with pytest.raises(TypeError, match="feature_names must be a list"):
        TableConfig("t", 4, feature_names="user_id")  # not ["u", "s", "e", ...]
    with pytest.raises(TypeError, match="reserve"):
        HashEmbedding(4).table.reserve(2.5)


def test_numpy_ints_are_ints():
    emb = HashEmbedding(np.int64(4), seed=np.uint64(2**64 - 1), capacity=np.int32(8))
    assert emb.embedding_dim == 4 and type(emb.embedding_dim) is int and emb.group.capacity == 8
    same = HashEmbedding(4, seed=-1)              # the signed spelling of the same 64-bit seed
    ids = torch.tensor([1, 2])
    assert torch.equal(emb.table.initial_rows(ids), same.table.initial_rows(ids))


def test_duplicate_table_names():
    with pytest.raises(ValueError, match="duplicate table names"):
        EmbeddingCollection([TableConfig("t", 4, ["a"]), TableConfig("t", 8, ["b"])])


def test_feature_claimed_by_two_tables():
    with pytest.raises(ValueError, match="'f'"):
        EmbeddingCollection([TableConfig("t", 4, ["f"]), TableConfig("u", 4, ["g", "f"])])


def test_duplicate_feature_in_one_table():
    with pytest.raises(ValueError, match="duplicate feature"):
        TableConfig("t", 4, ["a", "b", "a"])


def test_bad_collection_arguments():
    with pytest.raises(ValueError):
        EmbeddingCollection([])
    with pytest.raises(ValueError, match="output"):
        EmbeddingCollection([TableConfig("t", 4)], output="list")
    with pytest.raises(ValueError, match="dict"):
        EmbeddingCollection([TableConfig("t", 4, combiner=None)])


@pytest.mark.parametrize("factory", [
    lambda t: SparseSGD(t, lr=-0.1),
    lambda t: SparseAdam(t, lr=0.1, betas=(1.0, 0.9)),
    lambda t: SparseAdam(t, lr=0.1, eps=-1.0),
])
def test_bad_optimizer_hyperparameters(factory):
    with pytest.raises(ValueError):
        factory(sparse_tables(HashEmbedding(4)))


def test_one_sparse_optimizer_per_table():
    emb = HashEmbedding(4)
    opt = SparseSGD(sparse_tables(emb), lr=0.1)  # noqa: F841  (kept alive)
    with pytest.raises(ValueError, match="one sparse optimizer"):
        SparseAdam(sparse_tables(emb), lr=0.1)


# --------------------------------------------------------------------------- KJT features

def test_missing_feature_raises_key_error_naming_it():
    ec = EmbeddingCollection([TableConfig("t", 4, ["user_id", "item_id"])])
    kjt = KeyedJaggedTensor.from_lengths_sync(["user_id"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    with pytest.raises(KeyError, match="item_id"):
        ec(kjt)
    assert len(ec.tables()["t"]) == 0


def test_missing_feature_of_second_group_raises_key_error():
    ec = EmbeddingCollection([TableConfig("a", 4, ["fa"]), TableConfig("b", 8, ["fb"])])
    kjt = KeyedJaggedTensor.from_lengths_sync(["fa", "other"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    with pytest.raises(KeyError) as info:
        ec(kjt)
    assert "fb" in str(info.value) and "fa" not in str(info.value).split("keys")[0]
    assert all(len(t) == 0 for t in ec.tables().values())


def _with_extra_key():
    return KeyedJaggedTensor.from_lengths_sync(["user_id", "item_idd"], torch.tensor([1, 2, 3]),
                                               torch.tensor([1, 1, 1, 0]))


def test_a_key_no_table_serves_is_an_error_naming_it():
    """A misspelt feature name used to be skipped without a word (and never trained)."""
    ec = EmbeddingCollection([TableConfig("t", 4, ["user_id"])])
    with pytest.raises(KeyError) as info:
        ec(_with_extra_key())
    msg = str(info.value)
    assert "['item_idd']" in msg and "extra_keys='ignore'" in msg and "['user_id']" in msg
    assert len(ec.tables()["t"]) == 0


def test_extra_keys_ignore_skips_keys_no_table_serves():
    ec = EmbeddingCollection([TableConfig("t", 4, ["user_id"])], extra_keys="ignore")
    kt = ec(_with_extra_key())
    assert kt.keys() == ["user_id"] and kt.values().shape == (2, 4)
    assert sorted(ec.tables()["t"].export()["ids"].tolist()) == [1, 2]  # item_idd's id 3 went nowhere
    with pytest.raises(ValueError, match="extra_keys must be one of"):
        EmbeddingCollection([TableConfig("t", 4, ["user_id"])], extra_keys="warn")


def test_extra_keys_may_list_the_keys_to_skip():
    ec = EmbeddingCollection([TableConfig("t", 4, ["user_id"])], extra_keys=["item_idd"])
    assert ec(_with_extra_key()).values().shape == (2, 4)
    other = KeyedJaggedTensor.from_lengths_sync(["user_id", "other"], torch.tensor([1, 2, 3]),
                                                torch.tensor([1, 1, 1, 0]))
    with pytest.raises(KeyError, match="other"):
        ec(other)
    with pytest.raises(ValueError, match="which tables serve"):
        EmbeddingCollection([TableConfig("t", 4, ["user_id"])], extra_keys=["user_id"])


@pytest.mark.parametrize("extra_keys", ["error", "ignore"])
def test_sharded_collection_keeps_the_extra_keys_choice(extra_keys):
    from recis.distributed import shard

    model = shard(torch.nn.Sequential(EmbeddingCollection([TableConfig("t", 4, ["user_id"])],
                                                          extra_keys=extra_keys)))
    if extra_keys == "error":
        with pytest.raises(KeyError, match="item_idd"):
            model(_with_extra_key())
    else:
        assert model(_with_extra_key()).values().shape == (2, 4)


@pytest.mark.parametrize("dtype,name", [(torch.float32, "float32"), (torch.int16, "int16")])
def test_kjt_with_bad_id_dtype(dtype, name):
    ec = EmbeddingCollection([TableConfig("t", 4, ["f"])])
    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1, 2], dtype=dtype), torch.tensor([1, 1]))
    with pytest.raises(TypeError, match=name):
        ec(kjt)


def test_trainable_per_sample_weights_are_refused_not_silently_ignored():
    emb = HashEmbedding(4)
    weights = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="detach"):
        emb(torch.tensor([1, 2, 3]), torch.tensor([0, 3]), weights)
    emb(torch.tensor([1, 2, 3]), torch.tensor([0, 3]), weights.detach())  # fine
