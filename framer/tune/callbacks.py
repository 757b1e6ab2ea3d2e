"""Lightning callbacks for trials: the best monitored value, and Optuna reporting from rank 0 of a DDP trial."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class BestMetric(Callback):
    """Tracks the best value of ``monitor`` over validation epochs (the sanity check is ignored).

    Args:
        monitor: Logged metric to follow.
        direction: ``minimize`` or ``maximize``.
    """

    def __init__(self, monitor: str = "val/mae", direction: str = "minimize") -> None:
        super().__init__()
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
        self.monitor = monitor
        self.direction = direction
        self.best = math.nan
        self.best_epoch = -1
        self.last = math.nan
        self.epochs = 0

    def current(self, trainer: pl.Trainer) -> float | None:
        value = trainer.callback_metrics.get(self.monitor)
        return None if value is None else float(value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = self.current(trainer)
        if value is None or not math.isfinite(value):
            return
        self.last = value
        self.epochs = trainer.current_epoch + 1
        better = value < self.best if self.direction == "minimize" else value > self.best
        if math.isnan(self.best) or better:
            self.best, self.best_epoch = value, trainer.current_epoch


class DDPTrialReporter(BestMetric):
    """Reports ``monitor`` to an Optuna trial from global rank 0 and stops every rank when the trial is pruned.

    Used by ``framer.tune --devices-per-trial N``: the trial runs as a ``python -m framer.cli fit`` subprocess
    (Lightning DDP), so the Optuna trial object lives in the driver. Rank 0 reopens the study from its storage,
    reports each epoch's value and asks the pruner; the decision is broadcast to all ranks. Rank 0 writes
    ``result_file`` (best value, pruned flag) when fitting ends; the driver then tells the study.

    Args:
        storage: Storage spec from :func:`framer.tune.storage.storage_spec` (``journal:<path>`` or an RDB URL).
        study_name: The study.
        trial_id: Storage id of the trial (``trial._trial_id``).
        result_file: JSON file written by rank 0 at the end.
        monitor: Metric reported to Optuna.
        direction: ``minimize`` or ``maximize``.
        pruner: ``{type: ..., **kwargs}`` as in the sweep file (None: never prune).
    """

    def __init__(
        self,
        storage: str,
        study_name: str,
        trial_id: int,
        result_file: str,
        monitor: str = "val/mae",
        direction: str = "minimize",
        pruner: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(monitor, direction)
        self.storage = storage
        self.study_name = study_name
        self.trial_id = trial_id
        self.result_file = result_file
        self.pruner = pruner
        self.pruned = False
        self.pruned_epoch = -1
        self._trial: Any = None

    def _open_trial(self) -> Any:
        if self._trial is None:
            import optuna

            from framer.tune.storage import open_storage
            from framer.tune.sweep import make_pruner

            pruner = make_pruner(self.pruner)
            study = optuna.load_study(
                study_name=self.study_name, storage=open_storage(self.storage, heartbeat=False), pruner=pruner
            )
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        super().on_validation_end(trainer, pl_module)
        value = self.current(trainer)
        should_stop = False
        if trainer.is_global_zero and value is not None and math.isfinite(value):
            trial = self._open_trial()
            trial.report(value, step=trainer.current_epoch)
            should_stop = bool(trial.should_prune())
        should_stop = bool(trainer.strategy.broadcast(should_stop, src=0))
        if should_stop:
            self.pruned, self.pruned_epoch = True, trainer.current_epoch
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write_result(trainer)

    def write_result(self, trainer: pl.Trainer) -> None:
        from framer.cli import run_dir as cli_run_dir

        run_dir = cli_run_dir(trainer)  # not trainer.log_dir: that is a collective call, and only rank 0 is here
        result = {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "last": self.last,
            "epochs": self.epochs,
            "pruned": self.pruned,
            "pruned_epoch": self.pruned_epoch,
            "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
            "world_size": trainer.world_size,
        }
        path = Path(self.result_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
