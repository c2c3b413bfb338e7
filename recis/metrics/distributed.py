"""Gathering metric state across ranks with torch.distributed (no process group: one rank).

>>> out = all_gather_state({"x": torch.tensor([1.0, 2.0])})   # single process: just the input
>>> len(out), out[0]["x"].tolist()
(1, [1.0, 2.0])
"""
import hashlib
import json
from typing import Dict, List

import torch
import torch.distributed as dist


def world_size(process_group=None) -> int:
    if process_group is None and not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _collective_device(process_group, fallback: torch.device) -> torch.device:
    """gloo gathers CPU tensors, nccl CUDA tensors; other backends use where the state lives."""
    backend = str(dist.get_backend(process_group))
    if "gloo" in backend:
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


def all_gather_state(state: Dict[str, torch.Tensor], process_group=None) -> List[Dict[str, torch.Tensor]]:
    """Every rank's `state` (1-D tensors whose lengths may differ between ranks), in rank order.

    All ranks must call it with the same keys and dtypes. Tensors come back on the device of
    the local state."""
    if world_size(process_group) == 1:
        return [dict(state)]
    keys = sorted(state)
    home = next(iter(state.values())).device if state else torch.device("cpu")
    device = _collective_device(process_group, home)
    n = dist.get_world_size(process_group)
    lengths = torch.tensor([state[k].numel() for k in keys], dtype=torch.int64, device=device)
    all_lengths = [torch.empty_like(lengths) for _ in range(n)]
    dist.all_gather(all_lengths, lengths, group=process_group)
    per_rank = torch.stack(all_lengths).tolist()  # [rank][key]
    out: List[Dict[str, torch.Tensor]] = [{} for _ in range(n)]
    for j, key in enumerate(keys):
        longest = max(row[j] for row in per_rank)
        local = state[key].reshape(-1).to(device)
        padded = torch.zeros(longest, dtype=local.dtype, device=device)
        padded[:local.numel()] = local
        parts = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(parts, padded, group=process_group)
        for rank in range(n):
            out[rank][key] = parts[rank][:per_rank[rank][j]].to(home)
    return out


def check_same_config(config: dict, what: str, process_group=None) -> None:
    """Raises if the ranks hold `what` metrics configured differently (e.g. GAUC weighting);
    compares a digest of the JSON config, so nothing is pickled."""
    if world_size(process_group) == 1:
        return
    text = json.dumps(config, sort_keys=True, default=str)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
    device = _collective_device(process_group, torch.device("cpu"))
    mine = torch.tensor([digest], dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, mine, group=process_group)
    differ = [rank for rank, p in enumerate(parts) if int(p) != digest]
    if differ:
        raise ValueError(f"{what}.sync: ranks {differ} hold a metric configured differently from this rank's {text}")
