"""Image features: encoded image bytes (PNG, JPEG, anything Pillow reads) -> float32 [B, C, H, W].

Per row, in this order: Pillow decodes the bytes (`Image.open`), converts them to mode "L"
(channels 1) or "RGB" (channels 3) and, with `size`, resizes them to (W, H) with the chosen
Pillow filter; the uint8 pixels become float32 / 255; the augmentation (when configured) flips
and pads-then-crops the [0, 1] image (padding is black, 0); finally (x - mean) / std per channel.
Without augmentation and normalization the output is exactly Pillow's pixels / 255.

Augmentation is seeded per row: the generator of a row comes from (augment.seed, epoch, a hash
of the row's file key, the row's index in its file) when the caller knows where the row comes
from (a recis.io dataset passes a `RowOrigin`), else from (augment.seed, the engine's call
count, the row's index in the batch). So a resumed job augments every row as the uninterrupted
job does, and epochs augment differently.

>>> import io, numpy as np
>>> from PIL import Image
>>> buf = io.BytesIO(); Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(buf, "PNG")
>>> from recis.features.media import ImageOptions
>>> x = decode_images([buf.getvalue()], ImageOptions(channels=1, size=(2, 2), resample="nearest"), "img", "png")
>>> x.shape, (x * 255).round().flatten().tolist()
(torch.Size([1, 1, 2, 2]), [5.0, 7.0, 13.0, 15.0])
"""
import hashlib
import io
import re
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from recis.features.media import ImageOptions
from recis.io.errors import RowError

__all__ = ["decode_images", "row_seeds", "key_hash"]

_ADDRESS = re.compile(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a requirement
        raise ImportError("image features need Pillow (pip install 'pillow>=10')") from e
    return Image


def key_hash(key: str) -> int:
    """A stable 64-bit number for a file key (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def row_seeds(epoch: int, keys: Sequence[str], rows: Sequence[int]) -> list:
    """Per row, what seeds its augmentation (with augment.seed) from where it comes from: its
    epoch, file key and row in the file (see the module docstring)."""
    hashes = {k: key_hash(k) for k in set(keys)}
    return [[int(epoch), hashes[k], int(r)] for k, r in zip(keys, rows)]


def _decode_one(data, opts: ImageOptions, image_mod, filt) -> np.ndarray:
    if isinstance(data, memoryview):
        data = data.tobytes()
    with image_mod.open(io.BytesIO(data)) as img:
        img = img.convert("L" if opts.channels == 1 else "RGB")
    if opts.size is not None:
        h, w = opts.size
        img = img.resize((w, h), resample=filt)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(values: Sequence[Optional[bytes]], opts: ImageOptions, feature: str, column: str,
                  seeds: Optional[Sequence[Sequence[int]]] = None,
                  expect_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Encoded images (bytes per row; None is a bad row) -> float32 [B, C, H, W].

    seeds: per row, the numbers that (after augment.seed) seed its augmentation generator
    (needed when opts.augment is active; see row_seeds). expect_size: without opts.size, the
    (H, W) every row must decode to (else the first row's). Rows that do not decode raise one RowError naming all of them."""
    image_mod = _pil()
    filt = getattr(image_mod.Resampling, opts.resample.upper())
    pixels, reasons = [], {}
    for r, data in enumerate(values):
        if data is None:
            reasons[r] = "null (no image bytes)"
            pixels.append(None)
            continue
        try:
            pixels.append(_decode_one(data, opts, image_mod, filt))
        except Exception as e:  # noqa: BLE001 - any decoder failure is this row's reason
            detail = _ADDRESS.sub("", str(e))  # Pillow names the in-memory file by its address
            reasons[r] = f"does not decode as an image ({type(e).__name__}: {detail})"
            pixels.append(None)
    if opts.size is None:
        size = expect_size or next((p.shape[:2] for p in pixels if p is not None), None)
        for r, p in enumerate(pixels):
            if p is not None and p.shape[:2] != tuple(size):
                reasons[r] = (f"decodes to {p.shape[0]}x{p.shape[1]} (HxW), other rows to {size[0]}x{size[1]}; "
                              f"without image.size every row must have one size (set image.size to resize)")
    else:
        size = opts.size
    if reasons:
        bad = sorted(reasons)
        raise RowError(feature, column, "image", bad, [reasons[r] for r in bad])
    c = opts.channels
    h, w = size if size is not None else (0, 0)
    stacked = np.stack(pixels) if pixels else np.zeros((0, h, w, c), dtype=np.uint8)
    out = torch.from_numpy(stacked).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if opts.augment is not None and opts.augment.active and len(pixels):
        if seeds is None or len(seeds) != len(pixels):
            raise ValueError(f"image feature {feature!r}: augmentation needs one seed per row")
        out = _augment(out, opts.augment, seeds)
    if opts.mean is not None:
        mean = torch.tensor(opts.mean, dtype=torch.float32).view(1, c, 1, 1)
        std = torch.tensor(opts.std, dtype=torch.float32).view(1, c, 1, 1)
        out = out.sub_(mean).div_(std)
    return out.contiguous()


def _augment(x: torch.Tensor, aug, seeds) -> torch.Tensor:
    """Per row: a horizontal flip with probability hflip, then zero-pad crop_padding pixels on
    each side and crop a random window of the original size. Each row draws (u, dy, dx) from its
    own generator whatever the options, so changing one option leaves the others' draws alone."""
    b, c, h, w = x.shape
    p = aug.crop_padding
    out = torch.empty_like(x)
    padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
    for i, s in enumerate(seeds):
        rng = np.random.default_rng([aug.seed, *s])
        u = rng.random()
        dy, dx = (int(v) for v in rng.integers(0, 2 * p + 1, size=2)) if p else (0, 0)
        img = padded[i]
        if u < aug.hflip:
            img = img.flip(-1)
        out[i] = img[:, dy:dy + h, dx:dx + w]
    return out
