"""Product attributes measured from the pixels of a Fashion-MNIST image (uint8 [28, 28], white
item on black), so that an attribute can only be answered from the image.

- `ink`: the item's pixels, those above 0.1 * 255 (value >= 26).
- `coverage` = share of ink pixels; `shade` from `intensity` = mean value of the ink pixels.
- `width` / `height` = the ink's bounding box in pixels (0 for an image with no ink).
- `symmetry` = left-right mirror agreement inside the bounding box's columns:
  1 - sum|a - mirror(a)| / sum(a + mirror(a)), mirrored about the box's centre (1 with no ink).
- `texture` from `roughness` = mean |difference| / 255 between horizontally or vertically
  adjacent ink pixels (0 with no adjacent ink pairs): plain below `BANDS["texture"]`, else
  patterned.

A band is the first name whose threshold the value lies below, else the last name: for
thresholds (t1, t2), low if v < t1, medium if t1 <= v < t2, high if v >= t2.

>>> img = np.zeros((28, 28), np.uint8)
>>> img[10:14, 8:20] = 200                                    # a 12x4 bar
>>> m = measure(img)
>>> m["width"], m["height"], round(m["coverage"] * 784), m["symmetry"], m["shade"]
(12, 4, 48, 1.0, 'light')
"""
from typing import Dict

import numpy as np

__all__ = ["BANDS", "INK", "measure", "measure_batch"]

INK = 26  # a pixel is ink when its value exceeds 0.1 * 255 = 25.5
SIZE = 28
_CHUNK = 8192

#: attribute -> (the measurement it bands, thresholds, band names). The thresholds are the
#: terciles (texture: the median) of each measurement over the 60,000 images of Fashion-MNIST's
#: official train split, measured once with `measure_batch` and rounded (they are constants so
#: that a product's band never depends on the split or the seed).
BANDS = {
    "shade": ("intensity", (143.68, 183.43), ("dark", "medium", "light")),
    "coverage_band": ("coverage", (0.3648, 0.5421), ("low", "medium", "high")),
    "width_band": ("width", (20, 27), ("narrow", "medium", "wide")),
    "height_band": ("height", (26, 28), ("short", "medium", "tall")),
    "texture": ("roughness", (0.1045,), ("plain", "patterned")),
}
#: the keys of measure()'s dict, in order.
KEYS = ("shade", "coverage", "coverage_band", "width", "height", "width_band", "height_band",
        "symmetry", "texture", "intensity", "roughness")


def _extent(mask: np.ndarray):
    """(first, last, length) of the True positions of each row of mask [N, 28]; (0, -1, 0) for none."""
    any_ = mask.any(1)
    first = mask.argmax(1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(1)
    return np.where(any_, first, 0), np.where(any_, last, -1), np.where(any_, last - first + 1, 0)


def _measure_chunk(images: np.ndarray) -> Dict[str, np.ndarray]:
    x = images.astype(np.float32)
    ink = images >= INK
    n_ink = ink.sum((1, 2))
    coverage = n_ink / float(SIZE * SIZE)
    intensity = np.where(n_ink > 0, (x * ink).sum((1, 2)) / np.maximum(n_ink, 1), 0.0)
    c0, c1, width = _extent(ink.any(1))
    _, _, height = _extent(ink.any(2))
    j = np.arange(SIZE)
    in_box = (j[None, :] >= c0[:, None]) & (j[None, :] <= c1[:, None])           # [N, 28] columns
    a = x * in_box[:, None, :]
    mirror = np.clip((c0 + c1)[:, None] - j[None, :], 0, SIZE - 1)                # column j <-> c0+c1-j
    b = np.take_along_axis(a, np.broadcast_to(mirror[:, None, :], a.shape), 2) * in_box[:, None, :]
    total = (a + b).sum((1, 2))
    symmetry = np.where(total > 0, 1.0 - np.abs(a - b).sum((1, 2)) / np.maximum(total, 1), 1.0)
    pairs_h = ink[:, :, 1:] & ink[:, :, :-1]
    pairs_v = ink[:, 1:, :] & ink[:, :-1, :]
    diff = ((np.abs(np.diff(x, axis=2)) * pairs_h).sum((1, 2))
            + (np.abs(np.diff(x, axis=1)) * pairs_v).sum((1, 2)))
    pairs = pairs_h.sum((1, 2)) + pairs_v.sum((1, 2))
    roughness = np.where(pairs > 0, diff / np.maximum(pairs, 1) / 255.0, 0.0)
    return {"coverage": coverage, "intensity": intensity, "width": width, "height": height,
            "symmetry": symmetry, "roughness": roughness}


def _band(values: np.ndarray, thresholds, names) -> np.ndarray:
    return np.asarray(names, dtype=object)[np.searchsorted(np.asarray(thresholds, np.float64),
                                                           values, side="right")]


def measure_batch(images: np.ndarray) -> Dict[str, np.ndarray]:
    """`measure` over uint8 images [N, 28, 28], vectorised: each key maps to an [N] array
    (bands: object arrays of str; width, height: int32; the rest float32, intensity float64)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"measure_batch: expected uint8 images [N, {SIZE}, {SIZE}], got {images.dtype} "
                         f"{list(images.shape)}")
    parts = [_measure_chunk(images[i:i + _CHUNK]) for i in range(0, len(images), _CHUNK)] or \
        [_measure_chunk(images)]
    raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out = {
        "coverage": raw["coverage"].astype(np.float32), "width": raw["width"].astype(np.int32),
        "height": raw["height"].astype(np.int32), "symmetry": raw["symmetry"].astype(np.float32),
        "intensity": raw["intensity"].astype(np.float64), "roughness": raw["roughness"].astype(np.float32),
    }
    for attribute, (source, thresholds, names) in BANDS.items():
        out[attribute] = _band(raw[source], thresholds, names)
    return {k: out[k] for k in KEYS}


def measure(image: np.ndarray) -> dict:
    """The attributes of one uint8 [28, 28] image (see the module docstring): `shade`,
    `coverage`, `coverage_band`, `width`, `height`, `width_band`, `height_band`, `symmetry`,
    `texture` (the metadata columns of the catalogue) and the measurements `intensity` and
    `roughness` that `shade` and `texture` band, as Python scalars."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (SIZE, SIZE):
        raise ValueError(f"measure: expected a uint8 [{SIZE}, {SIZE}] image, got {image.dtype} {list(image.shape)}")
    batch = measure_batch(image[None])
    return {k: v[0].item() if hasattr(v[0], "item") else v[0] for k, v in batch.items()}
