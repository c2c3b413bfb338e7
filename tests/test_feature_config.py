"""Feature configs (YAML / JSON / dict) round-trip; bad configs and bad batches raise errors
that name the feature, key, column and types."""
import json

import pyarrow as pa
import pytest
import yaml

from recis.features import (FeatureConfigError, FeatureEngine, FeatureSpec, FeatureTypeError, Hash,
                            MissingColumnError, Mod, Truncate, load_specs)
from test_feature_engine import MIXED

CONFIG_YAML = """
features:
  - {name: user, kind: sparse, column: user_id, ops: [{op: hash}]}
  - {name: genres, kind: sparse, column: genres, ops: [{op: hash}, {op: truncate, max_len: 5}]}
  - {name: user_x_item, kind: sparse, cross: [user_id, item_id], ops: [{op: mod, n: 1000000}]}
  - {name: I1, kind: dense, column: I1, ops: [{op: fill_missing, value: 0}, {op: log1p}]}
  - {name: label, kind: label, column: label}
  - {name: title, kind: passthrough, column: title}
"""


def test_yaml_json_and_dict_configs_round_trip(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text(CONFIG_YAML)
    engine = FeatureEngine.from_config(path)
    assert [s.name for s in engine.specs] == ["user", "genres", "user_x_item", "I1", "label", "title"]
    assert engine.specs[1].ops == (Hash(0), Truncate(5))
    config = engine.to_config()
    assert config == yaml.safe_load(CONFIG_YAML)  # defaults are left out again
    json_path = tmp_path / "features.json"
    json_path.write_text(json.dumps(config))
    assert FeatureEngine.from_config(json_path).specs == engine.specs
    assert FeatureEngine.from_config(config).specs == engine.specs
    assert FeatureEngine.from_config(config["features"]).specs == engine.specs
    full = FeatureEngine(MIXED)
    assert FeatureEngine.from_config(full.to_config()).specs == full.specs
    assert engine.columns == ["user_id", "genres", "item_id", "I1", "label", "title"]


def test_specs_are_validated_dataclasses():
    spec = FeatureSpec("ids", "sparse", column="c", ops=[Hash(seed=3), Mod(10)])
    assert spec.ops == (Hash(3), Mod(10))
    with pytest.raises(FeatureConfigError, match="op 'mod': n must be an integer"):
        Mod(0)
    with pytest.raises(FeatureConfigError, match="feature 'ids': give exactly one of column and cross"):
        FeatureSpec("ids", "sparse")


@pytest.mark.parametrize("feature,message", [
    ({"name": "f", "kind": "sparse", "colum": "c"}, "feature 'f': unknown key 'colum'"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "mod", "m": 3}]},
     "feature 'f': op 'mod': unknown key 'm'"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "mod", "n": "3"}]},
     "feature 'f': op 'mod': n must be an integer"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "mod"}]}, "feature 'f': op 'mod': missing key 'n'"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "hsah"}]}, "feature 'f': unknown op 'hsah'"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "hash", "seed": 1.5}]},
     "feature 'f': op 'hash': seed must be an integer"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "bucketize", "boundaries": [3, 1]}]},
     "boundaries must be sorted"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "truncate", "max_len": 2, "keep": "middle"}]},
     "keep must be 'first' or 'last'"),
    ({"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "normalize", "mean": 0, "std": 0}]},
     "std must be a finite number > 0"),
    ({"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "clip"}]}, "needs min, max or both"),
    ({"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "fill_missing", "value": True}]},
     "value must be a string or a number"),
    ({"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "mod", "n": 2}]},
     "op 'mod' is not allowed in a dense feature"),
    ({"name": "f", "kind": "passthrough", "column": "c", "ops": ["hash"]}, "not allowed in a passthrough feature"),
    ({"name": "f", "kind": "tower", "column": "c"}, "feature 'f': kind must be one of"),
    ({"name": "f", "kind": "sparse", "column": 3}, "feature 'f': column must be a non-empty string"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": "hash"}, "feature 'f': ops must be a list"),
    ({"name": "f", "kind": "sparse", "cross": ["a"]}, "feature 'f': cross needs a list of at least 2"),
    ({"name": "f", "kind": "dense", "cross": ["a", "b"]}, "only sparse features can cross"),
    ({"name": "f", "kind": "sparse", "cross": ["a", {"col": "b"}]}, "a cross input is a name"),
    ({"name": "f", "kind": "sparse", "cross": ["a", "b"], "cross_cap": 0}, "cross_cap must be an integer in \\[1, 2\\*\\*64\\), got 0"),
    ({"kind": "sparse", "column": "c"}, "missing key 'name'"),
])
def test_config_errors_name_the_feature_and_key(feature, message):
    with pytest.raises(FeatureConfigError, match=message):
        FeatureEngine.from_config({"features": [feature]})


def test_config_level_errors():
    with pytest.raises(FeatureConfigError, match="unknown top-level key 'feature'"):
        load_specs({"feature": []})
    with pytest.raises(FeatureConfigError, match="defined twice"):
        load_specs([{"name": "a", "kind": "sparse", "column": "c"}] * 2)
    with pytest.raises(FeatureConfigError, match="cycle: a -> b -> a"):
        load_specs([{"name": "a", "kind": "sparse", "cross": ["b", "c"]},
                    {"name": "b", "kind": "sparse", "cross": ["a", "c"]}])
    with pytest.raises(FeatureConfigError, match="cross input 'd' is a dense feature"):
        load_specs([{"name": "x", "kind": "sparse", "cross": [{"feature": "d"}, "c"]},
                    {"name": "d", "kind": "dense", "column": "c"}])
    with pytest.raises(FeatureConfigError, match=r"\{feature: nope\} is not a feature"):
        load_specs([{"name": "x", "kind": "sparse", "cross": [{"feature": "nope"}, "c"]}])


def test_missing_column_names_the_column_and_the_features():
    engine = FeatureEngine.from_config(CONFIG_YAML and yaml.safe_load(CONFIG_YAML))
    batch = pa.record_batch({"user_id": ["a"], "genres": [["g"]], "I1": [1], "label": [0], "title": ["t"]})
    with pytest.raises(MissingColumnError, match="column 'item_id' \\(read by feature 'user_x_item'\\)"):
        engine(batch)


@pytest.mark.parametrize("feature,data,message", [
    ({"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "log1p"}]}, pa.array(["x"]),
     r"feature 'f' \(column 'c'\): op 'log1p' expects floats or integers, found Arrow type string"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "hash"}]}, pa.array([1.5]),
     r"op 'hash' expects integers or strings \(utf8 / binary\), found Arrow type double"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "mod", "n": 3}]},
     pa.array(["x"]).dictionary_encode(), r"op 'mod' expects integers, found Arrow type dictionary<values=string"),
    ({"name": "f", "kind": "sparse", "column": "c"}, pa.array(["x"]),
     r"sparse feature 'f' \(column 'c'\): sparse ids must be integers, found Arrow type string; add a hash"),
    ({"name": "f", "kind": "dense", "column": "c"}, pa.array([[1.0]]),
     r"dense feature 'f' \(column 'c'\): expects one number per row, found Arrow type list<item: double>"),
    ({"name": "f", "kind": "sparse", "column": "c", "ops": [{"op": "fill_missing", "value": 1}]}, pa.array(["x", None]),
     r"feature 'f' \(column 'c'\): fill_missing value 1 \(int\) does not fit a str column \(Arrow type string\)"),
    ({"name": "f", "kind": "sparse", "column": "c"}, pa.array([{"a": 1}]), r"feature 'f' \(column 'c'\): unsupported "
                                                                           r"Arrow type struct<a: int64>"),
])
def test_type_mismatches_report_expected_and_found_types(feature, data, message):
    for fused in (True, False):
        with pytest.raises(FeatureTypeError, match=message):
            FeatureEngine([feature], fused=fused)(pa.table({"c": data}))


def test_dense_nulls_need_a_fill():
    engine = FeatureEngine([{"name": "f", "kind": "dense", "column": "c", "ops": [{"op": "log1p"}]}])
    with pytest.raises(ValueError, match="dense feature 'f' \\(column 'c'\\): 1 null values in this batch and no "
                                         "fill_missing op"):
        engine(pa.table({"c": [1.0, None]}))


def test_engine_takes_only_arrow_batches():
    with pytest.raises(TypeError, match="pyarrow RecordBatch or Table, got dict"):
        FeatureEngine([{"name": "f", "kind": "sparse", "column": "c"}])({"c": [1]})
