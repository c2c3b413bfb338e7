"""recis.io: Arrow datasets (Parquet, ORC, CSV) for training, sharded, shuffled and resumable.

- `ArrowDataset`: files or a pyarrow dataset as a stream of fixed-size record batches.
- `StreamingArrowDataset`: a directory (or time-window subdirectories) watched for new files.
- `Prefetcher`: background-thread prefetch with pinned memory when CUDA is available.
- `column_to_tensor`, `list_column_to_jagged`, `validity_mask`, `to_tensors`: columns as tensors.

See docs/io.md.
"""
from recis.io.base import LoaderConfig, LoaderOptions, merge_states
from recis.io.columns import Jagged, column_to_tensor, list_column_to_jagged, to_tensors, validity_mask
from recis.io.dataset import ArrowDataset
from recis.io.errors import (BadRowError, CorruptFileError, DataFileError, IOStats, MissingColumnError, RowError,
                             SchemaMismatchError, UnknownFormatError)
from recis.io.origin import RowOrigin
from recis.io.prefetch import Prefetcher, pin_memory
from recis.io.streaming import StreamingArrowDataset

__all__ = [
    "ArrowDataset", "StreamingArrowDataset", "Prefetcher", "LoaderConfig", "LoaderOptions", "merge_states",
    "Jagged", "column_to_tensor", "list_column_to_jagged", "validity_mask", "to_tensors", "pin_memory",
    "DataFileError", "MissingColumnError", "SchemaMismatchError", "CorruptFileError", "UnknownFormatError", "IOStats",
    "RowError", "BadRowError", "RowOrigin",
]
