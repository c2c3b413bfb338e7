"""recis.checkpoint: atomic, checksummed, incremental checkpoints in safetensors + JSON, and
exports for serving. Loading never unpickles anything. See docs/checkpoints.md."""
from recis.checkpoint.errors import (CheckpointCorruptError, CheckpointError, CheckpointNotFoundError,
                                     IncompatibleCheckpointError, NonFiniteStateError)
from recis.checkpoint.finite import check_finite, nonfinite_entries
from recis.checkpoint.manager import CheckpointInfo, CheckpointManager, load_checkpoint, load_weights
from recis.checkpoint.serving import export_for_serving, load_for_serving

__all__ = [
    "CheckpointManager", "CheckpointInfo", "load_checkpoint", "load_weights", "export_for_serving", "load_for_serving",
    "check_finite", "nonfinite_entries", "CheckpointError", "CheckpointNotFoundError", "CheckpointCorruptError",
    "IncompatibleCheckpointError", "NonFiniteStateError",
]
