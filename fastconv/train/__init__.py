"""Training: the loop (``Trainer``), its checkpoints, the run folder it writes
(``RunDir``) and the figures of a run (learning curves, predictions, confusion matrix)."""
from fastconv.train.rundir import NotARunError, RunDir
from fastconv.train.trainer import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    LAST_CHECKPOINT,
    CheckpointError,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    confusion_matrix,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)

__all__ = [
    "Trainer", "train", "evaluate", "confusion_matrix",
    "TrainingInterrupted", "CheckpointError", "TrainingDiverged",
    "save_checkpoint", "load_checkpoint",
    "LAST_CHECKPOINT", "BEST_CHECKPOINT", "FINAL_MODEL", "BEST_MODEL",
    "RunDir", "NotARunError",
]
