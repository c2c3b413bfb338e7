"""Options of the `image` and `tensor` feature kinds (validated; see docs/features.md).

>>> opts = ImageOptions.from_dict({"channels": 1, "size": [28, 28], "mean": [0.286], "std": [0.353],
...                                "augment": {"hflip": 0.5, "crop_padding": 2}})
>>> opts.size, opts.augment
((28, 28), ImageAugment(hflip=0.5, crop_padding=2, seed=0))
>>> opts.to_dict()
{'channels': 1, 'size': [28, 28], 'mean': [0.286], 'std': [0.353], 'augment': {'hflip': 0.5, 'crop_padding': 2}}
>>> ImageOptions.from_dict({"channels": 3, "mean": [0.5], "std": [0.2]})
Traceback (most recent call last):
...
recis.features.ops.FeatureConfigError: image.mean has 1 value(s), image.channels is 3: give one per channel
"""
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

from recis.config_utils import bounded, check_types
from recis.features.ops import FeatureConfigError

__all__ = ["RESAMPLE", "ImageAugment", "ImageOptions"]

#: Resize filters: Pillow's own (Image.Resampling members of these names).
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")


def _strict(cls, d, where: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise FeatureConfigError(f"{where} must be a mapping of options, got {type(d).__name__} ({d!r})")
    allowed = [f.name for f in fields(cls)]
    for key in d:
        if key not in allowed:
            raise FeatureConfigError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
    return cls(**d)


@dataclass(frozen=True)
class ImageAugment:
    """Training-time augmentation, seeded per row (see docs/features.md): hflip = probability of a
    horizontal flip; crop_padding = pixels of zero padding on each side, then a random crop back to
    the image size (0: no crop); seed mixes into every row's generator."""

    hflip: float = bounded(0.0, ge=0, le=1)
    crop_padding: int = bounded(0, ge=0, le=4096)
    seed: int = bounded(0, ge=0, lt=2 ** 64)

    def __post_init__(self):
        check_types(self, "image.augment", error=FeatureConfigError)

    @classmethod
    def from_dict(cls, d) -> "ImageAugment":
        return _strict(cls, d, "image.augment")

    def to_dict(self) -> Dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    @property
    def active(self) -> bool:
        return self.hflip > 0 or self.crop_padding > 0


@dataclass(frozen=True)
class ImageOptions:
    """How an image column (PNG / JPEG bytes) becomes a float32 [C, H, W] tensor per row:
    decoded by Pillow, converted to channels (1: "L", 3: "RGB"), resized to size = [H, W] with
    Pillow's `resample` filter (None: keep the decoded size; every row of a batch must then have
    the same), scaled to [0, 1], normalized (x - mean) / std per channel when given, augmented."""

    channels: int = bounded(3, ge=1, le=3)
    size: Optional[Tuple[int, ...]] = bounded(None, ge=1, le=1 << 15)
    resample: str = "bilinear"
    mean: Optional[Tuple[float, ...]] = bounded(None, ge=0, le=1)
    std: Optional[Tuple[float, ...]] = bounded(None, gt=0)
    augment: Optional[ImageAugment] = None

    def __post_init__(self):
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", ImageAugment.from_dict(self.augment))
        check_types(self, "image", error=FeatureConfigError)
        for name in ("size", "mean", "std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.channels not in (1, 3):
            raise FeatureConfigError(f"image.channels must be 1 (grayscale, Pillow mode L) or 3 (RGB), "
                                     f"got {self.channels}")
        if self.size is not None and len(self.size) != 2:
            raise FeatureConfigError(f"image.size must be [height, width], got {list(self.size)}")
        if self.resample not in RESAMPLE:
            raise FeatureConfigError(f"image.resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        if (self.mean is None) != (self.std is None):
            raise FeatureConfigError("image.mean and image.std go together: give both (one value per channel) "
                                     "or neither")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.channels:
                raise FeatureConfigError(f"image.{name} has {len(v)} value(s), image.channels is {self.channels}: "
                                         "give one per channel")

    @classmethod
    def from_dict(cls, d) -> "ImageOptions":
        return _strict(cls, d, "image")

    def to_dict(self) -> Dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "channels" or v != f.default:
                out[f.name] = v.to_dict() if isinstance(v, ImageAugment) else list(v) if isinstance(v, tuple) else v
        return out
