"""What a trial's trainer tells the tuner, which never sees the trainer itself: :class:`TrialRun` for one-device
trials in this process, :class:`TrialProgress` (a JSON-lines file the tuner reads while the trial runs,
:class:`framer.tune.objective.Reporter`) for DDP trials in a ``framer.cli`` subprocess, which needs no Optuna and no
study storage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from framer.tracking import find_logger, run_dir


def run_of(trainer: pl.Trainer) -> tuple[Path | None, str | None]:
    """The trainer's run directory and MLflow run id (None where it has none). Rank 0 only: no collective call."""
    mlflow = find_logger(trainer.loggers, MLFlowLogger)
    return run_dir(trainer), mlflow.run_id if mlflow is not None else None


class TrialRun(Callback):
    """The run of an in-process trial, as the objective needs it after :func:`framer.launch.run_inprocess`: the best
    value of ``monitor`` (the sweep's metric, which the run's ``ModelCheckpoint`` monitors) and the exception. Calls
    ``started(run directory, MLflow run id)`` as fit starts, so a worker killed mid-trial leaves them on the trial."""

    def __init__(self, monitor: str, started: Callable[[Path | None, str | None], None]) -> None:
        self.monitor = monitor
        self.started = started
        self.best: float = math.nan
        self.exception: BaseException | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started(*run_of(trainer))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        scores = [c.best_model_score for c in checkpoints if c.monitor == self.monitor]
        self.best = float(scores[0]) if scores and scores[0] is not None else math.nan

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.exception = exception


class TrialProgress(Callback):
    """Rank 0 of a DDP trial appends its run and each validation's finite ``monitor`` value to ``path`` (JSON lines,
    which the tuner reads while the trial runs)."""

    def __init__(self, path: str, monitor: str = "val/mae") -> None:
        self.path = path
        self.monitor = monitor

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            directory, run_id = run_of(trainer)
            run = {"run_dir": str(directory.resolve()) if directory else None, "mlflow_run_id": run_id}
            self.append({**run, "world_size": trainer.world_size})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = float(trainer.callback_metrics.get(self.monitor, math.nan))
        if not trainer.sanity_checking and trainer.is_global_zero and math.isfinite(value):
            self.append({"epoch": trainer.current_epoch, "value": value})

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:  # one write per line; the reader takes complete lines only
            handle.write(json.dumps(record) + "\n")
