"""Checkpoint paths stay inside the checkpoint root.

- An incremental checkpoint's parent is a checkpoint name in the same root: a manifest naming
  `../elsewhere/step-N`, an absolute path, or a parent that is a symbolic link out is refused.
- Every file read from a checkpoint is a regular file inside the checkpoint directory: a
  symbolic link (to outside the root, or to a sibling checkpoint) or a FIFO is refused by name.
- Cleanup removes only the temporary directories recis made (prefix + marker file), never a
  user's `.tmp-*` directory, a look-alike without the marker, or anything behind a link.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

from recis.checkpoint import CheckpointCorruptError, CheckpointError, CheckpointManager
from recis.checkpoint import files as ckfiles
from recis.checkpoint.files import manifest_digest
from test_checkpoint_common import assert_same_state, make_training, model_state, train_step

FILES = ["sparse.safetensors", "dense.safetensors", "state.safetensors", "state.json", "manifest.json"]


@pytest.fixture
def chain(tmp_path):
    """root/step-1 (full) and root/step-2 (incremental on step-1)."""
    root = tmp_path / "root"
    model, opts = make_training()
    mgr = CheckpointManager(root, keep_last=None, full_every=5)
    train_step(model, opts, 0)
    p1 = mgr.save(1, model, opts)
    train_step(model, opts, 1)
    p2 = mgr.save(2, model, opts)
    assert [i.kind for i in mgr.checkpoints()] == ["full", "incremental"]
    return root, p1, p2


def set_parent_name(path: Path, name: str) -> None:
    """What anyone who can write the manifest can do: point it elsewhere, digest and all."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["parent"]["name"] = name
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def refused_load(root: Path, name: str, match: str) -> str:
    model, opts = make_training(seed=5)
    before = model_state(model)
    with pytest.raises(CheckpointError, match=match) as info:
        CheckpointManager(root).load(name, model, opts)
    assert_same_state(model_state(model), before)  # refused before anything changed
    return str(info.value)


# ---------------------------------------------------------------------------- parents
@pytest.mark.parametrize("spelling", ["relative", "absolute", "nested"])
def test_parent_outside_the_root_is_refused(tmp_path, chain, spelling):
    root, p1, p2 = chain
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / p1.name
    os.rename(p1, moved)  # the parent now exists only outside the root
    name = {"relative": f"../elsewhere/{p1.name}", "absolute": str(moved),
            "nested": f"{p1.name}/../../elsewhere/{p1.name}"}[spelling]
    set_parent_name(p2, name)
    message = refused_load(root, p2.name, "is not a checkpoint name")
    assert repr(name) in message and str(p2 / "manifest.json") in message


def test_parent_that_is_a_link_out_of_the_root_is_refused(tmp_path, chain):
    root, p1, p2 = chain
    outside = tmp_path / "outside" / p1.name
    outside.parent.mkdir()
    os.rename(p1, outside)
    p1.symlink_to(outside, target_is_directory=True)
    refused_load(root, p2.name, f"{p1.name}, which is a symbolic link \\(to {outside}\\)")
    mgr = CheckpointManager(root, keep_last=1)
    with pytest.warns(RuntimeWarning, match=f"skipping {p1}: it is a symbolic link"):
        assert [i.path for i in mgr.checkpoints()] == [p2]
    # retention never follows the link: the directory it points to is untouched
    model, opts = make_training()
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        mgr.save(3, model, opts)
    assert sorted(p.name for p in outside.iterdir()) == sorted(FILES)


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", ["outside_root", "sibling_checkpoint"])
def test_symlinked_checkpoint_file_is_refused(tmp_path, chain, name, where):
    root, p1, p2 = chain
    if where == "outside_root":  # the same bytes, moved out: every checksum still matches
        target = tmp_path / "outside" / name
        target.parent.mkdir()
        os.rename(p1 / name, target)
    else:
        target = root / "step-000000000009" / name
        target.parent.mkdir()
        shutil.copyfile(p1 / name, target)
        (p1 / name).unlink()
    (p1 / name).symlink_to(target)
    message = refused_load(root, p1.name, "symbolic link")
    assert f"{p1 / name} is a symbolic link (to {target})" in message


