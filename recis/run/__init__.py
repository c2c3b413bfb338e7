"""recis.run: YAML job files and the pipeline they describe (used by the `recis` command line)."""
from recis.run.config import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, RunConfig
from recis.run.job import Job

__all__ = ["RunConfig", "DataConfig", "ModelConfig", "OptimConfig", "CheckpointConfig", "Job"]
