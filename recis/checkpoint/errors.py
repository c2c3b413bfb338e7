"""Errors of recis.checkpoint; each names the checkpoint (and the file) it is about."""


class CheckpointError(Exception):
    """Base class of checkpoint errors."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint (or a file it lists) where one was expected."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file is unreadable, truncated or fails its checksum."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
    """The checkpoint does not fit the model or optimizers (another dim, optimizer, ...)."""


class NonFiniteStateError(CheckpointError, FloatingPointError):
    """NaN or Inf in the state that was about to be saved; nothing was written."""
