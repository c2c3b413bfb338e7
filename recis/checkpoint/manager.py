"""CheckpointManager: atomic, checksummed, incremental checkpoints of a model, its optimizers
and any trainer / IO state; keeps the last N.

Layout of `directory/step-000000000100/` (safetensors and JSON only, nothing pickled):

- `sparse.safetensors`  hash tables: ids, rows, optimizer slots, counts, last_seen, group state
  (an incremental checkpoint: the rows touched since its parent, plus every live id)
- `dense.safetensors`   the model's other parameters and buffers
- `state.json` + `state.safetensors`  optimizer / scheduler state_dicts and `extra_state`
- `manifest.json`       format version, step, kind, parent, table configs, files and sha256
"""
import json
import os
import re
import uuid
import warnings
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

import recis
from recis.checkpoint import files, sharded, tables
from recis.checkpoint.codec import decode, encode
from recis.checkpoint.errors import (CheckpointCorruptError, CheckpointError, CheckpointNotFoundError,
                                     IncompatibleCheckpointError)
from recis.checkpoint.finite import check_finite as _check_finite
from recis.distributed.env import ShardingEnv

FORMAT = "recis.checkpoint"
VERSION = 1
SPARSE, DENSE, STATE_JSON, STATE_TENSORS = "sparse.safetensors", "dense.safetensors", "state.json", "state.safetensors"
_NAME = re.compile(r"^step-(\d+)$")

PathLike = Union[str, Path]


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint on disk: `kind` is "full" or "incremental" (`parent` names the
    checkpoint it builds on); `chain_length` counts the checkpoints needed to load it."""

    path: Path
    step: int
    kind: str
    parent: Optional[str]
    id: str
    chain_length: int


@dataclass
class _Baseline:
    """The checkpoint that the model's in-memory state last matched (saved or loaded)."""

    model: "weakref.ref"
    path: Path
    name: str
    id: str
    chain_length: int
    table_steps: Dict[str, int]
    tables: Dict[str, dict]
    ids: Dict[str, torch.Tensor]  # sorted live ids of each table (this rank's) at that checkpoint


def checkpoint_name(step: int) -> str:
    return f"step-{step:012d}"


def _info(path: Path, manifest: Dict) -> CheckpointInfo:
    parent = manifest.get("parent")
    parent_name = parent.get("name") if isinstance(parent, dict) else None
    return CheckpointInfo(path, int(manifest["step"]), manifest["kind"], parent_name, manifest["id"],
                          int(manifest["chain_length"]))


def _type_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _read_checked_manifest(path: Path) -> Dict:
    manifest = files.read_manifest(path, FORMAT)
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise IncompatibleCheckpointError(f"{path} has format version {manifest.get('version')!r}; this recis reads "
                                          f"versions up to {VERSION}")
    return manifest


