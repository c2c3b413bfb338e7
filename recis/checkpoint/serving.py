"""Export for serving: table ids and rows (no optimizer state, optionally float16 / bfloat16)
and the dense parameters, in safetensors, written atomically; `load_for_serving` fills a
model built from the same config, for inference.
"""
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

import recis
from recis.checkpoint import files, tables
from recis.checkpoint.errors import IncompatibleCheckpointError, NonFiniteStateError
from recis.checkpoint.finite import nonfinite_entries
from recis.nn.state_keys import STATE_KEYS

FORMAT = "recis.serving"
VERSION = 1
TABLES, DENSE = "tables.safetensors", "dense.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_for_serving(model: nn.Module, path: Union[str, Path], dtype: torch.dtype = torch.float32,
                       include_dense: bool = True) -> Path:
    """Writes the directory `path` (which must not exist): each table's live ids and rows cast
    to `dtype`, plus (with `include_dense`) the model's other parameters and buffers as they
    are. Refuses NaN/Inf, and rows that overflow `dtype`."""
    names = {v: k for k, v in DTYPES.items()}
    if dtype not in names:
        raise TypeError(f"export_for_serving: dtype must be one of {sorted(DTYPES)}, got {dtype}")
    path = Path(path)
    entries = tables.table_groups(model)
    sparse, dense = tables.split_state(model.state_dict(), entries)
    not_tensors = sorted(k for k, v in dense.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise TypeError(f"export_for_serving stores tensors only; module state {not_tensors} is not a tensor")
    bad = nonfinite_entries({**sparse, **dense})
    if bad:
        raise NonFiniteStateError(f"export to {path}: non-finite values in {', '.join(bad)} (nothing was written)")
    out: Dict[str, torch.Tensor] = {}
    for e in entries:
        for key in e.table_keys:
            rows = sparse[f"{key}.rows"]
            cast = rows.to(dtype)
            overflow = int((~torch.isfinite(cast)).sum())
            if overflow:
                raise ValueError(f"export to {path}: table {key!r} has {overflow} values beyond the range of {dtype} "
                                 f"(largest |value| {float(rows.abs().max())}); export float32 or bfloat16")
            out[f"{key}.ids"], out[f"{key}.rows"] = sparse[f"{key}.ids"], cast
    configs = tables.configs_of(entries)
    for cfg in configs.values():
        cfg.update(slot_kind=None, slot_width=0)
    manifest = {"format": FORMAT, "version": VERSION, "dtype": names[dtype], "tables": configs,
                "include_dense": include_dense, "created": datetime.now(timezone.utc).isoformat(),
                "recis_version": recis.__version__, "torch_version": torch.__version__}
    with files.AtomicDirectory(path.parent, path.name) as d:
        d.write_tensors(TABLES, out)
        if include_dense:
            d.write_tensors(DENSE, dense)
        return d.commit(manifest)


def load_for_serving(path: Union[str, Path], model: nn.Module, strict: bool = True) -> None:
    """Loads an export into `model` (same table and dense config): its tables are replaced by
    the exported rows (as float32; counts and last_seen restart at 0; optimizer slots, if an
    optimizer is attached, start from their initial values)."""
    path = Path(path)
    manifest = files.read_manifest(path, FORMAT)
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise IncompatibleCheckpointError(f"{path} has format version {manifest.get('version')!r}; this recis reads "
                                          f"versions up to {VERSION}")
    files.check_no_unlisted_files(path, manifest)
    entries = tables.table_groups(model)
    tables.check_compatible(manifest["tables"], entries, f"serving export {path}", strict)
    saved = files.read_tensors(path, manifest, TABLES)
    state: Dict[str, torch.Tensor] = {}
    for e in entries:
        for key in e.table_keys:
            ids = saved[f"{key}.ids"]
            n = ids.numel()
            zeros = torch.zeros(n, dtype=torch.int64)
            values = dict(ids=ids, rows=saved[f"{key}.rows"].to(torch.float32), slots=torch.zeros(n, 0),
                          counts=zeros, last_seen=zeros)
            state.update({f"{key}.{k}": values[k] for k in STATE_KEYS})
    include_dense = bool(manifest.get("include_dense"))
    if include_dense:
        state.update(files.read_tensors(path, manifest, DENSE))
    try:
        result = model.load_state_dict(state, strict=include_dense)
    except (RuntimeError, ValueError, KeyError) as e:
        raise IncompatibleCheckpointError(f"serving export {path} does not fit the model: {e}") from None
    if not include_dense and result.unexpected_keys:
        raise IncompatibleCheckpointError(f"serving export {path}: unexpected keys {result.unexpected_keys}")
