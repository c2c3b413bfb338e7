"""Non-finite values (NaN, +inf, -inf) in dense and label columns: an error naming the feature,
column and row by default; `nan: fill` gives them the fill_missing value; `nan: keep` passes
them on. Checked against a plain-Python reference, fused and unfused, plain and
dictionary-encoded columns."""
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recis.features import FeatureConfigError, FeatureEngine, FeatureSpec, NonFiniteValueError

FILL, MEAN, STD = -1.5, 0.25, 2.0


def _features(nan):
    return [{"name": "x", "kind": "dense", "column": "x", "nan": nan,
             "ops": [{"op": "fill_missing", "value": FILL}, {"op": "normalize", "mean": MEAN, "std": STD}]},
            {"name": "y", "kind": "label", "column": "y"}]


def _reference(values, nan):
    """The dense column by hand: (error row or None, values)."""
    bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(v)]
    if nan == "error" and bad:
        return bad[0], None
    out = []
    for v in values:
        if v is None or (nan == "fill" and not math.isfinite(v)):
            v = FILL
        out.append(np.float32((v - MEAN) / STD))
    return None, out


values_st = st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf])),
                     min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(values_st, st.sampled_from(["error", "fill", "keep"]), st.booleans(), st.booleans(),
       st.sampled_from([pa.float64(), pa.float32()]))
def test_dense_non_finite_against_reference(values, nan, fused, dictionary, dtype):
    column = pa.array(values, type=dtype)
    values = column.to_pylist()  # float32 rounding, as stored
    if dictionary:
        column = column.dictionary_encode()
    table = pa.table({"x": column, "y": pa.array([1.0] * len(values))})
    engine = FeatureEngine(_features(nan), fused=fused)
    row, expected = _reference(values, nan)
    if row is not None:
        with pytest.raises(NonFiniteValueError, match=rf"dense feature 'x' \(column 'x'\): .* at row {row} of the "
                                                      r"record batch \(0-based") as err:
            engine(table)
        assert (err.value.feature, err.value.column, err.value.row) == ("x", "x", row)
        assert err.value.count == sum(v is not None and not math.isfinite(v) for v in values)
        return
    got = engine(table).dense[:, 0].numpy()
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    nans = sum(v is not None and not math.isfinite(v) for v in values)
    stats = engine.stats()["features"]["x"]
    assert stats["nans"] == (nans if nan == "fill" else 0)
    assert stats["nulls_filled"] == sum(v is None for v in values) + (nans if nan == "fill" else 0)


def test_the_default_is_an_error_for_labels_too():
    engine = FeatureEngine([{"name": "clicked", "kind": "label", "column": "click"}])
    table = pa.table({"click": pa.array([1.0, 0.0, 1.0, math.nan], type=pa.float64())})
    with pytest.raises(NonFiniteValueError, match=r"label feature 'clicked' \(column 'click'\): nan at row 3 of the "
                                                  r"record batch \(0-based; 1 non-finite value in this batch\)"):
        engine(table)
    keep = FeatureEngine([{"name": "clicked", "kind": "label", "column": "click", "nan": "keep"}])
    assert math.isnan(keep(table).labels[3].item())


def test_features_sharing_a_column_each_get_their_own_mode():
    table = pa.table({"x": pa.array([1.0, math.inf, 3.0]), "y": [0.0, 1.0, 0.0]})
    features = [{"name": "filled", "kind": "dense", "column": "x", "nan": "fill",
                 "ops": [{"op": "fill_missing", "value": 0.0}]},
                {"name": "kept", "kind": "dense", "column": "x", "nan": "keep"},
                {"name": "y", "kind": "label", "column": "y"}]
    for fused in (True, False):
        batch = FeatureEngine(features, fused=fused)(table)
        assert batch.dense[:, 0].tolist() == [1.0, 0.0, 3.0]
        assert batch.dense[:, 1].tolist() == [1.0, math.inf, 3.0]
    checked = features[:1] + [{"name": "checked", "kind": "dense", "column": "x"}] + features[2:]
    with pytest.raises(NonFiniteValueError, match=r"dense feature 'checked' \(column 'x'\): inf at row 1"):
        FeatureEngine(checked)(table)


def test_a_nan_before_bucketize_is_caught():
    """Bucketize would put NaN into the last bucket: the check reads the column, not the output."""
    table = pa.table({"x": pa.array([0.5, math.nan]), "y": [0.0, 1.0]})
    features = [{"name": "b", "kind": "dense", "column": "x", "ops": [{"op": "bucketize", "boundaries": [1.0]}]},
                {"name": "y", "kind": "label", "column": "y"}]
    with pytest.raises(NonFiniteValueError, match=r"dense feature 'b' \(column 'x'\): nan at row 1"):
        FeatureEngine(features)(table)


def test_integer_columns_are_not_scanned():
    table = pa.table({"x": pa.array([1, None, 3]), "y": [0, 1, 0]})
    batch = FeatureEngine([{"name": "x", "kind": "dense", "column": "x", "ops": [{"op": "fill_missing", "value": 0}]},
                           {"name": "y", "kind": "label", "column": "y"}])(table)
    assert batch.dense[:, 0].tolist() == [1.0, 0.0, 3.0]


@pytest.mark.parametrize("feature,message", [
    ({"name": "f", "kind": "dense", "column": "c", "nan": "drop"}, "feature 'f': nan must be one of error, fill, keep"),
    ({"name": "f", "kind": "dense", "column": "c", "nan": "fill"}, "feature 'f': nan: fill needs a fill_missing op"),
    ({"name": "f", "kind": "sparse", "column": "c", "nan": "keep"}, "feature 'f': nan applies to dense and label"),
])
def test_nan_option_errors_name_the_feature(feature, message):
    with pytest.raises(FeatureConfigError, match=message):
        FeatureEngine([feature])


def test_nan_option_round_trips_through_the_config():
    spec = FeatureSpec.from_dict({"name": "f", "kind": "dense", "column": "c", "nan": "fill",
                                  "ops": [{"op": "fill_missing", "value": 0.0}]})
    assert spec.to_dict()["nan"] == "fill" and FeatureSpec.from_dict(spec.to_dict()) == spec
    assert "nan" not in FeatureSpec("g", "dense", column="c").to_dict()