class CheckpointManager:
    """Saves to and loads from `directory` (one writer per directory).

    `keep_last`: complete checkpoints to keep (None: all); older ones are deleted once a new
    one is complete, except those a kept incremental checkpoint builds on. `full_every`: with
    the default `save(incremental=None)`, every `full_every`-th save is full and the others are
    incremental (1: always full)."""

    def __init__(self, directory: PathLike, keep_last: Optional[int] = 3, full_every: int = 1):
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"keep_last must be None or an int >= 1, got {keep_last!r}")
        if not isinstance(full_every, int) or full_every < 1:
            raise ValueError(f"full_every must be an int >= 1, got {full_every!r}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.full_every = full_every
        self._baseline: Optional[_Baseline] = None

    # ------------------------------------------------------------ listing
    def checkpoints(self) -> List[CheckpointInfo]:
        """Complete checkpoints (with a valid manifest), oldest step first."""
        out = []
        if not self.directory.is_dir():
            return out
        for p in self.directory.iterdir():
            if not (_NAME.match(p.name) and p.is_dir()):
                continue
            if p.is_symlink():
                warnings.warn(f"skipping {p}: it is a symbolic link (to {os.readlink(p)}); checkpoints are "
                              f"directories inside {self.directory}", RuntimeWarning, stacklevel=2)
                continue
            try:
                out.append(_info(p, _read_checked_manifest(p)))
            except CheckpointError as e:
                warnings.warn(f"skipping {p}: {e}", RuntimeWarning, stacklevel=2)
        return sorted(out, key=lambda i: i.step)

    def latest(self) -> Optional[CheckpointInfo]:
        """The complete checkpoint with the highest step, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def resolve(self, checkpoint: PathLike = "latest") -> Path:
        """The directory of `checkpoint`: "latest", a name inside `directory`, or a path."""
        if checkpoint == "latest":
            info = self.latest()
            if info is None:
                raise CheckpointNotFoundError(f"no complete checkpoint in {self.directory}")
            return info.path
        path = Path(checkpoint)
        if not path.is_absolute() and (self.directory / path).is_dir():
            return self.directory / path
        return path

    # ------------------------------------------------------------ saving
    def save(self, step: int, model: nn.Module, optimizers: Optional[Mapping[str, Any]] = None,
             extra_state: Optional[Mapping[str, Any]] = None, incremental: Optional[bool] = None,
             check_finite: bool = True) -> Path:
        """Writes checkpoint `step` atomically and returns its directory.

        `optimizers`: name -> any object with state_dict()/load_state_dict() (sparse and dense
        optimizers, LR schedulers). `extra_state`: trainer / IO state (JSON values and tensors,
        nested in dicts, lists and tuples). `incremental`: True or False forces the kind; None
        follows `full_every`. Refuses (NonFiniteStateError, nothing written) when a value to be
        saved is NaN/Inf, and refuses while sparse gradients wait for an optimizer step."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        env = sharded.model_env(model)
        name = checkpoint_name(step)
        prepared, error = None, None
        try:
            prepared = self._prepare(step, model, dict(optimizers or {}), extra_state, incremental, check_finite, env)
        except (CheckpointError, ValueError, FloatingPointError, RuntimeError) as e:
            error = e
        sharded.agree(env, error, f"preparing checkpoint {self.directory / name}")
        write_local, manifest, snapshots = prepared
        manifest["id"] = env.broadcast_object(uuid.uuid4().hex, what="checkpoint id")
        if env.distributed:
            path = sharded.write_collectively(env, self.directory, name, write_local, manifest)
        else:
            files.remove_stale_temporaries(self.directory)
            with files.AtomicDirectory(self.directory, name) as d:
                write_local(d)
                path = d.commit(manifest)
        self._remember(model, path, manifest, snapshots)
        if env.rank == 0:
            self._retain()
        env.barrier("checkpoint retention")
        return path

    def _prepare(self, step, model, optimizers, extra_state, incremental, check_finite, env):
        """(function writing this rank's files, manifest) of checkpoint `step`; raises before
        anything is written when the state cannot be saved."""
        newer = [i.path.name for i in self.checkpoints() if i.step > step]
        if newer:
            # 'latest' (the highest step) would resume from those, and retention would delete
            # the new checkpoint first: refuse before anything is written or removed.
            raise CheckpointError(f"cannot save step {step} into {self.directory}: it holds newer checkpoints "
                                  f"{newer} (was the run rewound to an older checkpoint, or started afresh with "
                                  "resume off?); move them away or save into another directory")
        entries = tables.table_groups(model)
        tables.check_quiescent(entries)
        configs = json.loads(json.dumps(tables.configs_of(entries)))
        table_steps = {e.key: e.group.step for e in entries}
        parent = self._parent_for(model, configs, incremental)
        if parent is None:
            sparse, dense = tables.split_state(model.state_dict(), entries)
        else:
            tables.check_steps(entries, parent.table_steps)
            with tables.exporting_since(entries, parent.table_steps):
                sparse, dense = tables.split_state(model.state_dict(), entries)
            sparse = tables.delta(sparse, entries, parent.ids)
        snapshots = tables.snapshots_after(sparse, entries, parent.ids if parent is not None else None)
        sparse = tables.arranged(sparse, entries)
        if env.rank > 0:  # whole (replicated or unsharded) tables are saved by rank 0 alone
            whole = sharded.rank0_only_groups(model)
            skip = [e for e in entries if id(e.group) in whole]
            sparse = {k: v for k, v in sparse.items() if not any(e.owns(k) for e in skip)}
        dense_tensors = {k: v for k, v in dense.items() if isinstance(v, torch.Tensor)}
        state_tensors: Dict[str, torch.Tensor] = {}
        state = {
            "model": encode({k: v for k, v in dense.items() if k not in dense_tensors}, state_tensors, "model"),
            "optimizers": {name: encode(opt.state_dict(), state_tensors, f"optimizers/{name}")
                           for name, opt in optimizers.items()},
            "extra": encode(dict(extra_state or {}), state_tensors, "extra"),
            "table_stats": tables.table_stats(entries),
        }
        name = checkpoint_name(step)
        if check_finite:
            everything = {**{f"sparse/{k}": v for k, v in sparse.items()},
                          **{f"dense/{k}": v for k, v in dense_tensors.items()}, **state_tensors}
            _check_finite(tensors=everything, what=f"checkpoint {self.directory / name} (nothing was written)")
        manifest = {
            "format": FORMAT, "version": VERSION, "step": step, "kind": "incremental" if parent else "full",
            "parent": {"name": parent.name, "id": parent.id} if parent else None,
            "chain_length": parent.chain_length + 1 if parent else 1,
            "created": datetime.now(timezone.utc).isoformat(),
            "recis_version": recis.__version__, "torch_version": torch.__version__,
            "tables": configs, "table_steps": table_steps, "world_size": env.world_size,
            "optimizers": {n: _type_name(o) for n, o in optimizers.items()},
        }
        names = _file_names(env.rank, env.world_size)

        def write_local(d) -> None:
            d.write_tensors(names["sparse"], sparse)
            if env.rank == 0:
                d.write_tensors(DENSE, dense_tensors)
            d.write_tensors(names["state_tensors"], state_tensors)
            d.write_json(names["state_json"], state)

        return write_local, manifest, snapshots

    def _parent_for(self, model: nn.Module, configs: Dict, incremental: Optional[bool]) -> Optional[_Baseline]:
        if incremental is False:
            return None
        b = self._baseline
        reason = None
        if b is None or b.model() is not model:
            reason = "this manager has not saved or loaded this model yet"
        elif b.path.parent.resolve() != self.directory.resolve():
            reason = f"the last checkpoint, {b.path}, is in another directory"
        elif b.tables != configs:
            reason = f"the table configs changed since checkpoint {b.name}"
        else:
            try:
                on_disk = _read_checked_manifest(b.path)
                if on_disk["id"] != b.id:
                    reason = f"checkpoint {b.name} was replaced"
            except CheckpointError as e:
                reason = f"checkpoint {b.name} is unusable ({e})"
        if reason is not None:
            if incremental:
                raise CheckpointError(f"cannot save an incremental checkpoint: {reason}; save a full one first")
            return None
        if incremental is None and b.chain_length >= self.full_every:
            return None
        return b

    def _remember(self, model: nn.Module, path: Path, manifest: Dict, ids: Dict[str, torch.Tensor]) -> None:
        self._baseline = _Baseline(weakref.ref(model), path, path.name, manifest["id"], int(manifest["chain_length"]),
                                   dict(manifest["table_steps"]), manifest["tables"], ids)

    def _retain(self) -> None:
        if self.keep_last is None:
            return
        infos = self.checkpoints()
        by_name = {i.path.name: i for i in infos}
        needed = set()
        for info in infos[-self.keep_last:]:
            while info is not None and info.path.name not in needed:
                needed.add(info.path.name)
                info = by_name.get(info.parent) if info.parent else None
        for info in infos:
            if info.path.name not in needed:
                files.remove_tree(info.path)

    # ------------------------------------------------------------ loading
    def chain(self, checkpoint: PathLike = "latest") -> List[Tuple[Path, Dict]]:
        """(directory, manifest) of the full checkpoint and the incrementals up to `checkpoint`."""
        path = self.resolve(checkpoint)
        out, seen = [], set()
        while True:
            manifest = _read_checked_manifest(path)
            files.check_no_unlisted_files(path, manifest)
            out.append((path, manifest))
            seen.add(manifest["id"])
            parent = manifest.get("parent")
            if parent is None:
                return out[::-1]
            parent_path = _parent_path(path, parent)
            parent_id = _read_checked_manifest(parent_path)["id"]
            if parent_id != parent["id"] or parent_id in seen:
                raise CheckpointCorruptError(f"{parent_path} is not the checkpoint that {path} was built on "
                                             f"(id {parent_id}, expected {parent['id']})")
            path = parent_path

    def load(self, checkpoint: PathLike = "latest", model: Optional[nn.Module] = None,
             optimizers: Optional[Mapping[str, Any]] = None, strict: bool = True) -> Dict[str, Any]:
        """Restores `model` and `optimizers` (name -> object with load_state_dict, as saved)
        from `checkpoint` ("latest", a name or a path; incremental ones with their chain) and
        returns the saved `extra_state`. Every file is checked against its sha256 before
        anything is changed. `strict=False` accepts table configs that differ in anything but
        the shapes (seeds, initializer, eviction, ...)."""
        chain = self.chain(checkpoint)
        path, manifest = chain[-1]
        where = f"checkpoint {path}"
        optimizers = dict(optimizers or {})
        for name, opt in optimizers.items():
            saved = manifest["optimizers"].get(name)
            if saved is None:
                raise IncompatibleCheckpointError(f"{where} has no state for optimizer {name!r} (it has "
                                                  f"{sorted(manifest['optimizers'])})")
            if saved != _type_name(opt):
                raise IncompatibleCheckpointError(f"{where}: optimizer {name!r} was saved from {saved}, got "
                                                  f"{_type_name(opt)}")
        env = sharded.model_env(model) if model is not None else ShardingEnv.current()
        sharded.check_world(env, path.name)
        saved_world = int(manifest.get("world_size", 1))
        names = _file_names(env.rank if saved_world == env.world_size else 0, saved_world)
        state_tensors = files.read_tensors(path, manifest, names["state_tensors"])
        state = files.read_json(path, manifest, names["state_json"])
        if model is not None:
            entries = tables.table_groups(model)
            tables.check_compatible(manifest["tables"], entries, where, strict)
            owners = sharded.row_owners(model, entries)
            model_state = self._model_state(chain, state, state_tensors, owners)
            try:
                model.load_state_dict(model_state, strict=True)
            except (RuntimeError, ValueError, KeyError) as e:
                differ = _state_mismatch(model_state, model, entries)
                raise IncompatibleCheckpointError(
                    f"{where} does not fit the model ({type(model).__name__}): "
                    + (f"{differ} (a checkpoint of another model?)" if differ else str(e))) from None
            tables.load_table_stats(entries, self._saved_stats(path, manifest, state, env, saved_world))
            loaded_ids = {k[:-len(".ids")]: torch.sort(v.cpu()).values for k, v in model_state.items()
                          if k.endswith(".ids") and any(k[:-len(".ids")] in e.table_keys for e in entries)}
        for name, opt in optimizers.items():
            try:
                opt.load_state_dict(decode(state["optimizers"][name], state_tensors))
            except (RuntimeError, ValueError, KeyError) as e:
                raise IncompatibleCheckpointError(f"{where}: optimizer {name!r} does not fit: {e}") from None
        if model is not None:
            self._remember(model, path, manifest, loaded_ids)
        extra = decode(state["extra"], state_tensors)
        if saved_world != env.world_size and isinstance(extra, dict) and "data" in extra:
            warnings.warn(f"{where} was saved by {saved_world} ranks and is loaded by {env.world_size}: the data "
                          "position is not restored (tables, dense state and optimizers are)", RuntimeWarning,
                          stacklevel=2)
            extra = {k: v for k, v in extra.items() if k != "data"}
        return extra

    def _model_state(self, chain, state: Dict, state_tensors: Dict, owners) -> Dict[str, Any]:
        """The model state of the chain's last checkpoint, with the rows of each table that
        `owners` keeps (each rank reads just those, see sharded.read_sparse)."""
        filtered = any(not o.everything for o in owners.values())
        base_path, base = chain[0]
        sparse = sharded.read_sparse(base_path, base, SPARSE, owners)
        for path, manifest in chain[1:]:
            sparse = tables.apply_delta(sparse, sharded.read_sparse(path, manifest, SPARSE, owners),
                                        manifest["tables"], f"checkpoint {path}", filtered)
        path, manifest = chain[-1]
        dense = files.read_tensors(path, manifest, DENSE)
        return {**dense, **decode(state["model"], state_tensors), **tables.strip_layout(sparse)}

    @staticmethod
    def _saved_stats(path: Path, manifest: Dict, state: Dict, env: ShardingEnv, saved_world: int) -> List[Dict]:
        """The table counters this rank takes over: its own rank's, when the world size is the
        one saved; else rank 0 takes the sum of every saving rank's and the others start at zero."""
        if "table_stats" not in state:
            return [{}]  # written before the counters were saved: nothing to restore
        if saved_world == env.world_size:
            return [state["table_stats"]]
        if env.rank > 0:
            return []
        if saved_world == 1:
            return [state["table_stats"]]
        return [files.read_json(path, manifest, sharded.shard_file("state", r, saved_world, "json")).get(
            "table_stats", {}) for r in range(saved_world)]


def _parent_path(path: Path, parent: Any) -> Path:
    """The directory of an incremental checkpoint's parent: a checkpoint name (`step-<digits>`,
    no separators, not absolute) naming a real directory (not a link) in the same root."""
    name = parent.get("name") if isinstance(parent, dict) else None
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not isinstance(parent.get("id"), str):
        raise CheckpointCorruptError(f"{path / files.MANIFEST}: parent {parent!r} is not a checkpoint name "
                                     "(step-<digits>) with an id; an incremental checkpoint builds on a checkpoint in "
                                     "its own root")
    parent_path = path.parent / name
    if parent_path.is_symlink():
        raise CheckpointCorruptError(f"{path} is incremental on {parent_path}, which is a symbolic link (to "
                                     f"{os.readlink(parent_path)}); the parent must be a directory in the same root")
    if not parent_path.is_dir():
        raise CheckpointNotFoundError(f"{path} is incremental on {parent_path}, which is missing")
    return parent_path


def _file_names(rank: int, world_size: int) -> Dict[str, str]:
    """This rank's sparse and state file names (one process keeps the unsharded names)."""
    if world_size == 1:
        return {"sparse": SPARSE, "state_json": STATE_JSON, "state_tensors": STATE_TENSORS}
    return {"sparse": sharded.shard_file("sparse", rank, world_size, "safetensors"),
            "state_json": sharded.shard_file("state", rank, world_size, "json"),
            "state_tensors": sharded.shard_file("state", rank, world_size, "safetensors")}


def _state_mismatch(saved: Mapping[str, Any], model: nn.Module, entries, limit: int = 8) -> str:
    """The keys that one of the checkpoint's model state and `model`'s state has and the other
    lacks, and the dense tensors whose shapes differ ('' when none do)."""
    have = model.state_dict()
    _, dense = tables.split_state(have, entries)  # table sizes vary; their dims are checked before

    def show(keys):
        keys = sorted(keys)
        return str(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

    parts = []
    missing, unexpected = set(have) - set(saved), set(saved) - set(have)
    if missing:
        parts.append(f"the model has keys that the checkpoint lacks: {show(missing)}")
    if unexpected:
        parts.append(f"the checkpoint has keys that the model lacks: {show(unexpected)}")
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}" for k, v in sorted(dense.items())
              if isinstance(v, torch.Tensor) and isinstance(saved.get(k), torch.Tensor) and saved[k].shape != v.shape]
    if shapes:
        parts.append("shapes differ: " + "; ".join(shapes[:limit])
                     + (f" and {len(shapes) - limit} more" if len(shapes) > limit else ""))
    return "; ".join(parts)


