"""recis.features: declarative feature specs compiled into fused C++ ops.

Arrow record batches in, `Batch` out (a torchrec KeyedJaggedTensor of int64 ids, a dense float
tensor, labels, pass-through columns and image / fixed-shape tensors). See docs/features.md.
"""
from recis.features.arrow import FeatureTypeError
from recis.features.batch import Batch
from recis.features.engine import FeatureEngine, MissingColumnError, NonFiniteValueError
from recis.features.kernels import xxh64
from recis.features.media import ImageAugment, ImageOptions
from recis.features.ops import (Bucketize, Clip, FeatureConfigError, FillMissing, Hash, Log1p, Mod, MultiHash,
                                Normalize, Op, Truncate)
from recis.features.plan import Plan
from recis.features.spec import CrossInput, FeatureSpec, load_specs
from recis.io.errors import RowError

__all__ = ["FeatureEngine", "FeatureSpec", "CrossInput", "Batch", "Plan", "load_specs", "xxh64", "Op", "FillMissing",
           "Hash", "MultiHash", "Mod", "Bucketize", "Truncate", "Log1p", "Normalize", "Clip", "FeatureConfigError",
           "FeatureTypeError", "MissingColumnError", "NonFiniteValueError", "ImageOptions", "ImageAugment", "RowError"]
