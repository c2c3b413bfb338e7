"""Loading never executes code from a file, and damaged files are named.

A planted pickle whose unpickling would create a marker file is put in a checkpoint folder
under the names a loader might try, and in place of each real file (also with a manifest
rewritten to match it, as an attacker could): every load is refused and the marker never
appears. Corrupt, truncated or missing files are refused by name before the model changes.
"""
import hashlib
import json
import pathlib
import pickle
import re
from pathlib import Path

import pytest

import recis.checkpoint
from recis.checkpoint import (CheckpointCorruptError, CheckpointError, CheckpointManager, CheckpointNotFoundError,
                              export_for_serving, load_for_serving)
from recis.checkpoint.files import manifest_digest
from test_checkpoint_common import TinyCTR, assert_same_state, make_training, model_state, train_step

PLANTED_NAMES = ["model.pt", "optimizer.pt", "checkpoint.pth", "pytorch_model.bin", "state.pkl", "data.pkl",
                 "extra_state.pt"]


class Marker:
    """Unpickling this calls Path.touch(marker): code execution, made visible."""

    def __init__(self, path):
        self.path = Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "PWNED"
    data = pickle.dumps(Marker(marker))
    pickle.loads(data)  # the payload really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()  # ... and the tests below show it never is
    return data, marker


@pytest.fixture
def saved(tmp_path):
    model, opts = make_training()
    train_step(model, opts, 0)
    path = CheckpointManager(tmp_path / "ckpt").save(1, model, opts, {"k": 1})
    return path, model, opts


def rewrite_manifest_for(path: Path, name: str) -> None:
    """What an attacker with write access could do: make the manifest vouch for the file."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def attempt_load(path, model, opts):
    before = model_state(model)
    with pytest.raises(CheckpointError) as info:
        CheckpointManager(path.parent).load(path.name, model, opts)
    assert_same_state(model_state(model), before)  # refused before anything changed
    return str(info.value)


@pytest.mark.parametrize("name", PLANTED_NAMES)
def test_planted_pickle_next_to_a_checkpoint_is_refused_not_run(saved, payload, name):
    path, _, _ = saved
    data, marker = payload
    (path / name).write_bytes(data)
    fresh, fresh_opts = make_training(seed=3)
    message = attempt_load(path, fresh, fresh_opts)
    assert "does not list" in message and name in message
    assert not marker.exists()


@pytest.mark.parametrize("name", ["sparse.safetensors", "dense.safetensors", "state.safetensors", "state.json"])
@pytest.mark.parametrize("vouched", [False, True])
def test_pickle_in_place_of_a_checkpoint_file_is_refused_not_run(saved, payload, name, vouched):
    path, _, _ = saved
    data, marker = payload
    (path / name).write_bytes(data)
    if vouched:
        rewrite_manifest_for(path, name)
    fresh, fresh_opts = make_training(seed=3)
    message = attempt_load(path, fresh, fresh_opts)
    assert name in message
    assert re.search("not (a )?valid" if vouched else "bytes|checksum", message), message
    assert not marker.exists()


def test_pickle_as_manifest_or_lone_file_is_refused(saved, payload):
    path, _, _ = saved
    data, marker = payload
    lone = path.parent / "step-000000000999"
    lone.mkdir()
    (lone / "model.pt").write_bytes(data)
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert CheckpointManager(path.parent).latest().path == path  # never picked as latest
    with pytest.raises(CheckpointNotFoundError, match="manifest.json is missing"):
        CheckpointManager(path.parent).load(lone.name, make_training()[0])
    (path / "manifest.json").write_bytes(data)
    with pytest.raises(CheckpointCorruptError, match="manifest.json is not valid JSON"):
        CheckpointManager(path.parent).load(path.name, make_training()[0])
    assert not marker.exists()


def test_pickle_in_a_serving_export_is_refused(tmp_path, payload):
    data, marker = payload
    model, _ = make_training()
    out = export_for_serving(model, tmp_path / "serve")
    (out / "model.pt").write_bytes(data)
    with pytest.raises(CheckpointCorruptError, match="model.pt"):
        load_for_serving(out, TinyCTR())
    (out / "model.pt").unlink()
    (out / "tables.safetensors").write_bytes(data)
    with pytest.raises(CheckpointCorruptError, match="tables.safetensors"):
        load_for_serving(out, TinyCTR())
    assert not marker.exists()


def test_checkpoint_code_never_unpickles():
    """The loaders read safetensors and JSON only: no pickle, no torch.load, no eval."""
    sources = sorted(Path(recis.checkpoint.__file__).parent.glob("*.py"))
    assert len(sources) >= 5
    for src in sources:
        text = src.read_text()
        assert not re.search(r"\bpickle\b|torch\.load\(|\bmarshal\b|yaml\.load\(|\beval\(|\bexec\(", text), src


# ---------------------------------------------------------------------------- damaged files
def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["sparse.safetensors", "dense.safetensors", "state.safetensors", "state.json"])
def test_corrupt_truncated_or_missing_file_is_named(saved, name):
    path, _, _ = saved
    fresh, fresh_opts = make_training(seed=3)
    original = (path / name).read_bytes()
    flip_byte(path / name)
    assert re.search(rf"{re.escape(str(path / name))} fails its checksum", attempt_load(path, fresh, fresh_opts))
    (path / name).write_bytes(original[:-3])
    assert re.search(rf"{re.escape(str(path / name))} has {len(original) - 3} bytes, the manifest says "
                     rf"{len(original)}", attempt_load(path, fresh, fresh_opts))
    (path / name).unlink()
    with pytest.raises(CheckpointNotFoundError, match=rf"checkpoint file {re.escape(str(path / name))} is missing"):
        CheckpointManager(path.parent).load(path.name, fresh, fresh_opts)
    (path / name).write_bytes(original)
    assert CheckpointManager(path.parent).load(path.name, fresh, fresh_opts) == {"k": 1}


def test_edited_manifest_fails_its_own_checksum(saved):
    path, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["step"] = 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointCorruptError, match="manifest's own checksum"):
        CheckpointManager(path.parent).load(path.name, make_training()[0])
