"""Image and fixed-shape tensor features: Pillow equality, reshape equality, named bad rows, specs."""
import io
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from recis.features import Batch, FeatureConfigError, FeatureEngine, FeatureSpec, FeatureTypeError, RowError
from recis.features.spec import load_specs, specs_to_config
from recis.towers import FeatureInfo


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def pillow_reference(data: bytes, mode: str, size=None, resample=Image.Resampling.BILINEAR) -> torch.Tensor:
    """What Pillow itself gives for these bytes: [C, H, W] float32 pixels / 255."""
    img = Image.open(io.BytesIO(data)).convert(mode)
    if size is not None:
        img = img.resize((size[1], size[0]), resample=resample)
    arr = np.asarray(img) / 255
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)


def images(n=4, shape=(28, 28, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
@pytest.mark.parametrize("size", [(28, 28), (64, 64), (40, 20), None])
def test_image_equals_pillows_decode_and_resize(fmt, channels, mode, size):
    data = [encode(p, fmt) for p in images()]
    opts = {"channels": channels} | ({"size": list(size)} if size else {})
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "png", "image": opts}])
    out = engine(pa.record_batch({"png": pa.array(data, pa.binary())})).tensors["img"]
    h, w = size or (28, 28)
    assert out.shape == (4, channels, h, w) and out.dtype == torch.float32
    for i, b in enumerate(data):
        assert torch.equal(out[i], pillow_reference(b, mode, size))


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_every_resample_filter_is_pillows(resample):
    data = [encode(p, "PNG") for p in images(2)]
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "c",
                             "image": {"size": [37, 53], "resample": resample}}])
    out = engine(pa.record_batch({"c": pa.array(data, pa.large_binary())})).tensors["img"]
    for i, b in enumerate(data):
        assert torch.equal(out[i], pillow_reference(b, "RGB", (37, 53), Image.Resampling[resample.upper()]))


def test_scaling_is_exact_for_every_byte_value():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "c", "image": {"channels": 1}}])
    out = engine(pa.record_batch({"c": [encode(x, "PNG")]})).tensors["img"]
    assert torch.equal(out[0, 0], torch.from_numpy((x / 255).astype(np.float32)))


def test_normalization_per_channel():
    data = [encode(p, "PNG") for p in images(3)]
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "c", "image": {"mean": mean, "std": std}}])
    out = engine(pa.record_batch({"c": data})).tensors["img"]
    for i, b in enumerate(data):
        ref = (pillow_reference(b, "RGB") - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_augment_flip_and_crop_keep_the_pixels():
    """hflip=1 is the mirror image; a padded crop is a window of the zero-padded image."""
    data = [encode(p, "PNG") for p in images(6, (12, 10, 3))]
    refs = [pillow_reference(b, "RGB") for b in data]
    flip = FeatureEngine([{"name": "img", "kind": "image", "column": "c", "image": {"augment": {"hflip": 1.0}}}])
    out = flip(pa.record_batch({"c": data})).tensors["img"]
    assert all(torch.equal(out[i], refs[i].flip(-1)) for i in range(6))
    crop = FeatureEngine([{"name": "img", "kind": "image", "column": "c", "image": {"augment": {"crop_padding": 3}}}])
    out = crop(pa.record_batch({"c": data})).tensors["img"]
    shifts = set()
    for i, ref in enumerate(refs):
        padded = torch.nn.functional.pad(ref, (3, 3, 3, 3))
        found = [(dy, dx) for dy in range(7) for dx in range(7)
                 if torch.equal(out[i], padded[:, dy:dy + 12, dx:dx + 10])]
        assert found, f"row {i} is no window of its padded image"
        shifts.add(found[0])
    assert len(shifts) > 1  # rows draw their own crops
    again = FeatureEngine(crop.specs)(pa.record_batch({"c": data})).tensors["img"]
    assert torch.equal(out, again)  # a fresh engine with the same seed: the same crops
    later = crop(pa.record_batch({"c": data})).tensors["img"]
    assert not torch.equal(out, later)  # the next call of the engine: other crops


def test_decoding_does_not_touch_the_other_features():
    data = [encode(p, "PNG") for p in images(3)]
    engine = FeatureEngine([{"name": "u", "kind": "sparse", "column": "u", "ops": ["hash"]},
                            {"name": "img", "kind": "image", "column": "c", "image": {"channels": 1}},
                            {"name": "y", "kind": "label", "column": "y"}])
    batch = engine(pa.record_batch({"u": ["a", "b", "a"], "c": data, "y": [1.0, 0.0, 1.0]}))
    assert batch.labels.tolist() == [1.0, 0.0, 1.0] and batch.sparse.keys() == ["u"]
    assert list(batch.tensors) == ["img"] and batch.tensors["img"].shape == (3, 1, 28, 28)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tensors["img"], batch.tensors["img"])
    info = FeatureInfo.of_engine(engine)
    assert info.tensors == ("img",) and info.sparse == ("u",) and info.labels == ("y",)


