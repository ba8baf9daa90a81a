"""Training and fine-tuning: the loop (``loop``), its configuration (``config``), run directories
(``runs``), crash-safe checkpoints (``checkpoint``), rebuilding a run's model from its directory
(``rebuild``), several processes (``distributed``), the tasks and their data (``tasks``, ``data``).
"""

from encoderkit.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from encoderkit.training.config import TASKS, TrainConfig
from encoderkit.training.loop import NonFiniteError, evaluate, learning_rate, train
from encoderkit.training.rebuild import load_run_model
from encoderkit.training.runs import RunError, read_run_config, resume_config
from encoderkit.training.tasks import Task, build_model, build_task

__all__ = [
    "TASKS",
    "CheckpointError",
    "NonFiniteError",
    "RunError",
    "Task",
    "TrainConfig",
    "build_model",
    "build_task",
    "evaluate",
    "latest_checkpoint",
    "learning_rate",
    "list_checkpoints",
    "load_checkpoint",
    "load_run_model",
    "read_run_config",
    "resume_config",
    "save_checkpoint",
    "train",
]