def test_fifo_in_place_of_a_file_is_refused_without_reading_it(chain):
    root, p1, _ = chain
    (p1 / "dense.safetensors").unlink()
    os.mkfifo(p1 / "dense.safetensors")
    refused_load(root, p1.name, "dense.safetensors is not a regular file")


def test_plain_checkpoints_still_load(chain):
    root, _, p2 = chain
    model, opts = make_training(seed=5)
    CheckpointManager(root).load(p2.name, model, opts)


# ---------------------------------------------------------------------------- cleanup
@pytest.mark.parametrize("name", [".tmp-foo", ".tmp-step-000000000001-1-abcd", ".recis-tmp-foo"])
def test_a_users_tmp_directory_survives_a_save(tmp_path, name):
    root = tmp_path / "root"
    (root / name).mkdir(parents=True)
    (root / name / "notes.txt").write_text("mine")
    model, opts = make_training()
    CheckpointManager(root).save(1, model, opts)
    assert (root / name / "notes.txt").read_text() == "mine"


def test_cleanup_removes_only_what_recis_made(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    user = {  # name -> a file inside it; none of these may be touched
        ".tmp-foo": "my notes",
        ".tmp-step-000000000001-1-abcd": "looks like an old recis temporary, but recis did not mark it",
        ".recis-tmp-foo": "no marker",
    }
    for name, text in user.items():
        (root / name).mkdir()
        (root / name / "notes.txt").write_text(text)
    wrong_marker = root / ".recis-tmp-wrong"
    wrong_marker.mkdir()
    (wrong_marker / ckfiles.TMP_MARKER).write_text("someone else's file")
    linked_marker = root / ".recis-tmp-linked"  # a marker that is a link to a file elsewhere
    linked_marker.mkdir()
    (linked_marker / ckfiles.TMP_MARKER).symlink_to(tmp_path / "elsewhere-marker")
    outside = tmp_path / "outside"  # a real recis temporary, but reached through a link
    ckfiles.make_temporary(outside.parent / ".recis-tmp-outside")
    (root / ".recis-tmp-link").symlink_to(outside.parent / ".recis-tmp-outside", target_is_directory=True)
    (root / ".recis-tmp-file").write_text("a file, not a directory")
    # what a save killed mid-way leaves: a marked temporary directory with half a checkpoint
    crashed = ckfiles.AtomicDirectory(root, "step-000000000005").__enter__()
    crashed.write_json("state.json", {"half": True})

    model, opts = make_training()
    train_step(model, opts, 0)
    CheckpointManager(root).save(6, model, opts)

    assert not crashed.wrapper.exists()
    for name, text in user.items():
        assert (root / name / "notes.txt").read_text() == text
    assert (wrong_marker / ckfiles.TMP_MARKER).read_text() == "someone else's file"
    assert (linked_marker / ckfiles.TMP_MARKER).is_symlink()
    assert ckfiles.is_recis_temporary(outside.parent / ".recis-tmp-outside")
    assert (root / ".recis-tmp-file").read_text() == "a file, not a directory"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*user, ".recis-tmp-wrong", ".recis-tmp-linked", ".recis-tmp-link", ".recis-tmp-file", "step-000000000006"])


def test_saves_and_retention_leave_no_temporaries(tmp_path):
    root = tmp_path / "root"
    model, opts = make_training()
    mgr = CheckpointManager(root, keep_last=1)
    for step in range(1, 4):
        train_step(model, opts, step)
        mgr.save(step, model, opts)
    assert sorted(p.name for p in root.iterdir()) == ["step-000000000003"]
    assert sorted(p.name for p in (root / "step-000000000003").iterdir()) == sorted(FILES)


def test_a_corrupt_parent_entry_is_named(chain):
    root, _, p2 = chain
    manifest = json.loads((p2 / "manifest.json").read_text())
    manifest["parent"] = "step-000000000001"  # not {name, id}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (p2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointCorruptError, match="parent 'step-000000000001' is not a checkpoint name"):
        CheckpointManager(root).chain(p2.name)