# ---- bad rows --------------------------------------------------------------------------------


def test_corrupt_and_null_images_are_named_by_row():
    good = encode(images(1)[0], "PNG")
    engine = FeatureEngine([{"name": "photo", "kind": "image", "column": "png", "image": {"size": [8, 8]}}])
    data = pa.array([good, good[:40], None, b"\x89PNG garbage", good], pa.binary())
    with pytest.raises(RowError) as err:
        engine(pa.record_batch({"png": data}))
    e = err.value
    assert (e.feature, e.column, e.kind, e.rows) == ("photo", "png", "image", (1, 2, 3))
    assert "image feature 'photo' (column 'png'): row 1 of the record batch" in str(e)
    assert "null" in e.reasons[1] and "does not decode" in e.reasons[2]
    again = pickle.loads(pickle.dumps(e))
    assert (again.rows, again.reasons, str(again)) == (e.rows, e.reasons, str(e))


def test_images_without_size_must_share_one():
    small, big = encode(images(1, (8, 8, 3))[0], "PNG"), encode(images(1, (9, 8, 3))[0], "PNG")
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "c"}])
    with pytest.raises(RowError, match=r"row 2 of the record batch .*decodes to 9x8 \(HxW\), other rows to 8x8"):
        engine(pa.record_batch({"c": [small, small, big]}))
    assert engine(pa.record_batch({"c": [small]})).tensors["img"].shape == (1, 3, 8, 8)
    with pytest.raises(RowError, match=r"row 0 .*decodes to 9x8"):  # later batches keep the first size
        engine(pa.record_batch({"c": [big]}))


def test_image_column_must_be_binary():
    engine = FeatureEngine([{"name": "img", "kind": "image", "column": "c"}])
    with pytest.raises(FeatureTypeError, match=r"image feature 'img' \(column 'c'\): expects encoded image bytes"):
        engine(pa.record_batch({"c": ["not bytes"]}))


# ---- tensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("list_type", ["list", "large_list", "fixed"])
def test_tensor_equals_numpy_reshape(list_type):
    rng = np.random.default_rng(1)
    flat = rng.normal(size=(5, 24)).astype(np.float32)
    value_type = pa.list_(pa.float32(), 24) if list_type == "fixed" else (
        pa.large_list(pa.float32()) if list_type == "large_list" else pa.list_(pa.float32()))
    col = pa.array(list(flat), value_type)
    engine = FeatureEngine([{"name": "frames", "kind": "tensor", "column": "f", "shape": [2, 3, 4]}])
    out = engine(pa.record_batch({"f": col}).slice(1, 3)).tensors["frames"]  # an offset slice too
    assert torch.equal(out, torch.from_numpy(flat[1:4].reshape(3, 2, 3, 4)))


def test_tensor_of_integers_is_float32():
    engine = FeatureEngine([{"name": "t", "kind": "tensor", "column": "f", "shape": [2]}])
    out = engine(pa.record_batch({"f": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64()))})).tensors["t"]
    assert out.dtype == torch.float32 and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_tensor_rows_of_another_length_or_null_are_named():
    engine = FeatureEngine([{"name": "frames", "kind": "tensor", "column": "f", "shape": [2, 2]}])
    with pytest.raises(RowError) as err:
        engine(pa.record_batch({"f": pa.array([[1, 2, 3, 4], [1, 2, 3], None, [1, 2, 3, 4, 5], [0, 0, 0, 0]])}))
    assert err.value.rows == (1, 2, 3) and err.value.column == "f" and err.value.feature == "frames"
    assert err.value.reasons == ("3 numbers, the shape (2, 2) needs 4", "null (a tensor row needs its values)",
                                 "5 numbers, the shape (2, 2) needs 4")
    with pytest.raises(RowError, match=r"row 1 of the record batch \(0-based\): a null at position 2"):
        engine(pa.record_batch({"f": pa.array([[1, 2, 3, 4], [1, 2, None, 4]])}))
    with pytest.raises(FeatureTypeError, match=r"tensor feature 'frames' \(column 'f'\): expects a list of numbers"):
        engine(pa.record_batch({"f": pa.array([["a"] * 4])}))