def _locate(path: PathLike) -> Tuple["CheckpointManager", Path]:
    """(a manager of the root, the checkpoint directory) of a checkpoint directory, or of the
    latest checkpoint of a checkpoint root."""
    path = Path(path)
    if (path / files.MANIFEST).is_file():
        return CheckpointManager(path.parent, keep_last=None), path
    if not path.exists():
        raise CheckpointNotFoundError(f"{path} does not exist (expected a checkpoint directory, or a checkpoint root "
                                      "that holds step-N checkpoints)")
    mgr = CheckpointManager(path, keep_last=None)
    return mgr, mgr.resolve("latest")


def load_checkpoint(path: PathLike, model: Optional[nn.Module] = None, optimizers: Optional[Mapping[str, Any]] = None,
                    strict: bool = True) -> Dict[str, Any]:
    """Loads a checkpoint directory, or the latest checkpoint of a checkpoint root; returns
    its `extra_state` (see CheckpointManager.load)."""
    mgr, target = _locate(path)
    return mgr.load(target, model, optimizers, strict)


def load_weights(path: PathLike, model: nn.Module, strict: bool = True) -> Path:
    """Loads only `model`'s state (hash tables with their rows, dense parameters and buffers)
    from a checkpoint directory or the latest checkpoint of a checkpoint root, e.g. to start a
    training stage from another job's result; its optimizer and trainer state are not read.
    Returns the checkpoint directory. A checkpoint of another model raises
    IncompatibleCheckpointError naming the checkpoint and the keys / shapes that differ."""
    mgr, target = _locate(path)
    mgr.load(target, model=model, strict=strict)
    return target
