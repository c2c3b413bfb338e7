"""recis.train: the Trainer, its config and hooks."""
from recis.train.config import TrainerConfig
from recis.train.early_stopping import EarlyStopping
from recis.train.hooks import CSVLogger, CurvePlot, Hook, ProgressBar, Profiler, TableStats, TensorBoardLogger
from recis.train.prequential import Prequential
from recis.train.trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "TrainerConfig", "NonFiniteLossError", "Hook", "ProgressBar", "CSVLogger", "TensorBoardLogger",
           "CurvePlot", "EarlyStopping", "TableStats", "Profiler",
           "Prequential"]