# ---- specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,message", [
    ({"image": {"channels": 2}}, r"feature 'img': image.channels must be 1 \(grayscale"),
    ({"image": {"size": [28]}}, r"feature 'img': image.size must be \[height, width\]"),
    ({"image": {"size": [0, 28]}}, r"feature 'img': image.size\[0\] must be an integer"),
    ({"image": {"resample": "box"}}, r"feature 'img': image.resample must be one of nearest, bilinear"),
    ({"image": {"mean": [0.5, 0.5, 0.5]}}, r"feature 'img': image.mean and image.std go together"),
    ({"image": {"channels": 1, "mean": [0.5, 0.5], "std": [1, 1]}},
     r"image.mean has 2 value\(s\), image.channels is 1"),
    ({"image": {"std": [0.1, 0.0, 0.1], "mean": [0, 0, 0]}}, r"image.std\[1\] must be a finite number > 0"),
    ({"image": {"augment": {"hflip": 1.5}}}, r"image.augment.hflip must be a finite number in \[0, 1\]"),
    ({"image": {"augment": {"flip": 0.5}}}, r"feature 'img': image.augment: unknown key 'flip'"),
    ({"image": {"sizes": [2, 2]}}, r"feature 'img': image: unknown key 'sizes'"),
    ({"ops": ["hash"]}, r"feature 'img': op 'hash' is not allowed in an image feature"),
    ({"shape": [2]}, r"feature 'img': shape applies to tensor features, this one is image"),
])
def test_image_spec_errors_name_feature_and_option(bad, message):
    with pytest.raises(FeatureConfigError, match=message):
        FeatureSpec.from_dict({"name": "img", "kind": "image", "column": "c", **bad})


def test_tensor_spec_errors():
    with pytest.raises(FeatureConfigError, match=r"feature 't': a tensor feature needs shape"):
        FeatureSpec.from_dict({"name": "t", "kind": "tensor", "column": "c"})
    with pytest.raises(FeatureConfigError, match=r"feature 't': shape\[1\] must be an integer"):
        FeatureSpec.from_dict({"name": "t", "kind": "tensor", "column": "c", "shape": [2, -1]})
    with pytest.raises(FeatureConfigError, match=r"feature 't': image options apply to image features"):
        FeatureSpec.from_dict({"name": "t", "kind": "tensor", "column": "c", "shape": [2], "image": {}})
    with pytest.raises(FeatureConfigError, match=r"feature 't': a tensor feature reads one column: give column"):
        FeatureSpec.from_dict({"name": "t", "kind": "tensor", "cross": ["a", "b"], "shape": [2]})


image_options = st.fixed_dictionaries({}, optional={
    "channels": st.sampled_from([1, 3]),
    "size": st.tuples(st.integers(1, 512), st.integers(1, 512)).map(list),
    "resample": st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos"]),
    "augment": st.fixed_dictionaries({}, optional={"hflip": st.floats(0, 1), "crop_padding": st.integers(0, 8),
                                                   "seed": st.integers(0, 2 ** 64 - 1)})})


@settings(max_examples=60, deadline=None)
@given(image_options, st.lists(st.integers(1, 64), min_size=1, max_size=4))
def test_specs_round_trip(opts, shape):
    ch = opts.get("channels", 3)
    if opts.get("size") is not None and len(opts) % 2:
        opts = dict(opts, mean=[0.5] * ch, std=[0.25] * ch)
    specs = load_specs([{"name": "img", "kind": "image", "column": "c", "image": opts},
                        {"name": "t", "kind": "tensor", "column": "f", "shape": shape}])
    config = specs_to_config(specs)
    assert load_specs(config) == specs
    assert load_specs(config)[0].image.to_dict() == config["features"][0].get("image", {"channels": 3})
