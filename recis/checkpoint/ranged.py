"""Reading parts of a checkpoint's safetensors files: ranges of rows of one tensor, each byte
checked against the manifest's block checksums before it is used.

A safetensors file written by this version is listed in the manifest with `blocks`: the sha256
(first 32 hex digits) of each `block_bytes` (BLOCK) block, instead of one sha256 of the whole
file (what JSON files and older checkpoints have). A reader that needs some
rows reads and checks only the blocks holding them (plus the block holding the header), so a
rank loading its share of a resharded checkpoint reads that share, not every file whole. Files
of older checkpoints (no `blocks`) are checked whole and then sliced.

Every byte read is counted in `bytes_read()` (what benchmarks/checkpoint_scale.py reports).
"""
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Dict, List, Optional

import torch

from recis.checkpoint.errors import CheckpointCorruptError

BLOCK = 1 << 18
_DIGEST_CHARS = 32
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ = {"bytes": 0}


def bytes_read() -> int:
    """Bytes this process read from checkpoint files (checksum passes and data) so far."""
    return _READ["bytes"]


def count_read(n: int) -> None:
    _READ["bytes"] += int(n)


def block_digests(path: Path, block_bytes: int = BLOCK) -> List[str]:
    """The sha256 prefix of each `block_bytes` block of the file."""
    blocks = []
    with os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW), "rb") as f:
        while True:
            block = f.read(block_bytes)
            if not block:
                return blocks
            blocks.append(hashlib.sha256(block).hexdigest()[:_DIGEST_CHARS])


class TensorFile:
    """One safetensors file of a checkpoint, read by rows: `read(name, start, stop)`.

    Without block checksums in the manifest (older checkpoints), the file is verified whole
    (sha256) when opened; with them, each block is verified when first read."""

    def __init__(self, path: Path, entry: Dict):
        self.path = Path(path)
        self.size = int(entry["bytes"])
        self.blocks: Optional[List[str]] = entry.get("blocks")
        self.block = int(entry.get("block_bytes", BLOCK))
        if self.block < 1:
            raise CheckpointCorruptError(f"{self.path}: the manifest gives a block size of {self.block} bytes")
        self._f = os.fdopen(os.open(self.path, os.O_RDONLY | _NOFOLLOW), "rb")
        self._cache: Dict[int, bytes] = {}  # verified blocks kept while a read spans them
        if self.blocks is None:
            from recis.checkpoint.files import sha256_file

            count_read(self.size)
            digest = sha256_file(self.path)
            if digest != entry.get("sha256"):
                raise CheckpointCorruptError(f"checkpoint file {self.path} fails its checksum: sha256 {digest}, the "
                                             f"manifest says {entry.get('sha256')}")
        elif len(self.blocks) != -(-self.size // self.block):
            raise CheckpointCorruptError(f"{self.path}: the manifest lists {len(self.blocks)} block checksums for "
                                         f"{self.size} bytes")
        try:
            (n,) = struct.unpack("<Q", self._bytes(0, 8))
            if n > self.size - 8:
                raise ValueError(f"header of {n} bytes in a file of {self.size}")
            header = json.loads(self._bytes(8, 8 + n))
        except (ValueError, struct.error, UnicodeDecodeError) as e:
            self.close()
            raise CheckpointCorruptError(f"checkpoint file {self.path} is not a valid safetensors file ({e})") from None
        self._start = 8 + n
        header.pop("__metadata__", None)
        self.meta = header

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "TensorFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify_all(self) -> None:
        """Checks every block (what a reader of the whole file does first)."""
        for b in range(len(self.blocks) if self.blocks is not None else 0):
            self._block(b)
            self._cache.pop(b, None)

    def keys(self) -> List[str]:
        return list(self.meta)

    def rows(self, name: str) -> int:
        shape = self._info(name)[1]
        return shape[0] if shape else 1

    def _info(self, name: str):
        m = self.meta.get(name)
        if m is None:
            raise CheckpointCorruptError(f"checkpoint file {self.path} has no tensor {name!r}")
        dtype = _DTYPES.get(m["dtype"])
        if dtype is None:
            raise CheckpointCorruptError(f"checkpoint file {self.path}: tensor {name!r} has unknown dtype "
                                         f"{m['dtype']!r}")
        begin, end = m["data_offsets"]
        return dtype, list(m["shape"]), self._start + begin, self._start + end

    def read(self, name: str, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Rows [start, stop) of tensor `name` (all of a 0-d tensor)."""
        dtype, shape, begin, end = self._info(name)
        if not shape:
            return self._tensor(self._bytes(begin, end), dtype, shape)
        n = shape[0]
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"{self.path}: rows [{start}, {stop}) of {name!r}, which has {n}")
        per_row = (end - begin) // n if n else 0
        data = self._bytes(begin + start * per_row, begin + stop * per_row)
        return self._tensor(data, dtype, [stop - start] + shape[1:])

    @staticmethod
    def _tensor(data: bytes, dtype: torch.dtype, shape) -> torch.Tensor:
        if not data:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)

    def _bytes(self, begin: int, end: int) -> bytes:
        if end > self.size or begin > end:
            raise CheckpointCorruptError(f"checkpoint file {self.path}: bytes [{begin}, {end}) lie outside its "
                                         f"{self.size} bytes")
        if begin == end:
            return b""
        if self.blocks is None:
            self._f.seek(begin)
            count_read(end - begin)
            return self._f.read(end - begin)
        first, last = begin // self.block, (end - 1) // self.block
        parts = [self._block(b) for b in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._cache = {b: self._cache[b] for b in (last,) if b in self._cache}  # the next read may go on from here
        return data[begin - first * self.block:end - first * self.block]

    def _block(self, b: int) -> bytes:
        if b in self._cache:
            return self._cache[b]
        self._f.seek(b * self.block)
        data = self._f.read(self.block)
        count_read(len(data))
        got = hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS]
        if got != self.blocks[b]:
            raise CheckpointCorruptError(f"checkpoint file {self.path} fails its checksum in bytes [{b * self.block}, "
                                         f"{b * self.block + len(data)}): block sha256 {got}, the manifest says "
                                         f"{self.blocks[b]}")
        self._cache[b] = data
        return data
